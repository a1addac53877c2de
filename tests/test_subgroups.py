"""The subgroup (site / scanner) table (reporting.subgroups) against scikit-learn and by hand."""

from __future__ import annotations

import math
import runpy
import sys
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from test_calibration import BINARY, THREE, make_prob, random_probs, run_tables, write_eval

from zoommil.errors import ZoomMILError
from zoommil.recipe import DEFAULT_ENCODER
from zoommil.reporting import subgroups

REPO = Path(__file__).resolve().parents[1]
SITES = ["radboud"] * 40 + ["utrecht"] * 40 + ["cwz"] * 4  # cwz: normal slides only


def site_labels() -> np.ndarray:
    """Both classes at radboud and utrecht, only normal at cwz."""
    rng = np.random.default_rng(11)
    labels = rng.integers(0, 2, size=len(SITES))
    labels[[0, 1, 40, 41]] = [0, 1, 0, 1]
    labels[80:] = 0
    return labels


def write_site_sheet(tmp_path: Path, sites: list[str] | None, patients: bool = False) -> Path:
    """A slide sheet of the test slides t0..t83 (and a train slide), with a site column."""
    labels = site_labels()
    header = "slide_id\tpath\tlabel\tsplit" + ("\tsite" if sites else "")
    header += "\tpatient" if patients else ""
    train = ["a", "a.svs", "normal", "train"] + ([""] if sites else [])  # no site: fine
    lines = [header, "\t".join(train + (["pa"] if patients else []))]
    for i, y in enumerate(labels):
        row = [f"t{i}", f"t{i}.svs", BINARY[y], "test"]
        row += [sites[i]] if sites else []
        row += [f"p{i // 2}"] if patients else []
        lines.append("\t".join(row))
    path = tmp_path / "slides.tsv"
    path.write_text("\n".join(lines) + "\n")
    return path


def write_evals(tmp_path: Path, n_seeds: int = 3) -> tuple[list[Path], np.ndarray]:
    """ZoomMIL: informative at radboud, near chance at utrecht; ABMIL: random everywhere."""
    labels = site_labels()
    rng = np.random.default_rng(4)
    evals, zoom = [], []
    for s in range(n_seeds):
        signal = np.where(np.arange(len(labels)) < 40, 0.3, 0.0) * (2 * labels - 1)
        p1 = np.clip(0.5 + signal + rng.normal(0, 0.25, len(labels)), 0.01, 0.99)
        probs = np.stack([1 - p1, p1], axis=-1)
        zoom.append(probs)
        evals.append(write_eval(tmp_path / f"eval/zoommil/seed~{s}.json", s, BINARY, labels, probs))
        p1 = rng.uniform(0.01, 0.99, len(labels))
        other = np.stack([1 - p1, p1], axis=-1)
        evals.append(write_eval(tmp_path / f"eval/abmil/seed~{s}.json", s, BINARY, labels, other))
    return evals, np.array(zoom)


def run(tmp_path: Path, evals: list[Path], sheet: Path | None, columns=(), kinds=()) -> dict:
    """make_tables (`test_calibration.run_tables`) with the comparison table, and ``kinds``."""
    made, outputs = run_tables(
        tmp_path, evals, ("comparison", *kinds), sheet=sheet, subgroup_columns=columns
    )
    return made | {"outputs": outputs}


# --- the metrics on slide multisets -----------------------------------------------------------


@pytest.mark.parametrize("classes", [BINARY, THREE])
def test_auc_and_balanced_accuracy_on_a_resample_equal_scikit_learns(classes) -> None:
    """Each slide counted as often as it is drawn, ties in the scores included: AUC (binary:
    of the second class; three classes: macro one-vs-rest) and balanced accuracy are
    scikit-learn's on the gathered slides."""
    rng = np.random.default_rng(len(classes))
    n = 40
    labels = np.arange(n) % len(classes)
    probs = random_probs(rng, 2, n, len(classes))
    prob = make_prob(probs, labels, classes)
    idx = rng.integers(0, n, size=(5, n))
    idx[:, : len(classes)] = np.arange(len(classes))  # every class in every resample
    counts = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(float)
    auc = subgroups.auc(prob, counts)
    bacc = subgroups.balanced_accuracy(prob, counts)
    for s in range(2):
        for b, row in enumerate(idx):
            y, p = labels[row], probs[s, row]
            want = (
                roc_auc_score(y, p[:, 1])
                if len(classes) == 2
                else roc_auc_score(y, p, multi_class="ovr", average="macro")
            )
            assert auc[s, b] == pytest.approx(want, abs=1e-12)
            pred = p.argmax(axis=1)
            assert bacc[s, b] == pytest.approx(balanced_accuracy_score(y, pred), abs=1e-12)


def test_auc_of_a_resample_without_a_class_is_nan() -> None:
    prob = make_prob(
        random_probs(np.random.default_rng(0), 1, 4, 2), np.array([0, 0, 1, 1]), BINARY
    )
    counts = np.array([[1.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    auc = subgroups.auc(prob, counts)
    assert math.isnan(auc[0, 0]) and not math.isnan(auc[0, 1])


# --- the table ---------------------------------------------------------------------------------


def test_make_tables_gives_each_sites_auc_and_balanced_accuracy(tmp_path: Path) -> None:
    """Per method and site: the test slides per class, the seed mean and std of scikit-learn's
    AUC and balanced accuracy on the site's slides with a CI around it; a site of one class
    n/a (one class), left out of the gap; the gap is best - worst of the others."""
    evals, zoom = write_evals(tmp_path)
    sheet = write_site_sheet(tmp_path, SITES)
    made = run(tmp_path, evals, sheet, ["site"], ("subgroups",))
    table = pd.read_csv(made["outputs"]["subgroups_csv"], keep_default_na=False, na_values=[""])
    rows = table[(table["method"] == "zoommil") & (table["row"] == "subgroup")].set_index("value")
    assert list(rows.index) == ["cwz", "radboud", "utrecht"]
    labels = site_labels()
    sites = np.array(SITES)
    for site in ("radboud", "utrecht"):
        inside = sites == site
        aucs = [roc_auc_score(labels[inside], zoom[s, inside, 1]) for s in range(3)]
        baccs = [
            balanced_accuracy_score(labels[inside], zoom[s, inside].argmax(1)) for s in range(3)
        ]
        row = rows.loc[site]
        assert row["auc_mean"] == pytest.approx(np.mean(aucs), rel=1e-5)
        assert row["auc_std"] == pytest.approx(np.std(aucs, ddof=1), rel=1e-4)
        assert row["balanced_accuracy_mean"] == pytest.approx(np.mean(baccs), rel=1e-5)
        assert row["auc_ci_low"] <= row["auc_mean"] <= row["auc_ci_high"]
        assert row["n_test"] == inside.sum()
        assert row["n[tumor]"] == labels[inside].sum()
    assert math.isnan(rows.loc["cwz", "auc_mean"]) and rows.loc["cwz", "auc_note"] == "one class"
    assert rows.loc["cwz", "n[normal]"] == 4 and rows.loc["cwz", "n[tumor]"] == 0
    gap = table[(table["method"] == "zoommil") & (table["row"] == "gap")].iloc[0]
    want = rows.loc["radboud", "auc_mean"] - rows.loc["utrecht", "auc_mean"]
    assert gap["auc_mean"] == pytest.approx(want, rel=1e-5)
    assert (gap["auc_best"], gap["auc_worst"]) == ("radboud", "utrecht")
    assert gap["auc_ci_low"] > 0 and gap["auc_p"] < 0.01  # a real gap: signal at radboud only
    noise = table[(table["method"] == "abmil") & (table["row"] == "gap")].iloc[0]
    assert noise["auc_p"] > 0.05  # random scores at both sites: the gap is noise
    markdown = made["outputs"]["subgroups_md"].read_text()
    assert "| site = cwz | ZoomMIL | 4 (normal 4, tumor 0) | n/a (one class) |" in markdown
    assert "| site: best - worst | ZoomMIL |  | +" in markdown and "(radboud - utrecht)" in markdown
    assert "n/a (one class): the subgroup's test slides are all of one class" in markdown
    assert r"\caption[Performance per subgroup on camelyon16 (site)" in (
        made["outputs"]["subgroups_tex"].read_text()
    )


def test_a_one_class_site_beside_a_single_other_has_no_gap() -> None:
    """Two sites, one of them all normal: no second subgroup with a value, no gap (n/a),
    no crash and no NaN in the cells."""
    labels = np.array([0, 1, 0, 1, 0, 0])
    prob = make_prob(random_probs(np.random.default_rng(2), 2, 6, 2), labels, BINARY)
    values = {f"s{i:03d}": "a" if i < 4 else "b" for i in range(6)}
    table = subgroups.subgroup_table({"zoommil": prob}, ["zoommil"], {"site": values})
    display = subgroups.subgroup_display(table, BINARY, {})
    assert display.iloc[1]["AUC (%)"] == "n/a (one class)"
    assert display.iloc[2]["AUC (%)"] == "n/a (fewer than two subgroups with a value)"
    assert "nan" not in display.to_string().lower()


def test_a_subgroup_without_one_of_three_classes_has_no_macro_auc() -> None:
    """Three classes, a site without any slide of c: no macro AUC (every class needed, as in
    the evaluations), named; balanced accuracy over the two classes it has."""
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 0, 1])
    probs = random_probs(np.random.default_rng(5), 2, 10, 3)
    prob = make_prob(probs, labels, THREE)
    values = {f"s{i:03d}": "x" if i < 6 else "y" for i in range(10)}
    table = subgroups.subgroup_table({"m": prob}, ["m"], {"site": values})
    display = subgroups.subgroup_display(table, THREE, {})
    assert display.iloc[1]["AUC (%)"] == "n/a (no c slide)"
    y, pred = labels[6:], probs[:, 6:].argmax(axis=-1)
    with warnings.catch_warnings():  # a seed predicting c, which the site has no slide of
        warnings.simplefilter("ignore", UserWarning)
        want = np.mean([balanced_accuracy_score(y, p) for p in pred])
    assert table.iloc[1]["balanced_accuracy_mean"] == pytest.approx(want)
    notes = subgroups.subgroup_notes(table, THREE, [])
    assert any(n.startswith("n/a (no X slide)") for n in notes)


def test_patients_move_together_in_the_shuffles() -> None:
    """With a patient's slides in one site, a shuffle moves the patient: the permutation
    draws site labels over patients, so two slides of one patient never split."""
    labels = np.array([0, 1] * 6)
    probs = random_probs(np.random.default_rng(3), 1, 12, 2)
    groups = tuple(f"patient:p{i // 2}" for i in range(12))
    prob = make_prob(probs, labels, BINARY, groups)
    seen = []
    original = subgroups._gaps

    def spy(p, metric, member, n_groups):
        seen.append(member)
        return original(p, metric, member, n_groups)

    subgroups._gaps = spy
    try:
        halves = {"a": [f"s{i:03d}" for i in range(6)], "b": [f"s{i:03d}" for i in range(6, 12)]}
        p = subgroups.permutation_p(prob, "balanced_accuracy", halves)
    finally:
        subgroups._gaps = original
    member = np.concatenate(seen)
    assert (member[:, 0::2] == member[:, 1::2]).all() and 0 < p <= 1


def test_a_missing_column_names_it_and_the_sheets_columns(tmp_path: Path) -> None:
    evals, _ = write_evals(tmp_path, 1)
    sheet = write_site_sheet(tmp_path, None)
    with pytest.raises(ZoomMILError) as error:
        run(tmp_path, evals, sheet, ["site"], ("subgroups",))
    message = str(error.value)
    assert "has no column site (it has slide_id, path, label, split)" in message
    assert not (tmp_path / "tables" / "main.csv").exists()  # refused before any table


def test_an_empty_value_names_the_test_slides(tmp_path: Path) -> None:
    sites = list(SITES)
    sites[3] = sites[7] = ""
    frame = pd.read_csv(
        write_site_sheet(tmp_path, sites), sep="\t", dtype=str, keep_default_na=False
    )
    with pytest.raises(ZoomMILError, match=r"2 test slides without a 'site' value: t3, t7"):
        subgroups.check_columns(frame, ["site"], "slides.tsv")
    subgroups.check_columns(frame[frame["split"] != "test"], ["site"], "slides.tsv")  # train: ok


def test_by_default_no_subgroup_file_and_the_other_tables_are_unchanged(tmp_path: Path) -> None:
    """No `report.subgroups`: no subgroups file; configured, the other tables are
    byte-identical to the default's."""
    evals, _ = write_evals(tmp_path, 2)
    sheet = write_site_sheet(tmp_path, SITES, patients=True)
    default = run(tmp_path / "default", evals, sheet)["outputs"]
    assert not list((tmp_path / "default" / "tables").glob("subgroups*"))
    configured = run(tmp_path / "with", evals, sheet, ["site"], ("subgroups",))["outputs"]
    for key, path in default.items():
        assert path.read_bytes() == configured[key].read_bytes(), key
    table = pd.read_csv(configured["subgroups_csv"])
    assert (table["n_test_units"].dropna() < table["n_test"][table["n_test_units"].notna()]).all()
    assert "by patient" in configured["subgroups_md"].read_text()


def test_the_rule_script_passes_the_configured_columns(tmp_path: Path, monkeypatch) -> None:
    """scripts/make_tables.py hands the rule's `subgroups` param and outputs to make_tables."""
    evals, _ = write_evals(tmp_path, 1)
    sheet = write_site_sheet(tmp_path, SITES)
    qc_table = tmp_path / "qc.tsv"
    qc_table.write_text("slide_id\tlabel\tsplit\tstatus\treason\n")
    exclusions = tmp_path / "exclusions.tsv"
    exclusions.write_text("slide_id\tlabel\tsplit\tstatus\tstage\treason\tleft_out_of\n")
    outputs = {
        f"{kind}_{ext}": str(tmp_path / "tables" / f"{kind}.{ext}")
        for kind in ("main", "ablation", "subgroups")
        for ext in ("csv", "md", "tex")
    }
    job = SimpleNamespace(
        log=[str(tmp_path / "tables.log")],
        input=SimpleNamespace(qc=str(qc_table), exclusions=str(exclusions), evals=evals,
                              flops=[], sheet=str(sheet), val_reports=[], checkpoints=[]),
        output=SimpleNamespace(items=lambda: outputs.items()),
        params=SimpleNamespace(dataset="camelyon16", weights="random", mags=[5, 10],
                               methods={"zoommil": {"arch": "zoommil"}}, ablations={},
                               reference=None, encoder=DEFAULT_ENCODER, devices=[],
                               subgroups=["site"]),
    )  # fmt: skip
    monkeypatch.setattr(sys, "stderr", sys.stderr)  # the script points it at its log
    runpy.run_path(str(REPO / "scripts" / "make_tables.py"), init_globals={"snakemake": job})
    sys.stderr.close()
    table = pd.read_csv(outputs["subgroups_csv"])
    assert set(table["value"].dropna()) == {"cwz", "radboud", "utrecht"}


def test_a_shuffle_leaves_a_one_class_group_out_of_the_gap_as_the_observed_gap_does() -> None:
    """Balanced accuracy has a value on one class (its recall), but the observed gap leaves a
    one-class subgroup out: a shuffle that makes one must leave it out too, or the null gaps
    hold 0-or-1 recalls the observed never does (p too large at small sites)."""
    labels = np.array([0, 1, 0, 1, 0, 0])
    prob = make_prob(random_probs(np.random.default_rng(2), 2, 6, 2), labels, BINARY)
    one_class_b = np.array([[0, 0, 0, 0, 1, 1]])  # b: two normal slides only
    assert np.isnan(subgroups._gaps(prob, "balanced_accuracy", one_class_b, 2)).all()
    mixed = np.array([[0, 0, 0, 1, 1, 1]])
    assert not np.isnan(subgroups._gaps(prob, "balanced_accuracy", mixed, 2)).any()

"""Benchmark: how `snakemake --report` grows with the cohort (100, 400, 1000 slides).

    nice python benchmarks/report_scale.py --run DIR
    # writes results/benchmarks/report_scale.{json,md}

DIR is a finished run of the demo config (its results/ and .snakemake/metadata), read only:
the work copies under results/benchmarks/report/ copy its files and hard-link only its slides
and models, which no job writes or re-dates (checked after each step). A copy is first brought
up to date with this checkout's code where that costs no preprocessing or training (a run of
an older commit lacks newer report files, or has predictions of older code). Each size N is
then a finished N-slide demo run, as `synth.n_slides: N` would leave it: slides demo_060 ..
are demo_000's file (hard links of one copy: the report reads no slide or per-slide output,
only their dates and Snakemake's records), each with demo_000's per-slide outputs, file dates
and metadata records under its own name (what Snakemake itself would record for that slide's
jobs), and its rows in the demo sheet, the QC tables and the feature manifest (dates kept).
`snakemake -n` must then find nothing to do with Snakemake's default rerun triggers, as after
a user's finished run: a checkpoint left to run would plan none of the jobs after it, and the
report would silently lose them (what an earlier version of this benchmark measured: see
docs/scale_runs.md). Timed: wall and CPU seconds and peak RSS of the `--report` process, the
HTML's size and the jobs it lists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from base64 import urlsafe_b64encode
from collections import Counter
from pathlib import Path

import bench_cli

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "benchmarks"
WORK = OUT / "report"
TEMPLATE = "demo_000"
SHEET = "results/demo/slides.tsv"
# what one slide adds: its file and the outputs of inspect, tissue, tile and features
SLIDE = "results/demo/slides/{s}.tiff"
PER_SLIDE = ("results/qc/{s}.json", "results/tissue/{s}.png", "results/coords/{s}.h5",
             "results/features/{s}.h5")  # fmt: skip
TABLES = ("results/qc/inspection.tsv", "results/qc/slides.tsv", "results/qc/usable.tsv",
          "results/qc/features.tsv", SHEET)  # fmt: skip
LINKED = ("results/demo/slides/", "results/models/")  # read by jobs, never written
# rules whose jobs the update may run (no preprocessing, no training)
CHEAP = {"predict", "provenance", "figure_attention", "figure_throughput", "qc_exclusions",
         "tables", "all"}  # fmt: skip
PER_SLIDE_RULES = ("inspect", "tissue", "tile", "features")


def record_path(work: Path, path: str) -> Path:
    """Snakemake's metadata record of an output (snakemake/persistence: URL-safe base64)."""
    return work / ".snakemake" / "metadata" / urlsafe_b64encode(path.encode()).decode()


def keep_date(path: Path, like: Path) -> None:
    """``path`` gets the file dates of ``like`` (Snakemake's mtime trigger sees no change)."""
    st = like.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def copy_run(run: Path, work: Path) -> None:
    """results/ copied (slides and models hard-linked), the metadata records copied."""

    def copy(src: str, dst: str) -> None:
        linked = os.path.relpath(src, run).startswith(LINKED)
        (os.link if linked else shutil.copy2)(src, dst)

    shutil.copytree(run / "results", work / "results", copy_function=copy,
                    ignore=shutil.ignore_patterns("benchmarks"))  # fmt: skip
    shutil.copytree(run / ".snakemake" / "metadata", work / ".snakemake" / "metadata")


def linked_dates(work: Path) -> dict[str, int]:
    """mtime of every hard-linked file: a change would be a change in the run copied."""
    found = {}
    for folder in LINKED:
        for path in (work / folder).rglob("*"):
            if path.is_file():
                found[str(path.relative_to(work))] = path.stat().st_mtime_ns
    return found


def check_dates(work: Path, dates: dict[str, int]) -> None:
    """Stop where a hard-linked file was re-dated (the run copied would have changed)."""
    redated = [path for path, ns in dates.items() if (work / path).stat().st_mtime_ns != ns]
    if redated:
        raise RuntimeError(f"re-dated in the run copied, a hard-linked file: {redated[:5]}")


def grow_input_records(work: Path, ids: list[str]) -> None:
    """The records of the jobs over all slides (qc_inspect, qc_slides) list the new slides'
    files among their inputs, as after a run of the larger cohort (else Snakemake's input
    trigger plans the checkpoint again)."""
    templates = {pattern.format(s=TEMPLATE): pattern for pattern in PER_SLIDE}
    for path in (work / ".snakemake" / "metadata").iterdir():
        record = json.loads(path.read_text())
        inputs = record.get("input") or []
        if record.get("rule") in PER_SLIDE_RULES or not set(inputs) & set(templates):
            continue
        extra = [templates[f].format(s=s) for f in inputs if f in templates for s in ids]
        record["input"] = sorted(inputs + extra)
        path.write_text(json.dumps(record))


def add_slides(work: Path, n: int) -> list[str]:
    """Slides demo_NNN up to ``n``, each as demo_000 under its own name; their ids."""
    res_sheet = work / SHEET
    rows = res_sheet.read_text().splitlines()
    ids = [f"demo_{i:03d}" for i in range(len(rows) - 1, n)]
    for pattern in (SLIDE, *PER_SLIDE):
        template = work / pattern.format(s=TEMPLATE)
        first = None
        for s in ids:
            target = work / pattern.format(s=s)
            if pattern == PER_SLIDE[0]:  # the inspection names its slide
                target.write_text(template.read_text().replace(TEMPLATE, s))
                keep_date(target, template)
            elif first is None:
                first = target
                shutil.copy2(template, target)  # not a link to the run's own file
            else:
                os.link(first, target)
        if pattern == SLIDE:
            continue
        record = json.loads(record_path(work, pattern.format(s=TEMPLATE)).read_text())
        for i, s in enumerate(ids):
            mine = json.loads(json.dumps(record).replace(TEMPLATE, s))
            mine["job_hash"] = record["job_hash"] * 1000 + i + 1  # a job of its own
            record_path(work, pattern.format(s=s)).write_text(json.dumps(mine))
    grow_input_records(work, ids)
    for table in TABLES:
        path = work / table
        before = path.stat()
        lines = path.read_text().splitlines()
        row = next(line for line in lines[1:] if line.split("\t")[0] == TEMPLATE)
        path.write_text("\n".join(lines + [row.replace(TEMPLATE, s) for s in ids]) + "\n")
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    return ids


def snakemake(work: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    """Snakemake on the demo config in ``work``; its own wall, CPU and peak RSS."""
    cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(work), "--configfile", str(REPO / "config" / "config.yaml"),
           *args]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "MPLBACKEND": "Agg"}
    log = work / "snakemake.out"
    with log.open("w") as handle:
        tic = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=handle, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)  # this process's usage alone
        wall = time.perf_counter() - tic
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake {' '.join(args)} failed:\n{text[-3000:]}")
    cpu = usage.ru_utime + usage.ru_stime
    cost = {"wall_seconds": round(wall, 2), "cpu_seconds": round(cpu, 2),
            "peak_rss_mb": round(usage.ru_maxrss / 1024)}  # fmt: skip
    return subprocess.CompletedProcess(cmd, 0, text, ""), cost


def planned(output: str) -> dict[str, int]:
    """Jobs per rule of a dry run's job stats; empty when there is nothing to be done."""
    jobs: dict[str, int] = {}
    stats = output.split("Job stats:")[-1] if "Job stats:" in output else ""
    for line in stats.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].isdigit() and parts[0] != "total":
            jobs[parts[0]] = int(parts[1])
    return jobs


def bring_up_to_date(work: Path) -> dict[str, int]:
    """Run what this checkout's code would redo in the copy, where that is cheap."""
    proc, _ = snakemake(work, "-n", "--quiet", "rules")
    jobs = planned(proc.stdout)
    costly = sorted(set(jobs) - CHEAP)
    if costly:
        raise RuntimeError(f"the run is not finished for this code: it would run {costly}")
    if jobs:
        snakemake(work, "--cores", "1", "--quiet", "rules")
    return jobs


def jobs_in_report(html: str) -> Counter:
    """Jobs per rule in the report's timeline (one entry per job Snakemake found a record of)."""
    start = html.find("var timeline_spec = ")
    line = html[start : html.find("\n", start)] if start >= 0 else ""
    return Counter(re.findall(r'"rule":\s*"([^"]+)"', line))


def measure(base: Path, n: int) -> dict:
    """One size: the work copy, its check, the timed report."""
    work = WORK / f"run_{n}"
    shutil.rmtree(work, ignore_errors=True)
    copy_run(base, work)
    dates = linked_dates(work)
    added = add_slides(work, n)
    proc, _ = snakemake(work, "-n", "--quiet", "rules")
    if planned(proc.stdout) or "Nothing to be done" not in proc.stdout:
        raise RuntimeError(f"{n} slides: not a finished run:\n{proc.stdout[-3000:]}")
    target = work / "report.html"
    _, cost = snakemake(work, "--report", str(target))
    check_dates(work, dates)
    jobs = jobs_in_report(target.read_text())
    per_slide = {rule: jobs[rule] for rule in PER_SLIDE_RULES}
    if any(count != n for count in per_slide.values()):
        raise RuntimeError(f"{n} slides: the report lost per-slide jobs: {per_slide}")
    shutil.rmtree(work / "results")  # keep report.html, the records and Snakemake's output
    return {"slides": n, "added": len(added), **cost,
            "report_mb": round(target.stat().st_size / 2**20, 2),
            "jobs_in_report": sum(jobs.values()),
            "per_slide_jobs": sum(per_slide.values())}  # fmt: skip


def write(result: dict) -> str:
    rows = result["rows"]
    lines = [
        "# Report scale: `snakemake --report` vs slides",
        "",
        f"A finished demo run grown to N slides; {result['cpu_count']} cores, load average "
        f"{result['loadavg']} (shared machine: wall times vary, CPU seconds less so).",
        "",
        "| slides | jobs in the report (per slide) | wall s | CPU s | peak RSS MB | report MiB |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['slides']} | {r['jobs_in_report']} ({r['per_slide_jobs']}) "
            f"| {r['wall_seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['peak_rss_mb']} "
            f"| {r['report_mb']:.2f} |"
        )
    if len(rows) > 1:
        a, b = rows[0], rows[-1]
        grown = (b["report_mb"] - a["report_mb"]) * 2**20
        per_job = grown / (b["jobs_in_report"] - a["jobs_in_report"])
        lines += ["", f"{per_job:.0f} bytes of HTML per job ({a['slides']}-{b['slides']} slides)."]
    lines += ["", f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, required=True, help="a finished demo run's folder")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 400, 1000])
    args = parser.parse_args(argv)
    if max(args.sizes) > 1000:
        parser.error("at most 1000 slides (names demo_000 .. demo_999)")
    bench_cli.input_folder(args.run, "run folder")
    bench_cli.input_folder(args.run / "results", "run's results folder")
    bench_cli.input_folder(args.run / ".snakemake" / "metadata", "run's Snakemake records")
    bench_cli.input_file(args.run / SHEET, "run's demo sheet")
    bench_cli.output_folder(OUT)
    bench_cli.output_folder(WORK)
    base = WORK / "base"
    shutil.rmtree(base, ignore_errors=True)
    copy_run(args.run.resolve(), base)
    dates = linked_dates(base)
    updated = bring_up_to_date(base)
    check_dates(base, dates)
    rows = []
    for n in sorted(args.sizes):
        rows.append(measure(base, n))
        print(json.dumps(rows[-1]), file=sys.stderr)
    shutil.rmtree(base)
    result = {
        "command": "python benchmarks/report_scale.py " + " ".join(argv or sys.argv[1:]),
        "cpu_count": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "updated_jobs": updated,
        "rows": rows,
    }
    bench_cli.write_text(OUT / "report_scale.json", json.dumps(result, indent=2) + "\n")
    text = write(result)
    bench_cli.write_text(OUT / "report_scale.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What a seed ensemble costs in `zoommil predict`: 1 vs N checkpoints on a real slide.

Tiny ZoomMIL checkpoints (as the tests make them: one model per seed, untrained, random-weight
encoder recipe) classify one slide with ``--checkpoint`` once, the N of them as one ensemble,
and the N one after another (what gluing separate runs together costs). Each run is a fresh
`zoommil predict` process under ``/usr/bin/time -v``: wall time and peak RSS; the patches
encoded come from its JSON.

Several slides (``--cohort-slides M``, default 6; 0 skips it): the ensemble over M links to
the slide into an ``--out-dir`` at ``--threads 1`` (one process) and ``--threads all`` (whole
slides over one process per core), back to back in each repeat, so that both see the same
load on a shared machine; the speed-up is the median of the per-repeat ratios. Peak RSS there
is also the largest sum over the process tree (sampled every 0.1 s from /proc), as the slide
processes each hold an encoder; the two runs' tables (less ``seconds``) must match. With
``--seeds 1`` this times one checkpoint the same way (the path the ensemble shares): run it
beside the ensemble's to tell what the machine's load does from what the ensemble does.

    python benchmarks/predict_ensemble.py [--slide ../shared/data/slides/CMU-1-Small-Region.svs]
        [--seeds 3] [--repeats 3] [--cohort-slides 6] [--skip-single] [--out results/benchmarks]

Writes results/benchmarks/predict_ensemble.{json,md} and predict_ensemble_cohort.{json,md}.
Times and memory vary by machine.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import bench_cli
import torch

from zoommil.models import build_model
from zoommil.training.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "benchmarks"
MAGS = [5.0, 10.0, 20.0]
PATCH = 64
K = 8


def make_checkpoint(path: Path, seed: int) -> Path:
    """A ZoomMIL checkpoint of a model initialised with ``seed`` (the seeds zoom into other
    regions) over a random-weight ResNet-50 recipe with the default tissue detector."""
    torch.manual_seed(seed)
    model = build_model("zoommil", in_dim=1024, n_classes=2, mags=MAGS, k=K).eval()
    config = {
        "method": "zoommil",
        "arch": "zoommil",
        "kwargs": {"k": K},
        "classes": ["normal", "tumour"],
        "mags": MAGS,
        "config_mags": MAGS,
        "in_dim": 1024,
        "seed": seed,
        "preprocessing": {"patch_size": PATCH, "weights": "random", "weights_seed": 0},
    }
    return save_checkpoint(path, model.state_dict(), config)


def timed_predict(slide: Path, checkpoints: list[Path], out: Path) -> dict:
    """One `zoommil predict` process: wall s, peak RSS MB (time -v), patches encoded."""
    done = time_v([str(slide), *checkpoint_args(checkpoints), "--json", str(out)], "1")
    record = json.loads(out.read_text())
    return {
        **usage(done.stderr),
        "patches_encoded": record["patches_encoded"],
        "patches_per_mag": record["patches_per_mag"],
        "printed": done.stdout.strip(),
    }


def checkpoint_args(checkpoints: list[Path]) -> list[str]:
    return [a for ckpt in checkpoints for a in ("--checkpoint", str(ckpt))]


def time_v(args: list[str], threads: str, tree: dict | None = None) -> subprocess.CompletedProcess:
    """``zoommil predict ARGS --threads T`` under ``/usr/bin/time -v``; with ``tree``, its
    process tree's largest summed RSS (MB) is sampled into ``tree["peak_mb"]``."""
    argv = ["/usr/bin/time", "-v", sys.executable, "-m", "zoommil", "predict", *args]
    argv += ["--threads", threads, "--no-progress"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    stop = threading.Event()
    sampler = None
    if tree is not None:
        sampler = threading.Thread(target=_sample_tree, args=(proc.pid, stop, tree), daemon=True)
        sampler.start()
    stdout, stderr = proc.communicate()
    stop.set()
    if sampler is not None:
        sampler.join()
    if proc.returncode:
        raise SystemExit(f"zoommil predict failed ({proc.returncode}):\n{stderr[-2000:]}")
    return subprocess.CompletedProcess(argv, proc.returncode, stdout, stderr)


def usage(stderr: str) -> dict:
    """Wall s, CPU s (user + sys) and the largest process's peak RSS MB from ``time -v``."""
    wall = re.search(r"Elapsed \(wall clock\) time.*: (?:(\d+):)?(\d+):([\d.]+)", stderr)
    hours, minutes, seconds = wall.groups()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr)
    cpu = sum(
        float(re.search(rf"{kind} time \(seconds\): ([\d.]+)", stderr).group(1))
        for kind in ("User", "System")
    )
    return {
        "wall_s": int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds),
        "peak_rss_mb": int(rss.group(1)) / 1024,
        "cpu_s": cpu,
    }


def _sample_tree(root: int, stop: threading.Event, into: dict) -> None:
    """The largest sum of VmRSS over ``root`` and its descendants, every 0.1 s (MB)."""
    into["peak_mb"] = 0.0
    while not stop.wait(0.1):
        parents = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    stat = Path(f"/proc/{entry}/stat").read_text()
                except OSError:
                    continue
                parents[int(entry)] = int(stat.rsplit(")", 1)[1].split()[1])
        tree, grew = {root}, True
        while grew:
            more = {pid for pid, parent in parents.items() if parent in tree} - tree
            tree |= more
            grew = bool(more)
        total = 0
        for pid in tree:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            found = re.search(r"VmRSS:\s+(\d+) kB", status)
            total += int(found.group(1)) if found else 0
        into["peak_mb"] = max(into["peak_mb"], total / 1024)


def timed_cohort(slides: list[Path], checkpoints: list[Path], out: Path, threads: str) -> dict:
    """One `zoommil predict` of the ensemble over ``slides`` into ``out``: wall, CPU, the
    largest process's and the process tree's peak RSS, how it spread, its table's rows."""
    tree: dict = {}
    args = [*map(str, slides), *checkpoint_args(checkpoints), "--out-dir", str(out)]
    load = os.getloadavg()[0]
    done = time_v(args, threads, tree)
    spread = re.search(r"by (?:\d+ checkpoints, )?(\d+) process\(es\) x (\d+) thread", done.stdout)
    rows = (out / "predictions.tsv").read_text().splitlines()
    seconds = rows[0].split("\t").index("seconds")
    return {
        **usage(done.stderr),
        "tree_peak_rss_mb": tree["peak_mb"],
        "processes": int(spread.group(1)),
        "threads_per_process": int(spread.group(2)),
        "load_1min_before": load,
        "load_1min_after": os.getloadavg()[0],
        "rows": [[c for i, c in enumerate(r.split("\t")) if i != seconds] for r in rows],
    }


def cohort_case(slide: Path, ckpts: list[Path], n: int, repeats: int, root: Path) -> dict:
    """The ensemble over ``n`` links to ``slide`` at --threads 1 and all, back to back."""
    folder = root / "cohort"
    folder.mkdir()
    slides = []
    for i in range(n):
        slides.append(folder / f"slide_{i:02d}{slide.suffix}")
        slides[-1].symlink_to(slide.resolve())
    one, every = [], []
    for r in range(repeats):
        one.append(timed_cohort(slides, ckpts, root / f"one{r}", "1"))
        every.append(timed_cohort(slides, ckpts, root / f"all{r}", "all"))
    same = all(run["rows"] == one[0]["rows"] for run in one + every)
    keys = ("wall_s", "cpu_s", "peak_rss_mb", "tree_peak_rss_mb")
    ratios = [a["wall_s"] / b["wall_s"] for a, b in zip(one, every, strict=True)]
    return {
        "slide": slide.name,
        "slides": n,
        "checkpoints": len(ckpts),
        "recipe": {"mags": MAGS, "patch_size": PATCH, "k": K, "weights": "random"},
        "machine": {"cpus": os.cpu_count()},
        "threads_1": {k: summary(one, k) for k in keys} | _spread(one[0]),
        "threads_all": {k: summary(every, k) for k in keys} | _spread(every[0]),
        "speedup": {
            "per_repeat": ratios,
            "median": statistics.median(ratios),
            "min": min(ratios),
            "max": max(ratios),
        },
        "slides_per_hour": {
            "threads_1": 3600 * n / statistics.median(r["wall_s"] for r in one),
            "threads_all": 3600 * n / statistics.median(r["wall_s"] for r in every),
        },
        # in run order: --threads 1, all, 1, all, ...
        "load_1min": [
            round(r["load_1min_before"], 2) for p in zip(one, every, strict=True) for r in p
        ],
        "same_rows": same,
    }


def _spread(run: dict) -> dict:
    return {"processes": run["processes"], "threads_per_process": run["threads_per_process"]}


def cohort_markdown(result: dict, repeats: int) -> list[str]:
    n, seeds = result["slides"], result["checkpoints"]
    lines = [
        f"# zoommil predict: {seeds}-checkpoint ensemble over {n} slides ({result['slide']})"
        if seeds > 1
        else f"# zoommil predict: 1 checkpoint over {n} slides ({result['slide']})",
        "",
        "| --threads | processes x threads | wall s | slides/h | CPU s | peak RSS MB "
        "(largest process) | peak RSS MB (all processes) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, key in (("1", "threads_1"), ("all", "threads_all")):
        row = result[key]
        w, c, m, t = (row[k] for k in ("wall_s", "cpu_s", "peak_rss_mb", "tree_peak_rss_mb"))
        lines.append(
            f"| {name} | {row['processes']} x {row['threads_per_process']} | "
            f"{w['median']:.1f} [{w['min']:.1f}-{w['max']:.1f}] | "
            f"{result['slides_per_hour'][key]:.0f} | "
            f"{c['median']:.1f} [{c['min']:.1f}-{c['max']:.1f}] | "
            f"{m['median']:.0f} [{m['min']:.0f}-{m['max']:.0f}] | "
            f"{t['median']:.0f} [{t['min']:.0f}-{t['max']:.0f}] |"
        )
    s = result["speedup"]
    lines += [
        "",
        f"Speed-up of --threads all over --threads 1 (wall, per back-to-back pair): median "
        f"{s['median']:.2f}x [{s['min']:.2f}-{s['max']:.2f}] over {repeats} pairs. Median "
        f"[min-max] of {repeats} runs, each a fresh process, {os.cpu_count()} CPUs; 1-min load "
        f"average before each run: {result['load_1min']}. Same rows at both settings: "
        f"{result['same_rows']}.",
    ]
    return lines


def summary(runs: list[dict], key: str) -> dict:
    values = [r[key] for r in runs]
    return {
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = REPO.parent / "shared" / "data" / "slides" / "CMU-1-Small-Region.svs"
    parser.add_argument("--slide", type=Path, default=default)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cohort-slides", type=int, default=6)
    parser.add_argument("--skip-single", action="store_true", help="only the several-slide case")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    bench_cli.input_file(args.slide, "slide")
    bench_cli.output_folder(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        ckpts = [make_checkpoint(root / f"seed{s}.pt", s) for s in range(args.seeds)]
        if args.cohort_slides > 0:
            cohort = cohort_case(args.slide, ckpts, args.cohort_slides, args.repeats, root)
            text = json.dumps(cohort, indent=2) + "\n"
            bench_cli.write_text(args.out / "predict_ensemble_cohort.json", text)
            lines = cohort_markdown(cohort, args.repeats)
            bench_cli.write_text(args.out / "predict_ensemble_cohort.md", "\n".join(lines) + "\n")
            print("\n".join(lines))
        if args.skip_single:
            return 0
        one, ensemble, separate = [], [], []
        for r in range(args.repeats):
            one.append(timed_predict(args.slide, ckpts[:1], root / f"one{r}.json"))
            ensemble.append(timed_predict(args.slide, ckpts, root / f"ens{r}.json"))
            runs = [timed_predict(args.slide, [c], root / f"sep{r}_{i}.json")
                    for i, c in enumerate(ckpts)]  # fmt: skip
            separate.append(
                {
                    "wall_s": sum(x["wall_s"] for x in runs),
                    "peak_rss_mb": max(x["peak_rss_mb"] for x in runs),
                    "cpu_s": sum(x["cpu_s"] for x in runs),
                    "patches_encoded": sum(x["patches_encoded"] for x in runs),
                }
            )
    result = {
        "slide": args.slide.name,
        "checkpoints": args.seeds,
        "recipe": {"mags": MAGS, "patch_size": PATCH, "k": K, "weights": "random"},
        "machine": {"cpus": os.cpu_count(), "threads": 1},
        "one_checkpoint": {k: summary(one, k) for k in ("wall_s", "cpu_s", "peak_rss_mb")}
        | {"patches_per_mag": one[0]["patches_per_mag"]},
        "ensemble": {k: summary(ensemble, k) for k in ("wall_s", "cpu_s", "peak_rss_mb")}
        | {"patches_per_mag": ensemble[0]["patches_per_mag"], "printed": ensemble[0]["printed"]},
        "separate_runs": {k: summary(separate, k) for k in ("wall_s", "cpu_s", "peak_rss_mb")}
        | {"patches_encoded": separate[0]["patches_encoded"]},
        "patches_encoded": {
            "one": one[0]["patches_encoded"],
            "ensemble": ensemble[0]["patches_encoded"],
            "separate": separate[0]["patches_encoded"],
        },
    }
    bench_cli.write_text(args.out / "predict_ensemble.json", json.dumps(result, indent=2) + "\n")
    lines = [
        f"# zoommil predict: 1 vs {args.seeds} checkpoints ({args.slide.name})",
        "",
        "| run | wall s | CPU s (user+sys) | peak RSS MB | patches encoded |",
        "|---|---|---|---|---|",
    ]
    for name, key in (("1 checkpoint", "one_checkpoint"), (f"{args.seeds} as ensemble",
                      "ensemble"), (f"{args.seeds} separate runs", "separate_runs")):  # fmt: skip
        w, c, m = (result[key][k] for k in ("wall_s", "cpu_s", "peak_rss_mb"))
        short = {"one_checkpoint": "one", "ensemble": "ensemble", "separate_runs": "separate"}
        lines.append(
            f"| {name} | {w['median']:.1f} [{w['min']:.1f}-{w['max']:.1f}] | "
            f"{c['median']:.1f} [{c['min']:.1f}-{c['max']:.1f}] | "
            f"{m['median']:.0f} [{m['min']:.0f}-{m['max']:.0f}] | "
            f"{result['patches_encoded'][short[key]]} |"
        )
    lines += [
        "",
        f"Median [min-max] of {args.repeats} repeats, each a fresh process, 1 thread, "
        f"{os.cpu_count()} CPUs; varies by machine. Patches per magnification: 1 checkpoint "
        f"{result['one_checkpoint']['patches_per_mag']}, ensemble "
        f"{result['ensemble']['patches_per_mag']}.",
    ]
    bench_cli.write_text(args.out / "predict_ensemble.md", "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

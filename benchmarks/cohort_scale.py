"""Benchmark: how Snakemake's planning time grows with the cohort (100, 400, 1000 slides).

    nice python benchmarks/cohort_scale.py     # writes results/benchmarks/cohort_scale.{json,md}

For each size, a sheet of N distinct small generated pyramids (CAMELYON16 config) and two dry
runs (`snakemake -n`): before the QC checkpoints (nothing made yet: per-slide inspection is
planned) and after them (every per-slide output and the QC tables present, all slides usable:
training, evaluation and reports are planned). Both should grow linearly with N. Timed as
wall and CPU seconds of the Snakemake process; the machine is shared, so compare the growth.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import bench_cli
import numpy as np

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "results" / "benchmarks"
WORK = OUT / "cohort"
CLASSES = ("normal", "tumor")


def make_slides(n: int, folder: Path) -> list[Path]:
    """n distinct 1024 x 768 pyramids (different noise per slide), reused across sizes."""
    from zoommil.synth.pyramid import write_pyramidal_tiff

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"slide_{i:04d}.tiff"
        if not path.exists():
            rng = np.random.default_rng(i)
            image = np.full((768, 1024, 3), 240, np.uint8)
            image[200:600, 200:800] = rng.integers(80, 200, size=(400, 600, 3), dtype=np.uint8)
            write_pyramidal_tiff(path, image, mpp=0.5, min_levels=2)
        paths.append(path)
    return paths


def split_of(i: int) -> str:
    """Slide i's split: pairs of slides (one per class, `CLASSES[i % 2]`) take the splits in
    turn, so every class has train, val and test slides (`i % 4` put only one class in val
    and the other in test, and the workflow warned about the sheet it timed)."""
    return ("train", "train", "val", "test")[(i // 2) % 4]


def write_sheet(path: Path, slides: list[Path]) -> None:
    rows = [f"{p.stem}\t{p}\t{CLASSES[i % 2]}\t{split_of(i)}\t0.5" for i, p in enumerate(slides)]
    path.write_text("slide_id\tpath\tlabel\tsplit\tmpp\n" + "\n".join(rows) + "\n")


def fake_preprocessing(work: Path, slides: list[Path]) -> None:
    """Every per-slide output and QC table, as if preprocessing had run (all slides ok)."""
    res = work / "results"
    ids = [p.stem for p in slides]
    for sub, ext in (("qc", "json"), ("tissue", "png"), ("coords", "h5"), ("features", "h5")):
        (res / sub).mkdir(parents=True, exist_ok=True)
        for s in ids:
            (res / sub / f"{s}.{ext}").touch()
        time.sleep(0.01)  # later stages strictly newer
    head = "slide_id\tpath\tlabel\tsplit\tstatus\treason\tmpp\tmpp_source\n"
    table = head + "".join(
        f"{p.stem}\t{p}\t{CLASSES[i % 2]}\t{split_of(i)}\tok\t\t0.5\topenslide.mpp-x\n"
        for i, p in enumerate(slides)
    )
    (res / "qc" / "inspection.tsv").write_text(table)
    time.sleep(0.01)
    (res / "qc" / "slides.tsv").write_text(table)
    usable = "slide_id\tpath\tlabel\tsplit\tmpp\n" + "".join(
        f"{p.stem}\t{p}\t{CLASSES[i % 2]}\t{split_of(i)}\t0.5\n" for i, p in enumerate(slides)
    )
    (res / "qc" / "usable.tsv").write_text(usable)
    (res / "qc" / "features.tsv").write_text(
        "slide_id\tpath\tbytes\tmtime_ns\n"
        + "".join(f"{s}\tresults/features/{s}.h5\t0\t0\n" for s in ids)
    )


def dry_run(work: Path, config: Path, sheet: Path) -> dict[str, float]:
    cmd = [
        sys.executable, "-m", "snakemake", "-n", "--cores", "2", "--quiet", "rules",
        "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
        "--configfile", str(config), "--config", f"sheet={sheet}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    tic = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    wall = time.perf_counter() - tic
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise RuntimeError(f"snakemake -n failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    jobs = 0
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == "total" and parts[1].isdigit():
            jobs = int(parts[1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_seconds": wall, "cpu_seconds": cpu, "jobs": jobs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 400, 1000])
    parser.add_argument("--config", type=Path, default=REPO / "config" / "camelyon16.yaml")
    args = parser.parse_args(argv)
    if min(args.sizes) < 8:
        parser.error("--sizes: at least 8 slides (each class needs train, val and test slides)")
    args.config = bench_cli.input_file(args.config, "config").resolve()
    bench_cli.output_folder(OUT)
    bench_cli.output_folder(WORK)
    slides = make_slides(max(args.sizes), WORK / "slides")
    rows = []
    for n in args.sizes:
        work = WORK / f"run_{n}"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        sheet = work / "slides.tsv"
        write_sheet(sheet, slides[:n])
        before = dry_run(work, args.config, sheet)
        fake_preprocessing(work, slides[:n])
        after = dry_run(work, args.config, sheet)
        rows.append({"slides": n, "before_qc": before, "after_qc": after})
        print(json.dumps(rows[-1]), file=sys.stderr)
    result = {
        "command": "python benchmarks/cohort_scale.py " + " ".join(argv or sys.argv[1:]),
        "cpu_count": os.cpu_count(),
        "loadavg": [round(x, 2) for x in os.getloadavg()],
        "config": os.path.relpath(args.config, REPO),  # a --config outside REPO too
        "rows": rows,
    }
    bench_cli.write_text(OUT / "cohort_scale.json", json.dumps(result, indent=2) + "\n")
    lines = [
        "# Cohort scale: `snakemake -n` time vs slides",
        "",
        f"{result['config']}; {result['cpu_count']} cores, load average {result['loadavg']} "
        "(shared machine: wall times vary, CPU seconds less so).",
        "",
        "| slides | before QC: jobs | wall s | CPU s | after QC: jobs | wall s | CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b, a = r["before_qc"], r["after_qc"]
        lines.append(
            f"| {r['slides']} | {b['jobs']} | {b['wall_seconds']:.1f} | {b['cpu_seconds']:.1f} "
            f"| {a['jobs']} | {a['wall_seconds']:.1f} | {a['cpu_seconds']:.1f} |"
        )
    lines += ["", f"Command: `{result['command']}`", ""]
    bench_cli.write_text(OUT / "cohort_scale.md", "\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

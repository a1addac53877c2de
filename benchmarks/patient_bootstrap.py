"""Benchmark: 95% CIs over slides vs over patients on cohorts with several slides per patient.

    nice python benchmarks/patient_bootstrap.py [--cohorts 20] [--patients 30]

Made-up cohorts: each patient has 1-4 test slides and one label; two methods, 3 seeds each,
whose chance of being right on a slide has a patient effect shared by both methods and one of
each method's own (the same tissue is hard for a model on every slide of it). Prints the mean
width of the accuracy CI (`stats.method_ci`) and of the paired difference's CI
(`stats.compare`) resampling slides and resampling patients (`stats.with_patients`), and their
ratio: how much too narrow the slide bootstrap is when a patient's slides are correlated.
"""

from __future__ import annotations

import argparse

import numpy as np

from zoommil.reporting import stats


def cohort(
    rng: np.random.Generator, n_patients: int
) -> tuple[dict[str, str], stats.Predictions, stats.Predictions]:
    """(slide -> patient, method A, method B) of one made-up binary cohort."""
    sizes = rng.integers(1, 5, n_patients)
    patient = np.repeat(np.arange(n_patients), sizes)
    labels = rng.integers(0, 2, n_patients)[patient]
    shared = rng.normal(0, 1.5, n_patients)[patient]
    slides = tuple(f"s{i:03d}" for i in range(len(patient)))

    def method(skill: float) -> stats.Predictions:
        own = rng.normal(0, 1.0, n_patients)[patient]
        noise = rng.normal(0, 0.3, (3, len(patient)))
        right = rng.random((3, len(patient))) < 1 / (1 + np.exp(-(skill + shared + own + noise)))
        return stats.Predictions(slides, (0, 1, 2), labels, np.where(right, labels, 1 - labels), 2)

    return {s: f"P{p}" for s, p in zip(slides, patient, strict=True)}, method(1.5), method(0.8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohorts", type=int, default=20)
    parser.add_argument("--patients", type=int, default=30)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    widths: dict[str, list[float]] = {k: [] for k in ("ci", "ci_p", "diff", "diff_p")}
    n_slides = []
    for _ in range(args.cohorts):
        patients, a, b = cohort(rng, args.patients)
        a_p, b_p = stats.with_patients(a, patients), stats.with_patients(b, patients)
        n_slides.append(len(a.slides))
        for key, x, y in (("ci", a, b), ("ci_p", a_p, b_p)):
            interval = stats.method_ci(x, "accuracy", n_resamples=2000)
            widths[key].append(interval.high - interval.low)
            diff = stats.compare(x, y, "accuracy", n_resamples=2000)
            widths[key.replace("ci", "diff")].append(diff.high - diff.low)
    mean = {k: 100 * float(np.mean(v)) for k, v in widths.items()}
    print(f"{args.cohorts} cohorts of {args.patients} patients, {np.mean(n_slides):.0f} slides")
    for name, key in (("accuracy", "ci"), ("paired difference", "diff")):
        ratio = np.mean(np.array(widths[f"{key}_p"]) / np.array(widths[key]))
        print(
            f"{name}: CI width {mean[key]:.1f} pp by slide, {mean[f'{key}_p']:.1f} pp by "
            f"patient ({ratio:.2f}x)"
        )


if __name__ == "__main__":
    main()

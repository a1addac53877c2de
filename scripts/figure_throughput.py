"""Snakemake glue: metrics + timing JSONs -> Figure 3 (throughput vs weighted F1)."""

import sys

from zoommil.reporting import figures

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = open(sm.log[0], "w")
figures.throughput_figure(
    evals=sm.input.evals,
    timings={"cpu1": sm.input.cpu1, "cpu": sm.input.cpu, "gpu": sm.input.gpu},
    methods=sm.params.methods,
    outputs=[sm.output.png, sm.output.pdf],
    dataset=sm.params.dataset,
    weights=sm.params.weights,
    encoder=sm.params.encoder,
)

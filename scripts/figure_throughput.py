"""Snakemake glue: metrics + timing JSONs -> Figure 3 (throughput vs weighted F1)."""

import sys

from zoommil.reporting import figure_throughput

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = open(sm.log[0], "w")
figure_throughput.throughput_figure(
    evals=sm.input.evals,
    timings={device: sm.input[device] for device in sm.params.devices},
    methods=sm.params.methods,
    outputs=[sm.output.png, sm.output.pdf],
    source=sm.output.csv,
    dataset=sm.params.dataset,
    weights=sm.params.weights,
    encoder=sm.params.encoder,
    sheet=sm.input.sheet,
)

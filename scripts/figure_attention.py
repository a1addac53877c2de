"""Snakemake glue: `zoommil predict` JSONs + slides -> Figure 4 (attention maps)."""

import sys

from zoommil.reporting import figure_attention

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = open(sm.log[0], "w")
figure_attention.attention_figure(
    predictions=sm.input.predictions,
    sheet=sm.input.usable,
    outputs=[sm.output.png, sm.output.pdf],
    source=sm.output.csv,
    method=sm.params.method,
    dataset=sm.params.dataset,
    weights=sm.params.weights,
    encoder=sm.params.encoder,
    wanted=sm.params.n_slides,
)

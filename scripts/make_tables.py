"""Snakemake glue: metrics/FLOPs/timing JSONs -> Tables 1-4 (CSV, Markdown, LaTeX)."""

import sys

from zoommil.reporting import tables

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = open(sm.log[0], "w")
tables.make_tables(
    qc_table=sm.input.qc,
    exclusions_table=sm.input.exclusions,
    evals=sm.input.evals,
    flops=sm.input.flops,
    timings={device: sm.input[device] for device in sm.params.devices},
    outputs=dict(sm.output.items()),
    dataset=sm.params.dataset,
    weights=sm.params.weights,
    mags=sm.params.mags,
    methods=sm.params.methods,
    ablations=sm.params.ablations,
    reference=sm.params.reference,
    encoder=sm.params.encoder,
    sheet=sm.input.sheet,
    val_reports=sm.input.val_reports,
    checkpoints=sm.input.checkpoints,
    subgroup_columns=sm.params.subgroups,
)

"""Snakemake glue: QC table + the late stages' records (Figure 4's predictions, timings) ->
results/qc/exclusions.tsv and the page the HTML report shows."""

import sys

from zoommil.workflow import exclusions

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = open(sm.log[0], "w")
table = exclusions.write_exclusions(
    qc_table=sm.input.qc,
    predictions=sm.input.predictions,
    timings=sm.input.timings,
    outputs={"table": sm.output.table, "html": sm.output.html},
    dataset=sm.params.dataset,
)
print(f"{len(table)} exclusions", file=sys.stderr)

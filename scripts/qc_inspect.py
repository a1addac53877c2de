"""Snakemake glue: inspection status JSONs -> results/qc/inspection.tsv."""

import sys

from zoommil.io import sheet
from zoommil.workflow import qc

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = open(sm.log[0], "w")
frame = sheet.load_sheet(sm.input.sheet, sm.params.classes)
with qc.stop_on_error("qc_inspect"):  # one slide under two names: stop before any training
    table = qc.inspection_table(frame, sm.input.status)
qc.write_tsv(table, sm.output.table)
print(qc.exclusion_summary(table), "at inspection", file=sys.stderr)
notes = qc.mpp_notes(table)
if notes:
    qc.tell(f"qc_inspect: warning: {notes}")

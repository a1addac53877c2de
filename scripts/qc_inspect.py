"""Snakemake glue: inspection status JSONs -> results/qc/inspection.tsv."""

import sys

from zoommil.errors import ZoomMILError
from zoommil.io import sheet
from zoommil.workflow import qc

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = open(sm.log[0], "w")
frame = sheet.load_sheet(sm.input.sheet, sm.params.classes)
try:
    table = qc.inspection_table(frame, sm.input.status)
except ZoomMILError as error:  # one slide under two names: stop before any training
    print(f"qc_inspect: error: {error}", file=sys.stderr)
    print(f"qc_inspect: error: {error}", file=sys.__stderr__)
    sys.exit(1)
qc.write_tsv(table, sm.output.table)
print(qc.exclusion_summary(table), "at inspection", file=sys.stderr)

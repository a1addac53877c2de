"""Snakemake glue: inspection table + feature files -> results/qc/slides.tsv, usable.tsv and
features.tsv (the usable feature files with size and mtime: what training depends on)."""

import sys
from pathlib import Path

from zoommil.io import sheet
from zoommil.workflow import qc

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = open(sm.log[0], "w")
frame = sheet.load_sheet(sm.input.sheet, sm.params.classes)
inspection = qc.read_tsv(sm.input.inspection)
features = {Path(p).stem: p for p in sm.input.features}
with qc.stop_on_error("qc_slides"):  # a file system without locks: no slide is to blame
    table = qc.slides_table(inspection, features, sm.params.no_tissue, sm.params.mags)
qc.write_tsv(table, sm.output.table)
qc.write_tsv(qc.usable_sheet(frame, table, Path(sm.output.usable).parent), sm.output.usable)
qc.write_tsv(qc.features_manifest(table, features), sm.output.manifest)
summary = qc.exclusion_summary(table)
if (table["status"] != "ok").any():  # on the terminal too: a dropped slide is news
    qc.tell(f"qc_slides: {summary}")
else:
    print(summary, file=sys.stderr)
with qc.stop_on_error("qc_slides"):  # a split emptied by QC: stop before any training
    qc.check_usable_splits_keeping(frame, table, sm.output.table)
for warning in qc.classes_lost(frame, table):  # after: a stop makes them noise
    qc.tell(f"qc_slides: warning: {warning}")

"""Snakemake glue: inspection table + feature files -> results/qc/slides.tsv, usable.tsv and
features.tsv (the usable feature files with size and mtime: what training depends on)."""

import sys
from pathlib import Path

from zoommil.errors import ZoomMILError
from zoommil.io import sheet
from zoommil.workflow import qc

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = open(sm.log[0], "w")
frame = sheet.load_sheet(sm.input.sheet, sm.params.classes)
inspection = qc.read_tsv(sm.input.inspection)
features = {Path(p).stem: p for p in sm.input.features}
table = qc.slides_table(inspection, features, sm.params.no_tissue, sm.params.mags)
qc.write_tsv(table, sm.output.table)
qc.write_tsv(qc.usable_sheet(frame, table), sm.output.usable)
qc.write_tsv(qc.features_manifest(table, features), sm.output.manifest)
print(qc.exclusion_summary(table), file=sys.stderr)
for warning in qc.classes_lost(frame, table):
    print(f"qc_slides: warning: {warning}", file=sys.stderr)
    print(f"qc_slides: warning: {warning}", file=sys.__stderr__)
# Snakemake deletes a failed job's outputs: on failure the whole table is kept under another
# name (and a stale one goes once QC passes)
kept = Path(sm.output.table).with_name("slides.failed.tsv")
kept.unlink(missing_ok=True)
try:
    qc.check_usable_splits(frame, table)
except ZoomMILError as error:  # a split emptied by QC: stop before any training
    qc.write_tsv(table, kept)
    message = f"qc_slides: error: {error}; every slide and its reason: {kept}"
    print(message, file=sys.stderr)
    print(message, file=sys.__stderr__)
    sys.exit(1)

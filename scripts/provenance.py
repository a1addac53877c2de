"""Snakemake glue: the resolved config + this job's environment -> results/provenance.json."""

import sys

from zoommil.workflow import provenance

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = open(sm.log[0], "w")
record = provenance.write_provenance(sm.output.record, sm.params.config)
print(provenance.log_line(record, sm.output.record), file=sys.stderr)

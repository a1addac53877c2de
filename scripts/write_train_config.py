"""Snakemake glue: the per-method train config (params) -> YAML file."""

from zoommil.workflow.trainconfig import write_train_config

sm = snakemake  # noqa: F821 (injected by Snakemake)
write_train_config(sm.params.config, sm.output.config)
open(sm.log[0], "w").close()  # noqa: SIM115

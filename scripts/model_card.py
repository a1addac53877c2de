"""Snakemake glue: a method's checkpoints, metrics and tables -> results/model_cards/{method}.md."""

import sys

from zoommil.reporting import model_card

sm = snakemake  # noqa: F821 (injected by Snakemake)
sys.stderr = open(sm.log[0], "w")
model_card.write_card(
    sm.output.card,
    model_card.CardInputs(
        method=sm.wildcards.method,
        checkpoints=list(sm.input.checkpoints),
        metrics=list(sm.input.metrics),
        main_table=sm.input.main,
        ablation_table=sm.input.ablations,
        operating_points=sm.input.operating_points,
        qc_table=sm.input.qc,
        sheet=sm.input.sheet,
        dataset=sm.params.dataset,
        spec=sm.params.spec,
    ),
)

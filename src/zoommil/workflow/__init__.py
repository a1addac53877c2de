"""What the Snakemake rules and scripts call: sheet/QC aggregation, train configs, CLI flags.

The workflow (workflow/rules/*.smk, scripts/*.py) only calls into this package and into
`zoommil.reporting`, so every decision it makes is a tested library function.
"""

"""Workflow-side logic: slide sheets, QC aggregation, train configs, tables and figures.

The Snakemake workflow (workflow/rules/*.smk, scripts/*.py) only calls into this package so
that every decision it makes is a tested library function.
"""

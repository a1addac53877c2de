"""ZoomMIL benchmark: slides to features, MIL models, and the Snakemake workflow."""

__version__ = "0.1.0"

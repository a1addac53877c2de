"""Encoder precision names, importable without torch: the CLI builds its parser from them, and
every `zoommil` call (inspect, tissue, tile ...) would otherwise pay seconds to import torch."""

PRECISIONS = ("fp32", "bf16")
PRECISION_CHOICES = (*PRECISIONS, "auto")

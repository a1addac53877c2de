"""Bridges from other pipelines' files (QuPath, TRIDENT, CLAM) to zoommil's inputs.

Nothing in the commands or the workflow imports this package, so changing it reruns no
workflow step (README, "Partial reruns")."""

"""Inference from the slide file: zoom, read only the selected regions, classify."""

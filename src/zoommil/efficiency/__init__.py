"""Efficiency measurement: FLOPs (fvcore) and end-to-end throughput from the slide file."""

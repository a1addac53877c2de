"""Whole-slide images: opening and resolution (slide), tissue detection, the aligned lattice."""

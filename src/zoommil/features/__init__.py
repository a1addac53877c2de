"""Patch features: the encoder and extraction of aligned multi-magnification feature files.

Importing this package does not import torch (the CLI builds its parser from it).
"""

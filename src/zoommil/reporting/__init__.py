"""Reporting: result tables, figures and attention maps."""

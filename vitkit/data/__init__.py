"""Datasets. For now: the real data that ships inside an installed package, so jobs need no download."""

from .embedded import Split, load_digits

__all__ = ["Split", "load_digits"]

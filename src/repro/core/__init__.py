"""Shared building blocks. Each piece lives here once and is used by every paper that needs it.

Modules (import them explicitly, e.g. ``from repro.core import gp``):

- ``gp``: exact Gaussian-process posterior from kernel matrices (NumPy, float64).
"""

"""The number of adjacent slices a multi-slice network, transform or datalist works with."""

from __future__ import annotations

__all__ = ["check_slices"]


def check_slices(slices: int) -> int:
    """``slices`` when it is a positive odd integer (S adjacent slices around a centre one), else ``ValueError``."""
    if slices < 1 or slices % 2 == 0:
        raise ValueError(f"slices must be a positive odd integer, got {slices}.")
    return slices

"""Losses of StructKPN: gradient statistics (paper Eqs. 2-3) and the structure-aware loss (Eqs. 4-6)."""

from bundle.losses.gradient_statistics import DEFAULT_STRENGTH_SCALE, STRENGTH_CALIBRATION_WINDOW_HU, gradient_statistics
from bundle.losses.structure_aware import StructureAwareLoss

__all__ = ["DEFAULT_STRENGTH_SCALE", "STRENGTH_CALIBRATION_WINDOW_HU", "StructureAwareLoss", "gradient_statistics"]

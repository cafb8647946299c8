"""Losses of StructKPN: gradient statistics (paper Eqs. 2-3) and the structure-aware loss (Eqs. 4-6), and its
version relative to the input's own loss."""

from bundle.losses.gradient_statistics import DEFAULT_STRENGTH_SCALE, STRENGTH_CALIBRATION_WINDOW_HU, gradient_statistics
from bundle.losses.relative_to_input import RelativeToInputLoss
from bundle.losses.structure_aware import StructureAwareLoss

__all__ = [
    "DEFAULT_STRENGTH_SCALE",
    "STRENGTH_CALIBRATION_WINDOW_HU",
    "RelativeToInputLoss",
    "StructureAwareLoss",
    "gradient_statistics",
]

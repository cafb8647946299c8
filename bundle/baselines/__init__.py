"""Classical, training-free denoisers the paper compares against: BM3D (optional ``bm3d`` package) and K-SVD."""

from .bm3d import BM3D_MISSING_MESSAGE, bm3d_denoise
from .ksvd import ksvd_denoise

__all__ = ["BM3D_MISSING_MESSAGE", "bm3d_denoise", "ksvd_denoise"]

"""Classical, training-free denoisers the paper compares against: BM3D (optional ``bm3d`` package) and K-SVD, and the
noise power spectra (from the image or from a noise realisation) that set their noise level."""

from .bm3d import BM3D_MISSING_MESSAGE, bm3d_denoise
from .ksvd import ksvd_denoise
from .noise_spectrum import estimate_noise_power_spectrum, noise_power_spectrum, noise_std_from_power_spectrum

__all__ = [
    "BM3D_MISSING_MESSAGE",
    "bm3d_denoise",
    "estimate_noise_power_spectrum",
    "ksvd_denoise",
    "noise_power_spectrum",
    "noise_std_from_power_spectrum",
]

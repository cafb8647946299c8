"""BM3D denoising (Dabov et al., IEEE TIP 16(8), 2007; correlated noise: Makinen et al., IEEE TIP 29, 2020)
through the optional ``bm3d`` package."""

from __future__ import annotations

import numpy as np
from skimage.restoration import estimate_sigma

__all__ = ["BM3D_MISSING_MESSAGE", "bm3d_denoise"]

BM3D_MISSING_MESSAGE = (
    "bm3d_denoise needs the optional package 'bm3d' (pip install bm3d==4.0.3). Its license allows "
    "non-commercial use only and forbids redistribution, so it is not installed with this bundle."
)


def _ensure_numpy_trapz() -> None:
    """Alias ``np.trapz`` to ``np.trapezoid`` when missing: bm4d 4.2 (the backend of bm3d 4.0.3) calls
    ``np.trapz`` to fit its parameters to a noise power spectrum, and NumPy 2.4 removed it (same function, renamed
    in NumPy 2.0). Nothing is changed where NumPy still has it."""
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid


def bm3d_denoise(
    image: np.ndarray, sigma: float | None = None, profile: str = "np", noise_psd: np.ndarray | None = None
) -> np.ndarray:
    """Denoise a 2D image with BM3D, for white noise of standard deviation ``sigma`` or correlated noise of
    power spectrum ``noise_psd``.

    Calls ``bm3d.bm3d(image, sigma_psd=sigma or noise_psd, profile=profile, stage_arg=BM3DStages.ALL_STAGES)``:
    block matching and collaborative hard thresholding, then collaborative Wiener filtering with the first estimate
    as pilot; with a spectrum, the thresholds of every transform coefficient follow the noise's variance in it
    (Makinen et al., IEEE TIP 29, 2020). CT noise after FBP is correlated (ramp-shaped spectrum, streaks), so:

    - white-noise mode (``noise_psd=None``): ``sigma``, or when None its estimate from the finest diagonal wavelet
      band (``skimage.restoration.estimate_sigma``, which sees only the high-frequency part of correlated noise);
    - correlated mode, as a user can run it: ``noise_psd=estimate_noise_power_spectrum(image)``, the spectrum of
      the image's flattest tiles (:mod:`bundle.baselines.noise_spectrum`);
    - correlated mode, oracle: ``noise_psd=noise_power_spectrum(true_noise)`` from the realisation of the added
      noise, an upper bound no user has.

    A 512 x 512 slice took about 20 s on 2 CPU cores shared with other jobs (white-noise mode).

    Args:
        image: (H, W) floating-point image, windowed CT in [0, 1].
        sigma: noise standard deviation in image units (white-noise mode); when None and ``noise_psd`` is None,
            estimated from ``image``.
        profile: BM3D parameter profile of the ``bm3d`` package (``"np"``: normal profile, the package default).
        noise_psd: (H, W) noise power spectrum in the ``bm3d`` normalisation, ``E |fft2(noise)|^2`` (white noise:
            ``H * W * sigma**2`` everywhere); see :mod:`bundle.baselines.noise_spectrum`.

    Returns:
        The denoised image, same shape and dtype as ``image``.

    Raises:
        ImportError: when the optional ``bm3d`` package is not installed.
        ValueError: when ``image`` is not a finite 2D floating-point array, ``sigma`` is negative, both ``sigma``
            and ``noise_psd`` are given, or ``noise_psd`` is not a finite non-negative array of the image's shape.

    Example::

        >>> noisy = np.clip(np.full((64, 64), 0.5) + 0.05 * np.random.default_rng(0).standard_normal((64, 64)), 0, 1)
        >>> bm3d_denoise(noisy).shape
        (64, 64)
    """
    try:
        import bm3d
    except ImportError as error:
        raise ImportError(BM3D_MISSING_MESSAGE) from error
    image = np.asarray(image)
    if image.ndim != 2 or not np.issubdtype(image.dtype, np.floating):
        raise ValueError(f"bm3d_denoise expects a 2D floating-point image (H, W), got {image.dtype} {image.shape}.")
    if not np.all(np.isfinite(image)):
        raise ValueError("bm3d_denoise expects a finite image (no NaN or inf).")
    if noise_psd is not None:
        if sigma is not None:
            raise ValueError("bm3d_denoise takes sigma (white noise) or noise_psd (correlated noise), not both.")
        noise_psd = np.asarray(noise_psd, dtype=np.float64)
        if noise_psd.shape != image.shape or not np.all(np.isfinite(noise_psd)) or noise_psd.min() < 0:
            raise ValueError(
                f"noise_psd must be a finite non-negative array of the image's shape {image.shape}, "
                f"got shape {noise_psd.shape}."
            )
        if not noise_psd.any():
            return image.copy()
        _ensure_numpy_trapz()
        noise = noise_psd
    else:
        sigma = float(estimate_sigma(image)) if sigma is None else float(sigma)
        if sigma < 0:
            raise ValueError(f"sigma must be >= 0, got {sigma}.")
        if sigma == 0:
            return image.copy()
        noise = sigma
    denoised = bm3d.bm3d(image.astype(np.float64), noise, profile=profile, stage_arg=bm3d.BM3DStages.ALL_STAGES)
    return denoised.astype(image.dtype)

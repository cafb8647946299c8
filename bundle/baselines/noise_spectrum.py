"""Noise power spectrum (NPS) of an image's noise, in the normalisation the ``bm3d`` package expects.

Convention (``bm3d.bm3d(z, sigma_psd=psd)`` with ``psd`` of the image's shape (H, W)): ``psd`` is the expected
squared magnitude of the unnormalised 2D DFT of the noise, ``E |fft2(noise)|^2``, so white noise of standard
deviation sigma has ``psd = H * W * sigma**2`` everywhere and the noise variance is ``psd.mean() / (H * W)``
(the package turns a scalar sigma into exactly this array and takes its correlation kernel as
``ifft2(sqrt(psd / (H * W)))``).

Both estimators are Welch averages: square tiles, each detrended (least-squares plane removed) and multiplied by a
2D Hann window, give ``|DFT|^2 / sum(window**2)``, averaged over tiles. The average is turned into the tiles'
autocorrelation (lags below the tile side) and that into the spectrum on the image's (H, W) frequency grid, which
equals zero-padding every windowed tile to (H, W): the result is non-negative and smooth (the window's resolution,
about two DFT bins of the tile).

- :func:`noise_power_spectrum`: from noise-only images (a realisation of the added noise: the oracle, which no user
  has, or simulated noise such as ``LowDoseSimulator.noise_hu`` for a known geometry and dose).
- :func:`estimate_noise_power_spectrum`: from the noisy image itself, on its flattest tiles (what a user can do).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

__all__ = ["estimate_noise_power_spectrum", "noise_power_spectrum", "noise_std_from_power_spectrum"]


def _tiles(image: np.ndarray, tile: int, stride: int) -> np.ndarray:
    """(K, tile, tile) tiles of a 2D image every ``stride`` pixels (a view)."""
    return sliding_window_view(image, (tile, tile))[::stride, ::stride].reshape(-1, tile, tile)


def _detrend(tiles: np.ndarray) -> np.ndarray:
    """Remove each tile's least-squares plane ``a + b * row + c * column``; (K, T, T) -> (K, T, T)."""
    count, size = tiles.shape[0], tiles.shape[-1]
    rows, columns = np.mgrid[:size, :size].reshape(2, -1).astype(np.float64)
    design = np.stack([np.ones_like(rows), rows, columns], axis=1)  # (T*T, 3)
    values = tiles.reshape(count, -1)
    return (values - values @ np.linalg.pinv(design).T @ design.T).reshape(tiles.shape)


def _welch(tiles: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Welch NPS of (K, T, T) noise tiles on the (H, W) frequency grid, ``bm3d`` normalisation (see module)."""
    size = tiles.shape[-1]
    height, width = shape
    if min(height, width) < 2 * size - 1:
        raise ValueError(f"The image ({height}, {width}) must be at least 2 * tile - 1 = {2 * size - 1} a side.")
    window = np.outer(np.hanning(size + 2)[1:-1], np.hanning(size + 2)[1:-1])
    spectra = np.zeros((2 * size, 2 * size))
    for start in range(0, len(tiles), 256):  # bounded memory for the tens of thousands of tiles of a large image
        windowed = _detrend(tiles[start : start + 256].astype(np.float64)) * window
        spectra += (np.abs(np.fft.fft2(windowed, s=(2 * size, 2 * size))) ** 2).sum(axis=0)
    # Per-pixel variance spectrum on the 2T grid; its inverse DFT is the windowed autocorrelation, without wrap-around.
    autocorrelation = np.fft.ifft2(spectra / (len(tiles) * (window**2).sum())).real
    lags = np.arange(-(size - 1), size)
    embedded = np.zeros(shape)
    embedded[np.ix_(lags % height, lags % width)] = autocorrelation[np.ix_(lags % (2 * size), lags % (2 * size))]
    return np.clip(np.fft.fft2(embedded).real, 0.0, None) * (height * width)


def _check_tile(tile: int) -> None:
    if tile < 4:
        raise ValueError(f"tile must be >= 4 pixels, got {tile}.")


def noise_power_spectrum(noise: np.ndarray, tile: int = 32) -> np.ndarray:
    """Welch NPS of noise-only images, for ``bm3d.bm3d(..., sigma_psd=...)`` on images of the same shape.

    Args:
        noise: (H, W) noise image or (K, H, W) realisations, in the units of the image to denoise.
        tile: side of the Welch tiles, pixels; tiles overlap by half. H, W >= ``2 * tile - 1``.

    Returns:
        (H, W) float64 NPS, ``E |fft2(noise)|^2``; ``psd.mean() / (H * W)`` is the noise variance.

    Raises:
        ValueError: when ``noise`` is not a finite (H, W) or (K, H, W) array, or is too small for ``tile``.

    Example::

        >>> psd = noise_power_spectrum(0.1 * np.random.default_rng(0).standard_normal((128, 128)), tile=16)
        >>> round(float(noise_std_from_power_spectrum(psd)), 2)
        0.1
    """
    _check_tile(tile)
    noise = np.asarray(noise, dtype=np.float64)
    if noise.ndim not in (2, 3) or not np.all(np.isfinite(noise)):
        raise ValueError(f"noise_power_spectrum expects a finite (H, W) or (K, H, W) array, got {noise.shape}.")
    stack = noise.reshape(-1, *noise.shape[-2:])
    tiles = np.concatenate([_tiles(image, tile, tile // 2) for image in stack])
    return _welch(tiles, stack.shape[-2:])


def estimate_noise_power_spectrum(
    image: np.ndarray,
    tile: int = 32,
    flat_fraction: float = 0.1,
    min_tiles: int = 8,
    smoothing_px: float = 2.0,
    saturation: tuple[float, float] | None = (0.0, 1.0),
) -> np.ndarray:
    """Estimate the NPS of a noisy image from its flattest tiles (no clean image, no noise realisation needed).

    1. Tiles of side ``tile`` every ``tile // 2`` pixels; tiles holding a saturated pixel (at or beyond
       ``saturation``, e.g. air clipped by the HU window: no noise there) are skipped.
    2. Each tile's structure energy is the variance, within the tile, of the gradient of the image smoothed by a
       Gaussian of ``smoothing_px`` (edges survive the smoothing, noise mostly does not); the fraction
       ``flat_fraction`` of tiles with the least (at least ``min_tiles``) are kept.
    3. Their Welch NPS (see the module) is the estimate.

    Biases: residual anatomy in the kept tiles adds low-frequency power; CT noise is not stationary (it is larger
    along strongly attenuating paths, and streaky), so the flattest regions give a spatial average of it, weighted
    towards soft tissue. Tens of milliseconds for a 512 x 512 slice.

    Args:
        image: (H, W) noisy image, e.g. windowed CT in [0, 1].
        tile: Welch tile side, pixels (H, W >= ``2 * tile - 1``).
        flat_fraction: fraction of the candidate tiles kept, in (0, 1].
        min_tiles: keep at least this many tiles (all candidates when there are fewer).
        smoothing_px: standard deviation of the Gaussian applied before measuring structure, pixels.
        saturation: (low, high) values at or beyond which a pixel is saturated; None: no pixel is.

    Returns:
        (H, W) float64 NPS in ``bm3d`` normalisation (``psd.mean() / (H * W)`` is the noise variance).

    Raises:
        ValueError: when ``image`` is not a finite 2D array, is too small, or has no unsaturated tile.
    """
    _check_tile(tile)
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or not np.all(np.isfinite(image)):
        raise ValueError(f"estimate_noise_power_spectrum expects a finite 2D image (H, W), got {image.shape}.")
    if not 0.0 < flat_fraction <= 1.0:
        raise ValueError(f"flat_fraction must be in (0, 1], got {flat_fraction}.")
    tiles = _tiles(image, tile, tile // 2)
    smoothed = ndimage.gaussian_filter(image, smoothing_px, mode="reflect")
    gradients = [_tiles(np.gradient(smoothed, axis=axis), tile, tile // 2) for axis in (0, 1)]
    structure = sum(gradient.var(axis=(1, 2)) for gradient in gradients)
    candidates = np.ones(len(tiles), dtype=bool)
    if saturation is not None:
        low, high = saturation
        candidates = ~((tiles <= low) | (tiles >= high)).any(axis=(1, 2))
    if not candidates.any():
        raise ValueError(f"estimate_noise_power_spectrum: every {tile} x {tile} tile holds a saturated pixel.")
    indices = np.flatnonzero(candidates)
    keep = max(min_tiles, int(round(flat_fraction * len(indices))))
    flattest = indices[np.argsort(structure[indices], kind="stable")[:keep]]
    return _welch(tiles[flattest], image.shape)


def noise_std_from_power_spectrum(psd: np.ndarray) -> float:
    """Noise standard deviation of an NPS in ``bm3d`` normalisation: ``sqrt(psd.mean() / (H * W))``."""
    psd = np.asarray(psd, dtype=np.float64)
    return float(np.sqrt(psd.mean() / psd.size))

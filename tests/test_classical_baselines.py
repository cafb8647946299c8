"""BM3D and K-SVD on a piecewise-constant phantom with white Gaussian noise of known standard deviation."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from skimage.restoration import estimate_sigma

from bundle.baselines.bm3d import BM3D_MISSING_MESSAGE, bm3d_denoise
from bundle.baselines.ksvd import ksvd_denoise

NOISE_SIGMA = 0.05


def needs_bm3d() -> None:
    pytest.importorskip("bm3d", reason=BM3D_MISSING_MESSAGE)


def phantom(size: int = 64) -> np.ndarray:
    """Rectangles and a disk on a background, values in [0.2, 0.9] (windowed CT units)."""
    image = np.full((size, size), 0.2)
    top, bottom, left, right = size // 5, 3 * size // 4, size // 6, 3 * size // 5
    image[top:bottom, left:right] = 0.7
    top, bottom, left, right = size // 2, 9 * size // 10, 2 * size // 5, 9 * size // 10
    image[top:bottom, left:right] = 0.45
    rows, cols = np.mgrid[:size, :size]
    image[(rows - size // 3) ** 2 + (cols - 3 * size // 4) ** 2 < (size // 6) ** 2] = 0.9
    return image


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((image.astype(np.float64) - reference) ** 2)))


@pytest.fixture(scope="module")
def clean_and_noisy() -> tuple[np.ndarray, np.ndarray]:
    clean = phantom()
    noisy = (clean + NOISE_SIGMA * np.random.default_rng(0).standard_normal(clean.shape)).astype(np.float32)
    return clean, noisy


def test_input_noise_estimate_is_within_20_percent(clean_and_noisy):
    _, noisy = clean_and_noisy
    assert abs(estimate_sigma(noisy) - NOISE_SIGMA) < 0.2 * NOISE_SIGMA


def run(method: str, image: np.ndarray, sigma: float | None = None) -> np.ndarray:
    if method == "bm3d":
        needs_bm3d()
        return bm3d_denoise(image, sigma)
    return ksvd_denoise(image, sigma, n_atoms=128, n_training_patches=2000)


@pytest.mark.parametrize("method", ["bm3d", "ksvd"])
def test_denoising_beats_noisy_input_and_keeps_shape_and_dtype(method, clean_and_noisy):
    clean, noisy = clean_and_noisy
    denoised = run(method, noisy)
    assert denoised.shape == noisy.shape and denoised.dtype == np.float32
    assert psnr(denoised, clean) > psnr(noisy, clean) + 6.0


@pytest.mark.parametrize("method", ["bm3d", "ksvd"])
def test_default_sigma_is_the_input_estimate(method, clean_and_noisy):
    _, noisy = clean_and_noisy
    default = run(method, noisy)
    np.testing.assert_allclose(default, run(method, noisy, float(estimate_sigma(noisy))), atol=1e-5)
    assert np.abs(default - run(method, noisy, 2 * NOISE_SIGMA)).max() > 1e-3  # and sigma matters


@pytest.mark.parametrize("method", ["bm3d", "ksvd"])
def test_zero_sigma_returns_the_input(method, clean_and_noisy):
    _, noisy = clean_and_noisy
    np.testing.assert_array_equal(run(method, noisy, 0.0), noisy)


@pytest.mark.parametrize("denoise", [bm3d_denoise, ksvd_denoise])
@pytest.mark.parametrize(
    "image, sigma, message",
    [
        (np.full((32, 32), np.nan), None, "finite"),
        (np.zeros((1, 32, 32)), None, "2D"),
        (np.zeros((32, 32), dtype=np.uint8), None, "floating-point"),
        (np.zeros((32, 32)), -0.1, "sigma"),
    ],
)
def test_bad_input_raises_value_error(denoise, image, sigma, message):
    if denoise is bm3d_denoise:
        needs_bm3d()
    with pytest.raises(ValueError, match=message):
        denoise(image, sigma)


def test_ksvd_covers_every_pixel_when_stride_does_not_divide_the_size():
    clean = phantom(61)[:, :59]
    noisy = clean + NOISE_SIGMA * np.random.default_rng(1).standard_normal(clean.shape)
    denoised = ksvd_denoise(noisy, NOISE_SIGMA, stride=3, n_atoms=64, n_training_patches=1000)
    assert np.isfinite(denoised).all()
    assert psnr(denoised, clean) > psnr(noisy, clean) + 3.0


def test_ksvd_rejects_images_smaller_than_a_patch():
    with pytest.raises(ValueError, match="patch_size"):
        ksvd_denoise(np.zeros((7, 32)), patch_size=8)


def test_bm3d_missing_raises_import_error_with_install_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "bm3d", None)
    with pytest.raises(ImportError, match=r"pip install bm3d==4\.0\.3"):
        bm3d_denoise(np.zeros((32, 32)))

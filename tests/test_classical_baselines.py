"""BM3D and K-SVD on a piecewise-constant phantom with white Gaussian noise of known standard deviation, and with
correlated noise (white noise filtered by a known kernel): noise power spectra against the closed form, correlated
mode against white-noise mode."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from skimage.restoration import estimate_sigma

from bundle.baselines.bm3d import BM3D_MISSING_MESSAGE, bm3d_denoise
from bundle.baselines.ksvd import ksvd_denoise
from bundle.baselines.noise_spectrum import (
    estimate_noise_power_spectrum,
    noise_power_spectrum,
    noise_std_from_power_spectrum,
)

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


CORRELATED_SIZE = 96
WHITE_SIGMA = 0.15  # before the 3 x 3 box filter: 0.05 after


def box_filtered_noise(size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """White noise circularly filtered by a 3 x 3 box, and its exact NPS ``H * W * sigma**2 * |DFT(kernel)|**2``."""
    kernel = np.zeros((size, size))
    kernel[:3, :3] = 1 / 9
    transfer = np.fft.fft2(kernel)
    white = WHITE_SIGMA * np.random.default_rng(seed).standard_normal((size, size))
    return np.fft.ifft2(np.fft.fft2(white) * transfer).real, size * size * WHITE_SIGMA**2 * np.abs(transfer) ** 2


@pytest.fixture(scope="module")
def correlated_case() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    clean = phantom(CORRELATED_SIZE)
    noise, true_psd = box_filtered_noise(CORRELATED_SIZE, seed=3)
    return clean, noise, clean + noise, true_psd


def relative_l1(estimate: np.ndarray, reference: np.ndarray) -> float:
    return float(np.abs(estimate - reference).sum() / reference.sum())


def test_power_spectrum_of_white_noise_is_flat_at_the_bm3d_normalisation():
    noise = 0.1 * np.random.default_rng(5).standard_normal((3, 64, 64))
    psd = noise_power_spectrum(noise, tile=16)
    assert psd.shape == (64, 64)
    # bm3d turns a scalar sigma into H * W * sigma**2 everywhere: same normalisation.
    assert relative_l1(psd, np.full((64, 64), 64 * 64 * 0.1**2)) < 0.15
    assert abs(noise_std_from_power_spectrum(psd) - 0.1) < 0.005


def test_power_spectrum_of_filtered_noise_matches_the_closed_form(correlated_case):
    _, noise, _, true_psd = correlated_case
    psd = noise_power_spectrum(noise, tile=16)
    assert relative_l1(psd, true_psd) < 0.2
    assert abs(noise_std_from_power_spectrum(psd) / noise_std_from_power_spectrum(true_psd) - 1) < 0.1
    # Low-pass noise: the white-noise estimate of the spectrum would be off by more than 3 times this.
    assert relative_l1(psd, np.full_like(true_psd, true_psd.mean())) > 3 * relative_l1(psd, true_psd)


def test_estimate_from_the_noisy_image_finds_the_spectrum_in_flat_tiles(correlated_case):
    clean, noise, noisy, true_psd = correlated_case
    psd = estimate_noise_power_spectrum(noisy, tile=16, saturation=None)
    # Detrending 16-pixel tiles removes part of the lowest frequencies, where this low-pass noise peaks.
    assert relative_l1(psd, true_psd) < 0.4
    assert relative_l1(psd, np.full_like(true_psd, true_psd.mean())) > 1.5 * relative_l1(psd, true_psd)
    assert abs(noise_std_from_power_spectrum(psd) / noise.std() - 1) < 0.15
    # Taking every tile instead of the flattest ones counts the phantom's edges as noise.
    everything = estimate_noise_power_spectrum(noisy, tile=16, flat_fraction=1.0, saturation=None)
    assert noise_std_from_power_spectrum(everything) > 1.5 * noise.std()


def test_estimate_skips_saturated_tiles():
    image = np.full((64, 64), 0.5) + 0.02 * np.random.default_rng(2).standard_normal((64, 64))
    image[:, :32] = 0.0  # clipped air: no noise there
    psd = estimate_noise_power_spectrum(image, tile=16, flat_fraction=1.0, min_tiles=1)
    assert abs(noise_std_from_power_spectrum(psd) - 0.02) < 0.003
    with pytest.raises(ValueError, match="saturated"):
        estimate_noise_power_spectrum(np.zeros((64, 64)), tile=16)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: noise_power_spectrum(np.zeros((16, 64)), tile=16), "at least"),
        (lambda: noise_power_spectrum(np.full((64, 64), np.nan), tile=16), "finite"),
        (lambda: estimate_noise_power_spectrum(np.zeros((2, 64, 64))), "2D"),
        (lambda: estimate_noise_power_spectrum(np.zeros((64, 64)), flat_fraction=0.0), "flat_fraction"),
        (lambda: noise_power_spectrum(np.zeros((64, 64)), tile=2), "tile"),
    ],
)
def test_power_spectrum_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_bm3d_correlated_oracle_beats_white_noise_mode(correlated_case, monkeypatch):
    needs_bm3d()
    clean, noise, noisy, true_psd = correlated_case
    monkeypatch.delattr(np, "trapz", raising=False)  # as in NumPy >= 2.4: the package's PSD path must still run
    oracle = bm3d_denoise(noisy, noise_psd=true_psd)
    white = bm3d_denoise(noisy, sigma=float(noise.std()))  # white-noise mode, even given the true noise level
    assert oracle.shape == noisy.shape and oracle.dtype == noisy.dtype
    assert psnr(oracle, clean) > psnr(white, clean) + 3.0
    assert psnr(oracle, clean) > psnr(noisy, clean) + 6.0
    # The user mode, from the noisy image alone, keeps most of the oracle's gain over white-noise mode.
    user = bm3d_denoise(noisy, noise_psd=estimate_noise_power_spectrum(noisy, tile=16, saturation=None))
    assert psnr(user, clean) > psnr(white, clean) + 3.0


def test_bm3d_noise_psd_validation():
    needs_bm3d()
    image = np.zeros((32, 32))
    with pytest.raises(ValueError, match="not both"):
        bm3d_denoise(image, sigma=0.1, noise_psd=np.ones((32, 32)))
    with pytest.raises(ValueError, match="image's shape"):
        bm3d_denoise(image, noise_psd=np.ones((32, 31)))
    with pytest.raises(ValueError, match="non-negative"):
        bm3d_denoise(image, noise_psd=-np.ones((32, 32)))
    np.testing.assert_array_equal(bm3d_denoise(image + 0.3, noise_psd=np.zeros((32, 32))), image + 0.3)


def test_ksvd_noise_level_from_the_spectrum_estimate_beats_the_wavelet_estimate(correlated_case):
    clean, noise, noisy, _ = correlated_case
    user_sigma = noise_std_from_power_spectrum(estimate_noise_power_spectrum(noisy, tile=16, saturation=None))
    # The finest diagonal wavelet band misses most of low-pass noise; the flat-tile spectrum does not.
    assert estimate_sigma(noisy) < 0.5 * noise.std() and abs(user_sigma / noise.std() - 1) < 0.15
    options = dict(n_atoms=64, n_training_patches=1000)
    user = ksvd_denoise(noisy, user_sigma, **options)
    assert psnr(user, clean) > psnr(ksvd_denoise(noisy, **options), clean) + 2.0
    assert psnr(user, clean) > psnr(noisy, clean) + 3.0

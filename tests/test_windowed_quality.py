"""bundle.utils.windowed_quality against closed forms and scikit-image, on images that differ."""

from __future__ import annotations

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from bundle.utils import CHEST_WINDOW_HU, PAPER_WINDOW_HU, windowed_quality


def test_a_constant_offset_gives_the_closed_form_psnr_and_ssim():
    reference = np.zeros((32, 32), np.float32)  # 0 HU
    scores = windowed_quality(reference + 40.0, reference)  # 40 HU brighter everywhere
    assert scores["psnr_paper"] == pytest.approx(20.0, abs=1e-4)  # 40 / 400 of the window: MSE 0.01
    assert scores["psnr_chest"] == pytest.approx(-20 * np.log10(40 / 1500), abs=1e-4)  # 31.48 dB
    mean_a, mean_b, c1 = 200 / 400, 160 / 400, 0.01**2  # flat images: only SSIM's luminance term is below 1
    assert scores["ssim_paper"] == pytest.approx((2 * mean_a * mean_b + c1) / (mean_a**2 + mean_b**2 + c1), abs=1e-4)  # float32


def test_noisy_images_match_numpy_psnr_and_scikit_image_ssim_after_clipping_to_each_window():
    rng = np.random.default_rng(0)
    reference = rng.uniform(-1500.0, 400.0, (64, 64)).astype(np.float32)  # partly outside both windows
    prediction = reference + rng.normal(0.0, 60.0, reference.shape).astype(np.float32)
    scores = windowed_quality(prediction, reference)
    for name, (low, high) in (("paper", PAPER_WINDOW_HU), ("chest", CHEST_WINDOW_HU)):
        a, b = (np.clip((x.astype(np.float64) - low) / (high - low), 0.0, 1.0) for x in (prediction, reference))
        assert scores[f"psnr_{name}"] == pytest.approx(10 * np.log10(1.0 / np.mean((a - b) ** 2)), abs=1e-3)
        ssim = structural_similarity(a, b, data_range=1.0, gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
        assert scores[f"ssim_{name}"] == pytest.approx(ssim, abs=1e-3)
    assert windowed_quality(reference, reference)["ssim_paper"] == pytest.approx(1.0)

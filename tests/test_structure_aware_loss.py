"""Structure-aware loss (Eqs. 4-6) against a plain-numpy reference, its minimum, gradients and a short optimisation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from bundle.losses.structure_aware import StructureAwareLoss
from bundle.transforms.statistics import GradientStatistics


def reference_loss(prediction: np.ndarray, target: np.ndarray, strength_scale: float, window: int = 11) -> float:
    """Eqs. 4-6 for one (H, W) image with explicit per-pixel loops: SVD statistics, softmax, windowed SSIM."""
    height, width = target.shape
    radius = window // 2
    grad_y, grad_x = np.gradient(target)
    padded_x, padded_y = np.pad(grad_x, radius, mode="reflect"), np.pad(grad_y, radius, mode="reflect")
    padded_prediction = np.pad(prediction, radius, mode="reflect")
    padded_target = np.pad(target, radius, mode="reflect")
    offsets = np.arange(window) - radius
    gauss = np.exp(-(offsets**2) / (2 * 1.5**2))
    ssim_window = np.outer(gauss, gauss) / np.outer(gauss, gauss).sum()
    c1, c2 = 0.01**2, 0.03**2
    total = 0.0
    for row in range(height):
        for col in range(width):
            patch = (slice(row, row + window), slice(col, col + window))
            gradients = np.stack([padded_x[patch].ravel(), padded_y[patch].ravel()], axis=1)
            s1, s2 = np.linalg.svd(gradients, compute_uv=False)  # the paper's "eigenvalues of G by SVD"
            coherence = (np.sqrt(s1) - np.sqrt(s2)) / (np.sqrt(s1) + np.sqrt(s2)) if s1 > 0 else 0.0
            logits = np.array([1.8 * coherence, 0.35, strength_scale * s1])
            w_l2, w_l1, w_ssim = np.exp(logits) / np.exp(logits).sum()

            x, y = padded_prediction[patch], padded_target[patch]
            mean_x, mean_y = (ssim_window * x).sum(), (ssim_window * y).sum()
            var_x, var_y = (ssim_window * (x - mean_x) ** 2).sum(), (ssim_window * (y - mean_y) ** 2).sum()
            covariance = (ssim_window * (x - mean_x) * (y - mean_y)).sum()
            ssim = (2 * mean_x * mean_y + c1) * (2 * covariance + c2)
            ssim /= (mean_x**2 + mean_y**2 + c1) * (var_x + var_y + c2)

            difference = prediction[row, col] - target[row, col]
            weighted = w_l2 * difference**2 + w_l1 * abs(difference) + w_ssim * (1 - ssim)
            total += weighted + abs(difference)
    return total / (2 * height * width)


def chest_like_patch(size: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A (size, size) normal-dose patch in HU windowed [-1024, 3072] -> [0, 1], and a noisy low-dose version of it.

    Soft tissue with a curved boundary to lung parenchyma, a rib, small vessels, and correlated noise.
    """
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[:size, :size].astype(float)
    hu = np.where(cols + 4 * np.sin(rows / 6) < size * 0.4, 40.0, -850.0)
    hu[(rows - size * 0.2) ** 2 / 9 + (cols - size * 0.15) ** 2 / 36 < 1] = 700.0
    for row, col, radius in [(10, 26, 1.5), (25, 30, 2.0), (31, 22, 1.2), (17, 33, 1.0)]:
        hu[(rows - row) ** 2 + (cols - col) ** 2 <= radius**2] = 20.0
    hu = ndimage.gaussian_filter(hu, 0.7)
    noise_hu = 150.0 * ndimage.gaussian_filter(rng.standard_normal((size, size)), 1.0)  # about 40 HU std
    return (hu + 1024) / 4096, (hu + noise_hu + 1024) / 4096


def to_batch(*images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(images))[:, None]


@pytest.mark.parametrize("strength_scale", [2.0, 12.0])
def test_matches_plain_numpy_reference(strength_scale: float) -> None:
    rng = np.random.default_rng(0)
    clean, _ = chest_like_patch(40)
    targets = [clean[2:14, 8:20], np.rot90(clean[18:30, 20:32]).copy()]  # rib and lung boundary; vessels
    predictions = [t + 0.02 * rng.standard_normal(t.shape) for t in targets]
    loss = StructureAwareLoss(strength_scale=strength_scale, reduction="none")
    values = loss(to_batch(*predictions), to_batch(*targets))
    assert values.shape == (2,)
    expected = [reference_loss(p, t, strength_scale) for p, t in zip(predictions, targets)]
    np.testing.assert_allclose(values.numpy(), expected, rtol=1e-5)
    for reduction, combine in [("mean", np.mean), ("sum", np.sum)]:
        reduced = StructureAwareLoss(strength_scale=strength_scale, reduction=reduction)(
            to_batch(*predictions), to_batch(*targets)
        )
        np.testing.assert_allclose(reduced.item(), combine(expected), rtol=1e-5)


def test_weights_follow_the_regimes() -> None:
    loss = StructureAwareLoss()
    size = 48
    rows, cols = np.mgrid[:size, :size].astype(float)
    hu = -1000.0 + 1040.0 * np.clip((cols - 18) / 3, 0, 1)  # body outline: a straight edge, 3 pixels wide
    hu += 800.0 * np.clip(3 - np.hypot(rows - 24, cols - 38), 0, 1)  # a small, isotropic dense dot
    target = torch.from_numpy((hu + 1024) / 4096)[None, None]
    weights = loss.component_weights(target)[0]
    torch.testing.assert_close(weights.sum(0), torch.ones(size, size, dtype=torch.float64))
    dominant = weights.argmax(0)
    assert (dominant[:, 14:26] == 0).all()  # L2 on and around the edge
    assert (dominant[20:29, 34:43] == 2).all()  # SSIM on and around the dot
    flat = torch.softmax(torch.tensor([0.0, 0.35, 0.0], dtype=torch.float64), 0)
    torch.testing.assert_close(weights[:, 5, 5], flat)  # constant air: coherence 0, strength 0, L1 leads
    torch.testing.assert_close(weights[:, 5, 30], flat)  # constant soft tissue


def test_precomputed_statistics_equal_on_the_fly() -> None:
    clean, noisy = chest_like_patch(40)
    target = torch.from_numpy(clean).float()[None, None]
    prediction = torch.from_numpy(noisy).float()[None, None]
    statistics = GradientStatistics()(target[0])
    loss = StructureAwareLoss()
    on_the_fly = loss(prediction, target)
    precomputed = loss(prediction, torch.cat([target, statistics[None]], dim=1))
    torch.testing.assert_close(precomputed, on_the_fly)

    # statistics of the full slice cropped with the patch agree with the crop's own away from the crop border
    crop = (slice(None), slice(None), slice(8, 32), slice(10, 34))
    full_slice = loss.component_weights(torch.cat([target, statistics[None]], dim=1))[crop]
    cropped = loss.component_weights(target[crop])
    torch.testing.assert_close(full_slice[..., 6:-6, 6:-6], cropped[..., 6:-6, 6:-6])


def test_perfect_prediction_is_the_minimum() -> None:
    clean, _ = chest_like_patch(40)
    target = torch.from_numpy(clean)[None, None]
    loss = StructureAwareLoss()
    assert loss(target.clone(), target).item() == pytest.approx(0.0, abs=1e-7)
    rng = np.random.default_rng(5)
    for amplitude in (1e-3, 1e-2, 1e-1):
        perturbed = target + amplitude * torch.from_numpy(rng.standard_normal(target.shape))
        assert loss(perturbed, target).item() > 1e-5


def test_gradients_are_finite_and_match_finite_differences() -> None:
    clean, noisy = chest_like_patch(16)
    target = torch.from_numpy(clean)[None, None]
    prediction = torch.from_numpy(noisy)[None, None].requires_grad_()
    loss = StructureAwareLoss()
    loss(prediction, target).backward()
    gradient = prediction.grad
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0
    direction = torch.from_numpy(np.random.default_rng(2).standard_normal(prediction.shape))
    # small enough to cross few kinks of |error|, large enough for MONAI's float32 SSIM (about 1e-5 absolute noise)
    step = 1e-4
    with torch.no_grad():
        difference = loss(prediction + step * direction, target) - loss(prediction - step * direction, target)
    np.testing.assert_allclose(difference.item() / (2 * step), (gradient * direction).sum().item(), rtol=2e-2)



def test_adam_steps_reduce_the_loss(one_thread: None) -> None:
    clean, noisy = chest_like_patch(40)
    target = torch.from_numpy(clean).float()[None, None]
    statistics = GradientStatistics()(target[0])[None]
    target_with_statistics = torch.cat([target, statistics], dim=1)
    prediction = torch.from_numpy(noisy).float()[None, None].requires_grad_()
    loss = StructureAwareLoss()
    optimizer = torch.optim.Adam([prediction], lr=2e-3)
    initial = loss(prediction, target_with_statistics).item()
    for _ in range(300):
        optimizer.zero_grad()
        value = loss(prediction, target_with_statistics)
        value.backward()
        optimizer.step()
    assert value.item() < 0.1 * initial
    assert (prediction - target).abs().mean() < 0.2 * (torch.from_numpy(noisy).float() - target).abs().mean()


def test_rejects_bad_shapes() -> None:
    loss = StructureAwareLoss()
    with pytest.raises(ValueError, match=r"input must have shape \(B, 1, H, W\), got \(1, 2, 16, 16\)"):
        loss(torch.zeros(1, 2, 16, 16), torch.zeros(1, 1, 16, 16))
    with pytest.raises(ValueError, match=r"target must have shape \(B, 1, H, W\) or \(B, 3, H, W\), got \(1, 2, 16, 16\)"):
        loss(torch.zeros(1, 1, 16, 16), torch.zeros(1, 2, 16, 16))
    with pytest.raises(ValueError, match=r"input \(1, 1, 16, 16\) and target \(1, 1, 16, 12\) differ in batch or size"):
        loss(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 12))
    with pytest.raises(ValueError, match="ssim_window must be a positive odd integer, got 10"):
        StructureAwareLoss(ssim_window=10)

"""Gradient statistics (Eqs. 2-3) against an explicit SVD of patch gradient matrices, closed forms; the transform."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, ConcatItemsd, SpatialCropd

from bundle.losses.gradient_statistics import gradient_statistics
from bundle.transforms.statistics import GradientStatistics, GradientStatisticsd


def svd_statistics(image: np.ndarray, patch_size: int, row: int, col: int) -> tuple[float, float]:
    """Strength s1 and coherence of one pixel from the singular values s1 >= s2 of its explicit (kr*kr, 2) matrix G,
    as the paper's text reads: Eq. 3 on the square roots of the singular values."""
    grad_y, grad_x = np.gradient(image)
    radius = patch_size // 2
    padded_x, padded_y = np.pad(grad_x, radius, mode="reflect"), np.pad(grad_y, radius, mode="reflect")
    window = (slice(row, row + patch_size), slice(col, col + patch_size))
    gradient_matrix = np.stack([padded_x[window].ravel(), padded_y[window].ravel()], axis=1)
    s1, s2 = np.linalg.svd(gradient_matrix, compute_uv=False)
    return s1, (np.sqrt(s1) - np.sqrt(s2)) / (np.sqrt(s1) + np.sqrt(s2))


def structured_image(height: int, width: int) -> np.ndarray:
    """A disk edge, a diagonal ramp, oriented stripes and a few dots, plus a little noise."""
    rows, cols = np.mgrid[:height, :width].astype(float)
    disk = ((rows - height / 2) ** 2 + (cols - width / 3) ** 2 < (height / 3) ** 2).astype(float)
    stripes = 0.2 * np.sin(0.9 * cols + 0.4 * rows) * (cols > width / 2)
    dots = np.zeros((height, width))
    dots[5::9, 4::7] = 1.0
    return (
        disk + 0.01 * (rows + 2 * cols) + stripes + dots + 0.01 * np.random.default_rng(1).standard_normal(rows.shape)
    )


def to_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image)[None, None]


PIXELS = [(0, 0), (0, 28), (23, 0), (23, 28), (1, 14), (12, 27), (12, 14), (5, 9), (17, 20)]


@pytest.mark.parametrize("patch_size", [11, 5])
@pytest.mark.parametrize("kind", ["random", "structured"])
def test_matches_svd_of_patch_gradient_matrix(kind: str, patch_size: int) -> None:
    shape = (24, 29)  # not square, to catch swapped axes
    image = np.random.default_rng(0).random(shape) if kind == "random" else structured_image(*shape)
    statistics = gradient_statistics(to_batch(image), patch_size=patch_size, strength_scale=1.0)[0].numpy()
    assert statistics.shape == (2, *shape)
    for row, col in PIXELS:
        strength, coherence = svd_statistics(image, patch_size, row, col)
        np.testing.assert_allclose(statistics[:, row, col], [strength, coherence], rtol=1e-9, atol=1e-12)


def test_float32_and_strength_scale() -> None:
    image = structured_image(24, 29)
    reference = gradient_statistics(to_batch(image), strength_scale=1.0)[0].numpy()
    statistics = gradient_statistics(to_batch(image).float(), strength_scale=2.5)[0].numpy()
    assert statistics.dtype == np.float32
    np.testing.assert_allclose(statistics[0], 2.5 * reference[0], rtol=1e-5)
    np.testing.assert_allclose(statistics[1], reference[1], atol=1e-4)


@pytest.mark.parametrize("slope", [(0.0, 0.02), (0.03, 0.0), (-0.01, 0.025)])
def test_linear_ramp_is_fully_coherent(slope: tuple[float, float]) -> None:
    rows, cols = np.mgrid[:20, :30].astype(float)
    image = 0.3 + slope[0] * rows + slope[1] * cols
    statistics = gradient_statistics(to_batch(image), patch_size=7, strength_scale=1.5)[0].numpy()
    # every gradient is g = (slope_x, slope_y), so G = [g; g; ...]: s1 = 7 |g| and s2 = 0. Rounding leaves
    # s2 / s1 of about 1e-8 on an oblique ramp, and the fourth root in the coherence turns it into about 1e-4.
    np.testing.assert_allclose(statistics[0], 1.5 * 7 * np.hypot(*slope), rtol=1e-9)
    np.testing.assert_allclose(statistics[1], 1.0, atol=1e-3)


def test_float32_oblique_ramp_stays_coherent() -> None:
    # float32 rounding of G^T G would cost about 0.05 of coherence here; the float64 computation keeps only the
    # effect of rounding the image itself to float32
    rows, cols = np.mgrid[:64, :64].astype(float)
    image = torch.from_numpy(0.2 + 0.003 * rows + 0.007 * cols).float()[None, None]
    statistics = gradient_statistics(image)[0]
    assert statistics.dtype == torch.float32
    assert statistics[1].min() > 0.99


@pytest.mark.parametrize("strength_scale", [1.0, 2.0])
def test_paraboloid_centre_closed_form(strength_scale: float) -> None:
    # f = a x^2 + b y^2 around the centre pixel: central differences are exact, g = (2 a x, 2 b y), and over the
    # symmetric 11 x 11 patch G^T G = diag(4 a^2, 4 b^2) * 11 * sum(x^2 for x in -5..5) = diag(4 a^2, 4 b^2) * 1210,
    # so s1 = 2 a sqrt(1210), s2 = 2 b sqrt(1210) and Eq. 3 on their square roots gives
    # (sqrt(a) - sqrt(b)) / (sqrt(a) + sqrt(b)): 1/3 for a = 4 b (the authors' code definition would give 3/5),
    # and 0 for a = b (isotropic).
    rows, cols = np.mgrid[-15:16, -15:16].astype(float)
    for a, b, expected in [(4e-3, 1e-3, 1 / 3), (1e-3, 4e-3, 1 / 3), (2e-3, 2e-3, 0.0)]:
        image = a * cols**2 + b * rows**2
        strength, coherence = gradient_statistics(to_batch(image), strength_scale=strength_scale)[0, :, 15, 15]
        assert strength.item() == pytest.approx(strength_scale * 2 * max(a, b) * np.sqrt(1210), rel=1e-12)
        assert coherence.item() == pytest.approx(expected, abs=1e-12)


def test_stripes_are_fully_coherent() -> None:
    cols = np.arange(40, dtype=float)
    image = np.tile(0.5 + 0.1 * np.sin(0.7 * cols), (30, 1))  # varies along x only: G has a zero column
    coherence = gradient_statistics(to_batch(image).float())[0, 1].numpy()
    np.testing.assert_allclose(coherence, 1.0, atol=1e-5)


def test_constant_image_has_zero_statistics() -> None:
    statistics = gradient_statistics(torch.full((2, 1, 16, 16), 0.25))
    assert torch.equal(statistics, torch.zeros(2, 2, 16, 16))


def test_isotropic_texture_has_low_coherence() -> None:
    noise = torch.from_numpy(np.random.default_rng(3).standard_normal((1, 1, 96, 96)))
    coherence = gradient_statistics(noise)[0, 1]
    assert coherence.median() < 0.05  # about 0.03
    assert coherence.quantile(0.95) < 0.1


def test_invariant_to_flips_and_rot90() -> None:
    image = to_batch(structured_image(24, 29))
    statistics = gradient_statistics(image)
    for transform in (
        lambda x: torch.flip(x, (2,)),
        lambda x: torch.flip(x, (3,)),
        lambda x: torch.rot90(x, 1, (2, 3)),
    ):
        torch.testing.assert_close(gradient_statistics(transform(image)), transform(statistics), rtol=1e-10, atol=1e-12)


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"image must have shape \(B, 1, H, W\), got \(1, 2, 8, 8\)"):
        gradient_statistics(torch.zeros(1, 2, 8, 8))
    with pytest.raises(ValueError, match="patch_size must be a positive odd integer, got 4"):
        gradient_statistics(torch.zeros(1, 1, 8, 8), patch_size=4)


def test_transform_matches_function_for_numpy_and_metatensor() -> None:
    image = structured_image(24, 29).astype(np.float32)[None]
    expected = gradient_statistics(torch.from_numpy(image)[None], patch_size=7, strength_scale=2.0)[0].numpy()
    from_numpy = GradientStatistics(patch_size=7, strength_scale=2.0)(image)
    assert isinstance(from_numpy, np.ndarray) and from_numpy.dtype == np.float32
    np.testing.assert_allclose(from_numpy, expected, rtol=1e-6, atol=1e-7)

    affine = torch.diag(torch.tensor([0.8, 0.8, 5.0, 1.0], dtype=torch.float64))
    meta_image = MetaTensor(torch.from_numpy(image), affine=affine, meta={"filename_or_obj": "slice.dcm"})
    from_meta = GradientStatisticsd(keys="label", output_key="label_stats", patch_size=7, strength_scale=2.0)(
        {"label": meta_image}
    )["label_stats"]
    assert isinstance(from_meta, MetaTensor)
    torch.testing.assert_close(from_meta.affine, affine)
    assert from_meta.meta["filename_or_obj"] == "slice.dcm"
    np.testing.assert_allclose(from_meta.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_transform_chain_concatenates_and_crops_with_label() -> None:
    label = torch.from_numpy(structured_image(24, 29).astype(np.float32))[None]
    chain = Compose(
        [
            GradientStatisticsd(keys="label", output_key="label_stats"),
            ConcatItemsd(keys=["label", "label_stats"], name="label"),
            SpatialCropd(keys="label", roi_start=(4, 6), roi_end=(20, 22)),
        ]
    )
    cropped = chain({"label": MetaTensor(label)})["label"]
    assert cropped.shape == (3, 16, 16)
    torch.testing.assert_close(cropped[:1].as_tensor(), label[:, 4:20, 6:22])
    torch.testing.assert_close(cropped[1:].as_tensor(), gradient_statistics(label[None])[0, :, 4:20, 6:22])


def test_transform_needs_one_output_key_per_key() -> None:
    with pytest.raises(ValueError, match=r"need one output_key per key, got \('label_stats',\) for \('label', 'image'\)"):
        GradientStatisticsd(keys=["label", "image"], output_key="label_stats")

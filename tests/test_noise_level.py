"""Blind local noise estimate and the dose-conditioning channels, against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy.signal import convolve2d

from bundle.simulation import LowDoseSimulator
from bundle.transforms import NOISE_BIAS_ON_FBP_NOISE, AddDoseConditiond, local_noise_std

DILATED_LAPLACIAN = np.zeros((5, 5))
DILATED_LAPLACIAN[::2, ::2] = [[1, -2, 1], [-2, 4, -2], [1, -2, 1]]


def _white(shape, sigma, seed=0):
    return torch.from_numpy(sigma * np.random.default_rng(seed).standard_normal(shape)).float()


def test_white_noise_on_a_ramp_reads_its_sigma():
    rows, cols = np.mgrid[0:256, 0:256]
    ramp = torch.from_numpy(3.0 * rows + 1.5 * cols).float()  # planes are invisible to the Laplacian
    estimate = local_noise_std(ramp + _white((256, 256), 20.0))
    assert estimate.shape == (256, 256)
    assert float(estimate.median()) == pytest.approx(20.0, rel=0.03)
    assert float(estimate.min()) > 17.0 and float(estimate.max()) < 23.0


def test_correlated_noise_reads_the_closed_form_bias():
    # n = h * w: the estimator reads std(L * n) / 6 = sigma ||L * h|| / 6, the truth is sigma ||h||
    h = np.outer([1.0, 2.0, 1.0], [1.0, 2.0, 1.0])
    white = 10.0 * np.random.default_rng(1).standard_normal((320, 320))
    noise = convolve2d(white, h, mode="valid")
    expected = np.linalg.norm(convolve2d(DILATED_LAPLACIAN, h)) / 6.0 / np.linalg.norm(h)
    estimate = float(local_noise_std(torch.from_numpy(noise).float()).median())
    assert estimate / noise.std() == pytest.approx(expected, rel=0.04)
    assert expected < 0.8  # smooth noise really reads low: the test can tell


def test_linear_in_the_noise_and_local():
    noise = _white((128, 256), 1.0, seed=2)
    noise[:, 128:] *= 4.0  # right half four times noisier
    estimate = local_noise_std(noise)
    torch.testing.assert_close(local_noise_std(2.0 * noise), 2.0 * estimate)
    assert float(estimate[:, :64].median()) == pytest.approx(1.0, rel=0.05)
    assert float(estimate[:, 192:].median()) == pytest.approx(4.0, rel=0.05)


def test_an_edge_does_not_raise_the_estimate():
    image = torch.zeros(128, 128)
    image[:, 64:] = 1000.0  # a step of 1000 HU
    estimate = local_noise_std(image + _white((128, 128), 10.0, seed=3))
    assert float(estimate.max()) < 12.0


@pytest.mark.parametrize("filter_name", ["ram-lak", "hann"])
def test_documented_bias_on_fbp_noise(filter_name):
    rows, cols = np.mgrid[-96:96, -96:96]
    water = np.where(rows**2 + cols**2 < 90**2, 0.0, -1000.0).astype(np.float32)
    simulator = LowDoseSimulator(num_views=360, filter_name=filter_name, electronic_noise_std=0.0)
    noise = simulator.noise_hu(water, 0.25, 0.65, np.random.default_rng(4))
    centre = noise[56:136, 56:136]
    ratio = float(local_noise_std(torch.from_numpy(centre)).median()) / float(centre.std())
    assert ratio == pytest.approx(NOISE_BIAS_ON_FBP_NOISE[filter_name], abs=0.08)


def test_shapes_and_errors():
    batch = _white((2, 1, 40, 50), 1.0)
    assert local_noise_std(batch).shape == (2, 1, 40, 50)
    torch.testing.assert_close(local_noise_std(batch)[1, 0], local_noise_std(batch[1, 0]))
    with pytest.raises(ValueError, match="too small"):
        local_noise_std(torch.zeros(4, 4))
    with pytest.raises(ValueError, match=r"\(H, W\)"):
        local_noise_std(torch.zeros(40))


def test_dose_conditioning_channels_of_a_slice_and_a_volume():
    image = MetaTensor(_white((1, 48, 40), 0.01) + 0.5, meta={"filename_or_obj": "a.dcm"})
    out = AddDoseConditiond(keys="image", dose_fraction=0.3)({"image": image})["image"]
    assert isinstance(out, MetaTensor) and out.meta["filename_or_obj"] == "a.dcm"
    assert out.shape == (3, 48, 40)
    torch.testing.assert_close(out[0], image[0].as_tensor())
    torch.testing.assert_close(out[1], local_noise_std(image[0].as_tensor()))
    assert torch.all(out[2] == 0.3)

    volume = torch.stack([_white((1, 32, 32), s, seed=i) for i, s in enumerate((1.0, 3.0))], dim=-1)
    out = AddDoseConditiond(keys="image")({"image": volume, "dose_fraction": 0.5})["image"]
    assert out.shape == (3, 32, 32, 2)
    for z in range(2):
        torch.testing.assert_close(out[1, ..., z], local_noise_std(volume[0, ..., z]))
    assert torch.all(out[2] == 0.5)  # the item's own dose fraction wins over the default


@pytest.mark.parametrize("dose", [0.0, 1.5, -0.1])
def test_dose_fraction_out_of_range(dose):
    with pytest.raises(ValueError, match=r"dose_fraction must be in \(0, 1\]"):
        AddDoseConditiond(keys="image", dose_fraction=dose)
    with pytest.raises(ValueError, match=r"must be in \(0, 1\]"):
        AddDoseConditiond(keys="image")({"image": torch.zeros(1, 32, 32), "dose_fraction": dose})

"""Training images at any dose from one simulated image: the scaling against the simulator itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bundle.simulation import LowDoseSimulator, RandDoseNoised, added_noise_scale


def test_added_noise_scale_closed_form():
    assert added_noise_scale(0.25) == pytest.approx(math.sqrt(3.0))
    assert added_noise_scale(0.5, photon_factor=4.0) == pytest.approx(0.5)
    assert added_noise_scale(1.0) == 0.0
    assert added_noise_scale(0.1, reference_dose_fraction=0.1) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="dose_fraction"):
        added_noise_scale(0.0)


def test_rescaled_noise_matches_the_simulator_at_the_drawn_dose():
    rows, cols = np.mgrid[-64:64, -64:64]
    water = np.where(rows**2 + cols**2 < 60**2, 0.0, -1000.0).astype(np.float32)
    simulator = LowDoseSimulator(num_views=180, electronic_noise_std=0.0)
    reference = simulator(water, 0.5, 0.8, rng=0)
    direct = simulator(water, 0.1, 0.8, rng=1)
    transform = RandDoseNoised(keys="label", dose_range=(0.1, 0.1), photon_factor_range=(1.0, 1.0), clip_range=None)
    data = {"label": torch.from_numpy(water)[None], "image": torch.from_numpy(reference)[None], "dose_fraction": 0.5}
    out = transform(data)
    assert out["dose_fraction"] == pytest.approx(0.1)
    inside = rows**2 + cols**2 < 50**2
    rescaled = (out["image"][0].numpy() - water)[inside]
    assert rescaled.std() == pytest.approx((direct - water)[inside].std(), rel=0.06)  # other noise, same level
    assert rescaled.std() == pytest.approx(3.0 * (reference - water)[inside].std(), rel=1e-4)  # sqrt(9 / 1)


def test_random_dose_photons_and_sign():
    label = torch.zeros(1, 8, 8) + 0.5
    reference = label + 0.01 * torch.randn(1, 8, 8, generator=torch.Generator().manual_seed(0))
    transform = RandDoseNoised(keys="label", dose_range=(0.05, 0.9), photon_factor_range=(0.25, 2.5))
    transform.set_random_state(0)
    doses, signs = [], set()
    for _ in range(200):
        out = transform({"label": label, "image": reference.clone(), "dose_fraction": 0.5})
        scale = added_noise_scale(out["dose_fraction"], transform.photon_factor)
        torch.testing.assert_close(out["image"], label + transform.sign * scale * (reference - label))
        doses.append(out["dose_fraction"])
        signs.add(transform.sign)
    assert 0.05 <= min(doses) < 0.1 and 0.6 < max(doses) <= 0.9
    assert np.median(doses) == pytest.approx(math.sqrt(0.05 * 0.9), rel=0.25)  # log-uniform
    assert signs == {1.0, -1.0}


def test_uniform_dose_distribution():
    label = torch.zeros(1, 4, 4) + 0.5
    transform = RandDoseNoised(keys="label", dose_range=(0.05, 0.95), dose_distribution="uniform")
    transform.set_random_state(0)
    doses = [transform({"label": label, "image": label.clone()})["dose_fraction"] for _ in range(400)]
    assert np.median(doses) == pytest.approx(0.5, abs=0.06)  # log-uniform would give sqrt(0.05 * 0.95) = 0.22
    assert np.mean(np.array(doses) > 0.5) == pytest.approx(0.5, abs=0.07)
    with pytest.raises(ValueError, match="dose_distribution"):
        RandDoseNoised(keys="label", dose_distribution="normal")


def test_output_is_clipped_to_the_window_and_shapes_checked():
    transform = RandDoseNoised(keys="label", dose_range=(0.05, 0.05))
    out = transform({"label": torch.zeros(1, 4, 4), "image": torch.full((1, 4, 4), 0.2)})
    assert float(out["image"].min()) >= 0.0 and float(out["image"].max()) <= 1.0
    with pytest.raises(ValueError, match="differ in shape"):
        transform({"label": torch.zeros(1, 4, 4), "image": torch.zeros(1, 4, 5)})



@pytest.mark.parametrize("network_config", [None, "configs/networks/redcnn.json"])
def test_train_config_redraws_the_dose_of_every_network_unless_told_not_to(network_config):
    """train.json's random transforms redraw the added noise of a pair for a dose-aware StructKPN and a
    single-channel baseline alike (the same data for every method), and leave it as it is with random_dose false."""
    from pathlib import Path

    from monai.bundle import ConfigParser

    repo = Path(__file__).resolve().parents[1]
    label = torch.full((1, 32, 32), 0.3)
    image = label + 0.01 * torch.randn(1, 32, 32, generator=torch.Generator().manual_seed(0))
    for random_dose in (True, False):
        parser = ConfigParser()
        parser.read_config([str(repo / "configs/train.json"), *([str(repo / network_config)] if network_config else [])])
        parser["random_dose"] = random_dose
        redraws = [t for t in parser.get_parsed_content("train#random_transforms") if isinstance(t, RandDoseNoised)]
        assert len(redraws) == int(random_dose)
        if random_dose:
            redraws[0].set_random_state(0)
            out = redraws[0]({"image": image.clone(), "label": label.clone(), "dose_fraction": 0.5})
            scale = float(((out["image"] - label).std() / (image - label).std()))
            expected = added_noise_scale(redraws[0].dose_fraction, redraws[0].photon_factor, 0.5)
            assert out["dose_fraction"] == redraws[0].dose_fraction != 0.5 and scale == pytest.approx(expected, rel=1e-3)

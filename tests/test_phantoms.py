"""The synthetic image-quality phantom (bundle.simulation.phantoms) and its simulated scans."""

from __future__ import annotations

import numpy as np
import pytest

from bundle.evaluation import task_transfer_function
from bundle.simulation import LowDoseSimulator
from bundle.simulation.phantoms import (
    FILTER_WINDOWS,
    dose_noise_factor,
    image_quality_phantom,
    noiseless_reconstruction,
    simulate_phantom_scans,
)


def small_phantom():
    """128 x 128 pixels of 0.8 mm: a 95 mm cylinder, two TTF inserts, four discs."""
    return image_quality_phantom(
        size=128, diameter_mm=95.0, ttf_contrasts_hu=(50.0, 300.0), ttf_radius_mm=6.0, ttf_ring_mm=30.0,
        disc_diameters_mm=(4.0, 8.0), disc_contrasts_hu=(10.0, 20.0), disc_ring_mm=14.0,
    )  # fmt: skip


def test_phantom_has_its_inserts_and_a_signal_absent_twin():
    phantom = image_quality_phantom()
    assert len(phantom.inserts_for("ttf")) == 4 and len(phantom.inserts_for("detectability")) == 12
    for insert in phantom.inserts:
        row, column = (int(round(c)) for c in insert.centre)
        assert phantom.hu[row, column] == pytest.approx(phantom.background + insert.contrast_hu, abs=1e-3)
        assert phantom.absent_hu[row, column] == pytest.approx(phantom.background, abs=1e-3)
    disc = phantom.inserts_for("detectability")[-1]  # 10 mm at 15 HU
    row, column = (int(round(c)) for c in disc.centre)
    box = np.s_[row - 10 : row + 11, column - 10 : column + 11]  # the disc (radius 6.25 pixels) and water
    area_px = (phantom.hu - phantom.absent_hu)[box].sum()
    assert area_px / disc.contrast_hu == pytest.approx(np.pi * disc.radius_mm**2 / 0.8**2, rel=0.01)
    assert phantom.hu[0, 0] == -1000.0
    with pytest.raises(ValueError, match="does not fit"):
        image_quality_phantom(size=128)


@pytest.mark.parametrize("filter_name", ["hann", "cosine"])
def test_noiseless_reconstruction_applies_the_fbp_window(filter_name):
    phantom = small_phantom()
    simulator = LowDoseSimulator(filter_name=filter_name)
    reconstructed = noiseless_reconstruction(phantom.hu, 0.8, simulator)
    water = reconstructed[54:74, 54:74]
    assert abs(water.mean()) < 0.05 and water.std() < 0.05  # flat, no moire
    insert = phantom.inserts_for("ttf")[1]
    digital = task_transfer_function(phantom.hu, insert.centre, insert.radius_mm, 0.8)
    measured = task_transfer_function(reconstructed, insert.centre, insert.radius_mm, 0.8)
    low = digital.frequencies < 0.5  # 0.8 of the Nyquist frequency
    window = FILTER_WINDOWS[filter_name](digital.frequencies[low] / 0.625)
    np.testing.assert_allclose(measured.ttf[low] / digital.ttf[low], window, atol=0.05)


def test_scaled_noise_realisations_match_the_simulator_at_each_dose():
    phantom = small_phantom()
    simulator = LowDoseSimulator(num_views=180)
    scans = simulate_phantom_scans(phantom, doses=(0.1, 0.5), realisations=3, simulator=simulator, seed=1)
    centre = np.s_[:, 44:84, 44:84]
    for dose in scans.doses:
        direct = [simulator(phantom.hu, dose, 0.8, rng=seed) - phantom.hu for seed in range(3)]
        added = scans.low_dose(dose, signal_present=False) - scans.normal_dose(signal_present=False)
        assert added[centre].std() == pytest.approx(np.stack(direct)[centre].std(), rel=0.1)
    np.testing.assert_allclose(scans.low_dose(1.0), scans.normal_dose())
    assert dose_noise_factor(0.2) == pytest.approx(2.0)

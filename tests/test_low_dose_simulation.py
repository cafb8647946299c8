"""Tests of the projection-domain low-dose simulator on small synthetic phantoms (128 x 128, 2.5 mm pixels)."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from monai.data import MetaTensor

from bundle.simulation.low_dose import (
    MU_WATER_PER_MM,
    LowDoseSimulator,
    SimulateLowDosed,
    hu_to_attenuation,
    log_domain_noise_std,
    out_of_field_mask,
    simulate_low_dose,
)

SIZE = 128
SPACING_MM = 2.5  # a 320 mm field of view, so the 250 mm water disc attenuates like a body
YY, XX = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2.0


def disc(radius: float, centre: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    return np.hypot(YY - centre[0], XX - centre[1]) < radius


def water_phantom() -> np.ndarray:
    """A 0 HU water disc (diameter 250 mm) in -1000 HU air."""
    return np.where(disc(50), 0.0, -1000.0).astype(np.float32)


def bone_phantom(offset: float = 28.0) -> np.ndarray:
    """The water disc with two dense bone inserts (2000 HU) on the horizontal line through the centre."""
    hu = water_phantom()
    hu[disc(7, (0.0, -offset)) | disc(7, (0.0, offset))] = 2000.0
    return hu


@pytest.fixture(scope="module")
def simulator() -> LowDoseSimulator:
    return LowDoseSimulator(incident_photons=1e5, electronic_noise_std=0.0, num_views=360)


def added_noise(simulator: LowDoseSimulator, hu: np.ndarray, dose: float, seed: int) -> np.ndarray:
    return simulator(hu, dose, SPACING_MM, rng=seed) - hu


def test_hu_to_attenuation_closed_form():
    hu = np.array([-3024.0, -1024.0, -1000.0, 0.0, 1000.0])
    expected = MU_WATER_PER_MM * np.array([0.0, 0.0, 0.0, 1.0, 2.0])
    np.testing.assert_allclose(hu_to_attenuation(hu), expected, atol=1e-12)


def test_log_domain_noise_std_closed_form():
    """std^2 = (1-a)/a * e^p/I0 * (1 + (1+a)/a * se^2 * e^p/I0) at hand-computed points."""
    p, a, i0, se = np.array([0.0, 4.0]), 0.25, 1e4, 5.0
    t = np.exp(p) / i0
    expected = np.sqrt(3.0 * t * (1.0 + 5.0 * 25.0 * t))
    np.testing.assert_allclose(log_domain_noise_std(p, a, i0, se), expected, rtol=1e-12)
    assert np.all(log_domain_noise_std(p, 1.0, i0, se) == 0.0)


def test_added_noise_scales_with_dose(simulator):
    """Without electronic noise the added noise std is sigma(a) = c * sqrt((1 - a) / a) for one constant c.

    Tested: sigma(a) / sqrt((1 - a) / a) agrees within 10 % across a = 0.5, 0.25, 0.1, each sigma measured in the
    central water region and averaged over three independent seeds (different seeds for each dose).
    """
    roi = disc(30)
    normalised = []
    for i, dose in enumerate((0.5, 0.25, 0.1)):
        stds = [added_noise(simulator, water_phantom(), dose, seed=10 * i + k)[roi].std() for k in range(3)]
        normalised.append(np.mean(stds) / np.sqrt((1 - dose) / dose))
    assert max(normalised) / min(normalised) < 1.10, normalised


def test_added_noise_matches_transmission_poisson_model(simulator):
    """The added variance equals var(low-dose scan) - var(full-dose scan) of a direct Poisson transmission simulation.

    Independent model: y = Poisson(a I0 e^-p), p_low = -ln(y / (a I0)), reconstructed with the same filtered
    back-projection; at a = 0.25 the image variances must satisfy var_added = var_low - var_full within 10 %.
    """
    hu, dose, roi = water_phantom(), 0.25, disc(30)
    operator = simulator.operator(hu.shape)
    line_integrals = operator.FP((hu_to_attenuation(hu) * SPACING_MM).astype(np.float32))
    rng = np.random.default_rng(7)

    def poisson_scan_variance(fraction: float) -> float:
        counts = fraction * simulator.incident_photons * np.exp(-line_integrals)
        noisy = -np.log(rng.poisson(counts) / (fraction * simulator.incident_photons)) - line_integrals
        image = operator.reconstruct("FBP", noisy.astype(np.float32), extraOptions={"FilterType": "hann"})
        return float(np.var((image / SPACING_MM / MU_WATER_PER_MM * 1000.0)[roi]))

    expected = np.mean([poisson_scan_variance(dose) - poisson_scan_variance(1.0) for _ in range(3)])
    measured = np.mean([np.var(added_noise(simulator, hu, dose, seed)[roi]) for seed in range(3)])
    assert abs(measured / expected - 1.0) < 0.10, (measured, expected)


def test_mean_hu_preserved_in_uniform_regions(simulator):
    hu = bone_phantom()
    noise = np.mean([added_noise(simulator, hu, 0.25, seed) for seed in range(3)], axis=0)
    water = disc(30) & ~disc(9, (0.0, -28.0)) & ~disc(9, (0.0, 28.0))
    bone = disc(5, (0.0, -28.0))
    assert abs(noise[water].mean()) < 2.0
    assert abs(noise[bone].mean()) < 2.0


def radial_noise_power(noise: np.ndarray, roi_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged 2D noise power spectrum of the central ``roi_size`` square (frequencies in cycles/pixel)."""
    start = (noise.shape[0] - roi_size) // 2
    patch = noise[start : start + roi_size, start : start + roi_size]
    power = np.abs(np.fft.fftshift(np.fft.fft2(patch - patch.mean()))) ** 2
    frequency = np.hypot(*np.meshgrid(*(np.fft.fftshift(np.fft.fftfreq(roi_size)),) * 2, indexing="ij"))
    return frequency, power


def band_power(frequency: np.ndarray, power: np.ndarray, low: float, high: float) -> float:
    return float(power[(frequency > low) & (frequency < high)].mean())


def test_noise_power_spectrum_is_ramp_like_not_white(simulator):
    """FBP noise is correlated: its power near zero frequency (0-0.04 cycles/pixel) is below half the power of the
    ramp's rising band (0.08-0.16), and the apodised (Hann) ramp leaves little near Nyquist; white noise is flat."""
    spectra = [radial_noise_power(added_noise(simulator, water_phantom(), 0.25, seed)) for seed in range(4)]
    frequency, power = spectra[0][0], np.mean([p for _, p in spectra], axis=0)
    peak = band_power(frequency, power, 0.08, 0.16)
    assert band_power(frequency, power, 0.0, 0.04) < 0.5 * peak
    assert band_power(frequency, power, 0.4, 0.5) < 0.1 * peak

    white_noise = np.random.default_rng(0).standard_normal((8, SIZE, SIZE))
    white = np.mean([radial_noise_power(image)[1] for image in white_noise], axis=0)
    assert band_power(frequency, white, 0.0, 0.04) > 0.7 * band_power(frequency, white, 0.08, 0.16)


def test_streaks_along_line_through_dense_inserts(simulator):
    """Noise variance in water along the line joining two bone inserts exceeds that along the perpendicular line."""
    hu = bone_phantom()
    variance = np.mean([added_noise(simulator, hu, 0.25, seed) ** 2 for seed in range(6)], axis=0)
    centre = SIZE // 2
    columns = np.r_[centre - 18 : centre - 8, centre + 8 : centre + 18]  # water between the inserts, off the centre
    along = variance[centre - 2 : centre + 2, columns].mean()
    across = variance[columns][:, centre - 2 : centre + 2].mean()
    assert along > 1.5 * across, (along, across)


def test_padding_and_out_of_field_untouched(simulator):
    hu = water_phantom()
    padding = np.zeros_like(hu, dtype=bool)
    padding[:, :6] = True
    hu[:, :6] = 1234.0  # declared padding with an arbitrary value
    hu[:4, 40:] = -3024.0  # undeclared padding below -1024 HU
    ring = ~disc(62)
    hu[ring & (XX > 0)] = -1024.0  # constant ring outside the scan circle
    out = simulator(hu, 0.1, SPACING_MM, padding=padding, rng=0)
    untouched = padding | (hu < -1024) | (ring & (XX > 0))
    np.testing.assert_array_equal(out[untouched], hu[untouched])
    np.testing.assert_array_equal(out_of_field_mask(hu, padding), untouched)
    assert np.all(out[disc(50)] != hu[disc(50)])


def test_out_of_field_mask_ignores_noisy_air_specks():
    hu = np.full((SIZE, SIZE), -1000.0, dtype=np.float32)
    hu[0, :5] = -1024.0  # a small clipped speck of air touching the border
    assert not out_of_field_mask(hu).any()


def test_seeded_runs_are_identical(simulator):
    hu = bone_phantom()
    a, b = simulator(hu, 0.25, SPACING_MM, rng=3), simulator(hu, 0.25, SPACING_MM, rng=np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, simulator(hu, 0.25, SPACING_MM, rng=4))
    assert a.dtype == np.float32 and a.shape == hu.shape


def test_full_dose_is_unchanged_and_function_form_runs():
    hu = water_phantom()
    np.testing.assert_array_equal(simulate_low_dose(hu, 1.0, num_views=90, pixel_spacing_mm=SPACING_MM, rng=0), hu)
    out = simulate_low_dose(hu, 0.25, num_views=90, filter_name="shepp-logan", pixel_spacing_mm=SPACING_MM, rng=0)
    assert out.shape == hu.shape and np.isfinite(out).all()
    with pytest.raises(ValueError, match="dose_fraction"):
        simulate_low_dose(hu, 0.0, num_views=90)
    with pytest.raises(ValueError, match="filter_name"):
        LowDoseSimulator(filter_name="ramp")


def test_simulator_pickles(simulator):
    hu = water_phantom()
    expected = simulator(hu, 0.25, SPACING_MM, rng=1)
    np.testing.assert_array_equal(pickle.loads(pickle.dumps(simulator))(hu, 0.25, SPACING_MM, rng=1), expected)


def test_dictionary_transform_is_randomisable_and_reads_spacing(simulator):
    affine = torch.diag(torch.tensor([SPACING_MM, SPACING_MM, 1.0, 1.0], dtype=torch.float64))
    label = MetaTensor(torch.from_numpy(water_phantom())[None], affine=affine)
    transform = SimulateLowDosed(keys="label", output_keys="image", dose_range=(0.1, 0.5), simulator=simulator)
    first = transform.set_random_state(seed=5)({"label": label})
    second = transform.set_random_state(seed=5)({"label": label})
    assert isinstance(first["image"], MetaTensor) and first["image"].shape == (1, SIZE, SIZE)
    assert 0.1 <= first["dose_fraction"] <= 0.5
    torch.testing.assert_close(first["image"], second["image"], rtol=0, atol=0)
    torch.testing.assert_close(first["label"], label, rtol=0, atol=0)  # the normal-dose input is not modified
    expected = simulator(water_phantom(), first["dose_fraction"], SPACING_MM, rng=transform._noise_seed)
    np.testing.assert_allclose(first["image"][0].numpy(), expected, atol=1e-4)

    volume = {"label": np.stack([water_phantom()] * 2, axis=-1)[None]}  # (C, H, W, D) without metadata
    out = SimulateLowDosed(keys="label", pixel_spacing_mm=SPACING_MM, simulator=simulator)(volume)
    assert out["label"].shape == (1, SIZE, SIZE, 2) and not np.array_equal(out["label"][..., 0], out["label"][..., 1])

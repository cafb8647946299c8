"""The image-quality study and report (bundle.evaluation.quality_study) with stand-in denoisers, no model."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from bundle.evaluation import measure_phantom, measure_series, verdicts, write_report
from bundle.simulation import LowDoseSimulator, image_quality_phantom, simulate_phantom_scans

SPACING_MM = 0.8


def identity(hu: np.ndarray, dose_fraction: float, pixel_spacing_mm: float) -> np.ndarray:
    return np.array(hu, dtype=np.float32)


def gaussian(hu: np.ndarray, dose_fraction: float, pixel_spacing_mm: float) -> np.ndarray:
    sigma = 1.0 / pixel_spacing_mm  # 1 mm
    return ndimage.gaussian_filter(np.asarray(hu, dtype=np.float32), (0,) * (np.ndim(hu) - 2) + (sigma, sigma))


@pytest.fixture(scope="module")
def phantom_and_scans():
    phantom = image_quality_phantom(
        size=128, diameter_mm=95.0, ttf_contrasts_hu=(50.0, 300.0), ttf_radius_mm=6.0, ttf_ring_mm=30.0,
        disc_diameters_mm=(4.0, 8.0), disc_contrasts_hu=(10.0, 20.0), disc_ring_mm=14.0,
    )  # fmt: skip
    scans = simulate_phantom_scans(phantom, (0.25,), realisations=6, simulator=LowDoseSimulator(num_views=180))
    return phantom, scans


def test_identity_denoiser_scores_exactly_as_its_input(phantom_and_scans):
    phantom, scans = phantom_and_scans
    (result,) = measure_phantom(identity, phantom, scans)
    assert result.flat.hu_bias["output"] == result.flat.hu_bias["input"]
    assert result.flat.noise["output"] == result.flat.noise["input"]
    # the input has the normal-dose noise plus sqrt(3) times as much added: twice the noise
    assert result.flat.noise_ratio == pytest.approx(2.0, rel=0.1)
    for scores in result.d_prime.values():
        assert scores["output"] == scores["input"]
        assert scores["reference"] == pytest.approx(2.0 * scores["input"], rel=0.35)  # noise halves, d' doubles
    bigger = result.d_prime[(8.0, 20.0)]["reference"]
    assert bigger > result.d_prime[(4.0, 20.0)]["reference"] > result.d_prime[(4.0, 10.0)]["reference"]
    for ttfs in result.ttf.values():  # paired differences: noiseless, the same for the linear images
        assert ttfs["output"].ttf50 == ttfs["input"].ttf50
        np.testing.assert_allclose(ttfs["input"].ttf, ttfs["reference"].ttf, atol=1e-4)
    goals = verdicts([], [result])
    assert goals["ttf50"][0] and goals["d_prime"][0] and not goals["noise_ratio"][0]


def test_gaussian_stand_in_lowers_noise_texture_and_resolution(phantom_and_scans, tmp_path):
    phantom, scans = phantom_and_scans
    (result,) = measure_phantom(gaussian, phantom, scans)
    flat = result.flat
    assert flat.noise["output"] < 0.6 * flat.noise["input"]
    assert flat.spectra["output"].mean_frequency < 0.8 * flat.spectra["input"].mean_frequency
    assert abs(flat.hu_bias["output"]) < 1.0  # a normalised filter keeps the mean
    high = result.ttf[300.0]
    # a 1 mm Gaussian multiplies the TTF by exp(-2 pi^2 f^2): TTF50 drops well below the reconstruction's
    assert high["output"].ttf50 < 0.8 * high["input"].ttf50
    f = high["input"].frequencies[high["input"].frequencies < 0.3]
    ratio = np.interp(f, high["output"].frequencies, high["output"].ttf) / np.interp(f, high["input"].frequencies,
                                                                                     high["input"].ttf)  # fmt: skip
    np.testing.assert_allclose(ratio, np.exp(-2 * np.pi**2 * f**2), atol=0.08)

    rows, columns = np.mgrid[:128, :128]
    body = np.where(np.hypot(rows - 64, columns - 64) < 55, 40.0, -1000.0).astype(np.float32)
    slices = [body + 5.0 * np.random.default_rng(i).standard_normal(body.shape).astype(np.float32) for i in range(2)]
    series = measure_series(gaussian, "disc", slices, SPACING_MM, (0.25, 0.5), LowDoseSimulator(num_views=180))
    assert [r.dose for r in series] == [0.25, 0.5] and all(r.slices == 2 for r in series)
    assert series[0].noise["input"] > series[1].noise["input"] > series[0].noise["reference"]
    report = write_report(tmp_path / "iq.md", series, [result], "# header", "a note")
    text = report.read_text()
    assert text.startswith("# header") and "a note" in text and "## Verdict" in text
    assert "| disc | 0.25 | 2 |" in text and "| 0.25 | 300 |" in text and "| 0.25 | 8 | 20 |" in text
    assert (tmp_path / "iq" / "nps.png").stat().st_size > 1000 and (tmp_path / "iq" / "ttf.png").stat().st_size > 1000

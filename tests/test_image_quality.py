"""Image-quality measures (bundle.evaluation.image_quality) against closed forms on synthetic images."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from scipy import ndimage

from bundle.evaluation import (
    FlatRegionMetric,
    FlatROI,
    detrend,
    extract_rois,
    hu_bias,
    noise_power_spectrum,
    noise_ratio,
    nps_frequencies,
    npw_detectability,
    npw_detectability_from_ensembles,
    place_flat_rois,
    radial_average,
    roi_noise,
    task_transfer_function,
)

SPACING_MM = 0.5


def body_phantom(rng: np.random.Generator, noise_hu: float = 10.0) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """200 x 200 HU image: air, a soft-tissue (40 HU) body with a fat block, a lung and a block of fine stripes."""
    rows, columns = np.mgrid[:200, :200]
    body = ((rows - 100) / 90) ** 2 + ((columns - 100) / 95) ** 2 <= 1
    fat = (rows >= 40) & (rows < 80) & (columns >= 40) & (columns < 90)
    lung = ((rows - 130) / 30) ** 2 + ((columns - 60) / 25) ** 2 <= 1
    stripes = (rows >= 110) & (rows < 170) & (columns >= 110) & (columns < 170)
    hu = np.full((200, 200), -1000.0)
    hu[body] = 40.0
    hu[fat] = -100.0
    hu[lung] = -850.0
    hu[stripes] = 40.0 + 60.0 * (columns[stripes] // 3 % 2)
    return hu + noise_hu * rng.standard_normal(hu.shape), {"body": body, "fat": fat, "lung": lung, "stripes": stripes}


def test_flat_rois_lie_in_uniform_tissue_of_their_class():
    hu, masks = body_phantom(np.random.default_rng(0))
    rois = place_flat_rois(hu, roi_size=15, max_rois_per_class=6)
    tissues = [roi.tissue for roi in rois]
    assert tissues.count("fat") >= 2 and tissues.count("soft_tissue") == 6
    occupied = np.zeros(hu.shape, dtype=int)
    for roi in rois:
        region = np.zeros(hu.shape, dtype=bool)
        region[roi.slices] = True
        occupied += region
        assert masks["body"][region].all()
        assert not (masks["lung"] | masks["stripes"])[region].any()  # no lung, no edges
        assert masks["fat"][region].all() == (roi.tissue == "fat")
        assert not masks["fat"][region].any() or roi.tissue == "fat"
    assert occupied.max() == 1  # no overlaps
    overlapping = place_flat_rois(hu, roi_size=15, max_rois_per_class=40, min_separation_px=8)
    assert sum(roi.tissue == "soft_tissue" for roi in overlapping) > 2 * 6
    corners = np.array([(roi.top, roi.left) for roi in overlapping])
    gaps = np.abs(corners[:, None] - corners[None]).max(axis=-1) + 100 * np.eye(len(corners), dtype=int)
    assert gaps.min() >= 8
    with pytest.raises(ValueError, match="2D image"):
        place_flat_rois(hu[:10, :10])


def test_hu_bias_and_noise_on_known_offsets_and_noise():
    rng = np.random.default_rng(1)
    reference, _ = body_phantom(rng, noise_hu=10.0)
    rois = place_flat_rois(reference)
    assert hu_bias(reference + 3.0, reference, rois) == pytest.approx(3.0, abs=1e-9)
    assert hu_bias(reference + 3.0, reference, rois, tissue="fat") == pytest.approx(3.0, abs=1e-9)
    assert noise_ratio(reference + 3.0, reference, rois) == pytest.approx(1.0, abs=1e-9)
    truth, _ = body_phantom(rng, noise_hu=0.0)
    noisy = truth - 5.0 + 25.0 * rng.standard_normal(truth.shape)
    reference = truth + 10.0 * rng.standard_normal(truth.shape)
    assert roi_noise(noisy, rois) == pytest.approx(25.0, rel=0.05)
    assert roi_noise(reference, rois) == pytest.approx(10.0, rel=0.05)
    assert noise_ratio(noisy, reference, rois) == pytest.approx(2.5, rel=0.07)
    assert hu_bias(noisy, reference, rois) == pytest.approx(-5.0, abs=0.5)
    given = [FlatROI(90, 100, 20, "soft_tissue")]
    assert hu_bias(noisy, truth, given) == pytest.approx(noisy[90:110, 100:120].mean() - 40.0)
    with pytest.raises(ValueError, match="lung"):
        hu_bias(noisy, truth, given, tissue="lung")


def test_white_noise_nps_is_flat_sigma_squared_pixel_area_and_integrates_to_variance():
    sigma, size = 12.0, 32
    rois = sigma * np.random.default_rng(2).standard_normal((200, size, size))
    spectrum = noise_power_spectrum(rois, SPACING_MM, detrend_order="mean")
    expected = sigma**2 * SPACING_MM**2
    assert spectrum.nps[size // 2, size // 2] == pytest.approx(0.0, abs=1e-9)  # the mean is removed
    frequency, nps_1d = radial_average(spectrum)
    assert frequency[-1] == pytest.approx(0.5 / SPACING_MM)
    np.testing.assert_allclose(nps_1d[1:], expected, rtol=0.1)
    df = 1.0 / (size * SPACING_MM)
    integral = spectrum.nps.sum() * df**2
    assert integral == pytest.approx(detrend(rois, "mean").var(axis=(1, 2)).mean(), rel=1e-9)  # Parseval
    assert integral == pytest.approx(sigma**2, rel=0.02)
    mean_frequency, _ = nps_frequencies(frequency, nps_1d)
    assert mean_frequency == pytest.approx(np.mean(frequency[1:]), rel=0.05)  # flat: the mean of the bins


def test_filtered_noise_nps_is_the_squared_transfer_function():
    sigma, size = 10.0, 32
    rng = np.random.default_rng(3)
    kernel = np.array([1.0, 2.0, 1.0]) / 4.0  # transfer function cos^2(pi f dx)
    rois = []
    for _ in range(4):
        image = ndimage.convolve1d(sigma * rng.standard_normal((256, 256)), kernel, axis=0, mode="wrap")
        image = ndimage.convolve1d(image, kernel, axis=1, mode="wrap")
        rois += [image[r : r + size, c : c + size] for r in range(0, 256, size) for c in range(0, 256, size)]
    spectrum = noise_power_spectrum(np.stack(rois), SPACING_MM, detrend_order="mean")
    fy, fx = np.meshgrid(spectrum.frequencies_row, spectrum.frequencies_column, indexing="ij")
    expected = sigma**2 * SPACING_MM**2 * np.cos(np.pi * fy * SPACING_MM) ** 4 * np.cos(np.pi * fx * SPACING_MM) ** 4
    strong = expected > 0.2 * expected.max()
    strong[size // 2, size // 2] = False
    assert np.median(np.abs(spectrum.nps[strong] / expected[strong] - 1)) < 0.08
    off_zero = np.ones_like(strong)
    off_zero[size // 2, size // 2] = False
    assert np.abs(spectrum.nps - expected)[off_zero].max() < 0.3 * expected.max()
    # the filter moved power to low frequencies: the mean frequency is well below white noise's
    white = radial_average(noise_power_spectrum(sigma * rng.standard_normal((64, size, size)), SPACING_MM))
    assert nps_frequencies(*radial_average(spectrum))[0] < 0.7 * nps_frequencies(*white)[0]


def test_plane_detrending_removes_a_ramp_that_mean_detrending_leaves():
    rng = np.random.default_rng(4)
    noise = 5.0 * rng.standard_normal((20, 32, 32))
    rows, columns = np.mgrid[:32, :32]
    ramped = noise + 3.0 * rows - 2.0 * columns + 7.0
    np.testing.assert_allclose(
        noise_power_spectrum(ramped, SPACING_MM).nps, noise_power_spectrum(noise, SPACING_MM).nps, atol=1e-9
    )
    mean_only = noise_power_spectrum(ramped, SPACING_MM, detrend_order="mean").nps
    assert mean_only.max() > 100 * noise_power_spectrum(noise, SPACING_MM, detrend_order="mean").nps.max()


def blurred_disc(sigma_mm: float, radius_mm: float = 20.0, size: int = 200, centre=(100.3, 99.6)) -> np.ndarray:
    """A 300 HU disc on 0 HU, blurred by a Gaussian of sigma_mm, sampled at pixel centres (8x supersampled)."""
    factor = 8
    fine = (np.arange(size * factor) + 0.5) / factor - 0.5  # pixel coordinates of the fine grid
    distance = np.hypot(fine[:, None] - centre[0], fine[None, :] - centre[1]) * SPACING_MM
    blurred = ndimage.gaussian_filter(300.0 * (distance <= radius_mm), sigma_mm / SPACING_MM * factor)
    return blurred[factor // 2 :: factor, factor // 2 :: factor]


@pytest.mark.parametrize("sigma_mm", [0.4, 0.8])
def test_ttf_of_a_gaussian_blurred_disc_is_the_gaussian_transfer_function(sigma_mm):
    image = blurred_disc(sigma_mm)
    ttf = task_transfer_function(image, (100.3, 99.6), 20.0, SPACING_MM)
    expected = np.exp(-2 * np.pi**2 * sigma_mm**2 * ttf.frequencies**2)
    np.testing.assert_allclose(ttf.ttf, expected, atol=0.03)
    assert ttf.ttf50 == pytest.approx(np.sqrt(np.log(2) / 2) / (np.pi * sigma_mm), rel=0.03)
    assert ttf.ttf10 == pytest.approx(np.sqrt(np.log(10) / 2) / (np.pi * sigma_mm), rel=0.04)
    assert ttf.contrast_hu == pytest.approx(300.0, rel=0.01)
    narrow = task_transfer_function(image, (100.3, 99.6), 20.0, SPACING_MM, lsf_half_width_mm=4.0)
    assert narrow.ttf50 == pytest.approx(ttf.ttf50, rel=0.02)
    # the same insert measured with a wrong centre looks blurrier
    assert task_transfer_function(image, (102.3, 99.6), 20.0, SPACING_MM).ttf50 < 0.8 * ttf.ttf50


def test_ttf_averaged_over_noise_realisations_recovers_a_low_contrast_edge():
    rng = np.random.default_rng(5)
    clean = blurred_disc(0.6) * (15.0 / 300.0)  # a 15 HU insert
    mean_image = np.mean([clean + 10.0 * rng.standard_normal(clean.shape) for _ in range(40)], axis=0)
    ttf = task_transfer_function(mean_image, (100.3, 99.6), 20.0, SPACING_MM)
    assert ttf.contrast_hu == pytest.approx(15.0, abs=1.0)
    assert ttf.ttf50 == pytest.approx(np.sqrt(np.log(2) / 2) / (np.pi * 0.6), rel=0.1)


def disc_signal(radius_px: float = 4.0, amplitude_hu: float = 2.0, size: int = 21) -> np.ndarray:
    rows, columns = np.mgrid[:size, :size] - size // 2
    return amplitude_hu * (np.hypot(rows, columns) <= radius_px)


def test_npw_detectability_in_white_noise_is_signal_norm_over_sigma():
    sigma, signal = 5.0, disc_signal()
    rng = np.random.default_rng(6)
    expected = np.linalg.norm(signal) / sigma
    noise = sigma * rng.standard_normal((4000, *signal.shape))
    assert npw_detectability(signal, noise) == pytest.approx(expected, rel=0.05)
    assert npw_detectability(signal, 2 * noise) == pytest.approx(expected / 2, rel=0.05)
    present = signal + sigma * rng.standard_normal((3000, *signal.shape))
    absent = sigma * rng.standard_normal((3000, *signal.shape))
    assert npw_detectability_from_ensembles(present, absent, signal) == pytest.approx(expected, rel=0.08)
    assert npw_detectability_from_ensembles(present, absent) == pytest.approx(expected, rel=0.15)
    with pytest.raises(ValueError, match="matching the signal"):
        npw_detectability(signal, noise[:, :10])


def test_flat_region_metric_matches_the_functions_and_reads_the_spacing():
    rng = np.random.default_rng(7)
    reference, _ = body_phantom(rng)
    image = reference + 2.0 + 8.0 * rng.standard_normal(reference.shape)
    affine = np.diag([0.7, 0.7, 1.0, 1.0])
    as_tensor = lambda a: MetaTensor(torch.as_tensor(a, dtype=torch.float32)[None, None], affine=affine)  # noqa: E731
    metric = FlatRegionMetric("hu_bias")
    metric(as_tensor(image), as_tensor(reference))
    image32, reference32 = image.astype(np.float32), reference.astype(np.float32)
    rois = place_flat_rois(reference32)
    assert float(metric.aggregate()) == pytest.approx(hu_bias(image32, reference32, rois), rel=1e-5)
    nps_rois = place_flat_rois(reference32, 32, 16, min_separation_px=16)
    peak = FlatRegionMetric("nps_peak_frequency")
    peak(as_tensor(image), as_tensor(reference))
    spectrum = noise_power_spectrum(extract_rois(image32, nps_rois), 0.7)
    assert float(peak.aggregate()) == pytest.approx(nps_frequencies(*radial_average(spectrum))[1], rel=1e-5)
    with pytest.raises(ValueError, match="pixel spacing"):
        FlatRegionMetric("noise")(torch.as_tensor(image)[None, None], torch.as_tensor(reference)[None, None])


def test_evaluate_image_quality_config_writes_csv_values_of_the_module_functions(tmp_path):
    """configs/evaluate_image_quality.json over train.json + evaluate.json on the sample's test slices, with an
    identity network (a 1x1 convolution of weight 1), so the test needs no trained model."""
    import csv
    import json
    from pathlib import Path

    from monai.bundle import ConfigWorkflow
    from monai.transforms import ScaleIntensityRange

    from bundle.io import read_ct_slice

    repo = Path(__file__).resolve().parents[1]
    sample = repo / "sample_data"
    checkpoint = tmp_path / "identity.pt"
    torch.save({"weight": torch.ones(1, 1, 1, 1)}, checkpoint)
    flow = ConfigWorkflow(
        config_file=[str(repo / "configs" / f) for f in ("train.json", "evaluate.json", "evaluate_image_quality.json")],
        meta_file=str(repo / "configs" / "metadata.json"),
        logging_file=str(repo / "configs" / "logging.conf"),
        workflow_type="train",
        ckpt_path=str(checkpoint),
        output_dir=str(tmp_path / "eval"),
        dataset_dir=str(sample),
        dose_aware=False,
        network_def={"_target_": "torch.nn.Conv2d", "in_channels": 1, "out_channels": 1, "kernel_size": 1,
                     "bias": False},  # fmt: skip
    )
    settings = (repo / "models" / "model.json").read_bytes()
    flow.initialize()
    flow.run()
    flow.finalize()
    assert (repo / "models" / "model.json").read_bytes() == settings  # evaluating never writes the model's settings

    def raw(name: str) -> dict[str, float]:
        with open(tmp_path / "eval" / f"{name}_raw.csv") as f:
            return {Path(row[0]).name: float(row[1]) for row in list(csv.reader(f))[1:]}

    def as_loaded(path: Path) -> np.ndarray:
        """HU as the pipeline holds them: clipped to the HU window, to [0, 1] and back in float32."""
        hu = torch.as_tensor(read_ct_slice(path).hu.astype(np.float32))
        unit = ScaleIntensityRange(-1024.0, 3072.0, 0.0, 1.0, clip=True)(hu)
        return np.asarray(ScaleIntensityRange(0.0, 1.0, -1024.0, 3072.0)(unit))

    items = json.loads((sample / "datalist.json").read_text())["test"]
    columns = {name: raw(name) for name in ("input_hu_bias", "test_hu_bias", "input_noise", "reference_noise",
                                            "input_noise_ratio", "input_nps_mean_frequency",
                                            "reference_nps_peak_frequency")}  # fmt: skip
    for item in items:
        low_dose, normal_dose = as_loaded(sample / item["image"]), as_loaded(sample / item["label"])
        spacing = float(read_ct_slice(sample / item["label"]).dataset.PixelSpacing[0])
        rois = place_flat_rois(normal_dose)
        nps_rois = place_flat_rois(normal_dose, 32, 16, min_separation_px=16)
        key = Path(item["image"]).name
        expected = {
            "input_hu_bias": hu_bias(low_dose, normal_dose, rois),
            "test_hu_bias": hu_bias(low_dose, normal_dose, rois),  # the identity network
            "input_noise": roi_noise(low_dose, rois),
            "reference_noise": roi_noise(normal_dose, rois),
            "input_noise_ratio": noise_ratio(low_dose, normal_dose, rois),
            "input_nps_mean_frequency": nps_frequencies(
                *radial_average(noise_power_spectrum(extract_rois(low_dose, nps_rois), spacing)))[0],
            "reference_nps_peak_frequency": nps_frequencies(
                *radial_average(noise_power_spectrum(extract_rois(normal_dose, nps_rois), spacing)))[1],
        }  # fmt: skip
        for name, value in expected.items():
            assert columns[name][key] == pytest.approx(value, rel=1e-4, abs=1e-4), (name, key)
    assert np.mean(list(columns["input_noise"].values())) > 2 * np.mean(list(columns["reference_noise"].values()))

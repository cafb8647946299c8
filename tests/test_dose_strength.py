"""The shipped model's strength knob: dose_fraction 1.0 returns the input, smaller doses denoise more."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from monai.bundle import ConfigWorkflow

from bundle.evaluation.denoise import load_denoiser
from bundle.evaluation.image_quality import place_flat_rois, roi_noise
from bundle.io import read_ct_slice

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
SLICE = "A0002-siemens-B40f/1-10.dcm"


@pytest.fixture(scope="module")
def denoise():
    return load_denoiser(REPO / "configs" / "inference.json", REPO / "models" / "model.pt")


def test_strength_falls_monotonically_with_the_dose_fraction(denoise):
    low_dose = read_ct_slice(SAMPLE / "ldct-0.25" / SLICE).hu
    normal_dose = read_ct_slice(SAMPLE / "ndct" / SLICE).hu
    rois = place_flat_rois(normal_dose)
    assert len(rois) >= 4
    doses = (1.0, 0.9, 0.75, 0.5, 0.25, 0.1, 0.05)
    outputs = {dose: denoise(low_dose, dose) for dose in doses}
    np.testing.assert_array_equal(outputs[1.0], np.clip(low_dose, -1024, 3072))  # the identity, exactly
    removed = [float(np.abs(outputs[dose] - outputs[1.0]).mean()) for dose in doses]
    noise = [roi_noise(outputs[dose], rois) for dose in doses]
    assert all(a < b for a, b in zip(removed, removed[1:])), removed  # more removed at every lower dose
    assert all(a > b for a, b in zip(noise, noise[1:])), noise  # less noise left in flat regions
    assert noise[0] > 1.5 * noise[-1]


def test_inference_at_dose_one_returns_the_input_series(tmp_path):
    series = SAMPLE / "ldct-0.25" / "A0002-siemens-B40f"
    flow = ConfigWorkflow(
        workflow_type="infer", config_file=str(REPO / "configs" / "inference.json"),
        meta_file=str(REPO / "configs" / "metadata.json"), logging_file=str(REPO / "configs" / "logging.conf"),
        bundle_root=str(REPO), dataset_dir=str(series), output_dir=str(tmp_path / "out"), dose_fraction=1.0,
    )  # fmt: skip
    flow.initialize()
    flow.run()
    flow.finalize()
    for source in sorted(series.glob("*.dcm")):
        written = tmp_path / "out" / source.name
        assert pydicom.dcmread(written).ImageType[0] == "DERIVED"
        np.testing.assert_allclose(read_ct_slice(written).hu, read_ct_slice(source).hu, atol=1.0)  # within 1 HU

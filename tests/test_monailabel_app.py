"""The MONAI Label app (monailabel_app/): its infer task denoises CT like the bundle's network applied directly.

monailabel is not a dependency of the bundle (it pulls torchvision and CUDA builds of torch), so these tests skip
unless it is importable; run them in the separate environment described in docs/monailabel.md::

    /work/dev/mlvenv/bin/python -m pytest -q tests/test_monailabel_app.py

The expectation is computed here without the app: pydicom/nibabel for HU, the window and the dose conditioning
written out by hand, and the dose-aware StructKPN with models/model.pt applied to each slice.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip(
    "monailabel", reason="monailabel is not installed here (it lives in a separate environment: docs/monailabel.md)"
)

import nibabel as nib  # noqa: E402
import pydicom  # noqa: E402
import pydicom.uid  # noqa: E402

# monailabel 0.8.5 imports pydicom-seg 0.4.1, which imports `pydicom._storage_sopclass_uids` (gone in pydicom 3;
# the same UIDs are in pydicom.uid). The monailabel environment installs a shim for the server; repeat it here.
if importlib.util.find_spec("pydicom._storage_sopclass_uids") is None:
    sys.modules["pydicom._storage_sopclass_uids"] = pydicom.uid

from monailabel.config import settings  # noqa: E402
from monailabel.utils.others.class_utils import get_class_of_subclass_from_file  # noqa: E402

from bundle.networks import StructKPN  # noqa: E402
from bundle.transforms import local_noise_std  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = ROOT / "monailabel_app"
SERIES = ROOT / "sample_data" / "ldct-0.25" / "A0002-siemens-B40f"
MODEL = "structkpn_denoise"
HU_LO, HU_HI = -1024.0, 3072.0  # configs/inference.json hu_window
DOSE_FRACTION = 0.25  # configs/inference.json dose_fraction (the request gives none)
TOLERANCE_HU = 1e-3


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # CPU shared with other jobs; the slices are few
    saved = (settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD, settings.MONAI_LABEL_INFER_CONCURRENCY)
    settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD = False  # no file-watcher thread in tests
    settings.MONAI_LABEL_INFER_CONCURRENCY = -1  # run in the calling thread
    studies = tmp_path_factory.mktemp("studies")
    # load main.py the way `monailabel start_server` does
    app_class = get_class_of_subclass_from_file("main", str(APP_DIR / "main.py"), "MONAILabelApp")
    yield app_class(app_dir=str(APP_DIR), studies=str(studies), conf={})
    settings.MONAI_LABEL_DATASTORE_AUTO_RELOAD, settings.MONAI_LABEL_INFER_CONCURRENCY = saved
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def network():
    net = StructKPN(kernel_size=21, dose_aware=True)  # configs/inference.json network_def
    net.load_state_dict(torch.load(ROOT / "models" / "model.pt", map_location="cpu"))
    return net.eval()


def expected_hu(network, hu_slices: np.ndarray) -> np.ndarray:
    """(X, Y, D) HU -> the network on each windowed slice, conditioned on the slice's blind local noise std and the
    dose fraction (channels 1 and 2), mapped back to HU."""
    window = np.clip((hu_slices.astype(np.float64) - HU_LO) / (HU_HI - HU_LO), 0.0, 1.0).astype(np.float32)
    out = np.empty_like(window)
    with torch.inference_mode():
        for k in range(window.shape[-1]):
            image = torch.from_numpy(np.ascontiguousarray(window[..., k]))[None, None]
            inputs = torch.cat([image, local_noise_std(image), torch.full_like(image, DOSE_FRACTION)], dim=1)
            out[..., k] = network(inputs)[0, 0].numpy()
    return out * np.float32(HU_HI - HU_LO) + np.float32(HU_LO)


def digests(paths) -> dict[str, str]:
    return {str(p): hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in paths}


def test_app_lists_the_denoise_task(app):
    info = app.info()
    assert list(info["models"]) == [MODEL]
    assert info["models"][MODEL]["type"] == "others"
    assert info["models"][MODEL]["config"]["hu_window"] == [HU_LO, HU_HI]


def test_dicom_series_is_denoised_like_the_network(app, network):
    files = sorted(SERIES.glob("*.dcm"))
    before = digests(files)
    result = app.infer({"model": MODEL, "image": str(SERIES)})
    assert digests(files) == before  # inputs untouched

    output = Path(result["file"])
    assert output.name.endswith(".nii.gz")
    image = nib.load(output)
    got = np.asarray(image.dataobj)
    assert got.dtype == np.float32

    datasets = sorted((pydicom.dcmread(f) for f in files), key=lambda ds: int(ds.InstanceNumber))
    # MONAI arrays are (columns, rows, slices): X along a row, Y down the columns
    hu = np.stack(
        [
            (ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).T
            for ds in datasets
        ],
        axis=-1,
    )
    assert got.shape == hu.shape == (512, 512, 4)
    assert result["params"]["shape"] == [512, 512, 4]
    diff = np.abs(got - expected_hu(network, hu))
    assert diff.max() <= TOLERANCE_HU, f"max |difference| {diff.max()} HU"
    assert np.abs(got - hu).mean() > 1.0  # and it really changed the image

    # affine: origin at the first slice's ImagePositionPatient, in-plane axes from orientation and pixel spacing
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    first = datasets[0]
    orientation = np.asarray(first.ImageOrientationPatient, float)
    row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
    affine = image.affine
    np.testing.assert_allclose(affine[:3, 3], lps_to_ras @ np.asarray(first.ImagePositionPatient, float), atol=1e-3)
    np.testing.assert_allclose(affine[:3, 0], lps_to_ras @ orientation[:3] * column_spacing, atol=1e-4)
    np.testing.assert_allclose(affine[:3, 1], lps_to_ras @ orientation[3:] * row_spacing, atol=1e-4)
    # and the whole affine is the one MONAI's DICOM loading (the bundle's reader) gives the input
    from monai.transforms import LoadImage

    from bundle.io import CTDicomReader

    loaded = LoadImage(reader=CTDicomReader(), image_only=True)(str(SERIES))
    np.testing.assert_allclose(affine, np.asarray(loaded.affine, float), atol=1e-4)
    output.unlink()


def test_nifti_volume_keeps_grid_and_matches_the_network(app, network, tmp_path):
    rng = np.random.default_rng(0)
    x, y = np.meshgrid(np.linspace(-1, 1, 48), np.linspace(-1, 1, 40), indexing="ij")
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2 < 1
    volume = np.stack([np.where(body, 40.0 + 300.0 * k * (np.abs(x) < 0.2), -1000.0) for k in range(3)], axis=-1)
    volume = (volume + rng.normal(0.0, 60.0, volume.shape)).astype(np.float32)
    volume[0, 0, 0], volume[1, 0, 0] = -3000.0, 4000.0  # outside the window: clipped like the bundle
    angle = np.deg2rad(10.0)
    affine = np.array(
        [
            [0.7 * np.cos(angle), -0.7 * np.sin(angle), 0.0, -120.5],
            [0.7 * np.sin(angle), 0.7 * np.cos(angle), 0.0, 80.25],
            [0.0, 0.0, 5.0, -300.0],
            [0.0, 0.0, 0.0, 1.0],
        ]
    )
    source = tmp_path / "ldct.nii.gz"
    nib.save(nib.Nifti1Image(volume, affine), source)
    before = digests([source])

    result = app.infer({"model": MODEL, "image": str(source)})
    assert digests([source]) == before

    output = nib.load(result["file"])
    got = np.asarray(output.dataobj)
    reference = nib.load(source)
    assert got.shape == reference.shape == (48, 40, 3)
    np.testing.assert_allclose(output.affine, reference.affine, atol=1e-5)
    diff = np.abs(got - expected_hu(network, np.asarray(reference.dataobj)))
    assert diff.max() <= TOLERANCE_HU, f"max |difference| {diff.max()} HU"
    assert got.min() >= HU_LO - TOLERANCE_HU and got.max() <= HU_HI + TOLERANCE_HU


def test_unknown_image_is_rejected_not_read_from_the_working_folder(app, monkeypatch):
    from monailabel.interfaces.exception import MONAILabelException

    monkeypatch.chdir(SERIES)  # a valid DICOM series: an unknown id resolves to "", which must not mean "."
    for image in ("no_such_image_id", str(SERIES / "no_such_file.nii.gz")):
        with pytest.raises(MONAILabelException, match="image not found"):
            app.infer({"model": MODEL, "image": image})

"""Dose fractions read from DICOM exposure tags, per slice, and the conditioning channel built from them."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
import torch
from monai.transforms import LoadImaged

from bundle.io import CTDicomReader, CTInputError, exposure_dose_fractions, exposure_mas
from bundle.transforms import AddDoseConditiond
from tests.dicom_factory import phantom_hu, write_ct_series


def _set(path, **tags):
    ds = pydicom.dcmread(path)
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    ds.save_as(path)


def test_exposure_tags_in_order_of_precision(tmp_path):
    (a, b, c, d) = write_ct_series(tmp_path, np.stack([phantom_hu(32)] * 4))
    _set(a, ExposureInuAs=50500, Exposure=50)
    _set(b, Exposure=100)
    _set(c, XRayTubeCurrent=200, ExposureTime=500)
    _set(d, Exposure="")
    assert exposure_mas(a) == pytest.approx(50.5)
    assert exposure_mas(b) == 100.0
    assert exposure_mas(c) == pytest.approx(100.0)
    with pytest.raises(CTInputError, match=r"slice_004\.dcm.*no positive ExposureInuAs, Exposure"):
        exposure_mas(d)
    assert exposure_dose_fractions([a, b, c], 200.0) == pytest.approx([0.2525, 0.5, 0.5])
    assert exposure_dose_fractions([b], 50.0) == [1.0]  # capped: more dose than the reference asks for nothing
    with pytest.raises(ValueError, match="reference_exposure_mas must be positive"):
        exposure_dose_fractions([b], 0.0)


def test_modulated_series_gets_a_dose_per_slice(tmp_path):
    paths = write_ct_series(tmp_path / "series", np.stack([phantom_hu(32, seed=i) for i in range(3)]))
    for path, mas in zip(paths, (40.0, 80.0, 160.0)):
        _set(path, Exposure=mas)
    loaded = LoadImaged(keys="image", reader=CTDicomReader(), ensure_channel_first=True)({"image": str(tmp_path / "series")})
    volume = loaded["image"]
    assert volume.shape == (1, 32, 32, 3)
    conditioned = AddDoseConditiond(keys="image", reference_exposure_mas=160.0)({"image": volume})["image"]
    order = [str(p) for p in volume.meta["source_files"]]
    expected = {str(p): mas / 160.0 for p, mas in zip(paths, (40.0, 80.0, 160.0))}
    for z, source in enumerate(order):
        torch.testing.assert_close(conditioned[2, ..., z].as_tensor(), torch.full((32, 32), expected[source]))
    # an item's own dose fraction wins; a plain tensor has no headers to read
    own = AddDoseConditiond(keys="image", reference_exposure_mas=160.0)({"image": volume, "dose_fraction": 0.3})
    torch.testing.assert_close(own["image"][2].as_tensor(), torch.full((32, 32, 3), 0.3))
    with pytest.raises(CTInputError, match="per-slice exposures need one DICOM file per slice"):
        AddDoseConditiond(keys="image", reference_exposure_mas=160.0)({"image": torch.zeros(1, 32, 32, 3)})

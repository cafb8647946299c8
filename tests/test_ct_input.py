"""CT input checks: DICOM to HU, bad files rejected with the file named, NIfTI checks, input discovery."""

import os

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from dicom_factory import phantom_hu, write_ct_series, write_ct_slice, write_enhanced_ct
from monai.data import MetaTensor
from monai.transforms import LoadImaged

from bundle.io import CTDicomReader, CTInputError, find_ct_inputs, read_ct_slice, require_checkpoint
from bundle.transforms import ValidateCTImaged


def load(path):
    """MONAI's DICOM readers put columns first (x, y), as ITK does: images come back transposed."""
    return LoadImaged("image", reader=CTDicomReader(), ensure_channel_first=True)({"image": str(path)})["image"]


@pytest.mark.parametrize("intercept,slope,signed", [(-1024.0, 1.0, False), (0.0, 1.0, True), (-1000.0, 0.5, True)])
def test_stored_values_become_hu(tmp_path, intercept, slope, signed):
    hu = np.round(phantom_hu(48) / slope) * slope  # representable exactly
    write_ct_slice(tmp_path / "a.dcm", hu, rescale_intercept=intercept, rescale_slope=slope, signed=signed)
    img = load(tmp_path / "a.dcm")
    assert img.shape == (1, 48, 48)
    np.testing.assert_allclose(img[0].numpy().T, hu.clip(min=intercept if not signed else None), atol=1e-4)
    np.testing.assert_allclose(read_ct_slice(tmp_path / "a.dcm").hu, img[0].numpy().T, atol=1e-4)


def test_series_folder_loads_as_volume_and_padding_becomes_air(tmp_path):
    volume = np.stack([phantom_hu(40, seed=i, noise_hu=5) for i in range(3)])
    volume[:, :3, :] = -3024.0  # padding outside the field of view, stored 0 with intercept -3024
    write_ct_series(tmp_path / "s", volume, rescale_intercept=-3024.0, pixel_padding_value=0)
    img = load(tmp_path / "s")
    assert img.shape == (1, 40, 40, 3)
    assert float(img[0, :, :3].max()) == -1024.0  # padding (first rows, transposed) replaced by air
    expected = np.round(volume[:, 3:, :]).transpose(2, 1, 0)
    np.testing.assert_allclose(img[0, :, 3:].numpy(), expected, atol=1e-4)
    assert read_ct_slice(tmp_path / "s" / "slice_001.dcm").padding[:3].all()


def test_enhanced_ct_loads_as_the_same_volume_as_a_series(tmp_path):
    volume = np.stack([np.round(phantom_hu(40, seed=i, noise_hu=5)) for i in range(3)])
    volume[:, :3, :] = -3024.0  # padding, stored 0 in every frame
    rescales = [(1.0, -3024.0), (0.5, -3024.0), (1.0, -3024.0)]  # each frame's own Pixel Value Transformation
    write_enhanced_ct(tmp_path / "enhanced.dcm", volume, rescale=rescales, pixel_padding_value=0)
    write_ct_series(tmp_path / "series", volume, rescale_intercept=-3024.0, pixel_padding_value=0)
    enhanced, series = load(tmp_path / "enhanced.dcm"), load(tmp_path / "series")
    assert enhanced.shape == series.shape == (1, 40, 40, 3)
    np.testing.assert_allclose(enhanced.numpy(), series.numpy(), atol=1e-4)
    np.testing.assert_allclose(enhanced.affine.numpy(), series.affine.numpy())
    assert float(enhanced[0, :, :3].max()) == -1024.0  # padding replaced by air
    assert enhanced.meta["source_files"] == [str(tmp_path / "enhanced.dcm")]


def test_bad_enhanced_ct_is_rejected_with_file_and_frame(tmp_path):
    path = tmp_path / "enhanced.dcm"
    write_enhanced_ct(path, np.stack([phantom_hu(32)] * 3))
    ds = pydicom.dcmread(path)
    orientation = ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    del ds.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence
    for index, frame in enumerate(ds.PerFrameFunctionalGroupsSequence):  # frame 2 tilted
        frame.PlaneOrientationSequence = pydicom.Sequence([pydicom.Dataset()])
        frame.PlaneOrientationSequence[0].ImageOrientationPatient = (
            [1.0, 0.0, 0.0, 0.0, 0.96592583, 0.25881905] if index == 1 else orientation[0].ImageOrientationPatient
        )
    ds.save_as(tmp_path / "tilted.dcm")
    with pytest.raises(CTInputError, match=r"tilted\.dcm: frame 2 has ImageOrientationPatient"):
        load(tmp_path / "tilted.dcm")

    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[2].PlanePositionSequence
    ds.save_as(tmp_path / "noposition.dcm")
    with pytest.raises(CTInputError, match=r"noposition\.dcm: frame 3 has no valid ImagePositionPatient"):
        load(tmp_path / "noposition.dcm")

    ds = pydicom.dcmread(path)
    del ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence
    ds.save_as(tmp_path / "norescale.dcm")
    with pytest.raises(CTInputError, match=r"norescale\.dcm: frame 1 has no RescaleSlope/RescaleIntercept"):
        load(tmp_path / "norescale.dcm")

    series = pydicom.dcmread(path).SeriesInstanceUID
    write_ct_slice(tmp_path / "single.dcm", phantom_hu(32), series_uid=series)
    load_files = LoadImaged("image", reader=CTDicomReader())
    with pytest.raises(CTInputError, match=r"enhanced\.dcm: multi-frame \(enhanced\) file in a series of 2 files"):
        load_files({"image": [str(path), str(tmp_path / "single.dcm")]})


def test_non_ct_is_rejected_with_file_name(tmp_path):
    path = tmp_path / "mr.dcm"
    write_ct_slice(path, phantom_hu(32), modality="MR")
    with pytest.raises(CTInputError, match=r"mr\.dcm: Modality is 'MR'"):
        load(path)


def test_missing_rescale_tags_are_rejected(tmp_path):
    path = tmp_path / "norescale.dcm"
    write_ct_slice(path, phantom_hu(32) + 1024, rescale_intercept=None, rescale_slope=None)
    with pytest.raises(CTInputError, match=r"norescale\.dcm: missing RescaleSlope and RescaleIntercept"):
        load(path)
    with pytest.raises(CTInputError, match="norescale.dcm"):
        read_ct_slice(path)


def test_corrupt_file_is_rejected(tmp_path):
    path = tmp_path / "broken.dcm"
    write_ct_slice(path, phantom_hu(32))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated pixel data
    with pytest.raises(CTInputError, match=r"broken\.dcm"):
        load(path)
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not a dicom file at all" * 10)
    with pytest.raises(CTInputError, match=r"garbage\.dcm: cannot read DICOM"):
        read_ct_slice(garbage)
    with pytest.raises(CTInputError, match=r"garbage\.dcm: cannot read DICOM"):
        load(garbage)


def test_mixed_series_folder_is_rejected(tmp_path):
    write_ct_slice(tmp_path / "a.dcm", phantom_hu(32), instance_number=1)
    write_ct_slice(tmp_path / "b.dcm", phantom_hu(32), instance_number=2)  # another SeriesInstanceUID
    with pytest.raises(CTInputError, match="SeriesInstanceUID"):
        load(tmp_path)


def test_validate_rejects_small_nan_and_wrong_shapes(tmp_path):
    check = ValidateCTImaged("image", min_size=21)
    small = tmp_path / "small.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((16, 30), np.float32), np.eye(4)), small)
    with pytest.raises(CTInputError, match=r"small\.nii\.gz: image of 16x30 pixels is smaller than the 21x21 kernel"):
        check({"image": load(small)})
    nan = tmp_path / "nan.nii.gz"
    data = np.zeros((32, 32), np.float32)
    data[3, 4] = np.nan
    nib.save(nib.Nifti1Image(data, np.eye(4)), nan)
    with pytest.raises(CTInputError, match=r"nan\.nii\.gz: 1 pixel values are NaN or infinite"):
        check({"image": load(nan)})
    volume = tmp_path / "vol.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 4), np.float32), np.eye(4)), volume)
    with pytest.raises(CTInputError, match=r"vol\.nii\.gz: expected a single-channel CT image \(1, H, W\)"):
        check({"image": load(volume)})
    ValidateCTImaged("image", min_size=21, allow_volume=True)({"image": load(volume)})


def test_validate_gives_slices_the_depth_axis_of_volumes(tmp_path):
    """inference.json's ValidateCTImaged(add_depth=True): a slice leaves as a one-slice volume, a volume unchanged."""
    add_depth = ValidateCTImaged("image", min_size=21, allow_volume=True, add_depth=True)
    slice_ = MetaTensor(torch.arange(32.0 * 24).reshape(1, 32, 24), meta={"filename_or_obj": "slice.dcm"})
    out = add_depth({"image": slice_})["image"]
    assert out.shape == (1, 32, 24, 1) and out.meta["filename_or_obj"] == "slice.dcm"
    torch.testing.assert_close(out[..., 0], slice_.as_tensor())
    volume = torch.zeros(1, 32, 24, 3)
    assert add_depth({"image": volume})["image"] is volume
    assert add_depth({"image": np.zeros((1, 32, 24), np.float32)})["image"].shape == (1, 32, 24, 1)
    with pytest.raises(ValueError, match="add_depth=True gives .* it needs allow_volume=True"):
        ValidateCTImaged("image", add_depth=True)


def test_find_ct_inputs_lists_series_folders_and_nifti(tmp_path):
    write_ct_series(tmp_path / "patient1" / "series1", np.stack([phantom_hu(24)] * 2))
    write_ct_series(tmp_path / "patient2" / "ct", np.stack([phantom_hu(24)]))
    nib.save(nib.Nifti1Image(np.zeros((24, 24, 2), np.float32), np.eye(4)), tmp_path / "vol.nii.gz")
    (tmp_path / "notes.txt").write_text("not an image")
    items = find_ct_inputs(tmp_path)
    found = [item["image"] for item in items if "skipped" not in item]
    relative = [[os.path.relpath(p, tmp_path) for p in f] if isinstance(f, list) else os.path.relpath(f, tmp_path)
                for f in found]
    assert relative == [
        [os.path.join("patient1", "series1", f"slice_00{k}.dcm") for k in (1, 2)],
        [os.path.join("patient2", "ct", "slice_001.dcm")],
        "vol.nii.gz",
    ]
    assert [item["output_stem"] for item in items if "output_stem" in item] == [
        os.path.join("patient1", "series1"),
        os.path.join("patient2", "ct"),
    ]
    assert [(item["source"], item["skipped"]) for item in items if "skipped" in item] == [
        (str(tmp_path / "notes.txt"), "not DICOM or NIfTI")
    ]
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no DICOM series or NIfTI files"):
        find_ct_inputs(tmp_path / "empty")


def test_missing_checkpoint_says_how_to_get_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="run training"):
        require_checkpoint(tmp_path / "model.pt")

"""DICOM in -> DICOM out: the inference config writes a derived series per input series, read back by three readers."""

from __future__ import annotations

import math
import shutil
import subprocess
from pathlib import Path

import highdicom as hd
import itk
import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import phantom_hu, write_ct_slice, write_enhanced_ct
from monai.transforms import LoadImage
from pydicom import config as pydicom_config
from pydicom.pixels import get_encoder
from pydicom.uid import JPEG2000Lossless, JPEGLosslessSV1, JPEGLSLossless, RLELossless, generate_uid
from test_workflows import near_identity_checkpoint, tree_digest, workflow

from bundle.io import CTDicomReader, CTInputError, SaveCTSeriesd, find_ct_inputs

SIZE = 32
GEOMETRY_TAGS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness", "Rows", "Columns")
KEPT_TAGS = ("PatientID", "PatientName", "StudyInstanceUID", "Modality", "InstanceNumber", "RescaleIntercept")


@pytest.fixture(scope="module")
def identity_ckpt(tmp_path_factory) -> Path:
    return near_identity_checkpoint(tmp_path_factory.mktemp("ckpt") / "identity.pt")


def run_inference(ckpt: Path, dataset_dir: Path, output_dir: Path, **overrides) -> None:
    flow = workflow(
        "infer",
        ["inference.json"],
        ckpt_path=str(ckpt),
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        **overrides,
    )
    flow.run()
    flow.finalize()


def slice_hu(seed: int) -> np.ndarray:
    """Integer HU inside the model's window [-1024, 3072], so a pass-through output must equal it after rounding."""
    return np.clip(np.round(phantom_hu(SIZE, seed=seed, noise_hu=20.0)), -1000, 3000)


def write_series(
    folder: Path, n: int = 3, prefix: str = "img", z_positions: list[float] | None = None, **kwargs
) -> list[Path]:
    """``n`` slices of one new series; file names run against InstanceNumber, so slice order cannot come from them."""
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    z_positions = z_positions or [5.0 * i for i in range(n)]
    paths = [folder / f"{prefix}{n - index:03d}.dcm" for index in range(n)]
    for index, path in enumerate(paths):
        write_ct_slice(
            path, slice_hu(index), series_uid=series_uid, instance_number=index + 1, z_mm=z_positions[index], **kwargs
        )
    return paths


def stored_hu(ds: pydicom.Dataset) -> np.ndarray:
    """HU from stored values (rows, columns) with pydicom only."""
    return ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)


def check_valid(path: Path) -> None:
    """Every value must conform to its VR: pydicom's strict reading validates each element as it is decoded
    (pydicom has no IOD-level validator; ``test_outputs_pass_dciodvfy`` runs dicom3tools' when installed)."""
    with pydicom_config.strict_reading():
        for element in pydicom.dcmread(path).iterall():
            assert element.value is not None or element.VR != "SQ"


def check_derived_series(inputs: list[Path], outputs: list[Path]) -> None:
    """Tags, UIDs, references and pixels of derived files against their sources (pass-through network)."""
    sources = [pydicom.dcmread(p) for p in inputs]
    derived = [pydicom.dcmread(p) for p in outputs]
    assert len({ds.SeriesInstanceUID for ds in derived}) == 1
    assert derived[0].SeriesInstanceUID not in {ds.SeriesInstanceUID for ds in sources}
    new_uids = {ds.SOPInstanceUID for ds in derived}
    assert len(new_uids) == len(derived) and not new_uids & {ds.SOPInstanceUID for ds in sources}
    for path, src, out in zip(outputs, sources, derived):
        check_valid(path)
        for tag in GEOMETRY_TAGS + KEPT_TAGS:
            assert out.get(tag) == src.get(tag), tag
        assert out.file_meta.MediaStorageSOPInstanceUID == out.SOPInstanceUID
        assert list(out.ImageType[:2]) == ["DERIVED", "SECONDARY"]
        assert out.SeriesDescription == f"{src.get('SeriesDescription', '')} (denoised by StructKPN)".strip()
        assert "StructKPN" in out.DerivationDescription
        (reference,) = out.SourceImageSequence
        assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == (
            src.SOPClassUID,
            src.SOPInstanceUID,
        )
        expected = stored_hu(src)
        if "PixelPaddingValue" in src:
            padding = src.pixel_array == src.PixelPaddingValue
            assert padding.any()
            np.testing.assert_array_equal(out.pixel_array[padding], src.pixel_array[padding])
            expected[padding] = stored_hu(out)[padding]  # compared above, in stored values
        np.testing.assert_allclose(stored_hu(out), expected, atol=1.0)


@pytest.mark.parametrize(
    "intercept,signed,padding",
    [(-1024.0, False, 0), (0.0, True, -2000), (-1000.0, True, -32768), (-1000.0, False, None)],
    ids=["intercept-1024-unsigned", "intercept0-signed", "intercept-1000-signed", "intercept-1000-unsigned-nopad"],
)
def test_dicom_series_becomes_derived_dicom_series(tmp_path, identity_ckpt, intercept, signed, padding):
    data, out = tmp_path / "data", tmp_path / "out"
    inputs = write_series(
        data / "patient" / "ct", signed=signed, rescale_intercept=intercept, pixel_padding_value=padding
    )
    if padding is not None:  # the corners outside the field of view hold the padding value
        for path in inputs:
            ds = pydicom.dcmread(path)
            stored = ds.pixel_array.copy()
            stored[:4, :4] = stored[-4:, -6:] = padding
            ds.PixelData = stored.tobytes()
            ds.save_as(path)
    before = tree_digest(data)
    run_inference(identity_ckpt, data, out)
    assert tree_digest(data) == before, "inputs must never be modified"

    outputs = [out / p.relative_to(data) for p in inputs]
    assert sorted(out.rglob("*")) == sorted([out / "patient", out / "patient" / "ct", *outputs]), "one file per input"
    check_derived_series(inputs, outputs)

    # MONAI reads the derived series as the same volume (padding becomes air in both)
    monai_in = LoadImage(reader=CTDicomReader(), image_only=True)(str(data / "patient" / "ct"))
    monai_out = LoadImage(reader=CTDicomReader(), image_only=True)(str(out / "patient" / "ct"))
    np.testing.assert_allclose(monai_out.numpy(), monai_in.numpy(), atol=1.0)
    np.testing.assert_allclose(monai_out.affine.numpy(), monai_in.affine.numpy())

    # ITK (GDCM) reads the folder as a series with the same geometry and HU
    itk_in, itk_out = itk.imread(str(data / "patient" / "ct")), itk.imread(str(out / "patient" / "ct"))
    np.testing.assert_allclose(itk.array_from_image(itk_out), itk.array_from_image(itk_in), atol=1.0)
    for attribute in ("GetOrigin", "GetSpacing"):
        np.testing.assert_allclose(np.asarray(getattr(itk_out, attribute)()), np.asarray(getattr(itk_in, attribute)()))
    np.testing.assert_allclose(
        itk.array_from_matrix(itk_out.GetDirection()), itk.array_from_matrix(itk_in.GetDirection())
    )


def compress_with_gdcm(path: Path, scratch: Path) -> None:
    """JPEG Lossless (process 14, SV1) has no Python encoder: GDCM, through ITK, encodes the pixels, which replace
    ``path``'s own."""
    ds = pydicom.dcmread(path)
    image = itk.image_from_array(ds.pixel_array)
    io = itk.GDCMImageIO.New()
    io.SetCompressionType(itk.GDCMImageIOEnums.Compression_JPEG)
    encoded = scratch / path.name
    itk.ImageFileWriter[type(image)].New(Input=image, FileName=str(encoded), ImageIO=io, UseCompression=True).Update()
    gdcm = pydicom.dcmread(encoded)
    assert gdcm.file_meta.TransferSyntaxUID == JPEGLosslessSV1
    ds["PixelData"] = gdcm["PixelData"]
    ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
    ds.save_as(path)


@pytest.mark.parametrize(
    "syntax", [RLELossless, JPEG2000Lossless, JPEGLSLossless, JPEGLosslessSV1], ids=lambda s: s.name
)
@pytest.mark.parametrize("signed", [False, True], ids=["unsigned", "signed"])
def test_compressed_input_is_decoded(tmp_path, identity_ckpt, syntax, signed):
    if syntax != JPEGLosslessSV1 and not get_encoder(syntax).is_available:
        pytest.skip(f"no pixel data encoder for {syntax.name} is installed")
    data, out, scratch = tmp_path / "data", tmp_path / "out", tmp_path / "scratch"
    scratch.mkdir()
    inputs = write_series(data / "ct", n=2, signed=signed, rescale_intercept=-1024.0)
    stored = [pydicom.dcmread(p).pixel_array for p in inputs]
    for path, expected in zip(inputs, stored):
        if syntax == JPEGLosslessSV1:
            compress_with_gdcm(path, scratch)
        else:
            ds = pydicom.dcmread(path)
            ds.compress(syntax)
            ds.save_as(path)
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == syntax
        np.testing.assert_array_equal(ds.pixel_array, expected)  # lossless
    run_inference(identity_ckpt, data, out)
    outputs = [out / p.relative_to(data) for p in inputs]
    check_derived_series(inputs, outputs)
    for path, expected in zip(outputs, stored):
        np.testing.assert_allclose(pydicom.dcmread(path).pixel_array, expected, atol=1)


def test_two_series_in_one_folder_give_two_derived_series(tmp_path, identity_ckpt):
    data, out = tmp_path / "data", tmp_path / "out"
    first = write_series(data / "mixed", n=3)
    second = write_series(data / "mixed", n=2, prefix="other")
    inputs = find_ct_inputs(data)
    assert sorted(map(sorted, (item["image"] for item in inputs))) == sorted(
        [sorted(map(str, s)) for s in (first, second)]
    )

    run_inference(identity_ckpt, data, out)
    for series in (first, second):
        check_derived_series(series, [out / "mixed" / p.name for p in series])
    uids = {pydicom.dcmread(p).SeriesInstanceUID for p in (out / "mixed").iterdir()}
    assert len(uids) == 2
    assert len(list((out / "mixed").iterdir())) == len(first) + len(second)


def test_series_mixing_geometries_in_a_shared_folder_is_rejected(tmp_path):
    series_uid = generate_uid()
    write_ct_slice(tmp_path / "a.dcm", slice_hu(0), series_uid=series_uid, instance_number=1)
    write_ct_slice(tmp_path / "b.dcm", slice_hu(1)[:-2], series_uid=series_uid, instance_number=2)
    write_ct_slice(tmp_path / "c.dcm", slice_hu(2), instance_number=1)
    item = next(i for i in find_ct_inputs(tmp_path) if len(i["image"]) == 2)
    with pytest.raises(CTInputError, match="b.dcm: Rows"):
        LoadImage(reader=CTDicomReader(), image_only=True)(item["image"])


def test_gantry_tilt_and_uneven_spacing_keep_each_slice_geometry(tmp_path, identity_ckpt):
    data, out = tmp_path / "data", tmp_path / "out"
    inputs = write_series(data / "tilted", n=4, z_positions=[0.0, 5.0, 7.5, 15.0])
    tilt = math.radians(15.0)
    for index, path in enumerate(inputs):  # tilted about x; slices shifted in y along the tilt, unevenly in z
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, round(math.cos(tilt), 6), round(math.sin(tilt), 6)]
        z = float(ds.ImagePositionPatient[2])
        ds.ImagePositionPatient = [-10.0, round(-20.0 + z * math.tan(tilt), 4), z]
        ds.save_as(path)
    run_inference(identity_ckpt, data, out)
    outputs = [out / p.relative_to(data) for p in inputs]
    check_derived_series(inputs, outputs)  # geometry tags of every slice equal its own source's


def test_nifti_input_keeps_nifti_output(tmp_path, identity_ckpt):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    volume = np.stack([slice_hu(0), slice_hu(1)], axis=-1).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.diag([0.7, 0.7, 5.0, 1.0])), data / "vol.nii.gz")
    run_inference(identity_ckpt, data, out)
    assert [p.name for p in out.iterdir()] == ["vol_denoised.nii.gz"]
    np.testing.assert_allclose(nib.load(out / "vol_denoised.nii.gz").get_fdata(), volume, atol=0.05)


def test_output_format_nifti_writes_nifti_for_dicom_input(tmp_path, identity_ckpt):
    data, out = tmp_path / "data", tmp_path / "out"
    inputs = write_series(data / "ct", n=2)
    run_inference(identity_ckpt, data, out, output_format="nifti")
    assert [p.name for p in out.iterdir()] == ["ct_denoised.nii.gz"]
    volume = nib.load(out / "ct_denoised.nii.gz").get_fdata()
    for index, path in enumerate(inputs):  # the volume's slice k is InstanceNumber k + 1, columns first
        np.testing.assert_allclose(volume[..., index].T, stored_hu(pydicom.dcmread(path)), atol=0.05)


def test_long_description_is_shortened_and_inputs_are_never_overwritten(tmp_path):
    write_ct_slice(tmp_path / "a.dcm", slice_hu(0))
    ds = pydicom.dcmread(tmp_path / "a.dcm")
    ds.SeriesDescription = "x" * 64  # the longest LO value
    ds.save_as(tmp_path / "a.dcm")
    volume = LoadImage(reader=CTDicomReader(), image_only=True, ensure_channel_first=True)(str(tmp_path / "a.dcm"))
    volume = volume.unsqueeze(-1)  # (1, X, Y, 1)
    saver = SaveCTSeriesd("pred", output_dir=tmp_path / "out", data_root_dir=tmp_path)
    (written,) = saver.write_series(volume, [str(tmp_path / "a.dcm")])
    description = pydicom.dcmread(written).SeriesDescription
    assert len(description) == 64 and description.endswith(" (denoised by StructKPN)")
    check_valid(written)
    before = tree_digest(tmp_path)
    in_place = SaveCTSeriesd("pred", output_dir=tmp_path, data_root_dir=tmp_path)
    with pytest.raises(ValueError, match="inputs are never overwritten"):
        in_place.write_series(volume, [str(tmp_path / "a.dcm")])
    assert tree_digest(tmp_path) == before


def frames_hu(ds: pydicom.Dataset) -> np.ndarray:
    """HU (F, rows, columns) of a multi-frame image, each frame with its own rescale, read by highdicom."""
    image = hd.Image.from_dataset(ds, copy=False)
    return np.stack([image.get_frame(k + 1, apply_modality_transform=True) for k in range(image.number_of_frames)])


def write_enhanced(path: Path, frames: int = 3, **kwargs) -> Path:
    """``frames`` noisy 64x64 phantom frames in one Enhanced CT file, padding in two corners when
    ``pixel_padding_value`` is given."""
    volume = np.stack([np.clip(np.round(phantom_hu(64, seed=k, noise_hu=20.0)), -1000, 3000) for k in range(frames)])
    path.parent.mkdir(parents=True, exist_ok=True)
    write_enhanced_ct(path, volume, z_positions=[0.0, 5.0, 12.5][:frames], **kwargs)
    if "pixel_padding_value" in kwargs:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.copy()
        stored[:, :4, :4] = stored[:, -4:, -6:] = kwargs["pixel_padding_value"]
        ds.PixelData = stored.tobytes()
        ds.save_as(path)
    return path


@pytest.mark.parametrize(
    "rescale,signed,padding",
    [((1.0, -1024.0), False, 0), ([(1.0, -1024.0), (0.5, -1000.0), (1.0, -2048.0)], True, -32768)],
    ids=["shared-rescale-unsigned", "per-frame-rescale-signed"],
)
def test_enhanced_ct_becomes_one_derived_enhanced_ct_file(tmp_path, identity_ckpt, rescale, signed, padding):
    data, out = tmp_path / "data", tmp_path / "out"
    source_path = write_enhanced(
        data / "patient" / "enhanced.dcm", rescale=rescale, signed=signed, pixel_padding_value=padding
    )
    before = tree_digest(data)
    run_inference(identity_ckpt, data, out)
    assert tree_digest(data) == before, "inputs must never be modified"
    output = out / "patient" / "enhanced.dcm"
    assert sorted(out.rglob("*")) == [out / "patient", output], "one multi-frame file per multi-frame input"
    check_valid(output)

    src, derived = pydicom.dcmread(source_path), pydicom.dcmread(output)
    assert derived.SOPClassUID == src.SOPClassUID == pydicom.uid.EnhancedCTImageStorage
    assert derived.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian
    assert derived.SOPInstanceUID != src.SOPInstanceUID
    (evidence,) = derived.SourceImageEvidenceSequence[0].ReferencedSeriesSequence
    assert evidence.SeriesInstanceUID == src.SeriesInstanceUID
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert derived.file_meta.MediaStorageSOPInstanceUID == derived.SOPInstanceUID
    assert derived.SeriesInstanceUID != src.SeriesInstanceUID
    for tag in ("PatientID", "PatientName", "StudyInstanceUID", "FrameOfReferenceUID", "NumberOfFrames", "Rows"):
        assert derived.get(tag) == src.get(tag), tag
    assert derived.SeriesDescription == "(denoised by StructKPN)"
    assert list(derived.ImageType) == ["DERIVED", "PRIMARY", *src.ImageType[2:]]
    shared, src_shared = derived.SharedFunctionalGroupsSequence[0], src.SharedFunctionalGroupsSequence[0]
    assert list(shared.CTImageFrameTypeSequence[0].FrameType[:2]) == ["DERIVED", "PRIMARY"]
    for group in ("PlaneOrientationSequence", "PixelMeasuresSequence", "FrameAnatomySequence"):
        assert shared[group] == src_shared[group], group
    assert shared.get("PixelValueTransformationSequence") == src_shared.get("PixelValueTransformationSequence")
    for index, (frame, src_frame) in enumerate(
        zip(derived.PerFrameFunctionalGroupsSequence, src.PerFrameFunctionalGroupsSequence, strict=True)
    ):
        for group in ("PlanePositionSequence", "FrameContentSequence", "PixelValueTransformationSequence"):
            assert frame.get(group) == src_frame.get(group), (index, group)
        (derivation,) = frame.DerivationImageSequence
        assert "StructKPN" in derivation.DerivationDescription
        (reference,) = derivation.SourceImageSequence
        assert (reference.ReferencedSOPClassUID, reference.ReferencedSOPInstanceUID) == (
            src.SOPClassUID,
            src.SOPInstanceUID,
        )
        assert reference.ReferencedFrameNumber == index + 1

    # pass-through network: the same HU (highdicom applies each frame's rescale), padding kept in stored values
    padding_mask = src.pixel_array == padding
    assert padding_mask.any()
    np.testing.assert_array_equal(derived.pixel_array[padding_mask], src.pixel_array[padding_mask])
    expected, got = frames_hu(src), frames_hu(derived)
    np.testing.assert_allclose(got[~padding_mask], expected[~padding_mask], atol=1.0)

    # MONAI reads both as the same volume with the same affine
    monai_in = LoadImage(reader=CTDicomReader(), image_only=True)(str(source_path))
    monai_out = LoadImage(reader=CTDicomReader(), image_only=True)(str(output))
    assert monai_out.shape == (64, 64, 3)
    np.testing.assert_allclose(monai_out.numpy(), monai_in.numpy(), atol=1.0)
    np.testing.assert_allclose(monai_out.affine.numpy(), monai_in.affine.numpy())

    # ITK (GDCM) reads the same geometry and values (GDCM applies the first frame's rescale to all frames)
    itk_in, itk_out = itk.imread(str(source_path)), itk.imread(str(output))
    np.testing.assert_allclose(itk.array_from_image(itk_out), itk.array_from_image(itk_in), atol=1.0)
    if isinstance(rescale[0], float):
        np.testing.assert_allclose(itk.array_from_image(itk_out)[~padding_mask], expected[~padding_mask], atol=1.0)
    for attribute in ("GetOrigin", "GetSpacing"):
        np.testing.assert_allclose(np.asarray(getattr(itk_out, attribute)()), np.asarray(getattr(itk_in, attribute)()))


def dciodvfy_messages(path: Path) -> list[str]:
    """dciodvfy's (dicom3tools) Error and Warning lines for ``path``, DICOMDIR hints left out."""
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    lines = (result.stdout + result.stderr).splitlines()
    return [line for line in lines if line.startswith(("Error", "Warning")) and "needed to build DICOMDIR" not in line]


@pytest.mark.skipif(
    shutil.which("dciodvfy") is None,
    reason="dciodvfy not on PATH: install dicom3tools (apt-get install -y --no-install-recommends dicom3tools)",
)
def test_outputs_pass_dciodvfy(tmp_path, identity_ckpt):
    data, out = tmp_path / "data", tmp_path / "out"
    series = write_series(data / "ct", n=2, pixel_padding_value=0)
    enhanced = write_enhanced(data / "enhanced" / "enhanced.dcm", rescale=[(1.0, -1024.0), (0.5, -1000.0)], frames=2)
    run_inference(identity_ckpt, data, out)
    for source in (series[0], enhanced):
        assert dciodvfy_messages(source) == [], f"the factory's source {source.name} must be valid"
        messages = dciodvfy_messages(out / source.relative_to(data))
        assert [line for line in messages if line.startswith("Error")] == [], messages

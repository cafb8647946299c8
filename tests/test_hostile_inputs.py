"""Inference on hostile but realistic inputs (issue 15): each case is built with pydicom and run through inference.json.

The identity network (see ``near_identity_checkpoint``) makes every output checkable against its input exactly.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from dicom_factory import phantom_hu, write_ct_slice
from monai.transforms import LoadImage
from pydicom.fileset import FileSet
from pydicom.filewriter import dcmwrite
from pydicom.uid import SecondaryCaptureImageStorage, generate_uid
from test_dicom_output import run_inference, slice_hu, stored_hu, write_series
from test_workflows import CONFIGS, LOGGING, META, REPO, near_identity_checkpoint, tree_digest

from bundle.engines import InferenceFailed
from bundle.io import CTDicomReader, CTInputError, OutputDirError, SaveCTSeriesd, find_ct_inputs


@pytest.fixture(scope="module")
def identity_ckpt(tmp_path_factory) -> Path:
    return near_identity_checkpoint(tmp_path_factory.mktemp("ckpt") / "identity.pt")


@pytest.fixture
def bundle_log():
    """Records of the bundle's loggers (the bundle's logging.conf replaces the root handlers, caplog's too)."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append
    logger = logging.getLogger("bundle")
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)
    logger.setLevel(level)


def failure_of(ckpt: Path, data: Path, out: Path, **overrides) -> InferenceFailed:
    """Run inference expecting it to fail at the end; returns the InferenceFailed (MONAI wraps it)."""
    with pytest.raises(Exception) as raised:
        run_inference(ckpt, data, out, **overrides)
    error = raised.value
    while not isinstance(error, InferenceFailed) and error.__cause__ is not None:
        error = error.__cause__
    assert isinstance(error, InferenceFailed), raised.value
    return error


def files_under(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


# --- 1. every output inside output_dir -------------------------------------------------------------------------


def test_nifti_output_of_a_series_directly_in_dataset_dir_stays_in_output_dir(tmp_path, identity_ckpt):
    data, out = tmp_path / "ct", tmp_path / "out"
    inputs = write_series(data, n=2)
    run_inference(identity_ckpt, data, out, output_format="nifti")
    assert files_under(out) == ["ct_denoised.nii.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "out"]  # nothing beside output_dir
    volume = nib.load(out / "ct_denoised.nii.gz").get_fdata()
    for index, path in enumerate(inputs):
        np.testing.assert_allclose(volume[..., index].T, stored_hu(pydicom.dcmread(path)), atol=0.05)


# --- 2. no slice dropped -----------------------------------------------------------------------------------------


def write_without_preamble(path: Path) -> None:
    """Rewrite ``path`` as a bare dataset: no 128-byte preamble, no DICM prefix, no file meta (implicit VR LE)."""
    ds = pydicom.dcmread(path)
    del ds.file_meta
    ds.preamble = None
    path.unlink()
    dcmwrite(path, ds, implicit_vr=True, little_endian=True)


def test_slices_without_instance_number_or_preamble_are_all_processed(tmp_path, identity_ckpt):
    data, out = tmp_path / "data", tmp_path / "out"
    inputs = write_series(data / "ct", n=3, z_positions=[0.0, 5.0, 10.0])
    ds = pydicom.dcmread(inputs[1])
    del ds.InstanceNumber  # Type 2: may be absent ...
    ds.save_as(inputs[1])
    ds = pydicom.dcmread(inputs[2])
    ds.InstanceNumber = None  # ... or empty
    ds.save_as(inputs[2])
    write_without_preamble(inputs[0])
    assert not pydicom.misc.is_dicom(inputs[0])
    run_inference(identity_ckpt, data, out)
    for path in inputs:
        derived = pydicom.dcmread(out / path.relative_to(data))
        np.testing.assert_allclose(stored_hu(derived), slice_hu(inputs.index(path)), atol=1.0)
    # NIfTI output stacks them by position along the slice normal (z 0, 5, 10: inputs in order)
    run_inference(identity_ckpt, data, tmp_path / "nifti", output_format="nifti")
    volume = nib.load(tmp_path / "nifti" / "ct_denoised.nii.gz").get_fdata()
    assert volume.shape[-1] == 3
    for index in range(3):
        np.testing.assert_allclose(volume[..., index].T, slice_hu(index), atol=0.05)


def test_slice_without_instance_number_and_position_fails_its_series(tmp_path):
    inputs = write_series(tmp_path / "ct", n=2)
    ds = pydicom.dcmread(inputs[0])
    del ds.InstanceNumber, ds.ImagePositionPatient
    ds.save_as(inputs[0])
    with pytest.raises(CTInputError, match=rf"{inputs[0].name}: no InstanceNumber and no ImagePositionPatient"):
        LoadImage(reader=CTDicomReader(), image_only=True)([str(p) for p in inputs])


# --- 3. DICOMDIR file sets and folders with subfolders -----------------------------------------------------------


def test_dicomdir_file_set_and_series_folder_with_subfolder_load(tmp_path, identity_ckpt):
    data, out = tmp_path / "data", tmp_path / "out"
    scratch = write_series(tmp_path / "scratch", n=2)
    file_set = FileSet()
    for path in scratch:
        file_set.add(pydicom.dcmread(path))
    file_set.write(data / "cd")  # DICOMDIR + PT000000/ST000000/SE000000/IM00000{0,1}
    shutil.rmtree(tmp_path / "scratch")
    in_set = sorted(p for p in (data / "cd").rglob("IM*"))
    assert (data / "cd" / "DICOMDIR").is_file() and len(in_set) == 2
    top = write_series(data / "series", n=2)  # a series folder ...
    nested = write_series(data / "series" / "sub", n=2, prefix="sub")  # ... holding a subfolder
    run_inference(identity_ckpt, data, out)
    expected = sorted(str(p.relative_to(data)) for p in [*in_set, *top, *nested])
    assert files_under(out) == expected  # DICOMDIR itself skipped
    skipped = [item for item in find_ct_inputs(data) if "skipped" in item]
    assert [Path(item["image"]).name for item in skipped] == ["DICOMDIR"]
    # the reader given a folder (as MONAI Label does) reads its own DICOM files, not its subfolder or notes
    (data / "series" / "notes").write_text("scanned on the old scanner")
    volume = LoadImage(reader=CTDicomReader(), image_only=True)(str(data / "series"))
    assert volume.shape == (32, 32, 2) and volume.meta["source_files"] == [str(p) for p in top]


# --- 4. output inside the input tree, derived series never re-read -----------------------------------------------


def test_output_dir_inside_dataset_dir_is_refused_before_any_work(tmp_path, identity_ckpt):
    data = tmp_path / "data"
    write_series(data / "ct", n=2)
    before = tree_digest(data)
    for out in (data, data / "out"):
        with pytest.raises(Exception) as raised:
            run_inference(identity_ckpt, data, out)
        causes = [raised.value]
        while causes[-1].__cause__ is not None:
            causes.append(causes[-1].__cause__)
        assert any(isinstance(e, OutputDirError) and str(e).startswith(str(out)) for e in causes)
        assert tree_digest(data) == before and not (data / "out").exists()


def test_outputs_copied_into_the_input_tree_are_never_read_back(tmp_path, identity_ckpt):
    data, out = tmp_path / "data", tmp_path / "out"
    write_series(data / "ct", n=2)
    volume = np.stack([slice_hu(0), slice_hu(1)], -1).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), data / "vol.nii.gz")
    run_inference(identity_ckpt, data, out)
    shutil.copytree(out, data / "previous_run")  # a user moves the outputs in with their inputs
    items = find_ct_inputs(data)
    skipped = [item for item in items if "skipped" in item]
    assert sorted(Path(item["image"]).relative_to(data).parts[:2] for item in skipped) == [
        ("previous_run", "ct"),
        ("previous_run", "vol_denoised.nii.gz"),
    ]
    assert all(item["skipped"].startswith("output of this bundle") for item in skipped)
    run_inference(identity_ckpt, data, tmp_path / "out2")
    assert files_under(tmp_path / "out2") == files_under(out)


# --- 5. one bad series never stops the others; fail_fast --------------------------------------------------------


def write_bad_series(data: Path) -> dict[str, str]:
    """Failing series (folder -> expected message) between good ones (folders a_good, z_good)."""
    write_series(data / "a_good", n=2)
    small = data / "b_small"
    small.mkdir(parents=True)
    write_ct_slice(small / "s.dcm", phantom_hu(16))  # smaller than the 21 x 21 kernel
    truncated = write_series(data / "c_truncated", n=2)
    truncated[1].write_bytes(truncated[1].read_bytes()[:-100])
    mixed = write_series(data / "d_mixed", n=2)
    ds = pydicom.dcmread(mixed[1])
    ds.PixelSpacing = [0.5, 0.5]  # same series, another grid
    ds.save_as(mixed[1])
    write_series(data / "z_good", n=2)
    return {
        "b_small": "s.dcm: image of 16x16 pixels is smaller than the 21x21 kernel",
        "c_truncated": f"{truncated[1].name}: ",
        "d_mixed": f"PixelSpacing [0.7, 0.7] differs from [0.5, 0.5] in {mixed[1]}",
    }


def test_bad_series_do_not_stop_the_good_ones(tmp_path, identity_ckpt, bundle_log):
    data, out = tmp_path / "data", tmp_path / "out"
    expected = write_bad_series(data)
    write_series(data / "e_mr", n=2, modality="MR")
    sc = write_series(data / "f_secondary_capture", n=1)
    ds = pydicom.dcmread(sc[0])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    ds.save_as(sc[0])
    error = failure_of(identity_ckpt, data, out)
    message = str(error)
    assert message.startswith("3 of 7 inputs failed; 2 processed, 2 skipped:")
    for folder, problem in expected.items():
        assert f"{data / folder}" in message and problem in message, (folder, message)
    assert sorted({Path(p).parts[0] for p in files_under(out)}) == ["a_good", "z_good"]
    summary = next(r.getMessage() for r in bundle_log if r.getMessage().startswith("inference summary"))
    assert "2 processed, 2 skipped, 3 failed, of 7 inputs" in summary
    assert "Modality 'MR'" in summary and "Secondary Capture Image Storage" in summary


@pytest.mark.parametrize("value", [True, "true"])
def test_fail_fast_stops_at_the_first_failure(tmp_path, identity_ckpt, value):
    data, out = tmp_path / "data", tmp_path / "out"
    write_bad_series(data)
    error = failure_of(identity_ckpt, data, out, fail_fast=value)
    assert str(error).startswith("1 of 2 inputs failed (fail_fast: stopped at the first failure); 1 processed")
    assert "s.dcm: image of 16x16 pixels" in str(error)
    assert sorted({Path(p).parts[0] for p in files_under(out)}) == ["a_good"]


# --- 6. series-level atomicity ------------------------------------------------------------------------------------

KILL_AFTER_FIRST_SLICE = """
import os, signal, sys
import bundle.io.series_writer as writer
from monai.transforms import LoadImage
from bundle.io import CTDicomReader, SaveCTSeriesd
sources = sys.argv[3:]
volume = LoadImage(reader=CTDicomReader(), image_only=True, ensure_channel_first=True)(sources)
calls = []
original = writer.write_derived_slice
def write_then_die(*args, **kwargs):
    calls.append(original(*args, **kwargs))
    if len(calls) == 1:
        os.kill(os.getpid(), signal.SIGKILL)  # the power goes after the first slice
    return calls[-1]
writer.write_derived_slice = write_then_die
saver = SaveCTSeriesd("pred", output_dir=sys.argv[1], data_root_dir=sys.argv[2])
saver.write_series(volume, volume.meta["source_files"])
"""


def test_a_killed_run_leaves_no_partial_series_and_a_rerun_cleans_up(tmp_path, identity_ckpt):
    data, out = tmp_path / "data", tmp_path / "out"
    inputs = write_series(data / "ct", n=3)
    sources = [str(p) for p in sorted(inputs, key=lambda p: pydicom.dcmread(p).InstanceNumber)]
    result = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_FIRST_SLICE, str(out), str(data), *sources],
        cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)), capture_output=True, text=True,
    )
    assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
    assert not (out / "ct").exists()  # no valid-looking one-slice series
    leftovers = [p for p in out.iterdir()]
    assert len(leftovers) == 1 and leftovers[0].name.startswith(".structkpn-partial-")
    (out / "ct").mkdir()
    (out / "ct" / f".img001.partial-{2**22 + 12345}.dcm").write_bytes(b"")  # atomic_output's file of a dead run
    run_inference(identity_ckpt, data, out)
    assert files_under(out) == sorted(str(p.relative_to(data)) for p in inputs)  # all slices, nothing stale


# --- 7. rescale and empty Type 2 tags ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "tag,value,problem",
    [
        ("RescaleSlope", 0, "RescaleSlope is 0"),
        ("RescaleSlope", None, "RescaleSlope is present but empty"),
        ("RescaleIntercept", None, "RescaleIntercept is present but empty"),
    ],
)
def test_bad_rescale_is_an_error_naming_file_and_tag(tmp_path, identity_ckpt, tag, value, problem):
    data, out = tmp_path / "data", tmp_path / "out"
    inputs = write_series(data / "ct", n=2)
    ds = pydicom.dcmread(inputs[1])
    setattr(ds, tag, value)
    ds.save_as(inputs[1])
    error = failure_of(identity_ckpt, data, out)
    assert f"{inputs[1]}: {problem}" in str(error)
    assert not out.exists() or files_under(out) == []


# --- 8. localizers ------------------------------------------------------------------------------------------------


def test_localizers_are_skipped_and_the_rest_processed(tmp_path, identity_ckpt, bundle_log):
    data, out = tmp_path / "data", tmp_path / "out"
    scout = write_series(data / "scout", n=1)  # a scout in its own series
    ds = pydicom.dcmread(scout[0])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
    ds.save_as(scout[0])
    inputs = write_series(data / "ct", n=3)
    series_uid = pydicom.dcmread(inputs[0]).SeriesInstanceUID
    lateral = data / "ct" / "lateral.dcm"  # a scout sharing the CT's SeriesInstanceUID: another size, orientation
    write_ct_slice(lateral, np.zeros((24, 40), np.float32), series_uid=series_uid, instance_number=4)
    ds = pydicom.dcmread(lateral)
    ds.ImageOrientationPatient = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
    ds.save_as(lateral)
    run_inference(identity_ckpt, data, out)
    assert files_under(out) == sorted(str(p.relative_to(data)) for p in inputs)
    warnings = [r.getMessage() for r in bundle_log if r.levelno == logging.WARNING]
    assert any(str(scout[0]) in w and "LOCALIZER" in w for w in warnings)
    assert any(str(lateral) in w and "24x40 slice" in w and "3 of 4 slices" in w for w in warnings)


# --- 9. name collisions, duplicate positions, deterministic UIDs -------------------------------------------------


def test_nifti_and_gzipped_nifti_of_one_name_both_survive(tmp_path, identity_ckpt):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    volumes = {}
    for suffix, seed in ((".nii", 0), (".nii.gz", 1)):
        volumes[suffix] = np.stack([slice_hu(seed), slice_hu(seed + 2)], -1).astype(np.float32)
        nib.save(nib.Nifti1Image(volumes[suffix], np.diag([0.7, 0.7, 5.0, 1.0])), data / f"a{suffix}")
    run_inference(identity_ckpt, data, out)
    assert files_under(out) == ["a_denoised.nii", "a_denoised.nii.gz"]
    for suffix, volume in volumes.items():
        np.testing.assert_allclose(nib.load(out / f"a_denoised{suffix}").get_fdata(), volume, atol=0.05)


def test_outputs_never_overwrite_each_other_within_a_run(tmp_path, identity_ckpt):
    data, out = tmp_path / "data", tmp_path / "out"
    write_series(data / "ct", n=2)  # NIfTI output ct_denoised.nii.gz ...
    volume = np.stack([slice_hu(0), slice_hu(1)], -1).astype(np.float32)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), data / "ct.nii.gz")  # ... and this one's too
    error = failure_of(identity_ckpt, data, out, output_format="nifti")
    assert "ct_denoised.nii.gz was already written in this run for" in str(error)
    assert files_under(out) == ["ct_denoised.nii.gz"]


def test_duplicate_positions_with_nifti_output_name_the_file(tmp_path, identity_ckpt):
    data, out = tmp_path / "data", tmp_path / "out"
    inputs = write_series(data / "ct", n=3, z_positions=[0.0, 5.0, 5.0])
    error = failure_of(identity_ckpt, data, out, output_format="nifti")
    assert f"{inputs[2]}: ImagePositionPatient is the same as in {inputs[1]}" in str(error)
    run_inference(identity_ckpt, data, tmp_path / "dicom")  # DICOM output keeps each slice's own position
    assert len(files_under(tmp_path / "dicom")) == 3


def test_identical_rerun_is_idempotent_and_new_weights_give_a_new_series(tmp_path, identity_ckpt):
    data, out = tmp_path / "data", tmp_path / "out"
    inputs = write_series(data / "ct", n=2)
    run_inference(identity_ckpt, data, out)
    first = tree_digest(out)
    run_inference(identity_ckpt, data, out)
    assert tree_digest(out) == first  # same UIDs, same bytes: a PACS sees the same series again
    other_ckpt = near_identity_checkpoint(tmp_path / "other.pt", centre_logit=61.0)  # other weights, same output
    run_inference(other_ckpt, data, tmp_path / "out_other")
    run_inference(identity_ckpt, data, tmp_path / "out_window", hu_window=[-1024, 3071])
    uids = {
        name: {pydicom.dcmread(folder / "ct" / p.name).SeriesInstanceUID for p in inputs}
        for name, folder in (("first", out), ("weights", tmp_path / "out_other"), ("window", tmp_path / "out_window"))
    }
    assert all(len(v) == 1 for v in uids.values()) and len({v.pop() for v in uids.values()}) == 3
    sop = [pydicom.dcmread(out / "ct" / p.name).SOPInstanceUID for p in inputs]
    assert len(set(sop)) == 2 and not set(sop) & {pydicom.dcmread(p).SOPInstanceUID for p in inputs}


# --- 10. values outside the network window pass through --------------------------------------------------------


def test_values_outside_the_window_pass_through_with_one_warning(tmp_path, identity_ckpt, bundle_log):
    data, out = tmp_path / "data", tmp_path / "out"
    inputs = write_series(data / "ct", n=2, signed=True, rescale_intercept=0.0)
    for path in inputs:
        ds = pydicom.dcmread(path)
        stored = ds.pixel_array.copy()
        stored[:3, :] = -3024  # undeclared padding
        stored[10:12, 10:12] = 3500  # metal
        ds.PixelData = stored.tobytes()
        ds.save_as(path)
    nib.save(nib.Nifti1Image(np.full((32, 32, 2), -3024.0, np.float32), np.eye(4)), data / "pad.nii.gz")
    run_inference(identity_ckpt, data, out)
    for path in inputs:
        source, derived = pydicom.dcmread(path).pixel_array, pydicom.dcmread(out / "ct" / path.name).pixel_array
        outside = (source < -1024) | (source > 3072)
        assert outside.sum() == 3 * 32 + 4
        np.testing.assert_array_equal(derived[outside], source[outside])  # not clamped to the window
        np.testing.assert_allclose(derived[~outside], source[~outside], atol=1)
    np.testing.assert_array_equal(nib.load(out / "pad_denoised.nii.gz").get_fdata(), -3024.0)
    warnings = [r.getMessage() for r in bundle_log if "outside the network's window" in r.getMessage()]
    assert len(warnings) == 2  # one per series
    assert any(w.startswith(f"{data / 'ct'}: 200 pixels") for w in warnings)
    assert any(w.startswith(f"{data / 'pad.nii.gz'}: 2048 pixels") for w in warnings)


# --- 11. the last lines name the file and the problem ---------------------------------------------------------


def test_command_line_failure_ends_with_the_file_and_the_problem(tmp_path, identity_ckpt):
    data = tmp_path / "data"
    inputs = write_series(data / "ct", n=2)
    ds = pydicom.dcmread(inputs[0])
    ds.RescaleSlope = 0
    ds.save_as(inputs[0])
    write_series(data / "good", n=2)
    command = [
        sys.executable, "-m", "monai.bundle", "run", "inference", "--meta_file", META,
        "--config_file", str(CONFIGS / "inference.json"), "--logging_file", LOGGING, "--bundle_root", str(REPO),
        "--ckpt_path", str(identity_ckpt), "--dataset_dir", str(data), "--output_dir", str(tmp_path / "out"),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-2:]
    assert last[0].startswith("error: 1 of 2 inputs failed; 1 processed, 0 skipped:"), result.stderr[-3000:]
    assert last[1] == f"  {inputs[0]}: RescaleSlope is 0: stored values cannot be converted to HU"
    assert "Traceback" not in result.stderr
    assert files_under(tmp_path / "out") == [str(Path("good") / p.name) for p in sorted((data / "good").iterdir())]


def test_refused_run_and_bugs_end_with_the_problem(tmp_path, identity_ckpt, capsys, monkeypatch):
    """The hook that inference.json's initialize installs, given what a refused run raises (wrapped by MONAI)."""
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)
    data = tmp_path / "data"
    write_series(data / "ct", n=2)
    with pytest.raises(Exception) as raised:
        run_inference(identity_ckpt, data, data / "out")
    assert isinstance(raised.value, RuntimeError)  # "Failed to evaluate ConfigExpression ..."
    capsys.readouterr()
    sys.excepthook(type(raised.value), raised.value, raised.value.__traceback__)
    printed = capsys.readouterr().err
    assert printed == (
        f"error: {data / 'out'}: output_dir is inside dataset_dir {data}; its outputs would be read back as inputs "
        "by the next run: choose an output_dir outside dataset_dir\n"
    )
    try:  # anything else: its traceback, then its innermost cause last
        try:
            {}["missing"]
        except KeyError as e:
            raise RuntimeError("Failed to evaluate ConfigExpression") from e
    except RuntimeError as e:
        sys.excepthook(type(e), e, e.__traceback__)
    printed = capsys.readouterr().err
    assert "Traceback" in printed and printed.strip().splitlines()[-1] == "error: KeyError: 'missing'"

"""bundle.io.atomic and bundle.io.nifti_writer: an interrupted write leaves the old file intact and no partial file."""

from __future__ import annotations

import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from bundle.io import AtomicNibabelWriter, atomic_output, remove_stale_partials
from bundle.io.atomic import STAGING_PREFIX, staging_folder


class Interrupted(Exception):
    """Stands for a crash or Ctrl-C in the middle of a write."""


def _dead_pid() -> int:
    """The id of a process that has exited (and been reaped)."""
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(done.stdout)


def test_a_finished_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "out" / "slice.dcm"
    with atomic_output(target) as temporary:
        assert temporary.parent == target.parent and temporary.name.startswith(".slice.partial-")
        assert temporary.suffix == ".dcm" and not target.exists()  # readers see no file until the rename
        temporary.write_bytes(b"new")
    assert target.read_bytes() == b"new"
    assert os.listdir(target.parent) == ["slice.dcm"]


def test_an_interrupted_write_leaves_the_old_file_intact(tmp_path):
    target = tmp_path / "slice.dcm"
    target.write_bytes(b"old contents")
    with pytest.raises(Interrupted):
        with atomic_output(target) as temporary:
            temporary.write_bytes(b"half a ne")
            raise Interrupted
    assert target.read_bytes() == b"old contents"
    assert os.listdir(tmp_path) == ["slice.dcm"]  # the partial file is removed


def test_the_temporary_file_keeps_a_double_suffix(tmp_path):
    with atomic_output(tmp_path / "volume_denoised.nii.gz") as temporary:
        assert temporary.name.endswith(".nii.gz") and temporary.name.startswith(".volume_denoised.partial-")
        temporary.write_bytes(b"x")


def test_stale_partials_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    dead, alive = _dead_pid(), os.getppid()
    stale_file = tmp_path / "a" / f".slice.partial-{dead}.dcm"
    stale_folder = tmp_path / f"{STAGING_PREFIX}{dead}-series"
    live_file = tmp_path / "a" / f".slice.partial-{alive}.dcm"
    own_folder = staging_folder(tmp_path, "mine")
    for path in (stale_file, live_file):
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(b"partial")
    (stale_folder / "sub").mkdir(parents=True)
    (tmp_path / "a" / "slice.dcm").write_bytes(b"finished")
    removed = remove_stale_partials(tmp_path)
    assert sorted(removed) == sorted([stale_file, stale_folder])
    assert not stale_file.exists() and not stale_folder.exists()
    assert live_file.exists() and own_folder.is_dir() and (tmp_path / "a" / "slice.dcm").exists()
    assert own_folder.name == f"{STAGING_PREFIX}{os.getpid()}-mine"


def _volume(value: float) -> np.ndarray:
    return np.full((1, 6, 5, 3), value, np.float32)  # channel-first (C, H, W, D)


def test_nifti_writer_writes_the_volume_and_its_description(tmp_path):
    target = tmp_path / "ct_denoised.nii.gz"
    data = np.arange(90, dtype=np.float32).reshape(1, 6, 5, 3)
    writer = AtomicNibabelWriter()
    writer.set_data_array(data, channel_dim=0)
    writer.set_metadata({"affine": np.diag([0.7, 0.7, 2.5, 1.0])}, resample=False)
    writer.write(target, description="denoised by StructKPN " + "x" * 100)
    image = nib.load(target)
    np.testing.assert_array_equal(np.asarray(image.dataobj), data[0])
    np.testing.assert_allclose(image.affine, np.diag([0.7, 0.7, 2.5, 1.0]))
    descrip = image.header["descrip"].item()
    assert descrip.startswith(b"denoised by StructKPN xx") and len(descrip) == 80  # cut at the header's 80 bytes
    assert os.listdir(tmp_path) == ["ct_denoised.nii.gz"]


def test_nifti_writer_interrupted_mid_write_keeps_the_old_volume(tmp_path, monkeypatch):
    target = tmp_path / "ct_denoised.nii.gz"
    old = AtomicNibabelWriter()
    old.set_data_array(_volume(1.0), channel_dim=0)
    old.set_metadata({"affine": np.eye(4)}, resample=False)
    old.write(target)

    def crash(image, filename, *args, **kwargs):  # nibabel writes part of the file, then the run dies
        with open(filename, "wb") as partial:
            partial.write(b"\x1f\x8b partial gzip")
        raise Interrupted

    monkeypatch.setattr(nib, "save", crash)
    new = AtomicNibabelWriter()
    new.set_data_array(_volume(2.0), channel_dim=0)
    new.set_metadata({"affine": np.eye(4)}, resample=False)
    with pytest.raises(Interrupted):
        new.write(target)
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(nib.load(target).dataobj), _volume(1.0)[0])
    assert os.listdir(tmp_path) == ["ct_denoised.nii.gz"]

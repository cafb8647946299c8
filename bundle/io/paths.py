"""Finding a user's CT inputs and the model checkpoint on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom

from bundle.io.ct_dicom import CTInputError

__all__ = ["NIFTI_SUFFIXES", "find_ct_inputs", "require_checkpoint"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def find_ct_inputs(dataset_dir: os.PathLike | str) -> list[dict[str, str | list[str]]]:
    """List the CT inputs under ``dataset_dir``, searched recursively, as ``[{"image": path or paths}, ...]``.

    A folder holding one DICOM series is one input (its path; MONAI's DICOM readers load a folder as a
    series). A folder holding several series (by SeriesInstanceUID) gives one input per series: the list
    of its files, which :class:`~bundle.io.CTDicomReader` loads as one volume. Each ``.nii``/``.nii.gz``
    file is one volume. Sorted by path, so runs are reproducible. Raises FileNotFoundError when
    ``dataset_dir`` is missing or holds no CT input.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset_dir is not a folder")
    inputs: list[str | list[str]] = []
    for folder, _, files in os.walk(root):
        paths = sorted(Path(folder) / f for f in files if not f.startswith("."))
        inputs += [str(p) for p in paths if _is_nifti(p)]
        series = _group_by_series([p for p in paths if not _is_nifti(p) and pydicom.misc.is_dicom(p)])
        inputs += [str(folder)] if len(series) == 1 else list(series.values())
    if not inputs:
        raise FileNotFoundError(f"{root}: no DICOM series or NIfTI files found (searched recursively)")
    return [{"image": p} for p in sorted(inputs, key=lambda p: p if isinstance(p, str) else p[0])]


def _group_by_series(paths: list[Path]) -> dict[str, list[str]]:
    """DICOM files by SeriesInstanceUID ("" when missing), keeping the order of ``paths``."""
    series: dict[str, list[str]] = {}
    for path in paths:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
        except Exception as e:  # pydicom raises many types for broken files
            raise CTInputError(path, f"cannot read DICOM header: {e}")
        series.setdefault(str(header.get("SeriesInstanceUID", "")), []).append(str(path))
    return series


def require_checkpoint(path: os.PathLike | str) -> str:
    """Return ``path`` if the weights file exists, else raise FileNotFoundError saying how to get one."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{path}: no model weights. Train one with `python -m monai.bundle run training --meta_file "
            "configs/metadata.json --config_file configs/train.json --logging_file configs/logging.conf` "
            "(the best model is saved as models/model.pt), or pass --ckpt_path to an existing state dict."
        )
    return str(path)

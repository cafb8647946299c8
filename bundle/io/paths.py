"""Finding a user's CT inputs and the model checkpoint on disk."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom

__all__ = ["NIFTI_SUFFIXES", "find_ct_inputs", "require_checkpoint"]

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def _is_nifti(path: Path) -> bool:
    return path.name.lower().endswith(NIFTI_SUFFIXES)


def find_ct_inputs(dataset_dir: os.PathLike | str) -> list[dict[str, str]]:
    """List the CT inputs under ``dataset_dir``, searched recursively, as ``[{"image": path}, ...]``.

    Each folder holding DICOM files is one series (its path is the input; MONAI's DICOM readers load a
    folder as a series); each ``.nii``/``.nii.gz`` file is one volume. Sorted by path, so runs are
    reproducible. Raises FileNotFoundError when ``dataset_dir`` is missing or holds no CT input.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset_dir is not a folder")
    inputs: list[str] = []
    for folder, _, files in os.walk(root):
        paths = sorted(Path(folder) / f for f in files if not f.startswith("."))
        inputs += [str(p) for p in paths if _is_nifti(p)]
        if any(not _is_nifti(p) and pydicom.misc.is_dicom(p) for p in paths):
            inputs.append(str(folder))
    if not inputs:
        raise FileNotFoundError(f"{root}: no DICOM series or NIfTI files found (searched recursively)")
    return [{"image": p} for p in sorted(inputs)]


def require_checkpoint(path: os.PathLike | str) -> str:
    """Return ``path`` if the weights file exists, else raise FileNotFoundError saying how to get one."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{path}: no model weights. Train one with `python -m monai.bundle run training --meta_file "
            "configs/metadata.json --config_file configs/train.json --logging_file configs/logging.conf` "
            "(the best model is saved as models/model.pt), or pass --ckpt_path to an existing state dict."
        )
    return str(path)

"""NIfTI output written atomically, so an interrupted run never leaves a half-written volume."""

from __future__ import annotations

import os
from pathlib import Path

from monai.config import PathLike
from monai.data import NibabelWriter

__all__ = ["AtomicNibabelWriter"]


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's :class:`~monai.data.NibabelWriter` that writes to a hidden temporary file and renames it.

    ``os.replace`` within one folder is atomic: a reader sees either no file or the whole file. Use it
    with ``SaveImaged(..., writer=AtomicNibabelWriter)``.
    """

    def write(self, filename: PathLike, verbose: bool = False, **obj_kwargs) -> None:
        target = Path(filename)
        suffix = "".join(s for s in target.suffixes if s.lower() in (".nii", ".gz"))
        temporary = target.with_name(f".{target.name[: len(target.name) - len(suffix)]}.partial-{os.getpid()}{suffix}")
        try:
            super().write(temporary, verbose=verbose, **obj_kwargs)
            os.replace(temporary, target)
        finally:
            temporary.unlink(missing_ok=True)

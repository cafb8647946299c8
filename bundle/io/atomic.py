"""Atomic file output: a reader, or a run that resumes after a crash, sees a whole file or none."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output"]


@contextmanager
def atomic_output(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a hidden temporary path beside ``path``; when the block succeeds, rename it onto ``path``.

    The temporary name keeps ``path``'s suffixes (``.nii.gz`` for nibabel) and is removed if the block fails.
    ``os.replace`` within one folder is atomic.

    Example::

        with atomic_output("out/series/1-04.dcm") as temporary:
            dataset.save_as(temporary)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.lower().endswith(".nii.gz") else path.suffix
    temporary = path.with_name(f".{path.name[: len(path.name) - len(suffix)]}.partial-{os.getpid()}{suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)

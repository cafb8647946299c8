"""Atomic file output: a reader, or a run that resumes after a crash, sees a whole file or none."""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["atomic_output", "remove_stale_partials", "staging_folder"]

logger = logging.getLogger(__name__)

STAGING_PREFIX = ".structkpn-partial-"
# a file being written by atomic_output, or a series being written by SaveCTSeriesd: ``...partial-<pid>...``
_PARTIAL = re.compile(r"^\..*\.partial-(\d+)|^" + re.escape(STAGING_PREFIX) + r"(\d+)-")


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


def staging_folder(output_dir: os.PathLike | str, tag: str) -> Path:
    """A new hidden folder ``<output_dir>/.structkpn-partial-<pid>-<tag>`` to write a series into before it is moved
    into place (see :func:`remove_stale_partials`)."""
    folder = Path(output_dir) / f"{STAGING_PREFIX}{os.getpid()}-{tag}"
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return folder


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def remove_stale_partials(output_dir: os.PathLike | str) -> list[Path]:
    """Remove, under ``output_dir``, the temporary files of :func:`atomic_output` and the staging folders of
    :func:`staging_folder` left by processes that no longer run (killed mid-write); returns what was removed."""
    removed = []
    for folder, subfolders, files in os.walk(output_dir):
        for name in [*subfolders, *files]:
            match = _PARTIAL.match(name)
            if not match or int(match.group(1) or match.group(2)) == os.getpid() or _running(
                int(match.group(1) or match.group(2))
            ):
                continue
            path = Path(folder) / name
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
                subfolders.remove(name)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    if removed:
        logger.warning("removed %d partial outputs of interrupted runs under %s", len(removed), output_dir)
    return removed

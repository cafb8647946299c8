"""NIfTI output written atomically, so an interrupted run never leaves a half-written volume."""

from __future__ import annotations

import numpy as np
from monai.config import PathLike
from monai.data import NibabelWriter

from bundle.io.atomic import atomic_output

__all__ = ["AtomicNibabelWriter"]


class AtomicNibabelWriter(NibabelWriter):
    """MONAI's :class:`~monai.data.NibabelWriter` that writes to a hidden temporary file and renames it.

    Writes through :func:`bundle.io.atomic.atomic_output`: a reader sees either no file or the whole file. Use it
    with ``SaveImaged(..., writer=AtomicNibabelWriter)``. ``write(..., description=...)`` sets the header's descrip
    (at most 80 bytes).
    """

    @classmethod
    def create_backend_obj(cls, data_array, affine=None, dtype=None, description: str | None = None, **kwargs):
        image = super().create_backend_obj(data_array, affine=affine, dtype=dtype, **kwargs)
        if description:
            image.header["descrip"] = np.bytes_(description.encode()[:80])
        return image

    def write(self, filename: PathLike, verbose: bool = False, **obj_kwargs) -> None:
        with atomic_output(filename) as temporary:
            super().write(temporary, verbose=verbose, **obj_kwargs)

"""Saving a denoised volume in the input's format: a derived DICOM series for DICOM input, NIfTI otherwise."""

from __future__ import annotations

import os
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform
from pydicom.uid import generate_uid

from bundle.io.ct_dicom import SOURCE_FILES_KEY, is_multiframe
from bundle.io.dicom_writer import write_derived_multiframe, write_derived_slice

__all__ = ["OUTPUT_FORMATS", "SaveCTSeriesd", "derived_series_path"]

OUTPUT_FORMATS = ("auto", "nifti")
_LO_MAX = 64  # SeriesDescription has VR LO: at most 64 characters


def derived_series_path(
    source: os.PathLike | str, output_dir: os.PathLike | str, data_root_dir: os.PathLike | str
) -> Path:
    """Output path of a derived file: ``source``'s path relative to ``data_root_dir``, under ``output_dir``.

    A source outside ``data_root_dir`` keeps its folder's name and its file name.
    """
    source, root = Path(source).resolve(), Path(data_root_dir).resolve()
    relative = source.relative_to(root) if source.is_relative_to(root) else Path(source.parent.name, source.name)
    return Path(output_dir) / relative


class SaveCTSeriesd(MapTransform):
    """Save each key's volume (1, X, Y, D) in HU as a derived DICOM series when it was read from DICOM.

    A volume loaded by :class:`~bundle.io.CTDicomReader` carries its slices' source files (metadata
    ``SOURCE_FILES_KEY``, in the volume's slice order). With ``output_format="auto"`` each slice ``[0, :, :, k]``
    (columns first, as MONAI's DICOM readers give it) is transposed back to (rows, columns) and written with
    :func:`~bundle.io.write_derived_slice` next to the mirror of its source file: ``<output_dir>/<path of the
    source relative to data_root_dir>``, same file name, one new SeriesInstanceUID per volume, new
    SOPInstanceUIDs, the source's geometry and padding. A volume read from one multi-frame (Enhanced CT) file is
    written as one derived multi-frame file, slice k as frame k, with
    :func:`~bundle.io.dicom_writer.write_derived_multiframe` (same path mapping). Any other volume (NIfTI input, or
    ``output_format="nifti"``) is left to ``nifti_saver``, called on the data (e.g.
    ``SaveImaged(..., writer=AtomicNibabelWriter)``). Every file is written atomically; an output path equal to its
    source raises ValueError, so inputs are never overwritten.

    Example::

        SaveCTSeriesd("pred", output_dir="out", data_root_dir="data", nifti_saver=SaveImaged("pred", ...))
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: os.PathLike | str,
        data_root_dir: os.PathLike | str,
        nifti_saver: Callable[[Mapping], Mapping],
        output_format: str = "auto",
        description_suffix: str = "(denoised by StructKPN)",
        derivation_description: str = "Denoised by StructKPN (kernel prediction network); research use only",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format is {output_format!r}, expected one of {OUTPUT_FORMATS}")
        self.output_dir = output_dir
        self.data_root_dir = data_root_dir
        self.nifti_saver = nifti_saver
        self.output_format = output_format
        self.description_suffix = description_suffix
        self.derivation_description = derivation_description

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            sources = d[key].meta.get(SOURCE_FILES_KEY) if isinstance(d[key], MetaTensor) else None
            if self.output_format == "auto" and sources:
                self.write_series(d[key], sources)
            else:
                d = dict(self.nifti_saver(d))
        return d

    def write_series(self, volume: torch.Tensor, sources: Sequence[str]) -> list[Path]:
        """Write ``volume`` (1, X, Y, D) in HU as one derived series, slice k from ``sources[k]``, or all D slices
        as the frames of one multi-frame ``sources[0]``; returns the paths."""
        hu = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
        header = pydicom.dcmread(sources[0], stop_before_pixels=True)
        multiframe = len(sources) == 1 and is_multiframe(header)
        slices = int(header.get("NumberOfFrames", 1)) if multiframe else len(sources)
        if hu.ndim != 4 or hu.shape[0] != 1 or hu.shape[-1] != slices:
            raise ValueError(
                f"{sources[0]}: expected a volume (1, X, Y, {slices}), one slice per source "
                f"{'frame' if multiframe else 'file'}, got shape {hu.shape}"
            )
        series_uid = generate_uid()
        room = _LO_MAX - len(self.description_suffix) - 1
        written = []
        for index, source in enumerate(sources):
            ds = pydicom.dcmread(source)
            description = f"{str(ds.get('SeriesDescription', '')).strip()[:room]} {self.description_suffix}".strip()
            path = derived_series_path(source, self.output_dir, self.data_root_dir)
            if path.resolve() == Path(source).resolve():
                raise ValueError(f"{source}: output_dir maps the output onto its input; inputs are never overwritten")
            if multiframe:  # (X, Y, F) to frames (F, rows, columns)
                frames = hu[0].transpose(2, 1, 0)
                written.append(
                    write_derived_multiframe(ds, frames, path, series_uid, description, self.derivation_description)
                )
            else:
                written.append(
                    write_derived_slice(
                        ds, hu[0, :, :, index].T, path, series_uid, description, self.derivation_description
                    )
                )
        return written

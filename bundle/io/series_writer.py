"""Saving a denoised volume in the input's format: a derived DICOM series for DICOM input, NIfTI otherwise."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImage, MapTransform
from pydicom.uid import generate_uid

from bundle.io.atomic import remove_stale_partials, staging_folder
from bundle.io.ct_dicom import (
    SOURCE_FILES_KEY,
    CTDicomReader,
    CTInputError,
    duplicate_positions,
    frame_geometry,
    frame_rescales,
    is_multiframe,
    padding_mask,
    read_dicom,
    rescale_of,
)
from bundle.io.dicom_writer import write_derived_multiframe, write_derived_slice
from bundle.io.nifti_writer import AtomicNibabelWriter
from bundle.io.paths import DERIVED_MARK, NIFTI_SUFFIXES

__all__ = ["OUTPUT_FORMATS", "SaveCTSeriesd", "derived_series_path", "file_sha256"]

logger = logging.getLogger(__name__)

OUTPUT_FORMATS = ("auto", "nifti")
_LO_MAX = 64  # SeriesDescription has VR LO: at most 64 characters


def file_sha256(path: os.PathLike | str) -> str:
    """Hex SHA-256 of a file's bytes (e.g. the weights, as a source of the output UIDs)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
    """Save each key's volume (1, X, Y, D) in HU as a derived DICOM series when it was read from DICOM, else NIfTI.

    A volume loaded by :class:`~bundle.io.CTDicomReader` carries its slices' source files (metadata
    ``SOURCE_FILES_KEY``, in the volume's slice order). With ``output_format="auto"`` each slice ``[0, :, :, k]``
    (columns first, as MONAI's DICOM readers give it) is transposed back to (rows, columns) and written with
    :func:`~bundle.io.write_derived_slice` at the mirror of its source file: ``<output_dir>/<path of the source
    relative to data_root_dir>``, same file name, the source's geometry and padding. A volume read from one
    multi-frame (Enhanced CT) file is written as one derived multi-frame file, slice k as frame k, with
    :func:`~bundle.io.dicom_writer.write_derived_multiframe` (same path mapping).

    Any other volume (NIfTI input, or ``output_format="nifti"``) is written as float32 NIfTI in HU with the input's
    affine: ``<output_dir>/<relative path without suffix>_denoised<same suffix>`` for a NIfTI file (``a.nii`` and
    ``a.nii.gz`` stay apart), ``<output_dir>/<output_stem>_denoised.nii.gz`` for a DICOM series (``output_stem``
    from the data, as :func:`~bundle.io.find_ct_inputs` gives it; else the series' folder). A DICOM series whose
    slices share an ImagePositionPatient cannot be one NIfTI volume and raises :class:`CTInputError`.

    Guarantees:

    - every output path is inside ``output_dir`` (ValueError otherwise), none equals its source, and none is
      written twice in one run by different inputs (:class:`CTInputError` naming both);
    - a series is complete or absent: its files are written into a hidden staging folder in ``output_dir`` and
      moved into place when all are written; the first call removes what interrupted runs left
      (:func:`~bundle.io.atomic.remove_stale_partials`);
    - output UIDs are deterministic: the SeriesInstanceUID from the source's SeriesInstanceUID and
      ``uid_sources`` (e.g. the weights' SHA-256 and the settings), each SOPInstanceUID from it and the source
      instance's, so an identical rerun rewrites identical files and a new model or setting gives a new series;
    - with ``hu_window`` (the network's [low, high] HU), source pixels outside it (metal, undeclared padding) are
      written back unchanged (the filter saw them clipped), with one warning per series giving the count.

    Example::

        SaveCTSeriesd("pred", output_dir="out", data_root_dir="data", hu_window=(-1024, 3072),
                      uid_sources=[file_sha256("models/model.pt"), "kernel_size=21"])
    """

    def __init__(
        self,
        keys: KeysCollection,
        output_dir: os.PathLike | str,
        data_root_dir: os.PathLike | str,
        output_format: str = "auto",
        hu_window: Sequence[float] | None = None,
        uid_sources: Sequence[object] = (),
        output_postfix: str = "denoised",
        description_suffix: str = "(denoised by StructKPN)",
        derivation_description: str = f"{DERIVED_MARK} (kernel prediction network); research use only",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        if output_format not in OUTPUT_FORMATS:
            raise ValueError(f"output_format is {output_format!r}, expected one of {OUTPUT_FORMATS}")
        if hu_window is not None and len(hu_window) != 2:
            raise ValueError(f"hu_window is {hu_window!r}, expected [low, high] in HU")
        self.output_dir = Path(output_dir)
        self.data_root_dir = data_root_dir
        self.output_format = output_format
        self.hu_window = None if hu_window is None else (float(hu_window[0]), float(hu_window[1]))
        self.uid_sources = [str(s) for s in uid_sources]
        self.output_postfix = output_postfix
        self.description_suffix = description_suffix
        self.derivation_description = derivation_description
        self._written: dict[Path, str] = {}  # output path -> the input that wrote it in this run
        self._cleaned = False

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            sources = d[key].meta.get(SOURCE_FILES_KEY) if isinstance(d[key], MetaTensor) else None
            if self.output_format == "auto" and sources:
                self.write_series(d[key], sources)
            else:
                self.write_nifti(d[key], d.get("output_stem"))
        return d

    # --- paths ------------------------------------------------------------------------------------------------

    def _start(self) -> None:
        if not self._cleaned:
            if self.output_dir.is_dir():
                remove_stale_partials(self.output_dir)
            self._cleaned = True

    def _check_paths(self, paths: Sequence[Path], sources: Sequence[str], name: str) -> None:
        """Raise unless ``paths`` (one per source) lie inside ``output_dir``, are not their sources and were not
        written in this run for an input other than ``name``."""
        root = self.output_dir.resolve()
        for path, source in zip(paths, sources):
            resolved = path.resolve()
            if not resolved.is_relative_to(root):
                raise ValueError(f"{source}: output path {path} is outside output_dir {self.output_dir}")
            if resolved == Path(source).resolve():
                raise ValueError(f"{source}: output_dir maps the output onto its input; inputs are never overwritten")
            other = self._written.get(resolved)
            if other is not None and other != name:
                raise CTInputError(
                    source,
                    f"its output {path} was already written in this run for {other}; outputs never overwrite each "
                    "other: rename one of the inputs",
                )

    def _record(self, paths: Sequence[Path], name: str) -> None:
        for path in paths:
            self._written[path.resolve()] = name

    def nifti_path(self, volume: torch.Tensor, output_stem: str | None = None) -> Path:
        """The NIfTI output path of ``volume`` (see the class docstring)."""
        meta = volume.meta if isinstance(volume, MetaTensor) else {}
        sources = meta.get(SOURCE_FILES_KEY)
        source = Path(str(meta.get("filename_or_obj", "volume")))
        root = Path(self.data_root_dir).resolve()
        if sources:  # a DICOM series
            folder = Path(sources[0]).resolve().parent
            stem = Path(output_stem) if output_stem else Path(os.path.relpath(folder, root))
            if str(stem) == ".":  # a series directly in data_root_dir: named after it, inside output_dir
                stem = Path(root.name)
            elif stem.parts[0] == "..":  # outside data_root_dir
                stem = Path(folder.name)
            return self.output_dir / f"{stem}_{self.output_postfix}.nii.gz"
        suffix = next((s for s in sorted(NIFTI_SUFFIXES, key=len, reverse=True) if source.name.lower().endswith(s)), "")
        relative = derived_series_path(source, self.output_dir, root)
        stem = relative.name[: len(relative.name) - len(suffix)]
        return relative.with_name(f"{stem}_{self.output_postfix}{suffix or '.nii.gz'}")

    # --- pass-through outside the network's window -------------------------------------------------------------

    def _outside_window(self, hu: np.ndarray) -> np.ndarray | None:
        if self.hu_window is None:
            return None
        low, high = self.hu_window
        return (hu < low) | (hu > high)

    def _warn_passed_through(self, name: str, count: int) -> None:
        if count:
            logger.warning(
                "%s: %d pixels outside the network's window [%g, %g] HU written unchanged (not denoised)",
                name,
                count,
                *self.hu_window,
            )

    # --- writing -----------------------------------------------------------------------------------------------

    def _series_uid(self, header) -> str:
        source = header.get("SeriesInstanceUID") or header.get("SOPInstanceUID")
        return generate_uid(entropy_srcs=["StructKPN derived series", str(source), *self.uid_sources])

    def write_series(self, volume: torch.Tensor, sources: Sequence[str]) -> list[Path]:
        """Write ``volume`` (1, X, Y, D) in HU as one derived series, slice k from ``sources[k]``, or all D slices
        as the frames of one multi-frame ``sources[0]``; returns the paths."""
        self._start()
        hu = volume.detach().cpu().numpy() if isinstance(volume, torch.Tensor) else np.asarray(volume)
        header = read_dicom(sources[0], stop_before_pixels=True)
        multiframe = len(sources) == 1 and is_multiframe(header)
        slices = int(header.get("NumberOfFrames", 1)) if multiframe else len(sources)
        if hu.ndim != 4 or hu.shape[0] != 1 or hu.shape[-1] != slices:
            raise ValueError(
                f"{sources[0]}: expected a volume (1, X, Y, {slices}), one slice per source "
                f"{'frame' if multiframe else 'file'}, got shape {hu.shape}"
            )
        paths = [derived_series_path(source, self.output_dir, self.data_root_dir) for source in sources]
        self._check_paths(paths, sources, sources[0])
        series_uid = self._series_uid(header)
        room = _LO_MAX - len(self.description_suffix) - 1
        self.output_dir.mkdir(parents=True, exist_ok=True)
        staging = staging_folder(self.output_dir, hashlib.sha1(series_uid.encode()).hexdigest()[:12])
        passed_through = 0
        try:
            staged = []
            for index, (source, path) in enumerate(zip(sources, paths)):
                ds = read_dicom(source)
                description = f"{str(ds.get('SeriesDescription', '')).strip()[:room]} {self.description_suffix}".strip()
                sop_uid = generate_uid(entropy_srcs=[series_uid, str(ds.SOPInstanceUID)])
                target = staging / path.resolve().relative_to(self.output_dir.resolve())
                stored = ds.pixel_array
                if multiframe:  # (X, Y, F) to frames (F, rows, columns)
                    stored = stored.reshape(-1, int(ds.Rows), int(ds.Columns))
                    rescales = np.asarray(frame_rescales(ds, source), dtype=np.float64)
                    source_hu = stored * rescales[:, 0, None, None] + rescales[:, 1, None, None]
                else:
                    slope, intercept = rescale_of(ds, source)
                    source_hu = stored * slope + intercept
                keep, count = self._kept_pixels(ds, stored, source_hu)
                passed_through += count
                # one Enhanced CT file holds every frame; a classic file holds one slice
                write, pixels = (
                    (write_derived_multiframe, hu[0].transpose(2, 1, 0))
                    if multiframe
                    else (write_derived_slice, hu[0, :, :, index].T)
                )
                write(
                    ds,
                    pixels,
                    target,
                    series_uid,
                    description,
                    self.derivation_description,
                    padding=keep,
                    sop_instance_uid=sop_uid,
                )
                staged.append(target)
            for target, path in zip(staged, paths):  # the series is complete: move it into place
                path.parent.mkdir(parents=True, exist_ok=True)
                os.replace(target, path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        self._record(paths, sources[0])
        self._warn_passed_through(sources[0] if multiframe else str(Path(sources[0]).parent), passed_through)
        return paths

    def _kept_pixels(self, ds, stored: np.ndarray, source_hu: np.ndarray) -> tuple[np.ndarray | None, int]:
        """Mask of the pixels whose stored values are written back unchanged (declared padding, values outside
        ``hu_window``), and how many are outside the window but not padding."""
        padding = padding_mask(ds, stored)
        outside = self._outside_window(source_hu)
        if outside is None:
            return padding, 0
        if padding is not None:
            outside &= ~padding
        count = int(outside.sum())
        return (outside if padding is None else outside | padding), count

    def write_nifti(self, volume: torch.Tensor, output_stem: str | None = None) -> Path:
        """Write ``volume`` (1, X, Y, D) in HU as float32 NIfTI (see the class docstring); returns the path."""
        self._start()
        meta = volume.meta if isinstance(volume, MetaTensor) else {}
        sources = meta.get(SOURCE_FILES_KEY)
        name = str(sources[0] if sources else meta.get("filename_or_obj", "volume"))
        if sources:
            self._check_one_volume(sources)
        path = self.nifti_path(volume, output_stem)
        self._check_paths([path], [name], name)
        hu = volume.detach().cpu().float() if isinstance(volume, torch.Tensor) else torch.as_tensor(volume).float()
        original = self._original_hu(sources or [name], hu.shape)
        outside = self._outside_window(original) if original is not None else None
        if outside is not None:
            hu = torch.where(torch.from_numpy(outside), torch.from_numpy(original).float(), hu)
            self._warn_passed_through(name, int(outside.sum()))
        spatial_shape = tuple(np.asarray(meta.get("spatial_shape", hu.shape[1:])).ravel())
        writer = AtomicNibabelWriter(output_dtype=np.float32)
        writer.set_data_array(hu, channel_dim=None if len(spatial_shape) >= hu.ndim else 0, squeeze_end_dims=True)
        writer.set_metadata(meta, resample=False)
        path.parent.mkdir(parents=True, exist_ok=True)
        writer.write(path, description=self.derivation_description)
        self._record([path], name)
        return path

    def _check_one_volume(self, sources: Sequence[str]) -> None:
        """Raise :class:`CTInputError` when slices of a DICOM series share a position (no single NIfTI affine)."""
        headers = [read_dicom(source, stop_before_pixels=True) for source in sources]
        if len(sources) == 1 and is_multiframe(headers[0]):
            positions = frame_geometry(headers[0], sources[0]).positions
            _, first, counts = np.unique(np.round(positions, 3), axis=0, return_index=True, return_counts=True)
            if (counts > 1).any():
                frame = int(first[np.argmax(counts > 1)]) + 1
                raise CTInputError(
                    sources[0],
                    f"frame {frame} shares its ImagePositionPatient with another frame: the frames cannot form one "
                    "NIfTI volume; use output_format auto (DICOM)",
                )
            return
        duplicate = duplicate_positions(headers, sources)
        if duplicate:
            raise CTInputError(
                duplicate[1],
                f"ImagePositionPatient is the same as in {duplicate[0]}: the slices cannot form one NIfTI volume (two "
                "acquisitions in one series?); use output_format auto (DICOM), or remove one of them",
            )

    def _original_hu(self, sources: Sequence[str], shape: tuple[int, ...]) -> np.ndarray | None:
        """The input volume in HU, read again (as the network's input, before windowing), shaped ``shape``."""
        if self.hu_window is None:
            return None
        dicom = not any(str(s).lower().endswith(NIFTI_SUFFIXES) for s in sources)
        loader = LoadImage(reader=CTDicomReader() if dicom else None, image_only=True)
        data = sources if len(sources) > 1 else sources[0]
        return np.asarray(loader(data), dtype=np.float32).reshape(shape)

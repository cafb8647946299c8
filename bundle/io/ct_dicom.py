"""Reading CT DICOM into Hounsfield units, with the checks a clinical pipeline needs.

Every problem raises :class:`CTInputError`, whose message starts with the offending file, so a user
running over hundreds of series learns at once which file is wrong and why.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from monai.data import PydicomReader
from monai.utils import ensure_tuple
from pydicom.dataset import Dataset

__all__ = [
    "CTInputError",
    "read_dicom",
    "rescale_of",
    "CTDicomReader",
    "SOURCE_FILES_KEY",
    "check_ct_dataset",
    "padding_mask",
    "read_ct_slice",
    "CTSlice",
    "FrameGeometry",
    "frame_geometry",
    "frame_rescales",
    "is_multiframe",
    "is_dicomdir",
    "order_slices",
    "duplicate_positions",
]

logger = logging.getLogger(__name__)

DICOM_SUFFIXES = ("", ".dcm", ".dicom", ".ima")
# Metadata key of the DICOM files behind a loaded volume, one per slice in the volume's last-axis order (a single
# file for a volume read from one multi-frame file, one slice per frame).
SOURCE_FILES_KEY = "source_files"


class CTInputError(ValueError):
    """Input that cannot be denoised as CT; the message names the file and the problem."""

    def __init__(self, filename: os.PathLike | str, problem: str) -> None:
        self.filename = str(filename)
        self.problem = problem
        super().__init__(f"{self.filename}: {problem}")


_TRANSFER_SYNTAX_OF_ENCODING = {  # (implicit VR, little endian) as pydicom found it -> transfer syntax
    (True, True): pydicom.uid.ImplicitVRLittleEndian,
    (False, True): pydicom.uid.ExplicitVRLittleEndian,
    (False, False): pydicom.uid.ExplicitVRBigEndian,
}


def read_dicom(filename: os.PathLike | str, **kwargs) -> Dataset:
    """``pydicom.dcmread`` with ``force=True``, so files written without preamble or file meta are read too; such a
    file gets the Transfer Syntax UID of the encoding pydicom found (pixel data cannot be decoded without one).
    Raises InvalidDicomError for a file without preamble that holds none of SOPClassUID, SeriesInstanceUID and
    Modality (not DICOM)."""
    ds = pydicom.dcmread(filename, **{"force": True, **kwargs})
    if ds.preamble is None and not any(tag in ds for tag in ("SOPClassUID", "SeriesInstanceUID", "Modality")):
        raise pydicom.errors.InvalidDicomError("no DICOM preamble, and no SOPClassUID, SeriesInstanceUID or Modality")
    if "TransferSyntaxUID" not in ds.file_meta and ds.original_encoding in _TRANSFER_SYNTAX_OF_ENCODING:
        ds.file_meta.TransferSyntaxUID = _TRANSFER_SYNTAX_OF_ENCODING[ds.original_encoding]
    return ds


def rescale_of(ds: Dataset, filename: os.PathLike | str) -> tuple[float, float]:
    """(RescaleSlope, RescaleIntercept) of ``ds``; (1, 0) when both are absent. Raises :class:`CTInputError` naming
    the file and tag when one is present but empty (a Type 1 tag of the CT Image module) or the slope is 0 (every
    stored value would map to the intercept)."""
    values = []
    for tag, default in (("RescaleSlope", 1.0), ("RescaleIntercept", 0.0)):
        element = ds.get(tag)
        if tag in ds and (element is None or element == ""):
            raise CTInputError(filename, f"{tag} is present but empty: cannot convert stored values to HU")
        try:
            values.append(default if element is None else float(element))
        except (TypeError, ValueError):
            raise CTInputError(filename, f"{tag} is {element!r}, not a number: cannot convert stored values to HU")
    if values[0] == 0.0 or not np.all(np.isfinite(values)):
        raise CTInputError(filename, f"RescaleSlope is {values[0]:g}: stored values cannot be converted to HU")
    return values[0], values[1]


def check_ct_dataset(ds: Dataset, filename: os.PathLike | str, require_rescale: bool = True) -> None:
    """Raise :class:`CTInputError` unless ``ds`` is a single-sample CT image with a HU rescale.

    Checks Modality (CT), pixel data presence, SamplesPerPixel 1 and, when ``require_rescale``, the
    RescaleSlope/RescaleIntercept tags (without them stored values are not HU; empty or a slope of 0 is an
    error too, see :func:`rescale_of`).
    """
    modality = ds.get("Modality")
    if modality != "CT":
        raise CTInputError(filename, f"Modality is {modality!r}, not 'CT': only CT images can be denoised")
    if "PixelData" not in ds and "FloatPixelData" not in ds:
        raise CTInputError(filename, "no pixel data (is this an image?)")
    if int(ds.get("SamplesPerPixel", 1)) != 1:
        raise CTInputError(filename, f"SamplesPerPixel is {ds.SamplesPerPixel}: CT must be single-sample grayscale")
    if is_multiframe(ds):
        frame_rescales(ds, filename, require_rescale)
        return
    missing = [tag for tag in ("RescaleSlope", "RescaleIntercept") if tag not in ds]
    if missing and require_rescale:
        raise CTInputError(filename, f"missing {' and '.join(missing)}: cannot convert stored values to HU")
    rescale_of(ds, filename)


def is_multiframe(ds: Dataset) -> bool:
    """True for a multi-frame image (Enhanced CT: NumberOfFrames and functional groups), read as one volume."""
    return "NumberOfFrames" in ds or "PerFrameFunctionalGroupsSequence" in ds


def _frame_functional_group(ds: Dataset, index: int, keyword: str) -> Dataset | None:
    """Frame ``index``'s (0-based) item of the functional group macro ``keyword`` (e.g. "PlanePositionSequence"):
    from its per-frame functional groups, else from the shared ones; None when neither holds it."""
    for groups, item in (("PerFrameFunctionalGroupsSequence", index), ("SharedFunctionalGroupsSequence", 0)):
        sequence = ds.get(groups)
        if sequence is not None and len(sequence) > item and sequence[item].get(keyword):
            return sequence[item][keyword][0]
    return None


def frame_rescales(ds: Dataset, filename: os.PathLike | str, required: bool = True) -> list[tuple[float, float]]:
    """(RescaleSlope, RescaleIntercept) of each frame of a multi-frame image, from its Pixel Value Transformation
    functional group (per-frame, else shared), else from the top-level tags. A frame without one raises
    :class:`CTInputError` naming the file and frame, or gets (1, 0) when not ``required``."""
    top = (ds.get("RescaleSlope"), ds.get("RescaleIntercept"))
    rescales = []
    for index in range(int(ds.get("NumberOfFrames", 1))):
        item = _frame_functional_group(ds, index, "PixelValueTransformationSequence")
        slope, intercept = (item.get("RescaleSlope"), item.get("RescaleIntercept")) if item is not None else top
        slope, intercept = (None if v == "" else v for v in (slope, intercept))  # present but empty
        if (slope is None or intercept is None) and required:
            raise CTInputError(
                filename,
                f"frame {index + 1} has no RescaleSlope/RescaleIntercept (Pixel Value Transformation Sequence): "
                "cannot convert stored values to HU",
            )
        if slope is not None and float(slope) == 0.0:
            raise CTInputError(filename, f"frame {index + 1} has RescaleSlope 0: cannot convert stored values to HU")
        rescales.append((1.0 if slope is None else float(slope), 0.0 if intercept is None else float(intercept)))
    return rescales


@dataclass
class FrameGeometry:
    """Geometry of a multi-frame image: one orientation (6,) and pixel spacing (2,) in mm, a position (F, 3) in mm
    (patient coordinates, LPS) per frame."""

    orientation: np.ndarray
    spacing: np.ndarray
    positions: np.ndarray


def frame_geometry(ds: Dataset, filename: os.PathLike | str) -> FrameGeometry:
    """Each frame's Plane Position, Plane Orientation and Pixel Measures functional groups (per-frame, else shared).

    Raises :class:`CTInputError` naming the file and frame when a frame lacks one, or when frames differ in
    orientation or pixel spacing (such a file is not one volume of parallel slices).
    """
    keywords = {
        "PlaneOrientationSequence": ("ImageOrientationPatient", 6),
        "PixelMeasuresSequence": ("PixelSpacing", 2),
        "PlanePositionSequence": ("ImagePositionPatient", 3),
    }
    values: dict[str, list[np.ndarray]] = {tag: [] for tag, _ in keywords.values()}
    for index in range(int(ds.get("NumberOfFrames", 1))):
        for sequence, (tag, length) in keywords.items():
            item = _frame_functional_group(ds, index, sequence)
            value = np.asarray(item.get(tag, []) if item is not None else [], dtype=float).ravel()
            if value.shape != (length,) or not np.all(np.isfinite(value)):
                raise CTInputError(
                    filename, f"frame {index + 1} has no valid {tag} ({sequence}): its geometry is unknown"
                )
            values[tag].append(value)
    for tag in ("ImageOrientationPatient", "PixelSpacing"):
        first = values[tag][0]
        for index, value in enumerate(values[tag][1:], start=2):
            if not np.allclose(value, first, atol=1e-4):
                raise CTInputError(
                    filename,
                    f"frame {index} has {tag} {value.tolist()}, frame 1 {first.tolist()}: the frames are not one "
                    "volume of parallel slices",
                )
    return FrameGeometry(
        orientation=values["ImageOrientationPatient"][0],
        spacing=values["PixelSpacing"][0],
        positions=np.stack(values["ImagePositionPatient"]),
    )


def padding_mask(ds: Dataset, stored: np.ndarray) -> np.ndarray | None:
    """Boolean mask of padding pixels (outside the field of view) from PixelPaddingValue, or None.

    With PixelPaddingRangeLimit the padding is the closed range between the two stored values.
    """
    if "PixelPaddingValue" not in ds:
        return None
    lo = hi = int(ds.PixelPaddingValue)
    if "PixelPaddingRangeLimit" in ds:
        lo, hi = sorted((lo, int(ds.PixelPaddingRangeLimit)))
    mask = (stored >= lo) & (stored <= hi)
    return mask if mask.any() else None


class CTDicomReader(PydicomReader):
    """MONAI's :class:`~monai.data.PydicomReader` with CT checks, for ``LoadImaged(reader=...)``.

    On top of the base reader (which applies RescaleSlope/Intercept and returns float32 HU) it:

    - reads files without preamble or file meta too (:func:`read_dicom`);
    - rejects files that are not CT, lack pixel data or lack the rescale tags (``require_rescale``), or whose
      rescale is empty or has slope 0 (:func:`rescale_of`);
    - reads a folder (its own files, not its subfolders, without DICOMDIR and files that are not DICOM), or a
      list of files of one series (as ``find_ct_inputs`` gives), as one volume with slices in the order of
      :func:`order_slices` (InstanceNumber, else position along the normal), and records the slices' files in
      that order in the metadata (``SOURCE_FILES_KEY``), so outputs can be mapped back to their source files;
    - rejects a series whose files mix series or geometries (SeriesInstanceUID, Rows/Columns,
      PixelSpacing, ImageOrientationPatient), naming the first file that differs;
    - replaces pixel padding (PixelPaddingValue, outside the field of view) by ``padding_hu`` so that
      windowing and the network see air (the DICOM writer restores the padding from the source file);
    - reads a multi-frame (Enhanced CT) file as a volume (columns, rows, frames) in frame order, each frame
      rescaled with its own Pixel Value Transformation, the affine from the frames' Plane Position/Orientation
      and Pixel Measures functional groups (see :func:`frame_geometry`), and rejects a multi-frame file that
      shares its series with other files.

    Example::

        LoadImaged(keys="image", reader=CTDicomReader())
    """

    def __init__(self, require_rescale: bool = True, padding_hu: float = -1024.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.require_rescale = require_rescale
        self.padding_hu = padding_hu

    def verify_suffix(self, filename) -> bool:
        """Claim folders, DICOM files and files named like DICOM (``.dcm``, ``.ima``, no suffix), not NIfTI."""
        for name in ensure_tuple(filename):
            path = Path(name)
            if path.is_dir() or path.suffix.lower() in DICOM_SUFFIXES:
                continue
            if not (path.is_file() and pydicom.misc.is_dicom(path)):
                return False
        return True

    def read(self, data, **kwargs):
        # LoadImage silently falls back to other readers when ``read`` raises, which would hide the reason
        # and let ITK load a non-CT or mixed folder: problems found here are raised from ``get_data``.
        if not self.verify_suffix(data):
            raise ValueError(f"{data}: not DICOM, left to the other readers")
        listed = {str(item) for item in ensure_tuple(data)}
        names, datasets = [], []
        for name in [name for item in ensure_tuple(data) for name in _files_of(item)]:
            try:
                datasets.append(read_dicom(name, **{**self.kwargs, **kwargs}))
                names.append(name)
            except pydicom.errors.InvalidDicomError as e:
                if name in listed:  # a file asked for by name must be DICOM
                    return _ReadFailure(CTInputError(name, f"cannot read DICOM: {e}"))
                logger.warning("%s: not DICOM, left out of its folder's series", name)
            except Exception as e:  # pydicom raises many types for unreadable files
                return _ReadFailure(CTInputError(name, f"cannot read DICOM: {e}"))
        if not names:
            return _ReadFailure(CTInputError(ensure_tuple(data)[0], "folder holds no DICOM files"))
        self.has_series = len(names) > 1
        self.filenames = [names] if self.has_series else names
        if not self.has_series:
            return datasets[0]
        try:
            _check_single_series(datasets, names)
        except CTInputError as e:
            return _ReadFailure(e)
        return datasets

    def get_data(self, data):
        if isinstance(data, _ReadFailure):
            raise data.error
        array, meta = super().get_data(data)
        if not self.has_series and len(self.filenames) == 1:  # one single-frame file
            meta[SOURCE_FILES_KEY] = [str(name) for name in self.filenames]
        return array, meta

    def _combine_dicom_series(self, data: Sequence[Dataset], filenames: Sequence[str]) -> tuple[np.ndarray, dict]:
        """The slices (rows, columns, slices) in the order of :func:`order_slices`, the first slice's metadata with
        the base class's series keys (spacing, last slice's position, spatial shape), and the slices' files in
        that order (``SOURCE_FILES_KEY``)."""
        slices = order_slices(data, filenames)
        arrays = [self._get_array_data(ds, name) for ds, name in slices]
        first = slices[0][0]
        meta = self._get_meta_dict(first)
        spacing = [float(v) for v in first.get("PixelSpacing") or (1.0, 1.0)]
        if len(slices) > 1:
            depth = [_position_along_normal(ds) for ds, _ in slices]
            gaps = np.abs(np.diff(depth)) if None not in depth else np.ones(len(slices) - 1)
            spacing.append(float(np.mean(gaps)))
            if slices[-1][0].get("ImagePositionPatient"):
                meta["lastImagePositionPatient"] = np.asarray(slices[-1][0].ImagePositionPatient, dtype=float)
        meta["spacing"] = np.asarray(spacing)
        meta["spatial_shape"] = arrays[0].shape + ((len(slices),) if len(slices) > 1 else ())
        meta[SOURCE_FILES_KEY] = [str(name) for _, name in slices]
        return (np.stack(arrays, axis=-1) if len(slices) > 1 else arrays[0]), meta

    def _get_meta_dict(self, img) -> dict:
        """The base class's metadata; for a multi-frame image, with the frames' geometry in the tags from which the
        base class builds a series' affine (first frame's position, last frame's position, orientation, spacing)."""
        meta = super()._get_meta_dict(img)
        if is_multiframe(img):
            geometry = frame_geometry(img, img.filename)
            meta["00200037"] = {"vr": "DS", "Value": geometry.orientation.tolist()}
            meta["00200032"] = {"vr": "DS", "Value": geometry.positions[0].tolist()}
            meta["00280030"] = {"vr": "DS", "Value": geometry.spacing.tolist()}
            meta["lastImagePositionPatient"] = geometry.positions[-1]
        return meta

    def _get_array_data(self, img, filename):
        check_ct_dataset(img, filename, self.require_rescale)
        try:
            stored = img.pixel_array
        except Exception as e:  # pydicom raises many types for broken or undecodable pixel data
            raise CTInputError(filename, f"cannot decode pixel data ({img.file_meta.TransferSyntaxUID.name}): {e}")
        if is_multiframe(img):
            return self._get_multiframe_data(img, stored, filename)
        hu = super()._get_array_data(img, filename)
        mask = padding_mask(img, stored)
        if mask is not None:
            hu = np.where(mask, np.float32(self.padding_hu), hu).astype(np.float32)
        if not np.all(np.isfinite(hu)):
            raise CTInputError(filename, "pixel values are not finite after rescale")
        return hu

    def _get_multiframe_data(self, img: Dataset, stored: np.ndarray, filename: str) -> np.ndarray:
        """HU (rows, columns, frames) of a multi-frame image, each frame with its own rescale, padding as in
        ``_get_array_data``; checks the frames' geometry, which ``_get_meta_dict`` reads next."""
        frame_geometry(img, filename)
        stored = stored.reshape(-1, int(img.Rows), int(img.Columns))  # (F, H, W), also for a single frame
        slope, intercept = np.asarray(frame_rescales(img, filename, self.require_rescale), dtype=np.float32).T
        hu = stored.astype(np.float32) * slope[:, None, None] + intercept[:, None, None]
        mask = padding_mask(img, stored)
        if mask is not None:
            hu[mask] = np.float32(self.padding_hu)
        if not np.all(np.isfinite(hu)):
            raise CTInputError(filename, "pixel values are not finite after rescale")
        return np.moveaxis(hu, 0, -1)


def is_dicomdir(path: os.PathLike | str) -> bool:
    """True for a DICOMDIR (the index of a DICOM file set, not an image)."""
    return Path(path).name.upper() == "DICOMDIR"


def _files_of(name: os.PathLike | str) -> list[str]:
    """A file as itself; a folder as its visible regular files but DICOMDIR, sorted (not its subfolders)."""
    path = Path(name)
    if not path.is_dir():
        return [str(path)]
    return [
        str(child)
        for child in sorted(path.iterdir())
        if child.is_file() and not child.name.startswith(".") and not is_dicomdir(child)
    ]


def _instance_number(ds: Dataset) -> int | None:
    value = ds.get("InstanceNumber")
    return None if value is None or value == "" else int(value)


def _position_along_normal(ds: Dataset) -> float | None:
    """ImagePositionPatient projected on the slice normal (mm), None without position or orientation."""
    position, orientation = ds.get("ImagePositionPatient"), ds.get("ImageOrientationPatient")
    if not position or not orientation or len(position) != 3 or len(orientation) != 6:
        return None
    orientation = np.asarray(orientation, dtype=float)
    return float(np.dot(np.asarray(position, dtype=float), np.cross(orientation[:3], orientation[3:])))


def order_slices(datasets: Sequence[Dataset], filenames: Sequence[str]) -> list[tuple[Dataset, str]]:
    """The slices of one series in stacking order: by InstanceNumber (stable) when every slice has one, else by
    ImagePositionPatient along the slice normal (InstanceNumber is Type 2: it may be absent or empty). Raises
    :class:`CTInputError` naming a slice that has neither, so no slice is ever left out."""
    slices = list(zip(datasets, map(str, filenames)))
    if all(_instance_number(ds) is not None for ds, _ in slices):
        return sorted(slices, key=lambda s: _instance_number(s[0]))
    depth = []
    for ds, name in slices:
        value = _position_along_normal(ds)
        if value is None:
            raise CTInputError(
                name,
                "no InstanceNumber and no ImagePositionPatient/ImageOrientationPatient: its place in the series is "
                "unknown",
            )
        depth.append(value)
    missing = next(name for ds, name in slices if _instance_number(ds) is None)
    logger.info("%s: InstanceNumber missing or empty; slices ordered by ImagePositionPatient", missing)
    return [slices[i] for i in np.argsort(depth, kind="stable")]


def duplicate_positions(datasets: Sequence[Dataset], filenames: Sequence[str]) -> tuple[str, str] | None:
    """The first two files whose slices lie at the same ImagePositionPatient (within 1e-3 mm), or None."""
    seen: dict[tuple[float, ...], str] = {}
    for ds, name in zip(datasets, filenames):
        position = ds.get("ImagePositionPatient")
        if not position:
            continue
        key = tuple(np.round(np.asarray(position, dtype=float), 3))
        if key in seen:
            return seen[key], str(name)
        seen[key] = str(name)
    return None


@dataclass
class _ReadFailure:
    """A read error carried to ``get_data``, where LoadImage lets it through."""

    error: CTInputError


def _check_single_series(datasets: Sequence[Dataset], filenames: Sequence[str]) -> None:
    """Raise when a folder mixes series or geometries: each must be processed on its own."""
    for ds, name in zip(datasets, filenames):
        if is_multiframe(ds):
            raise CTInputError(
                name,
                f"multi-frame (enhanced) file in a series of {len(datasets)} files: a multi-frame file is a volume "
                "on its own; give it its own folder (or SeriesInstanceUID)",
            )
    first, first_name = datasets[0], filenames[0]
    for ds, name in zip(datasets[1:], filenames[1:]):
        for tag in ("SeriesInstanceUID", "Rows", "Columns", "PixelSpacing", "ImageOrientationPatient"):
            a, b = first.get(tag), ds.get(tag)
            if tag in ("PixelSpacing", "ImageOrientationPatient") and a is not None and b is not None:
                same = np.allclose(np.asarray(a, float), np.asarray(b, float), atol=1e-4)
            else:
                same = a == b
            if not same:
                raise CTInputError(
                    name,
                    f"{tag} {b} differs from {a} in {first_name}: the folder mixes series; give one series a folder",
                )


@dataclass
class CTSlice:
    """One CT slice in HU with its dataset and padding mask (None when the file declares no padding)."""

    hu: np.ndarray
    dataset: Dataset
    padding: np.ndarray | None
    filename: str


def read_ct_slice(filename: os.PathLike | str, require_rescale: bool = True) -> CTSlice:
    """Read one single-frame CT DICOM file as float32 HU (H, W), keeping padding pixels' HU values.

    Raises :class:`CTInputError` naming the file for unreadable, non-CT or un-rescalable input.
    """
    filename = str(filename)
    try:
        ds = read_dicom(filename)
    except (pydicom.errors.InvalidDicomError, OSError, EOFError) as e:
        raise CTInputError(filename, f"cannot read DICOM: {e}")
    check_ct_dataset(ds, filename, require_rescale)
    try:
        stored = ds.pixel_array
    except Exception as e:  # broken or undecodable pixel data
        raise CTInputError(filename, f"cannot decode pixel data: {e}")
    if stored.ndim != 2:
        raise CTInputError(filename, f"expected a single-frame 2D slice, got pixel array of shape {stored.shape}")
    slope, intercept = rescale_of(ds, filename)
    hu = stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)
    return CTSlice(hu=hu, dataset=ds, padding=padding_mask(ds, stored), filename=filename)

"""Writing derived CT images (simulated low dose, denoised) as DICOM files that stay with their source's study.

The derived file is a copy of its source instance (patient, study, geometry and acquisition tags kept) with new
pixel data re-encoded with the source's rescale, a new SOPInstanceUID, the caller's series, ImageType DERIVED, a
DerivationDescription and a SourceImageSequence pointing back at the source instance: at the top level for a
single-frame CT Image (DERIVED\\SECONDARY), in each frame's Derivation Image functional group for an Enhanced CT Image
(DERIVED\\PRIMARY, the only value 2 its IOD allows).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pydicom
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bundle.io.atomic import atomic_output
from bundle.io.ct_dicom import frame_rescales, padding_mask

__all__ = [
    "stored_value_range",
    "hu_to_stored",
    "write_derived_slice",
    "write_derived_multiframe",
    "write_dataset_atomically",
]

# Tags whose values describe the source's pixel data and would be wrong for the new pixels.
_STALE_PIXEL_TAGS = ("SmallestImagePixelValue", "LargestImagePixelValue", "PixelDataProviderURL")


def stored_value_range(ds: Dataset) -> tuple[int, int]:
    """Smallest and largest stored value that BitsStored and PixelRepresentation (0 unsigned, 1 signed) can hold."""
    bits = int(ds.BitsStored)
    if int(ds.PixelRepresentation) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def hu_to_stored(ds: Dataset, hu: np.ndarray, rescale: tuple[float, float] | None = None) -> np.ndarray:
    """HU (H, W) to stored values with ``rescale`` (slope, intercept; default ``ds``'s RescaleSlope/Intercept):
    rounded, clipped to the representable range, in the integer type of ``ds``'s BitsAllocated and
    PixelRepresentation."""
    slope, intercept = rescale or (float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0)))
    low, high = stored_value_range(ds)
    dtype = np.dtype(f"{'i' if int(ds.PixelRepresentation) == 1 else 'u'}{int(ds.BitsAllocated) // 8}")
    return np.clip(np.rint((np.asarray(hu, dtype=np.float64) - intercept) / slope), low, high).astype(dtype)


def write_dataset_atomically(ds: Dataset, path: os.PathLike | str) -> Path:
    """Save ``ds`` to ``path`` through a temporary file in the same folder, so ``path`` is complete or absent."""
    path = Path(path)
    with atomic_output(path) as temporary:
        ds.save_as(temporary, enforce_file_format=True)
    return path


def write_derived_slice(
    source: Dataset,
    hu: np.ndarray,
    path: os.PathLike | str,
    series_instance_uid: str,
    series_description: str,
    derivation_description: str,
    series_number: int | None = None,
    padding: np.ndarray | None = None,
    sop_instance_uid: str | None = None,
) -> Path:
    """Write ``hu`` (H, W, in HU) as a derived copy of the single-frame CT instance ``source``; returns the path.

    Pixels are re-encoded with the source's RescaleSlope/Intercept (rounded, clipped to what BitsStored and
    PixelRepresentation hold); ``padding`` pixels (bool mask, default: the source's PixelPaddingValue pixels) get
    the source's stored values back. The file is uncompressed explicit VR little endian, written atomically. A new
    SOPInstanceUID is generated unless ``sop_instance_uid`` is given (give one derived from the source to make
    reruns produce identical files).

    Example::

        write_derived_slice(ct.dataset, ldct_hu, "out/1-01.dcm", generate_uid(), "Simulated 25% dose",
                            "Projection-domain noise insertion, dose fraction 0.25")
    """
    hu = np.asarray(hu)
    if hu.shape != (int(source.Rows), int(source.Columns)):
        raise ValueError(f"hu has shape {hu.shape}, the source slice is {(int(source.Rows), int(source.Columns))}")
    if not np.all(np.isfinite(hu)):
        raise ValueError(f"hu has non-finite values: cannot write {path}")
    source_stored = source.pixel_array
    stored = hu_to_stored(source, hu)
    if padding is None:
        padding = padding_mask(source, source_stored)
    if padding is not None:
        stored[padding] = source_stored[padding]

    ds = _derived_copy(source, stored, series_instance_uid, series_description, series_number, sop_instance_uid)
    ds.DerivationDescription = derivation_description
    ds.SourceImageSequence = pydicom.Sequence([_image_reference(source)])
    return write_dataset_atomically(ds, path)


def write_derived_multiframe(
    source: Dataset,
    hu: np.ndarray,
    path: os.PathLike | str,
    series_instance_uid: str,
    series_description: str,
    derivation_description: str,
    series_number: int | None = None,
    padding: np.ndarray | None = None,
    sop_instance_uid: str | None = None,
) -> Path:
    """Write ``hu`` (F, H, W, in HU) as a derived copy of the multi-frame (Enhanced CT) instance ``source``; returns
    the path. Arguments as for :func:`write_derived_slice`, ``padding`` a (F, H, W) mask.

    Frame k is re-encoded with its own rescale (Pixel Value Transformation functional group, see
    :func:`~bundle.io.ct_dicom.frame_rescales`), and all functional groups (per-frame geometry included) are kept,
    except that ImageType and CT Image Frame Type's FrameType become DERIVED\\PRIMARY (the Enhanced CT IOD allows no
    SECONDARY), and each frame gets a Derivation Image functional group (DerivationDescription, code Smoothing,
    SourceImageSequence pointing at the same frame of ``source``). The source instance is also listed in
    SourceImageEvidenceSequence and ReferencedSeriesSequence (Common Instance Reference).
    """
    hu = np.asarray(hu)
    frames = int(source.get("NumberOfFrames", 1))
    if hu.shape != (frames, int(source.Rows), int(source.Columns)):
        raise ValueError(f"hu has shape {hu.shape}, the source is {(frames, int(source.Rows), int(source.Columns))}")
    if not np.all(np.isfinite(hu)):
        raise ValueError(f"hu has non-finite values: cannot write {path}")
    source_stored = source.pixel_array.reshape(hu.shape)
    rescales = frame_rescales(source, getattr(source, "filename", None) or source.SOPInstanceUID, required=False)
    stored = np.stack([hu_to_stored(source, frame, rescale) for frame, rescale in zip(hu, rescales)])
    if padding is None:
        padding = padding_mask(source, source_stored)
    if padding is not None:
        stored[padding] = source_stored[padding]

    ds = _derived_copy(source, stored, series_instance_uid, series_description, series_number, sop_instance_uid)
    ds.ImageType = ["DERIVED", "PRIMARY", *ds.ImageType[2:]]  # Enhanced CT: value 2 can only be PRIMARY
    for groups in (*ds.get("SharedFunctionalGroupsSequence", []), *ds.get("PerFrameFunctionalGroupsSequence", [])):
        for item in groups.get("CTImageFrameTypeSequence", []):
            item.FrameType = [*ds.ImageType[:2], *list(item.get("FrameType", []))[2:]]
        if "DerivationImageSequence" in groups:  # the source's own derivation, replaced per frame below
            del groups.DerivationImageSequence
    for index, groups in enumerate(ds.PerFrameFunctionalGroupsSequence):
        derivation = Dataset()
        derivation.DerivationDescription = derivation_description
        derivation.DerivationCodeSequence = [CodedConcept.from_code(codes.DCM.Smoothing)]
        reference = _image_reference(source)
        reference.ReferencedFrameNumber = index + 1
        reference.PurposeOfReferenceCodeSequence = [
            CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
        ]
        derivation.SourceImageSequence = [reference]
        groups.DerivationImageSequence = [derivation]
    evidence = Dataset()  # the source instances (Hierarchical SOP Instance Reference)
    evidence.StudyInstanceUID = source.StudyInstanceUID
    evidence.ReferencedSeriesSequence = [Dataset()]
    evidence.ReferencedSeriesSequence[0].SeriesInstanceUID = source.SeriesInstanceUID
    evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence = [_image_reference(source)]
    ds.SourceImageEvidenceSequence = [evidence]
    referenced_series = Dataset()  # Common Instance Reference: instances of the study referenced by this one
    referenced_series.SeriesInstanceUID = source.SeriesInstanceUID
    referenced_series.ReferencedInstanceSequence = [_image_reference(source)]
    ds.ReferencedSeriesSequence = [*ds.get("ReferencedSeriesSequence", []), referenced_series]
    return write_dataset_atomically(ds, path)


def _image_reference(source: Dataset) -> Dataset:
    """An item referencing ``source``'s instance (ReferencedSOPClassUID, ReferencedSOPInstanceUID)."""
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    return reference


def _derived_copy(
    source: Dataset,
    stored: np.ndarray,
    series_instance_uid: str,
    series_description: str,
    series_number: int | None,
    sop_instance_uid: str | None,
) -> Dataset:
    """A copy of ``source`` with pixel data ``stored`` (uncompressed explicit VR little endian), a new
    SOPInstanceUID (or ``sop_instance_uid``), the given series and ImageType DERIVED\\SECONDARY."""
    ds = copy.deepcopy(source)
    for keyword in _STALE_PIXEL_TAGS:
        if keyword in ds:
            delattr(ds, keyword)
    ds.PixelData = stored.tobytes()
    ds["PixelData"].VR = "OW" if stored.itemsize > 1 else "OB"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian

    ds.SOPInstanceUID = sop_instance_uid or generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = series_instance_uid
    ds.SeriesDescription = series_description
    if series_number is not None:
        ds.SeriesNumber = series_number
    ds.ImageType = ["DERIVED", "SECONDARY", *list(source.get("ImageType", []))[2:]]
    return ds

"""Writing derived CT slices (simulated low dose, denoised) as DICOM files that stay with their source series.

The derived file is a copy of its source instance (patient, study, geometry and acquisition tags kept) with new
pixel data re-encoded with the source's rescale, a new SOPInstanceUID, the caller's series, ImageType
DERIVED\\SECONDARY, a DerivationDescription and a SourceImageSequence pointing back at the source instance.
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bundle.io.atomic import atomic_output
from bundle.io.ct_dicom import padding_mask

__all__ = ["stored_value_range", "hu_to_stored", "write_derived_slice", "write_dataset_atomically"]

# Tags whose values describe the source's pixel data and would be wrong for the new pixels.
_STALE_PIXEL_TAGS = ("SmallestImagePixelValue", "LargestImagePixelValue", "PixelDataProviderURL")


def stored_value_range(ds: Dataset) -> tuple[int, int]:
    """Smallest and largest stored value that BitsStored and PixelRepresentation (0 unsigned, 1 signed) can hold."""
    bits = int(ds.BitsStored)
    if int(ds.PixelRepresentation) == 1:
        return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return 0, 2**bits - 1


def hu_to_stored(ds: Dataset, hu: np.ndarray) -> np.ndarray:
    """HU (H, W) to stored values with ``ds``'s RescaleSlope/Intercept: rounded, clipped to the representable range,
    in the integer type of ``ds``'s BitsAllocated and PixelRepresentation."""
    slope = float(ds.get("RescaleSlope", 1.0))
    intercept = float(ds.get("RescaleIntercept", 0.0))
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
    ds.DerivationDescription = derivation_description
    reference = Dataset()
    reference.ReferencedSOPClassUID = source.SOPClassUID
    reference.ReferencedSOPInstanceUID = source.SOPInstanceUID
    ds.SourceImageSequence = pydicom.Sequence([reference])
    return write_dataset_atomically(ds, path)

"""Small synthetic CT DICOM files for tests, written with pydicom (no downloads, no shared data)."""

from __future__ import annotations

import os

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid


def phantom_hu(size: int = 64, seed: int = 0, noise_hu: float = 0.0) -> np.ndarray:
    """A body-like phantom in HU: air, a water ellipse, a bone ring and small vessels (float32, size x size)."""
    y, x = np.mgrid[:size, :size] / (size - 1) * 2 - 1
    hu = np.full((size, size), -1000.0)
    body = (x / 0.9) ** 2 + (y / 0.7) ** 2 < 1
    hu[body] = 40.0
    ring = ((x / 0.3) ** 2 + (y / 0.25) ** 2 < 1) & ((x / 0.22) ** 2 + (y / 0.17) ** 2 > 1)
    hu[ring] = 900.0
    for cx, cy in ((-0.55, 0.1), (0.55, -0.1), (0.0, 0.45)):
        hu[(x - cx) ** 2 + (y - cy) ** 2 < 0.004] = 250.0
    if noise_hu:
        hu = hu + np.random.default_rng(seed).normal(0.0, noise_hu, hu.shape)
    return hu.astype(np.float32)


def write_ct_slice(
    path: str | os.PathLike,
    hu: np.ndarray,
    *,
    modality: str = "CT",
    rescale_intercept: float | None = -1024.0,
    rescale_slope: float | None = 1.0,
    series_uid: str | None = None,
    instance_number: int = 1,
    z_mm: float = 0.0,
    pixel_spacing_mm: float = 0.7,
    patient_id: str = "TEST-001",
    signed: bool = False,
    pixel_padding_value: int | None = None,
) -> Dataset:
    """Write one single-frame CT slice with stored = round((HU - intercept) / slope); returns the dataset."""
    intercept = 0.0 if rescale_intercept is None else rescale_intercept
    slope = 1.0 if rescale_slope is None else rescale_slope
    stored = np.round((np.asarray(hu, np.float64) - intercept) / slope)
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    stored = np.clip(stored, info.min, info.max).astype(dtype)

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.PatientName = "Test^Phantom"
    ds.StudyInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.InstanceNumber = instance_number
    ds.ImagePositionPatient = [0.0, 0.0, float(z_mm)]
    ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    ds.PixelSpacing = [pixel_spacing_mm, pixel_spacing_mm]
    ds.SliceThickness = 5.0
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 1 if signed else 0
    if rescale_intercept is not None:
        ds.RescaleIntercept = rescale_intercept
    if rescale_slope is not None:
        ds.RescaleSlope = rescale_slope
    if pixel_padding_value is not None:
        ds.PixelPaddingValue = pixel_padding_value
    ds.PixelData = stored.tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def write_ct_series(folder: str | os.PathLike, volume_hu: np.ndarray, **kwargs) -> list[str]:
    """Write a (D, H, W) HU volume as one series of D slices 5 mm apart; returns the file paths."""
    os.makedirs(folder, exist_ok=True)
    series_uid = kwargs.pop("series_uid", None) or generate_uid()
    paths = []
    for index, slice_hu in enumerate(volume_hu):
        path = os.path.join(folder, f"slice_{index + 1:03d}.dcm")
        write_ct_slice(path, slice_hu, series_uid=series_uid, instance_number=index + 1, z_mm=5.0 * index, **kwargs)
        paths.append(path)
    return paths

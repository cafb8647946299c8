"""The dose of a CT slice relative to a reference, from its exposure tags."""

from __future__ import annotations

import os
from collections.abc import Sequence

import pydicom

from bundle.io.ct_dicom import CTInputError

__all__ = ["exposure_dose_fractions", "exposure_mas"]


def exposure_mas(filename: os.PathLike | str) -> float:
    """
    The tube current-time product of a CT slice in mAs: ``ExposureInuAs`` (0018,1153) / 1000 when present, else
    ``Exposure`` (0018,1152), else ``XRayTubeCurrent`` (0018,1151, mA) x ``ExposureTime`` (0018,1150, ms) / 1000.
    With tube current modulation each slice has its own value. Raises :class:`CTInputError` naming the file when
    none of them is present and positive.
    """
    try:
        ds = pydicom.dcmread(filename, stop_before_pixels=True, force=True)
    except Exception as error:  # pydicom raises many types for broken files
        raise CTInputError(filename, f"cannot read the DICOM header for its exposure: {error}") from error
    candidates = []
    if ds.get("ExposureInuAs") not in (None, ""):
        candidates.append(float(ds.ExposureInuAs) / 1000.0)
    if ds.get("Exposure") not in (None, ""):
        candidates.append(float(ds.Exposure))
    if ds.get("XRayTubeCurrent") not in (None, "") and ds.get("ExposureTime") not in (None, ""):
        candidates.append(float(ds.XRayTubeCurrent) * float(ds.ExposureTime) / 1000.0)
    for value in candidates:
        if value > 0:
            return value
    raise CTInputError(
        filename, "no positive ExposureInuAs, Exposure or XRayTubeCurrent x ExposureTime: the dose fraction cannot "
        "be read from the header; give dose_fraction instead"
    )


def exposure_dose_fractions(files: Sequence[os.PathLike | str], reference_exposure_mas: float) -> list[float]:
    """
    Each slice's dose fraction, its :func:`exposure_mas` over ``reference_exposure_mas`` (the exposure of the dose
    whose noise the output should keep), capped at 1.0. Exposure is proportional to dose only at equal kVp,
    pitch, collimation and patient size: compare with a reference from the same protocol.

    Example::

        exposure_dose_fractions(series_files, reference_exposure_mas=200.0)  # 50 mAs slices -> 0.25
    """
    if reference_exposure_mas <= 0:
        raise ValueError(f"reference_exposure_mas must be positive, got {reference_exposure_mas}.")
    return [min(exposure_mas(path) / reference_exposure_mas, 1.0) for path in files]

"""Finding CT series on disk and pairing real low-dose / normal-dose collections slice by slice.

Layouts understood:

- a folder of normal-dose data (:func:`find_dicom_series`, :func:`find_nifti_volumes`): every folder holding DICOM
  files (``.dcm``, ``.ima``, ``.dicom`` in any case, or other names with the DICM preamble) is one series, searched
  recursively; NIfTI volumes are ``.nii``/``.nii.gz`` files;
- the 2016 AAPM-Mayo Low Dose CT Grand Challenge (:func:`mayo_pairs`): patient folders (``L067``...) holding
  ``full_<thickness>[_sharp]`` and ``quarter_<thickness>[_sharp]`` series folders (``full_3mm``, ``quarter_1mm``,
  ``full_3mm_sharp``...), possibly nested below other folders; quarter dose is a dose fraction of 0.25;
- TCIA LDCT-and-Projection-data (:func:`tcia_ldct_pairs`): for each patient (PatientID, e.g. ``L067``, ``C002``,
  ``N001``) one full-dose and one low-dose image series, told apart by SeriesDescription or else the folder name
  containing "full dose" / "low dose" (case, ``-`` and ``_`` ignored); other series (localizers, projection data)
  are skipped. The collection's low dose is 10 % of the routine dose for chest (``C`` patients) and 25 % for
  head (``N``) and abdomen (``L``).

Pairs are matched by patient and slice position (ImagePositionPatient z within a tolerance); a count mismatch or
a slice without partner raises :class:`~bundle.io.ct_dicom.CTInputError` naming the files. Entries come out in the
datalist format of :mod:`bundle.io.datalist`: ``{"image": low-dose file, "label": normal-dose file, "patient",
"dose_fraction"}``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom

from bundle.io.ct_dicom import CTInputError

__all__ = [
    "DICOM_SUFFIXES",
    "SliceHeader",
    "find_dicom_series",
    "find_nifti_volumes",
    "read_slice_headers",
    "pair_slices_by_position",
    "mayo_pairs",
    "tcia_ldct_pairs",
    "tcia_dose_fraction",
]

DICOM_SUFFIXES = (".dcm", ".ima", ".dicom")


@dataclass(frozen=True)
class SliceHeader:
    """What pairing and splitting need from one DICOM slice (read without pixel data); ``z_mm`` is
    ImagePositionPatient z in mm (None when absent)."""

    path: Path
    patient_id: str
    series_instance_uid: str
    sop_instance_uid: str
    series_description: str
    z_mm: float | None


def _is_dicom_file(path: Path) -> bool:
    if path.name.startswith("."):  # hidden, e.g. a temporary file of an interrupted write
        return False
    return path.name.lower().endswith(DICOM_SUFFIXES) or pydicom.misc.is_dicom(path)


def find_dicom_series(root: os.PathLike | str) -> list[tuple[Path, list[Path]]]:
    """Every folder under ``root`` (itself included) holding DICOM files (a DICOM suffix, or the DICM preamble for
    other names; hidden files skipped), with its files, both sorted by path."""
    series = []
    for folder, _, names in sorted(os.walk(root)):
        files = sorted(Path(folder) / name for name in names if _is_dicom_file(Path(folder) / name))
        if files:
            series.append((Path(folder), files))
    return series


def find_nifti_volumes(root: os.PathLike | str) -> list[Path]:
    """Every ``.nii`` / ``.nii.gz`` file under ``root`` (hidden files skipped), sorted."""
    return sorted(
        p
        for p in Path(root).rglob("*")
        if p.is_file() and not p.name.startswith(".") and p.name.lower().endswith((".nii", ".nii.gz"))
    )


def read_slice_headers(files: list[Path]) -> list[SliceHeader]:
    """Headers of ``files`` (no pixel data read); raises :class:`CTInputError` naming an unreadable file."""
    headers = []
    for path in files:
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, EOFError) as e:
            raise CTInputError(path, f"cannot read DICOM: {e}")
        position = ds.get("ImagePositionPatient")
        headers.append(
            SliceHeader(
                path=Path(path),
                patient_id=str(ds.get("PatientID", "")),
                series_instance_uid=str(ds.get("SeriesInstanceUID", "")),
                sop_instance_uid=str(ds.get("SOPInstanceUID", "")),
                series_description=str(ds.get("SeriesDescription", "")),
                z_mm=float(position[2]) if position is not None and len(position) == 3 else None,
            )
        )
    return headers


def pair_slices_by_position(
    low_dose: list[SliceHeader], full_dose: list[SliceHeader], tolerance_mm: float = 0.1
) -> list[tuple[SliceHeader, SliceHeader]]:
    """Match each low-dose slice to the full-dose slice at the same z (within ``tolerance_mm``), one to one.

    Raises :class:`CTInputError` when the counts differ, a slice has no ImagePositionPatient, or a slice has no
    partner within the tolerance (naming the slice and its nearest candidate). Pairs come sorted by z.
    """
    if len(low_dose) != len(full_dose) or not low_dose:
        low_folder, full_folder = (str(h[0].path.parent) if h else "no files" for h in (low_dose, full_dose))
        raise CTInputError(
            low_folder if low_dose else full_folder,
            f"{len(low_dose)} low-dose slices ({low_folder}) but {len(full_dose)} full-dose slices ({full_folder})",
        )
    for header in (*low_dose, *full_dose):
        if header.z_mm is None:
            raise CTInputError(header.path, "no ImagePositionPatient: cannot pair slices by position")
    full_sorted = sorted(full_dose, key=lambda h: h.z_mm)
    full_z = np.array([h.z_mm for h in full_sorted])
    pairs, used = [], set()
    for low in sorted(low_dose, key=lambda h: h.z_mm):
        nearest = int(np.argmin(np.abs(full_z - low.z_mm)))
        partner = full_sorted[nearest]
        if abs(partner.z_mm - low.z_mm) > tolerance_mm or nearest in used:
            raise CTInputError(
                low.path,
                f"no unpaired full-dose slice within {tolerance_mm} mm of z = {low.z_mm} mm; the nearest is "
                f"{partner.path} at z = {partner.z_mm} mm",
            )
        used.add(nearest)
        pairs.append((low, partner))
    return pairs


def _pair_entries(
    low_dose: list[Path], full_dose: list[Path], patient: str, dose_fraction: float, tolerance_mm: float
) -> list[dict]:
    pairs = pair_slices_by_position(read_slice_headers(low_dose), read_slice_headers(full_dose), tolerance_mm)
    return [
        {"image": str(low.path), "label": str(full.path), "patient": patient, "dose_fraction": dose_fraction}
        for low, full in pairs
    ]


def mayo_pairs(
    root: os.PathLike | str, slice_thickness: str = "3mm", sharp: bool = False, tolerance_mm: float = 0.1
) -> list[dict]:
    """Quarter-dose / full-dose slice pairs of an AAPM-Mayo 2016 Grand Challenge folder tree.

    Selects the series folders ``full_<slice_thickness>`` and ``quarter_<slice_thickness>`` (with ``_sharp``
    appended when ``sharp``) under each patient folder; the patient id is that folder's name.

    Example::

        entries = mayo_pairs("/data/mayo2016", slice_thickness="1mm")
    """
    suffix = f"_{slice_thickness}" + ("_sharp" if sharp else "")
    entries = []
    full_folders = sorted(p for p in Path(root).rglob(f"full{suffix}") if p.is_dir())
    if not full_folders:
        raise CTInputError(root, f"no 'full{suffix}' folders: not an AAPM-Mayo layout (or another thickness)")
    for full_folder in full_folders:
        quarter_folder = full_folder.with_name(f"quarter{suffix}")
        if not quarter_folder.is_dir():
            raise CTInputError(full_folder, f"no sibling folder 'quarter{suffix}' with the quarter-dose series")
        full_files = [f for _, files in find_dicom_series(full_folder) for f in files]
        quarter_files = [f for _, files in find_dicom_series(quarter_folder) for f in files]
        entries += _pair_entries(quarter_files, full_files, full_folder.parent.name, 0.25, tolerance_mm)
    return entries


def _normalised(text: str) -> str:
    return " ".join(re.split(r"[\s_\-]+", text.lower()))


def tcia_dose_fraction(patient_id: str) -> float:
    """Dose fraction of TCIA LDCT-and-Projection-data's low-dose series: 0.10 for chest (``C...``), 0.25 otherwise."""
    return 0.10 if patient_id.upper().startswith("C") else 0.25


def tcia_ldct_pairs(root: os.PathLike | str, tolerance_mm: float = 0.1) -> list[dict]:
    """Low-dose / full-dose slice pairs of a TCIA LDCT-and-Projection-data download (see the module docstring).

    Example::

        entries = tcia_ldct_pairs("/data/LDCT-and-Projection-data")
    """
    by_patient: dict[str, dict[str, list[tuple[Path, list[Path]]]]] = {}
    for folder, files in find_dicom_series(root):
        header = read_slice_headers(files[:1])[0]
        description = _normalised(header.series_description)
        folder_name = _normalised(folder.name)
        kind = next(
            (k for k in ("full dose", "low dose") if k in description),
            next((k for k in ("full dose", "low dose") if k in folder_name), None),
        )
        if kind is None:
            continue
        patient = header.patient_id or folder.relative_to(root).parts[0]
        by_patient.setdefault(patient, {"full dose": [], "low dose": []})[kind].append((folder, files))
    if not by_patient:
        raise CTInputError(root, "no series named 'Full Dose' or 'Low Dose': not a TCIA LDCT-and-Projection-data tree")
    entries = []
    for patient, kinds in sorted(by_patient.items()):
        for kind, series in kinds.items():
            if len(series) != 1:
                found = ", ".join(str(folder) for folder, _ in series) or "none"
                raise CTInputError(root, f"patient {patient} needs exactly one {kind} series, found: {found}")
        (_, low_files), (_, full_files) = kinds["low dose"][0], kinds["full dose"][0]
        entries += _pair_entries(low_files, full_files, patient, tcia_dose_fraction(patient), tolerance_mm)
    return entries

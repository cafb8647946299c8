"""Paired low-dose / normal-dose datasets simulated from normal-dose CT (DICOM series and NIfTI volumes).

:func:`prepare_simulated_pairs` writes ``output/ndct/<series path>/...`` (copies of the DICOM files; NIfTI volumes as
per-slice 2D NIfTI files) and ``output/ldct-<dose>/<series path>/...`` (simulated, same format) and returns the
datalist entries; :func:`write_split_datalist` splits them by patient into ``output/datalist.json``. Every slice's
noise is seeded from the run's seed and the slice's identity (SOPInstanceUID, or NIfTI file and slice index), and
files are written atomically, so rerunning skips finished slices and an interrupted run resumes to identical files.

Example::

    entries = prepare_simulated_pairs("/data/ndct", "/data/paired", dose_fractions=(0.25, 0.1), seed=0)
    write_split_datalist(entries, "/data/paired", val_patients=2, test_patients=2, seed=0)
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import generate_uid

from bundle.io.atomic import atomic_output
from bundle.io.ct_dicom import CTInputError, read_ct_slice
from bundle.io.datalist import build_datalist, split_patients, write_datalist
from bundle.io.dicom_writer import write_derived_slice
from bundle.io.layouts import find_dicom_series, find_nifti_volumes, read_slice_headers
from bundle.simulation.low_dose import RECONSTRUCTION_FILTERS, LowDoseSimulator

__all__ = [
    "NDCT_FOLDER",
    "UID_ENTROPY_TAG",
    "add_simulator_arguments",
    "copy_atomically",
    "derivation_description",
    "ensure_simulated_slice",
    "ldct_folder",
    "prepare_dicom_series",
    "prepare_nifti_volume",
    "prepare_simulated_pairs",
    "simulate_dicom_slice",
    "simulate_dicom_input",
    "simulator_from_arguments",
    "slice_rng",
    "write_split_datalist",
]

logger = logging.getLogger(__name__)

NDCT_FOLDER = "ndct"
UID_ENTROPY_TAG = "structkpn-simulated-low-dose"


def ldct_folder(dose_fraction: float) -> str:
    """Folder name of the simulated images at ``dose_fraction``, e.g. ``ldct-0.25``."""
    return f"ldct-{dose_fraction:g}"


def slice_rng(seed: int, slice_key: str, dose_fraction: float) -> np.random.Generator:
    """Noise generator of one slice: a function of the run's seed, the slice's identity and the dose only."""
    digest = hashlib.sha256(f"{slice_key}|{dose_fraction:g}".encode()).digest()
    return np.random.default_rng([seed, *np.frombuffer(digest[:16], dtype=np.uint32).tolist()])


def derivation_description(simulator: LowDoseSimulator, dose_fraction: float, seed: int) -> str:
    """The DerivationDescription of a simulated slice: method and every parameter needed to reproduce it."""
    return (
        f"Simulated low-dose CT, dose fraction {dose_fraction:g}: projection-domain noise insertion (Yu et al. 2012) "
        f"with I0 {simulator.incident_photons:g}, electronic noise std {simulator.electronic_noise_std:g}, "
        f"{simulator.num_views} parallel-beam views, {simulator.filter_name} filtered back-projection of the noise "
        f"added to the original image; seed {seed}"
    )


def copy_atomically(source: Path, destination: Path) -> None:
    """Copy ``source`` to ``destination`` through a temporary file in the destination folder."""
    with atomic_output(destination) as temporary:
        shutil.copyfile(source, temporary)


def simulate_dicom_slice(
    source: Path, output: Path, dose_fraction: float, seed: int, simulator: LowDoseSimulator
) -> None:
    """Simulate ``source`` (a CT DICOM slice) at ``dose_fraction`` and write it as a derived slice to ``output``.

    The new series and instance UIDs are derived from the source's, the dose and the seed, so reruns write
    identical files and the slices of one source series form one simulated series.
    """
    ct = read_ct_slice(source)
    ds = ct.dataset
    spacing = [float(v) for v in ds.get("PixelSpacing", [])]
    if len(spacing) != 2:
        raise CTInputError(source, "no PixelSpacing: the simulation needs the pixel size in mm")
    if abs(spacing[0] - spacing[1]) > 0.01 * max(spacing):
        raise CTInputError(source, f"PixelSpacing {spacing} is not square: the simulation needs square pixels")
    rng = slice_rng(seed, str(ds.SOPInstanceUID), dose_fraction)
    low_dose = simulator(ct.hu, dose_fraction, spacing[0], padding=ct.padding, rng=rng)
    entropy = [UID_ENTROPY_TAG, f"{dose_fraction:g}", str(seed)]
    description = f"{ds.get('SeriesDescription', '')} simulated {100 * dose_fraction:g}% dose".strip()
    write_derived_slice(
        ds,
        low_dose,
        output,
        series_instance_uid=generate_uid(entropy_srcs=[*entropy, str(ds.SeriesInstanceUID)]),
        series_description=description[-64:],
        derivation_description=derivation_description(simulator, dose_fraction, seed),
        padding=ct.padding,
        sop_instance_uid=generate_uid(entropy_srcs=[*entropy, str(ds.SOPInstanceUID)]),
    )


def ensure_simulated_slice(
    source: Path, output: Path, dose_fraction: float, seed: int, simulator: LowDoseSimulator
) -> None:
    """:func:`simulate_dicom_slice` unless ``output`` exists and was made with these parameters (its
    DerivationDescription, :func:`derivation_description`); one made with others (another filter, dose, seed or
    simulator: a folder left from an earlier version) is simulated again, with a warning, so that a resumed run
    never mixes settings."""
    expected = derivation_description(simulator, dose_fraction, seed)
    if output.exists():
        try:
            found = str(pydicom.dcmread(output, stop_before_pixels=True).get("DerivationDescription", ""))
        except Exception as error:  # a damaged file is made again
            found = f"unreadable ({error})"
        if found == expected:
            return
        logger.warning("%s was made with other settings (%s); simulating it again: %s", output, found, expected)
    simulate_dicom_slice(source, output, dose_fraction, seed, simulator)


def prepare_dicom_series(
    files: Sequence[Path],
    series_path: Path,
    output_dir: Path,
    dose_fractions: Sequence[float],
    seed: int,
    simulator: LowDoseSimulator,
) -> list[dict]:
    """Copy a DICOM series to ``ndct/<series_path>`` and simulate it into ``ldct-<dose>/<series_path>``; returns the
    datalist entries (absolute paths; the patient is PatientID, or the series path's first folder without one).
    Existing outputs made with the same settings are kept (:func:`ensure_simulated_slice`)."""
    entries = []
    for header in read_slice_headers(list(files)):
        patient = header.patient_id or series_path.parts[0]
        label = output_dir / NDCT_FOLDER / series_path / header.path.name
        if not label.exists():
            copy_atomically(header.path, label)
        for dose in dose_fractions:
            image = output_dir / ldct_folder(dose) / series_path / header.path.name
            ensure_simulated_slice(header.path, image, dose, seed, simulator)
            entries.append({"image": str(image), "label": str(label), "patient": patient, "dose_fraction": dose})
    return entries


def _save_nifti_slice(data: np.ndarray, affine: np.ndarray, units: tuple[str, str], path: Path) -> None:
    image = nib.Nifti1Image(data.astype(np.float32), affine)
    image.header.set_xyzt_units(*units)
    with atomic_output(path) as temporary:
        nib.save(image, temporary)


def prepare_nifti_volume(
    volume_path: Path,
    series_path: Path,
    patient: str,
    output_dir: Path,
    dose_fractions: Sequence[float],
    seed: int,
    simulator: LowDoseSimulator,
) -> list[dict]:
    """Split a NIfTI CT volume (HU, axial slices along the third axis, mm) into 2D slice files under
    ``ndct/<series_path>/slice_NNNN.nii.gz`` and simulate each into ``ldct-<dose>/...``; returns the entries."""
    volume = nib.load(volume_path)
    if len(volume.shape) != 3:
        raise CTInputError(volume_path, f"expected a 3D volume, got shape {volume.shape}")
    spacing = [float(v) for v in volume.header.get_zooms()[:2]]
    if abs(spacing[0] - spacing[1]) > 0.01 * max(spacing):
        raise CTInputError(volume_path, f"voxel size {spacing} is not square in-plane")
    units = volume.header.get_xyzt_units()
    data = None
    entries = []
    for index in range(volume.shape[2]):
        name = f"slice_{index:04d}.nii.gz"
        label = output_dir / NDCT_FOLDER / series_path / name
        images = {dose: output_dir / ldct_folder(dose) / series_path / name for dose in dose_fractions}
        if not label.exists() or not all(path.exists() for path in images.values()):
            data = np.asarray(volume.get_fdata(dtype=np.float32)) if data is None else data
            affine = volume.affine.copy()
            affine[:3, 3] += affine[:3, 2] * index
            if not label.exists():
                _save_nifti_slice(data[..., index], affine, units, label)
            for dose, image in images.items():
                if not image.exists():
                    rng = slice_rng(seed, f"{series_path.as_posix()}#{index}", dose)
                    low_dose = simulator(data[..., index], dose, spacing[0], rng=rng)
                    _save_nifti_slice(low_dose, affine, units, image)
        entries += [
            {"image": str(image), "label": str(label), "patient": patient, "dose_fraction": dose}
            for dose, image in images.items()
        ]
    return entries


def _nifti_series_path(volume_path: Path, input_dir: Path) -> Path:
    relative = volume_path.relative_to(input_dir)
    stem = relative.name[: -len(".nii.gz")] if relative.name.lower().endswith(".nii.gz") else relative.stem
    return relative.with_name(stem)


def prepare_simulated_pairs(
    input_dir: os.PathLike | str,
    output_dir: os.PathLike | str,
    dose_fractions: Sequence[float] = (0.25,),
    seed: int = 0,
    simulator: LowDoseSimulator | None = None,
) -> list[dict]:
    """Simulate every DICOM series and NIfTI volume under ``input_dir`` (searched recursively) into ``output_dir``.

    DICOM patients are PatientID (else the first folder below ``input_dir``); a NIfTI volume's patient is its first
    folder below ``input_dir`` (its file name without extension when it lies directly in ``input_dir``). Existing
    outputs are kept, so an interrupted run resumes to identical files.

    Args:
        input_dir: folder of normal-dose DICOM series (.dcm, .ima) and NIfTI volumes (.nii, .nii.gz).
        output_dir: output folder, outside ``input_dir``: ``ndct/...`` and one ``ldct-<dose>/...`` per dose go here.
        dose_fractions: simulated dose fractions of the normal dose.
        seed: run seed; each slice's noise depends on it, the slice's identity and the dose only.
        simulator: the low-dose simulator, :class:`LowDoseSimulator` with its defaults if None.

    Returns:
        The datalist entries (absolute ``image``, ``label`` paths, ``patient`` and ``dose_fraction``), one per slice
        and dose.

    Raises:
        ValueError: ``output_dir`` lies inside ``input_dir``.
        CTInputError: no DICOM or NIfTI file under ``input_dir``, or an input the simulation cannot use.
    """
    input_dir, output_dir = Path(input_dir).resolve(), Path(output_dir).resolve()
    if output_dir.is_relative_to(input_dir):
        raise ValueError(f"{output_dir}: the output must lie outside the input folder {input_dir}")
    simulator = simulator or LowDoseSimulator()
    entries = []
    for folder, files in find_dicom_series(input_dir):
        series_path = folder.relative_to(input_dir) if folder != input_dir else Path(input_dir.name)
        series_entries = prepare_dicom_series(files, series_path, output_dir, dose_fractions, seed, simulator)
        print(f"{series_path}: {len(files)} DICOM slices x {len(dose_fractions)} doses")
        entries += series_entries
    for volume_path in find_nifti_volumes(input_dir):
        series_path = _nifti_series_path(volume_path, input_dir)
        patient = series_path.parts[0]
        entries += prepare_nifti_volume(volume_path, series_path, patient, output_dir, dose_fractions, seed, simulator)
        print(f"{series_path}: NIfTI volume x {len(dose_fractions)} doses")
    if not entries:
        raise CTInputError(input_dir, "no DICOM (.dcm, .ima) or NIfTI (.nii, .nii.gz) files found")
    return entries


def write_split_datalist(
    entries: Sequence[dict], output_dir: os.PathLike | str, val_patients: int, test_patients: int, seed: int
) -> Path:
    """Split ``entries`` by patient (seeded) and write ``output_dir/datalist.json`` with relative paths."""
    splits = split_patients((e["patient"] for e in entries), val_patients, test_patients, seed)
    for split, patients in splits.items():
        print(f"{split}: {len(patients)} patients")
    return write_datalist(build_datalist(entries, splits, output_dir), Path(output_dir) / "datalist.json")


def simulate_dicom_input(
    input_path: os.PathLike | str, output_dir: os.PathLike | str, dose_fraction: float, seed: int,
    simulator: LowDoseSimulator,
) -> tuple[int, int]:
    """Simulate a CT DICOM file, or every DICOM series under a folder (outputs mirror its folders), into
    ``output_dir`` with :func:`simulate_dicom_slice`; existing outputs are kept. Returns (slices written, slices)."""
    input_path, output_dir = Path(input_path), Path(output_dir)
    if input_path.is_file():
        jobs = [(input_path, output_dir / input_path.name)]
    else:
        jobs = [(f, output_dir / f.relative_to(input_path)) for _, files in find_dicom_series(input_path) for f in files]
    written = 0
    for source, output in jobs:
        if not output.exists():
            simulate_dicom_slice(source, output, dose_fraction, seed, simulator)
            written += 1
    return written, len(jobs)


def add_simulator_arguments(parser: argparse.ArgumentParser) -> None:
    """The :class:`LowDoseSimulator` parameters as command-line options, defaulting to the simulator's defaults."""
    defaults = LowDoseSimulator()
    parser.add_argument("--incident_photons", type=float, default=defaults.incident_photons, help="I0 per ray and view")
    parser.add_argument("--electronic_noise_std", type=float, default=defaults.electronic_noise_std, help="counts")
    parser.add_argument("--num_views", type=int, default=defaults.num_views, help="parallel-beam views over 180 deg")
    parser.add_argument("--filter", default=defaults.filter_name, choices=RECONSTRUCTION_FILTERS, help="FBP filter")


def simulator_from_arguments(args: argparse.Namespace) -> LowDoseSimulator:
    """The simulator the options of :func:`add_simulator_arguments` describe."""
    return LowDoseSimulator(args.incident_photons, args.electronic_noise_std, args.num_views, args.filter)

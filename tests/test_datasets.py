"""Tests of the derived-slice DICOM writer, datalists, paired layouts (Mayo, TCIA), bundle.simulation.paired and the
dataset scripts, on tiny synthetic DICOM and NIfTI files written here."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.data import load_decathlon_datalist
from monai.transforms import LoadImage
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from bundle.io.ct_dicom import CTDicomReader, CTInputError
from bundle.io.datalist import build_datalist, split_patients, write_datalist
from bundle.io.dicom_writer import hu_to_stored, stored_value_range, write_derived_slice
from bundle.io.layouts import mayo_pairs, tcia_ldct_pairs
from bundle.simulation.low_dose import LowDoseSimulator
from bundle.evaluation.metrics_by_dose import metrics_by_dose
from bundle.simulation.paired import prepare_simulated_pairs, simulate_dicom_input, write_split_datalist
from tests.dicom_factory import phantom_hu, write_ct_slice

REPO = Path(__file__).resolve().parents[1]


def run_script(name: str, *arguments: str) -> str:
    """Run ``scripts/<name>`` with ``arguments`` in a fresh process from the repository root; returns its stdout."""
    done = subprocess.run([sys.executable, f"scripts/{name}", *arguments], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def twelve_bit_source(path: Path, hu: np.ndarray, padding_value: int | None = None) -> pydicom.Dataset:
    """A 12-bit unsigned CT slice (HU range -1024..3071 with intercept -1024), like many scanners write."""
    write_ct_slice(path, hu, pixel_padding_value=padding_value)
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 12, 11
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.save_as(path, enforce_file_format=True)
    return pydicom.dcmread(path)


# --- DICOM writer -------------------------------------------------------------------------------------------------


def test_stored_value_range_closed_form():
    ds = pydicom.Dataset()
    ds.BitsStored, ds.PixelRepresentation = 12, 0
    assert stored_value_range(ds) == (0, 4095)
    ds.BitsStored, ds.PixelRepresentation = 16, 1
    assert stored_value_range(ds) == (-32768, 32767)


def test_derived_slice_round_trip(tmp_path):
    hu = np.full((16, 16), 40.0, dtype=np.float32)
    hu[:2] = -3000.0  # padding rows, stored as 0 and declared by PixelPaddingValue 0
    source = twelve_bit_source(tmp_path / "source.dcm", hu, padding_value=0)
    padding = np.zeros((16, 16), dtype=bool)
    padding[:2] = True

    derived_hu = np.linspace(-1500.0, 4000.0, 256).reshape(16, 16).astype(np.float32) + 0.3
    series_uid = generate_uid()
    path = write_derived_slice(
        source, derived_hu, tmp_path / "out" / "derived.dcm", series_uid, "derived", "test derivation", 7, padding
    )
    assert sorted(p.name for p in path.parent.iterdir()) == ["derived.dcm"]  # no temporary file left

    ds = pydicom.dcmread(path)
    expected_hu = np.clip(np.rint(derived_hu), -1024, 3071)  # 12-bit unsigned with intercept -1024
    stored = ds.pixel_array
    np.testing.assert_array_equal(stored[2:] - 1024.0, expected_hu[2:])
    np.testing.assert_array_equal(stored[:2], source.pixel_array[:2])  # padding restored exactly
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert ds.SOPInstanceUID != source.SOPInstanceUID and ds.SOPInstanceUID == ds.file_meta.MediaStorageSOPInstanceUID
    assert ds.SeriesInstanceUID == series_uid and ds.SeriesNumber == 7
    assert list(ds.ImageType) == ["DERIVED", "SECONDARY", "AXIAL"]
    assert ds.DerivationDescription == "test derivation" and ds.SeriesDescription == "derived"
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    assert ds.SourceImageSequence[0].ReferencedSOPClassUID == source.SOPClassUID
    assert ds.PatientID == source.PatientID and ds.StudyInstanceUID == source.StudyInstanceUID

    default_padding = write_derived_slice(source, derived_hu, tmp_path / "default.dcm", series_uid, "d", "d")
    np.testing.assert_array_equal(pydicom.dcmread(default_padding).pixel_array, stored)  # padding from the source

    loaded = LoadImage(reader=CTDicomReader(), image_only=True)(str(path))
    # MONAI's reader swaps rows and columns; the reader maps declared padding to -1024 HU
    np.testing.assert_array_equal(np.asarray(loaded).T[2:], expected_hu[2:])
    np.testing.assert_array_equal(np.asarray(loaded).T[:2], -1024.0)


def test_hu_to_stored_signed_with_slope():
    ds = pydicom.Dataset()
    ds.BitsStored, ds.BitsAllocated, ds.PixelRepresentation = 16, 16, 1
    ds.RescaleSlope, ds.RescaleIntercept = 0.5, -1000.0
    stored = hu_to_stored(ds, np.array([-1000.0, -999.7, 0.0, 1e6]))
    assert stored.dtype == np.int16
    np.testing.assert_array_equal(stored, [0, 1, 2000, 32767])


def test_writer_rejects_wrong_shape(tmp_path):
    source = twelve_bit_source(tmp_path / "source.dcm", np.zeros((16, 16)))
    with pytest.raises(ValueError, match="shape"):
        write_derived_slice(source, np.zeros((8, 8)), tmp_path / "x.dcm", generate_uid(), "d", "d")


# --- datalists ----------------------------------------------------------------------------------------------------


def test_split_patients_is_deterministic_and_disjoint():
    patients = [f"P{i:02d}" for i in range(10)]
    split = split_patients(patients * 3, val_patients=2, test_patients=3, seed=1)
    assert split == split_patients(reversed(patients), val_patients=2, test_patients=3, seed=1)
    assert (len(split["training"]), len(split["validation"]), len(split["test"])) == (5, 2, 3)
    assert sorted(split["training"] + split["validation"] + split["test"]) == patients
    assert any(split_patients(patients, 2, 3, seed=s) != split for s in range(2, 6))
    with pytest.raises(ValueError, match="only 10 patients"):
        split_patients(patients, 6, 5)


def test_build_datalist_relative_paths_and_monai_loading(tmp_path):
    entries = [
        {"image": str(tmp_path / "ldct" / f"{p}_{i}.dcm"), "label": str(tmp_path / "ndct" / f"{p}_{i}.dcm"),
         "patient": p, "dose_fraction": 0.25}
        for p in ("A", "B", "C") for i in range(2)
    ]  # fmt: skip
    datalist = build_datalist(entries, {"training": ["A", "B"], "test": ["C"]}, tmp_path / "lists")
    assert [e["label"] for e in datalist["test"]] == ["../ndct/C_0.dcm", "../ndct/C_1.dcm"]
    assert len(datalist["training"]) == 4 and datalist["validation"] == []
    path = write_datalist(datalist, tmp_path / "lists" / "datalist.json")
    loaded = load_decathlon_datalist(path, data_list_key="test", base_dir=path.parent)
    assert loaded[0]["image"] == str(tmp_path / "ldct" / "C_0.dcm") and loaded[0]["patient"] == "C"
    with pytest.raises(ValueError, match="in training and in validation or test"):
        build_datalist(entries, {"training": ["A", "B", "C"], "test": ["C"]}, tmp_path)
    with pytest.raises(ValueError, match="in no split"):
        build_datalist(entries, {"training": ["A", "B"]}, tmp_path)


# --- paired layouts -------------------------------------------------------------------------------------------------


def write_series(folder: Path, patient: str, z_values: list[float], name: str = "{i}.IMA", description: str = ""):
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = generate_uid()
    for i, z in enumerate(z_values):
        path = folder / name.format(i=i)
        ds = write_ct_slice(path, phantom_hu(16), series_uid=series_uid, z_mm=z, patient_id=patient)
        if description:
            ds.SeriesDescription = description
            ds.save_as(path, enforce_file_format=True)


def test_mayo_layout_pairs_by_position(tmp_path):
    for patient in ("L067", "L096"):
        write_series(tmp_path / patient / "full_3mm", patient, [0.0, 3.0, 6.0])
        write_series(tmp_path / patient / "quarter_3mm", patient, [6.0, 3.0, 0.0])  # file order differs from z order
        write_series(tmp_path / patient / "full_1mm", patient, [0.0, 1.0])
        write_series(tmp_path / patient / "quarter_1mm", patient, [0.0, 1.0])
    entries = mayo_pairs(tmp_path)
    assert len(entries) == 6 and {e["patient"] for e in entries} == {"L067", "L096"}
    for entry in entries:
        assert "quarter_3mm" in entry["image"] and "full_3mm" in entry["label"] and entry["dose_fraction"] == 0.25
        image_z = pydicom.dcmread(entry["image"]).ImagePositionPatient[2]
        assert pydicom.dcmread(entry["label"]).ImagePositionPatient[2] == image_z
    assert len(mayo_pairs(tmp_path, slice_thickness="1mm")) == 4


def test_mayo_layout_errors_name_the_files(tmp_path):
    write_series(tmp_path / "L067" / "full_3mm", "L067", [0.0, 3.0])
    write_series(tmp_path / "L067" / "quarter_3mm", "L067", [0.0])
    with pytest.raises(CTInputError, match="1 low-dose slices .*quarter_3mm.* but 2 full-dose slices .*full_3mm"):
        mayo_pairs(tmp_path)
    write_series(tmp_path / "L067" / "quarter_3mm", "L067", [0.0, 3.5], name="z{i}.IMA")
    for stale in ("0.IMA",):
        (tmp_path / "L067" / "quarter_3mm" / stale).unlink()
    with pytest.raises(CTInputError, match=r"z1\.IMA: no unpaired full-dose slice within 0.1 mm of z = 3.5"):
        mayo_pairs(tmp_path)
    with pytest.raises(CTInputError, match="no 'full_1mm_sharp' folders"):
        mayo_pairs(tmp_path, slice_thickness="1mm", sharp=True)


def test_tcia_layout_by_folder_name_and_description(tmp_path):
    study = tmp_path / "LDCT-and-Projection-data"
    write_series(study / "L067" / "08-24-2018-NA-NA" / "1.000000-Full Dose Images-123", "L067", [0.0, 1.0], "1-{i}.dcm")
    write_series(study / "L067" / "08-24-2018-NA-NA" / "1.000000-Low Dose Images-456", "L067", [1.0, 0.0], "1-{i}.dcm")
    write_series(study / "C002" / "s" / "a", "C002", [5.0], "1-{i}.dcm", description="FULL_DOSE images")
    write_series(study / "C002" / "s" / "b", "C002", [5.0], "1-{i}.dcm", description="Low-Dose Images")
    write_series(study / "C002" / "s" / "localizer", "C002", [0.0], "1-{i}.dcm", description="Topogram")
    entries = tcia_ldct_pairs(study)
    assert [(e["patient"], e["dose_fraction"]) for e in entries] == [("C002", 0.1), ("L067", 0.25), ("L067", 0.25)]
    assert all("Low Dose" in e["image"] and "Full Dose" in e["label"] for e in entries if e["patient"] == "L067")

    write_series(study / "N001" / "s" / "Full Dose Images", "N001", [0.0], "1-{i}.dcm")
    with pytest.raises(CTInputError, match="patient N001 needs exactly one low dose series, found: none"):
        tcia_ldct_pairs(study)


# --- bundle.simulation.paired and scripts/prepare_dataset.py --------------------------------------------------------


@pytest.fixture
def normal_dose_folder(tmp_path) -> Path:
    root = tmp_path / "input"
    for patient, offset in (("P1", 0.0), ("P2", 10.0), ("P3", 20.0)):
        folder = root / patient / "series"
        folder.mkdir(parents=True)
        series_uid = generate_uid()
        for i in range(2):
            write_ct_slice(folder / f"{i}.dcm", phantom_hu(32, seed=i), patient_id=patient, z_mm=offset + i,
                           pixel_spacing_mm=8.0, pixel_padding_value=0, series_uid=series_uid)  # fmt: skip
    volume = np.stack([phantom_hu(32), phantom_hu(32, seed=1)], axis=-1)
    nib.save(nib.Nifti1Image(volume, np.diag([8.0, 8.0, 5.0, 1.0])), root / "P4.nii.gz")
    return root


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_prepare_dataset_simulates_pairs_and_resumes(normal_dose_folder, tmp_path):
    output = tmp_path / "output"
    simulator = LowDoseSimulator(num_views=60)
    entries = prepare_simulated_pairs(normal_dose_folder, output, (0.25, 0.1), seed=3, simulator=simulator)
    assert len(entries) == (3 * 2 + 2) * 2
    datalist_path = write_split_datalist(entries, output, val_patients=1, test_patients=1, seed=3)

    datalist = json.loads(datalist_path.read_text())
    patients = {split: {e["patient"] for e in items} for split, items in datalist.items()}
    assert sum(len(p) for p in patients.values()) == 4 and not (patients["training"] & patients["test"])
    assert not (patients["training"] & patients["validation"]) and not (patients["validation"] & patients["test"])
    items = [e for split in datalist for e in load_decathlon_datalist(datalist_path, data_list_key=split)]
    assert len(items) == 16 and all(Path(e["image"]).exists() and Path(e["label"]).exists() for e in items)

    source = normal_dose_folder / "P1" / "series" / "0.dcm"
    assert (output / "ndct" / "P1" / "series" / "0.dcm").read_bytes() == source.read_bytes()
    ldct = pydicom.dcmread(output / "ldct-0.25" / "P1" / "series" / "0.dcm")
    ndct = pydicom.dcmread(source)
    assert ldct.SourceImageSequence[0].ReferencedSOPInstanceUID == ndct.SOPInstanceUID
    inside = ndct.pixel_array > 0  # the phantom; stored 0 is declared padding (air at -1024 HU) and stays
    assert np.any(ldct.pixel_array[inside] != ndct.pixel_array[inside])
    np.testing.assert_array_equal(ldct.pixel_array[~inside], ndct.pixel_array[~inside])
    uids = {pydicom.dcmread(output / "ldct-0.1" / "P1" / "series" / f"{i}.dcm").SeriesInstanceUID for i in range(2)}
    assert len(uids) == 1 and ndct.SeriesInstanceUID not in uids  # one new series per source series and dose

    nifti_slice = nib.load(output / "ldct-0.25" / "P4" / "slice_0001.nii.gz")
    assert nifti_slice.shape == (32, 32) and nifti_slice.affine[2, 3] == 5.0
    np.testing.assert_array_equal(nib.load(output / "ndct" / "P4" / "slice_0001.nii.gz").get_fdata(), phantom_hu(32, 1))

    before = tree_bytes(output)
    (output / "ldct-0.1" / "P2" / "series" / "1.dcm").unlink()  # an interrupted run
    (output / "ldct-0.25" / "P4" / "slice_0000.nii.gz").unlink()
    run_script("prepare_dataset.py", "--input", str(normal_dose_folder), "--output", str(output), "--dose_fraction",
               "0.25", "--dose_fraction", "0.1", "--seed", "3", "--num_views", "60", "--val_patients", "1",
               "--test_patients", "1")  # fmt: skip
    assert tree_bytes(output) == before  # resumed to identical files, finished ones untouched


def test_prepare_dataset_cli_for_mayo_layout(tmp_path):
    write_series(tmp_path / "mayo" / "L067" / "full_3mm", "L067", [0.0, 3.0])
    write_series(tmp_path / "mayo" / "L067" / "quarter_3mm", "L067", [0.0, 3.0])
    run_script("prepare_dataset.py", "--layout", "mayo", "--input", str(tmp_path / "mayo"), "--output", str(tmp_path / "lists"))
    items = load_decathlon_datalist(tmp_path / "lists" / "datalist.json", data_list_key="training")
    assert len(items) == 2 and all("quarter_3mm" in e["image"] and Path(e["image"]).exists() for e in items)


def test_simulate_low_dose_cli_file_and_folder(normal_dose_folder, tmp_path):
    source = normal_dose_folder / "P1" / "series" / "0.dcm"
    output = run_script("simulate_low_dose.py", "--input", str(source), "--output", str(tmp_path / "one"), "--num_views", "60")
    assert "1 slices simulated" in output
    written = pydicom.dcmread(tmp_path / "one" / "0.dcm")
    assert written.SourceImageSequence[0].ReferencedSOPInstanceUID == pydicom.dcmread(source).SOPInstanceUID
    assert "dose fraction 0.25" in written.DerivationDescription

    simulator = LowDoseSimulator(num_views=60)  # the folder through the same bundle function, twice: resumable
    for expected in ((6, 6), (0, 6)):
        assert simulate_dicom_input(normal_dose_folder, tmp_path / "all", 0.1, 0, simulator) == expected
    assert (tmp_path / "all" / "P3" / "series" / "1.dcm").exists()


def test_metrics_by_dose_groups_slices_by_dose_folder(tmp_path):
    (tmp_path / "test_psnr_raw.csv").write_text(
        "filename,class0,mean\n/d/ldct-0.1/a/1.dcm,20,20\n/d/ldct-0.1/a/2.dcm,22,22\n/d/ldct-0.5/a/1.dcm,30,30\n"
    )
    table = metrics_by_dose(tmp_path)
    assert table["0.1"]["test_psnr"] == [20.0, 22.0] and table["0.5"]["test_psnr"] == [30.0]
    markdown = run_script("metrics_by_dose.py", "--eval_dir", str(tmp_path))
    assert "| 0.1 | 2 | 21 ± 1 |" in markdown and "| 0.5 | 1 | 30 ± 0 |" in markdown

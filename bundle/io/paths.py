"""Finding a user's CT inputs and the model checkpoint on disk."""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path

import nibabel as nib
import numpy as np
from pydicom.uid import UID

from bundle.io.ct_dicom import DICOM_SUFFIXES, is_dicomdir, read_dicom

__all__ = [
    "NIFTI_SUFFIXES",
    "DERIVED_MARK",
    "OutputDirError",
    "check_output_dir",
    "find_ct_inputs",
    "is_nifti",
    "require_checkpoint",
]

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")
# Start of the DerivationDescription (DICOM) and of the header's descrip (NIfTI) of this bundle's outputs, by which
# find_ct_inputs recognises and skips them.
DERIVED_MARK = "Denoised by StructKPN"
MEDIA_STORAGE_DIRECTORY = "1.2.840.10008.1.3.10"  # the SOP class of a DICOMDIR
CT_IMAGE_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.2",  # CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.1",  # Enhanced CT Image Storage
    "1.2.840.10008.5.1.4.1.1.2.2",  # Legacy Converted Enhanced CT Image Storage
}
_HEADER_TAGS = [
    "SOPClassUID",
    "SeriesInstanceUID",
    "Modality",
    "ImageType",
    "Rows",
    "Columns",
    "ImageOrientationPatient",
    "DerivationDescription",
]


class OutputDirError(ValueError):
    """An output folder that would overwrite the inputs or be read back as input on the next run."""


def is_nifti(path: os.PathLike | str) -> bool:
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def check_output_dir(dataset_dir: os.PathLike | str, output_dir: os.PathLike | str) -> None:
    """Raise :class:`OutputDirError` when ``output_dir`` is ``dataset_dir`` or inside it (outputs would be searched
    as inputs by the next run, and DICOM outputs would replace their sources)."""
    root, out = Path(dataset_dir).resolve(), Path(output_dir).resolve()
    if out == root or out.is_relative_to(root):
        where = "is dataset_dir" if out == root else f"is inside dataset_dir {dataset_dir}"
        raise OutputDirError(
            f"{output_dir}: output_dir {where}; its outputs would be read back as inputs by the next run: choose "
            "an output_dir outside dataset_dir"
        )


def find_ct_inputs(
    dataset_dir: os.PathLike | str, output_dir: os.PathLike | str | None = None
) -> list[dict[str, str | list[str]]]:
    """List the CT inputs under ``dataset_dir`` (searched recursively, hidden files and folders left out), sorted by
    path so runs are reproducible.

    Each item has ``"image"`` (what ``LoadImaged`` reads) and ``"source"`` (the name used in logs and summaries):

    - the DICOM image files of one series (SeriesInstanceUID) in one folder: a list of files, which
      :class:`~bundle.io.CTDicomReader` loads as one volume, with ``"output_stem"``, the path (relative to
      ``dataset_dir``) a NIfTI output of the series is named after: the folder when the series is the only one in
      it (``dataset_dir``'s own name for a series directly in it), else the series' first file;
    - a ``.nii``/``.nii.gz`` file;
    - files that are no CT input, with ``"skipped"`` (the reason): DICOMDIR, other files that are not DICOM,
      non-CT objects (Modality, SOPClassUID: MR, secondary capture, structured reports...), localizers (ImageType
      LOCALIZER, or a size or orientation that differs from the majority of their series), and outputs of this
      bundle (DerivationDescription, NIfTI descrip starting with ``DERIVED_MARK``). Each is logged as a warning;
    - a file named like DICOM (``.dcm``, ``.dicom``, ``.ima``) whose header cannot be read, with ``"error"``.

    Files without preamble or file meta are read with pydicom's ``force``. Raises :class:`OutputDirError` when
    ``output_dir`` is given and is ``dataset_dir`` or inside it, FileNotFoundError when ``dataset_dir`` is missing or
    holds no CT input.
    """
    root = Path(dataset_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: dataset_dir is not a folder")
    if output_dir is not None:
        check_output_dir(root, output_dir)
    items: list[dict] = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        items += _folder_inputs(root, Path(folder), sorted(Path(folder) / f for f in files if not f.startswith(".")))
    items.sort(key=lambda item: _first(item["image"]))
    for item in items:
        if "skipped" in item:
            logger.warning("skipped %s: %s", item["source"], item["skipped"])
    if not any("skipped" not in item for item in items):
        skipped = f" ({len(items)} groups of files skipped, see the warnings)" if items else ""
        raise FileNotFoundError(f"{root}: no DICOM series or NIfTI files found (searched recursively){skipped}")
    return items


def _first(image: str | list[str]) -> str:
    return image if isinstance(image, str) else image[0]


def _folder_inputs(root: Path, folder: Path, paths: list[Path]) -> list[dict]:
    """The items of one folder's files (see :func:`find_ct_inputs`)."""
    items: list[dict] = []
    skipped: dict[str, list[str]] = {}  # reason -> files
    series: dict[str, list[tuple[Path, object]]] = {}
    for path in paths:
        if is_nifti(path):
            if _nifti_description(path).startswith(DERIVED_MARK):
                skipped.setdefault("output of this bundle (NIfTI descrip), never read back", []).append(str(path))
            else:
                items.append({"image": str(path), "source": str(path)})
            continue
        if is_dicomdir(path):
            reason = "DICOMDIR (a file set's index; its images are read from their folders)"
            skipped.setdefault(reason, []).append(str(path))
            continue
        try:
            header = read_dicom(path, stop_before_pixels=True, specific_tags=_HEADER_TAGS)
        except Exception as e:  # pydicom raises many types for broken files
            if path.suffix.lower() in DICOM_SUFFIXES[1:]:
                items.append({"image": str(path), "source": str(path), "error": f"{path}: cannot read DICOM: {e}"})
            else:
                skipped.setdefault("not DICOM or NIfTI", []).append(str(path))
            continue
        reason = _not_ct_image(header)
        if reason:
            skipped.setdefault(reason, []).append(str(path))
        else:
            series.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((path, header))
    for members in series.values():
        outliers = _outliers(members)
        for reason, files in outliers.items():
            skipped.setdefault(reason, []).extend(files)
        left_out = {name for files in outliers.values() for name in files}
        files = [str(path) for path, _ in members if str(path) not in left_out]
        alone = len(series) == 1
        stem = str(folder.relative_to(root) if alone else Path(files[0]).relative_to(root))
        items.append(
            {
                "image": files,
                "source": str(folder) if alone else files[0],
                "output_stem": root.resolve().name if stem == "." else stem,
            }
        )
    for reason, files in skipped.items():
        more = f" and {len(files) - 1} more files" if len(files) > 1 else ""
        items.append({"image": files[0], "source": files[0] + more, "skipped": reason})
    return items


def _nifti_description(path: Path) -> str:
    try:
        return bytes(np.asarray(nib.load(path).header["descrip"]).item()).decode(errors="replace")
    except Exception:  # an unreadable NIfTI is the reader's to report
        return ""


def _not_ct_image(header) -> str | None:
    """Why a DICOM header is no CT image to denoise, or None."""
    if str(header.file_meta.get("MediaStorageSOPClassUID", "")) == MEDIA_STORAGE_DIRECTORY:
        return "DICOMDIR (a file set's index; its images are read from their folders)"
    if str(header.get("DerivationDescription", "")).startswith(DERIVED_MARK):
        return "output of this bundle (DerivationDescription), never read back"
    modality = header.get("Modality")
    if modality is not None and modality != "CT":
        return f"Modality {modality!r}: only CT is denoised"
    sop_class = header.get("SOPClassUID")
    if sop_class is not None and str(sop_class) not in CT_IMAGE_CLASSES:
        return f"SOP class {UID(str(sop_class)).name!r} is not a CT image"
    if "LOCALIZER" in [str(v).upper() for v in header.get("ImageType") or []]:
        return "ImageType LOCALIZER (a scout, not an axial slice)"
    return None


def _outliers(members: list[tuple[Path, object]]) -> dict[str, list[str]]:
    """Files of one series whose size or orientation differs from that of a strict majority of the series (e.g. a
    localizer sharing the CT's SeriesInstanceUID), by reason; none without a strict majority (the reader then
    rejects the series as mixed)."""

    def geometry(header) -> tuple:
        orientation = header.get("ImageOrientationPatient") or ()
        return header.get("Rows"), header.get("Columns"), tuple(np.round(np.asarray(orientation, float), 3))

    counts = Counter(geometry(header) for _, header in members)
    majority, count = counts.most_common(1)[0]
    outliers: dict[str, list[str]] = {}
    if count * 2 <= len(members):
        return outliers
    for path, header in members:
        if geometry(header) != majority:
            rows, columns, orientation = geometry(header)
            reason = (
                f"{rows}x{columns} slice, orientation {list(orientation)}, unlike the {count} of {len(members)} slices "
                f"of its series that are {majority[0]}x{majority[1]}, orientation {list(majority[2])} (a localizer?)"
            )
            outliers.setdefault(reason, []).append(str(path))
    return outliers


def require_checkpoint(path: os.PathLike | str) -> str:
    """Return ``path`` if the weights file exists, else raise FileNotFoundError saying how to get one."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{path}: no model weights. Train one with `python -m monai.bundle run training --meta_file "
            "configs/metadata.json --config_file configs/train.json --logging_file configs/logging.conf` "
            "(the best model is saved as models/model.pt), or pass --ckpt_path to an existing state dict."
        )
    return str(path)

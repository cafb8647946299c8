"""Training, validation and test blocks of a development data set, and their simulated training pairs."""

from __future__ import annotations

import json
import os
import zlib
from pathlib import Path

import numpy as np

from bundle.io.datalist import write_datalist
from bundle.io.layouts import find_dicom_series, read_slice_headers
from bundle.simulation.low_dose import LowDoseSimulator
from bundle.simulation.paired import (NDCT_FOLDER, copy_atomically, ensure_simulated_slice, ldct_folder,
                                      prepare_dicom_series)
from bundle.transforms.neighbour_slices import neighbour_indices

__all__ = ["SPLIT_KEYS", "block_neighbours", "block_slices", "prepare_block_datalist"]

#: block-file keys of the three splits, and the datalist split each fills
SPLIT_KEYS = {"train": "training", "validation": "validation", "test": "test"}


def block_slices(series_dir: os.PathLike | str, start: int, stop: int, step: int = 1) -> list[Path]:
    """Files ``start:stop:step`` of the DICOM series in ``series_dir`` in z order (ImagePositionPatient z)."""
    return [header.path for header in _series_slices(series_dir)[start:stop:step]]


def _series_slices(series_dir: os.PathLike | str) -> list:
    """The slice headers of the one DICOM series in ``series_dir``, in z order (ImagePositionPatient z)."""
    folders = find_dicom_series(series_dir)
    if len(folders) != 1:
        raise ValueError(f"{series_dir}: expected one DICOM series folder, found {len(folders)}")
    headers = read_slice_headers(folders[0][1])
    if any(header.z_mm is None for header in headers):
        raise ValueError(f"{series_dir}: a slice has no ImagePositionPatient; cannot order by z")
    return sorted(headers, key=lambda header: header.z_mm)


def block_neighbours(series_dir: os.PathLike | str, start: int, stop: int, step: int = 1,
                     radius: int = 1) -> dict[Path, list[Path]]:
    """The files ``start:stop:step`` of the series in ``series_dir`` (as :func:`block_slices`), each with the
    ``2 * radius + 1`` files it is fed with by a multi-slice network, in z order, taken from the block
    ``start:stop`` only (never from another split): its ends replicated and its gaps handled as at inference
    (:func:`bundle.transforms.neighbour_indices`)."""
    block = _series_slices(series_dir)[start:stop]
    rows = neighbour_indices([header.z_mm for header in block], 2 * radius + 1)
    return {block[i].path: [block[j].path for j in rows[i]] for i in range(0, len(block), step)}


def _training_filter(series: dict, path: Path, seed: int) -> str:
    """The reconstruction filter of training slice ``path``'s simulated noise, drawn from ``seed`` and its name."""
    rng = np.random.default_rng([seed, zlib.crc32(f"{series['path']}/{path.name}".encode())])
    return str(rng.choice(series["filters"]))


def _neighbour_pair(source: Path, series: dict, filter_name: str, spec: dict, output_dir: Path, seed: int,
                    own_filter: str | None) -> dict:
    """``{"image", "label"}`` of a neighbour slice of a training slice: its normal-dose copy and its own simulation
    at the reference dose with the training slice's filter (one series, one reconstruction kernel), which is the
    neighbour's own training image when it is a training slice drawn with that filter. The noise of every slice is
    seeded by its own identity, so a slice and its neighbours have independent noise."""
    series_path, dose = Path(series["path"]), spec["reference_dose_fraction"]
    label = output_dir / NDCT_FOLDER / series_path / source.name
    if not label.exists():
        copy_atomically(source, label)
    folder = ldct_folder(dose) if own_filter == filter_name else f"{ldct_folder(dose)}-{filter_name}"
    image = output_dir / folder / series_path / source.name
    simulator = LowDoseSimulator(num_views=spec["training_views"], filter_name=filter_name)
    ensure_simulated_slice(source, image, dose, seed, simulator)
    return {"image": str(image), "label": str(label)}


def prepare_block_datalist(blocks_file: os.PathLike | str, data_dir: os.PathLike | str, output_dir: os.PathLike | str,
                           seed: int = 0, neighbours: int = 0) -> Path:
    """
    Simulate the training and validation pairs of every series in ``blocks_file`` and write
    ``output_dir/datalist.json`` (paths relative to it).

    - training: each slice once at the file's ``reference_dose_fraction``, with ``training_views`` views and a
      filter drawn per slice (from ``seed`` and the file name) from the series' ``filters``, so that :class:`~bundle.simulation.RandDoseNoised` can
      rescale its noise to any dose;
    - validation: each slice at every ``validation_dose_fractions`` (the simulator's default views and filter);
    - test: the normal-dose slices only (entries without ``image``), with their ``block``, for evaluation scripts
      that simulate their own doses.

    Entries carry ``patient`` (the block name), ``block``, ``anatomy``, ``kernel`` and ``dose_fraction``. Existing
    outputs made with the same settings are kept, so an interrupted run resumes to identical files.

    With ``neighbours`` = R > 0 (for the multi-slice StructKPN, ``slices`` up to 2R + 1), every entry also lists the
    2R + 1 slices around its own in z order, from its own block (:func:`block_neighbours`): ``image_slices`` and
    ``label_slices`` (training and validation), ``label_slices`` (test). A training slice's neighbours are simulated
    like it (reference dose, ``training_views`` views) with its filter, into ``ldct-<dose>-<filter>`` unless the
    neighbour is a training slice drawn with that filter; validation neighbours are validation slices at the same
    dose. The entries' other keys, and the files ``neighbours=0`` writes, are the same. Existing files made with the
    same settings are kept (a rerun resumes); one made with others is simulated again.
    """
    spec = json.loads(Path(blocks_file).read_text())
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    datalist: dict[str, list[dict]] = {split: [] for split in SPLIT_KEYS.values()}
    for series in spec["series"]:
        series_dir = data_dir / series["path"]
        tags = {"block": series["block"], "anatomy": series["anatomy"], "kernel": series["kernel"]}
        train = block_slices(series_dir, *series["train"], series["train_step"])
        train_filters = {path: _training_filter(series, path, seed) for path in train}
        train_neighbours = block_neighbours(series_dir, *series["train"], series["train_step"], neighbours) if neighbours else {}
        for path in train:
            filter_name = train_filters[path]
            simulator = LowDoseSimulator(num_views=spec["training_views"], filter_name=filter_name)
            entries = prepare_dicom_series([path], Path(series["path"]), output_dir,
                                           [spec["reference_dose_fraction"]], seed, simulator)
            if neighbours:
                pairs = [_neighbour_pair(source, series, filter_name, spec, output_dir, seed, train_filters.get(source))
                         for source in train_neighbours[path]]  # fmt: skip
                entries = [{**entry, "image_slices": [p["image"] for p in pairs],
                            "label_slices": [p["label"] for p in pairs]} for entry in entries]  # fmt: skip
            datalist["training"] += [{**entry, **tags} for entry in entries]
        validation = block_slices(series_dir, *series["validation"])
        if validation:
            entries = prepare_dicom_series(validation, Path(series["path"]), output_dir,
                                           spec["validation_dose_fractions"], seed + 1, LowDoseSimulator())
            if neighbours:  # the validation slices around, at the same dose
                around = {p.name: [q.name for q in qs]
                          for p, qs in block_neighbours(series_dir, *series["validation"], radius=neighbours).items()}
                at = {(Path(e["label"]).name, e["dose_fraction"]): e for e in entries}
                entries = [{**entry, **{f"{key}_slices": [at[name, entry["dose_fraction"]][key]
                                                          for name in around[Path(entry["label"]).name]]
                                        for key in ("image", "label")}} for entry in entries]  # fmt: skip
            datalist["validation"] += [{**entry, **tags} for entry in entries]
        test = block_slices(series_dir, *series["test"])
        around = block_neighbours(series_dir, *series["test"], radius=neighbours) if neighbours else {}
        datalist["test"] += [{"label": str(path), **tags, **({"label_slices": [str(p) for p in around[path]]}
                                                             if neighbours else {})} for path in test]  # fmt: skip
        print(f"{series['block']}: {len(train)} training, {len(validation)} validation slices", flush=True)
    for items in datalist.values():
        for item in items:
            item["patient"] = item["block"]
            for key in ("image", "label"):
                if key in item:
                    item[key] = os.path.relpath(Path(item[key]).resolve(), output_dir.resolve())
                if f"{key}_slices" in item:
                    item[f"{key}_slices"] = [os.path.relpath(Path(p).resolve(), output_dir.resolve())
                                             for p in item[f"{key}_slices"]]  # fmt: skip
    return write_datalist(datalist, output_dir / "datalist.json")

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
from bundle.simulation.paired import prepare_dicom_series

__all__ = ["SPLIT_KEYS", "block_slices", "prepare_block_datalist"]

#: block-file keys of the three splits, and the datalist split each fills
SPLIT_KEYS = {"train": "training", "validation": "validation", "test": "test"}


def block_slices(series_dir: os.PathLike | str, start: int, stop: int, step: int = 1) -> list[Path]:
    """Files ``start:stop:step`` of the DICOM series in ``series_dir`` in z order (ImagePositionPatient z)."""
    folders = find_dicom_series(series_dir)
    if len(folders) != 1:
        raise ValueError(f"{series_dir}: expected one DICOM series folder, found {len(folders)}")
    headers = read_slice_headers(folders[0][1])
    if any(header.z_mm is None for header in headers):
        raise ValueError(f"{series_dir}: a slice has no ImagePositionPatient; cannot order by z")
    ordered = sorted(headers, key=lambda header: header.z_mm)
    return [header.path for header in ordered[start:stop:step]]


def prepare_block_datalist(blocks_file: os.PathLike | str, data_dir: os.PathLike | str, output_dir: os.PathLike | str,
                           seed: int = 0) -> Path:
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
    outputs are kept, so an interrupted run resumes to identical files.
    """
    spec = json.loads(Path(blocks_file).read_text())
    data_dir, output_dir = Path(data_dir), Path(output_dir)
    datalist: dict[str, list[dict]] = {split: [] for split in SPLIT_KEYS.values()}
    for series in spec["series"]:
        series_dir = data_dir / series["path"]
        tags = {"block": series["block"], "anatomy": series["anatomy"], "kernel": series["kernel"]}
        train = block_slices(series_dir, *series["train"], series["train_step"])
        for path in train:
            rng = np.random.default_rng([seed, zlib.crc32(f"{series['path']}/{path.name}".encode())])
            filter_name = str(rng.choice(series["filters"]))
            simulator = LowDoseSimulator(num_views=spec["training_views"], filter_name=filter_name)
            entries = prepare_dicom_series([path], Path(series["path"]), output_dir,
                                           [spec["reference_dose_fraction"]], seed, simulator)
            datalist["training"] += [{**entry, **tags} for entry in entries]
        validation = block_slices(series_dir, *series["validation"])
        if validation:
            entries = prepare_dicom_series(validation, Path(series["path"]), output_dir,
                                           spec["validation_dose_fractions"], seed + 1, LowDoseSimulator())
            datalist["validation"] += [{**entry, **tags} for entry in entries]
        datalist["test"] += [{"label": str(path), **tags} for path in block_slices(series_dir, *series["test"])]
        print(f"{series['block']}: {len(train)} training, {len(validation)} validation slices", flush=True)
    for items in datalist.values():
        for item in items:
            item["patient"] = item["block"]
            for key in ("image", "label"):
                if key in item:
                    item[key] = os.path.relpath(Path(item[key]).resolve(), output_dir.resolve())
    return write_datalist(datalist, output_dir / "datalist.json")

"""Patient-level splits and MONAI datalists of paired low-dose / normal-dose slices.

A datalist is MONAI's decathlon format, read by ``monai.data.load_decathlon_datalist(path, data_list_key=...,
base_dir=folder_of_path)``::

    {"training": [{"image": "ldct-0.25/A/1-01.dcm", "label": "ndct/A/1-01.dcm", "patient": "A", "dose_fraction": 0.25},
                  ...],
     "validation": [...], "test": [...]}

one entry per 2D slice and dose, ``image`` the low-dose input and ``label`` the normal-dose target, paths relative
to the datalist's folder. Splits are by patient, never by slice, so no patient's anatomy leaks into evaluation.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np

from bundle.io.atomic import atomic_output

__all__ = ["SPLITS", "split_patients", "build_datalist", "write_datalist"]

#: The datalist's keys, in order.
SPLITS = ("training", "validation", "test")


def split_patients(
    patient_ids: Iterable[str], val_patients: int = 0, test_patients: int = 0, seed: int = 0
) -> dict[str, list[str]]:
    """Assign patients to training, validation and test at random, deterministically for a ``seed``.

    The sorted unique ids are shuffled by ``numpy.random.default_rng(seed)``; the first ``test_patients`` go to
    test, the next ``val_patients`` to validation, the rest to training (each list sorted).

    Example::

        split_patients(["L067", "L096", "L109", "L143"], val_patients=1, test_patients=1, seed=0)
    """
    patients = sorted(set(patient_ids))
    if val_patients < 0 or test_patients < 0:
        raise ValueError("val_patients and test_patients must not be negative")
    if val_patients + test_patients > len(patients):
        raise ValueError(
            f"asked for {val_patients} validation and {test_patients} test patients, but there are only "
            f"{len(patients)} patients: {patients}"
        )
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    test, validation, training = (
        order[:test_patients],
        order[test_patients : test_patients + val_patients],
        order[test_patients + val_patients :],
    )
    return {"training": sorted(training), "validation": sorted(validation), "test": sorted(test)}


def build_datalist(
    entries: Iterable[Mapping], patient_splits: Mapping[str, Sequence[str]], base_dir: os.PathLike | str
) -> dict[str, list[dict]]:
    """Group slice ``entries`` into the splits by their ``"patient"``, with ``image``/``label`` paths made relative
    to ``base_dir`` (the datalist's folder); entries are sorted by patient, label and dose fraction.

    Each entry needs ``image``, ``label`` and ``patient`` and may carry more keys (``dose_fraction``...). Every
    patient must be in a split and no training patient may be in validation or test. Validation and test may share
    patients (a tiny demo set with one held-out patient), which a real experiment should avoid.

    Example::

        build_datalist(entries, split_patients({e["patient"] for e in entries}, 1, 1), "dataset/")
    """
    held_out = set(patient_splits.get("validation", ())) | set(patient_splits.get("test", ()))
    leaked = sorted(held_out & set(patient_splits.get("training", ())))
    if leaked:
        raise ValueError(f"patients {leaked} are in training and in validation or test")
    unknown = sorted(set(patient_splits) - set(SPLITS))
    if unknown:
        raise ValueError(f"unknown splits {unknown}; expected {SPLITS}")
    base_dir = Path(base_dir).resolve()
    datalist: dict[str, list[dict]] = {split: [] for split in SPLITS}
    for entry in entries:
        item = dict(entry)
        item["image"] = os.path.relpath(Path(entry["image"]).resolve(), base_dir)
        item["label"] = os.path.relpath(Path(entry["label"]).resolve(), base_dir)
        splits = [split for split in SPLITS if item["patient"] in patient_splits.get(split, ())]
        if not splits:
            raise ValueError(f"patient {item['patient']!r} ({entry['label']}) is in no split")
        for split in splits:
            datalist[split].append(item)
    for items in datalist.values():
        items.sort(key=lambda item: (str(item["patient"]), item["label"], item.get("dose_fraction", 0.0)))
    return datalist


def write_datalist(datalist: Mapping[str, Sequence[Mapping]], path: os.PathLike | str) -> Path:
    """Write ``datalist`` as indented JSON, atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(datalist, indent=2) + "\n")
    return path

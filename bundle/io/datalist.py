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
from bundle.utils.slices import check_slices

__all__ = ["SPLITS", "split_patients", "build_datalist", "neighbour_keys", "with_neighbour_slices", "write_datalist"]

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


def neighbour_keys(keys: Sequence[str], slices: int, centre: bool = True) -> list[str]:
    """The item keys of ``slices`` adjacent slices around each of ``keys``, in slice order: ``key_-1``, ``key``,
    ``key_+1`` for 3 slices (``centre=False``: without ``key``); ``list(keys)`` for 1 slice.

    Example::

        >>> neighbour_keys(["image", "label"], 3)
        ['image_-1', 'image', 'image_+1', 'label_-1', 'label', 'label_+1']
    """
    half = slices // 2
    return [key if offset == 0 else f"{key}_{offset:+d}" for key in keys for offset in range(-half, half + 1)
            if centre or offset != 0]  # fmt: skip


def with_neighbour_slices(items: Sequence[Mapping], slices: int, keys: Sequence[str] = ("image", "label")) -> list[dict]:
    """
    Datalist ``items`` for a network fed ``slices`` adjacent slices: each item's ``<key>_slices`` (the files of the
    slices around its own, in slice order, its own in the middle, as ``prepare_block_datalist(neighbours=R)`` writes
    them) given as the :func:`neighbour_keys` of each key it has, for ``LoadImaged``. ``slices=1`` returns ``items``
    as they are. An item without enough slices around it raises ``ValueError`` naming its file.
    """
    if slices == 1:
        return list(items)
    check_slices(slices)
    half, converted = slices // 2, []
    for entry in items:
        item = dict(entry)
        for key in (k for k in keys if k in item):
            around = item.get(f"{key}_slices")
            if not isinstance(around, list) or len(around) < slices or len(around) % 2 == 0:
                found = f"{len(around)} slices" if isinstance(around, list) else "none"
                raise ValueError(
                    f"{item[key]}: the datalist entry lists {found} in {key}_slices, and slices={slices} needs "
                    f"{slices}: prepare the datalist with neighbours (scripts/prepare_shipped_model_data.py "
                    f"--neighbours {half})"
                )
            middle = len(around) // 2
            for offset in range(-half, half + 1):
                if offset:
                    item[f"{key}_{offset:+d}"] = around[middle + offset]
        converted.append(item)
    return converted

"""Build a paired low-dose / normal-dose dataset and its MONAI datalist.

Simulated pairs from normal-dose data (DICOM series folders and NIfTI volumes, searched recursively)::

    python scripts/prepare_dataset.py --input /path/to/ndct --output /path/to/paired --dose_fraction 0.25 \\
        --dose_fraction 0.1 --seed 0 --val_patients 2 --test_patients 2

writes ``output/ndct/<series path>/...`` (copies of the DICOM files; NIfTI volumes as per-slice 2D NIfTI files),
``output/ldct-<dose>/<series path>/...`` (simulated, same format) and ``output/datalist.json``. Every slice's noise
is seeded from ``--seed`` and the slice's identity (SOPInstanceUID, or NIfTI file and slice index), and files are
written atomically, so rerunning skips finished slices and an interrupted run resumes to identical files.

Real paired collections (datalist only, paths pointing into ``--input``)::

    python scripts/prepare_dataset.py --layout mayo --input /path/to/mayo2016 --output /path/to/mayo2016-lists
    python scripts/prepare_dataset.py --layout tcia --input /path/to/LDCT-and-Projection-data --output /path/to/tcia-lists

Needs the ``bundle`` package importable (``pip install -e .``).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from bundle.io.layouts import mayo_pairs, tcia_ldct_pairs
from bundle.simulation.paired import (
    add_simulator_arguments,
    prepare_simulated_pairs,
    simulator_from_arguments,
    write_split_datalist,
)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", required=True, type=Path, help="folder of normal-dose data or of a paired layout")
    parser.add_argument("--output", required=True, type=Path, help="output folder (datalist.json goes here)")
    parser.add_argument("--layout", choices=("simulate", "mayo", "tcia"), default="simulate")
    parser.add_argument("--dose_fraction", type=float, action="append", help="simulated dose fraction(s), default 0.25")
    parser.add_argument("--seed", type=int, default=0, help="seed of the noise and of the patient split")
    parser.add_argument("--val_patients", type=int, default=0)
    parser.add_argument("--test_patients", type=int, default=0)
    add_simulator_arguments(parser)
    parser.add_argument("--slice_thickness", default="3mm", help="mayo layout: full_<this> / quarter_<this>")
    parser.add_argument("--sharp", action="store_true", help="mayo layout: the *_sharp series")
    parser.add_argument("--tolerance_mm", type=float, default=0.1, help="paired layouts: z tolerance of a pair")
    args = parser.parse_args(argv)

    if args.layout == "simulate":
        simulator = simulator_from_arguments(args)
        doses = args.dose_fraction or [0.25]
        entries = prepare_simulated_pairs(args.input, args.output, doses, args.seed, simulator)
    elif args.layout == "mayo":
        entries = mayo_pairs(args.input, args.slice_thickness, args.sharp, args.tolerance_mm)
    else:
        entries = tcia_ldct_pairs(args.input, args.tolerance_mm)
    path = write_split_datalist(entries, args.output, args.val_patients, args.test_patients, args.seed)
    print(f"{len(entries)} pairs -> {path}")


if __name__ == "__main__":
    main()

"""Simulate low-dose CT DICOM from normal-dose DICOM, or regenerate the simulator's validation report.

Simulate one file or every series under a folder (outputs mirror the input's folders; existing files are kept)::

    python scripts/simulate_low_dose.py --input /path/to/ndct/series1 --output /path/to/ldct --dose_fraction 0.25 --seed 0

Measure the simulator on real CT (Lung-PET-CT-Dx) and write ``docs/simulation.md`` (the prose of
``docs/templates/simulation.md`` with the measured numbers, :mod:`bundle.simulation.report`) and
``docs/simulation.png``::

    python scripts/simulate_low_dose.py --report_dir docs --source /path/to/lung-pet-ct-dx

Needs the ``bundle`` package importable (``pip install -e .``); runs from the repository root.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from bundle.simulation.paired import add_simulator_arguments, simulate_dicom_input, simulator_from_arguments

REPO = Path(__file__).resolve().parents[1]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="a CT DICOM file or a folder of series")
    parser.add_argument("--output", type=Path, help="output folder")
    parser.add_argument("--dose_fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    add_simulator_arguments(parser)
    parser.add_argument("--report_dir", type=Path, help="write simulation.md and simulation.png into this folder")
    parser.add_argument("--source", type=Path, help="with --report_dir: the Lung-PET-CT-Dx folder to measure on")
    parser.add_argument("--template", type=Path, default=REPO / "docs/templates/simulation.md",
                        help="with --report_dir: the page's prose, with ${name} placeholders")  # fmt: skip
    args = parser.parse_args(argv)
    if args.report_dir:
        if not args.source:
            parser.error("--report_dir needs --source")
        from bundle.simulation.report import write_simulation_report

        from bundle.utils.reporting import provenance

        command = ["python", "scripts/simulate_low_dose.py", *(sys.argv[1:] if argv is None else argv)]
        page = write_simulation_report(args.source, args.report_dir, args.template, args.seed,
                                       provenance(command, REPO))
        print(f"wrote {page} and {page.with_suffix('.png')}")
    elif args.input and args.output:
        simulator = simulator_from_arguments(args)
        written, total = simulate_dicom_input(args.input, args.output, args.dose_fraction, args.seed, simulator)
        print(f"{written} slices simulated, {total - written} already present, in {args.output}")
    else:
        parser.error("give --input and --output, or --report_dir and --source")


if __name__ == "__main__":
    main()

"""Speed and memory of StructKPN inference and training against the naive local convolution, BM3D and RED-CNN.

    python scripts/benchmark_speed.py --report docs/performance.md --notes docs/performance_notes.md

The cases (``--cases``, default all) are those of :mod:`bundle.evaluation.speed`, which says what each measures;
every case runs in its own fresh process (so its peak memory is its own), and the table compares them with
references measured in the same run. ``--rounds N`` runs the whole list N times and pools each case's timings:
the shared host has slow spells of minutes, and rounds spread them over all cases instead of letting one case's
process fall into one. On a GPU the same cases run on CUDA with ``--device cuda`` (BM3D stays on the CPU).

Needs the ``bundle`` package importable; runs from the repository root.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bundle.evaluation.speed import CASES, SpeedOptions, run_speed_benchmark, table
from bundle.utils import provenance, write_report

REPO = Path(__file__).resolve().parents[1]
SAMPLE_SERIES = REPO / "sample_data/ldct-0.25/A0002-siemens-B40f"


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slice", type=Path, default=SAMPLE_SERIES / "1-04.dcm", help="low-dose DICOM slice")
    parser.add_argument("--reference_slice", type=Path, default=REPO / "sample_data/ndct/A0002-siemens-B40f/1-04.dcm")
    parser.add_argument("--series", type=Path, default=SAMPLE_SERIES, help="DICOM series of the series_* cases")
    parser.add_argument("--authors_series", type=Path, help="a shorter series for series_authors (default: --series)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of a case in one process, after a warm-up")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the whole list of cases this many times, pooling each case's runs"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--report", type=Path, help="also write the table, command and commit to this Markdown file")
    parser.add_argument("--notes", type=Path, help="Markdown notes the report links to (what was tried, and why)")
    args = parser.parse_args(argv)
    argv = list(sys.argv[1:] if argv is None else argv)
    with tempfile.TemporaryDirectory() as scratch:
        options = SpeedOptions(REPO, args.slice, args.reference_slice, args.series, args.authors_series, args.repeats,
                               args.device, Path(scratch))  # fmt: skip
        markdown = table(run_speed_benchmark(args.cases, options, args.rounds), options)
    print(markdown, end="")
    if args.report:
        header = provenance(["python", "scripts/benchmark_speed.py", *argv], REPO, args.device) + "\n\n"
        notes = ""
        if args.notes:
            link = Path(os.path.relpath(args.notes.resolve(), args.report.resolve().parent)).as_posix()
            notes = f"\nWhat was tried, and why: [{args.notes.name}]({link}).\n"
        write_report(args.report, header + markdown + notes)
    return markdown


if __name__ == "__main__":
    main()

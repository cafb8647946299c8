"""Summarise evaluate.json's per-slice metrics by simulated dose.

``evaluate.json`` writes one ``<metric>_raw.csv`` per metric (a row per slice, the input file first). Simulated
datasets keep each dose in an ``ldct-<dose>`` folder, so the dose is read from the path::

    python scripts/metrics_by_dose.py --eval-dir eval --output eval/metrics_by_dose.md

prints (and optionally writes) a Markdown table: dose, slices, then mean +- std of every metric.
"""

from __future__ import annotations

import argparse
import csv
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

DOSE_FOLDER = re.compile(r"ldct-([0-9.]+)")


def metrics_by_dose(eval_dir: Path) -> dict[str, dict[str, list[float]]]:
    """``{dose: {metric: [per-slice values]}}`` from the ``*_raw.csv`` files in ``eval_dir``."""
    table: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    raw_files = sorted(eval_dir.glob("*_raw.csv"))
    if not raw_files:
        raise FileNotFoundError(f"{eval_dir}: no *_raw.csv files (run evaluate.json with this output_dir first)")
    for raw in raw_files:
        metric = raw.name[: -len("_raw.csv")]
        with open(raw, newline="") as f:
            for row in list(csv.reader(f))[1:]:
                match = DOSE_FOLDER.search(row[0])
                table[match.group(1) if match else "unknown"][metric].append(float(row[-1]))
    return table


def to_markdown(table: dict[str, dict[str, list[float]]]) -> str:
    metrics = sorted({m for per_dose in table.values() for m in per_dose})
    lines = ["| dose | slices | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for dose in sorted(table, key=lambda d: (d == "unknown", float(d) if d != "unknown" else 0.0)):
        per_metric = table[dose]
        count = len(next(iter(per_metric.values())))
        cells = [f"{np.mean(per_metric[m]):.4g} ± {np.std(per_metric[m]):.2g}" for m in metrics]
        lines.append(f"| {dose} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval-dir", type=Path, required=True, help="output_dir of an evaluate.json run")
    parser.add_argument("--output", type=Path, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    markdown = to_markdown(metrics_by_dose(args.eval_dir))
    if args.output:
        args.output.write_text(markdown)
    print(markdown, end="")
    return markdown


if __name__ == "__main__":
    sys.exit(main() and 0)

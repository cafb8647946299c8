"""Summarise evaluate.json's per-slice metrics by simulated dose.

``evaluate.json`` writes one ``<metric>_raw.csv`` per metric (a row per slice, the input file first). Simulated
datasets keep each dose in an ``ldct-<dose>`` folder, so the dose is read from the path::

    python scripts/metrics_by_dose.py --eval_dir eval --output eval/metrics_by_dose.md

prints (and optionally writes) a Markdown table: dose, slices, then mean +- std of every metric.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bundle.evaluation.metrics_by_dose import metrics_by_dose, to_markdown


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--eval_dir", type=Path, required=True, help="output_dir of an evaluate.json run")
    parser.add_argument("--output", type=Path, help="also write the Markdown table here")
    args = parser.parse_args(argv)
    markdown = to_markdown(metrics_by_dose(args.eval_dir))
    if args.output:
        args.output.write_text(markdown)
    print(markdown, end="")
    return markdown


if __name__ == "__main__":
    sys.exit(main() and 0)

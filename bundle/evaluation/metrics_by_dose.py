"""evaluate.json's per-slice metrics grouped by simulated dose (read from each input's ``ldct-<dose>`` folder)."""

from __future__ import annotations

import csv
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

__all__ = ["DOSE_FOLDER", "metrics_by_dose", "to_markdown"]

DOSE_FOLDER = re.compile(r"ldct-([0-9.]+)")
"""The dose of a simulated slice, from its ``ldct-<dose>`` folder."""


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
    """Markdown table of :func:`metrics_by_dose`: dose, slices, then mean ± std of every metric."""
    metrics = sorted({m for per_dose in table.values() for m in per_dose})
    lines = ["| dose | slices | " + " | ".join(metrics) + " |", "|---" * (len(metrics) + 2) + "|"]
    for dose in sorted(table, key=lambda d: (d == "unknown", float(d) if d != "unknown" else 0.0)):
        per_metric = table[dose]
        count = len(next(iter(per_metric.values())))
        cells = [f"{np.mean(per_metric[m]):.4g} ± {np.std(per_metric[m]):.2g}" for m in metrics]
        lines.append(f"| {dose} | {count} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

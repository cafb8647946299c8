"""Helpers of the report scripts: image quality in HU windows, the provenance a report states, its atomic write."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from monai.metrics import PSNRMetric, SSIMMetric

__all__ = [
    "CHEST_WINDOW_HU",
    "PAPER_WINDOW_HU",
    "REPORT_WINDOWS",
    "git_commit",
    "provenance",
    "windowed_quality",
    "write_report",
]

PAPER_WINDOW_HU = (-160.0, 240.0)
"""The paper's display window (centre 40, width 400 HU)."""
CHEST_WINDOW_HU = (-1350.0, 150.0)
"""Chest (lung) window: centre -600, width 1500 HU."""
REPORT_WINDOWS = {"paper": PAPER_WINDOW_HU, "chest": CHEST_WINDOW_HU}


def windowed_quality(
    prediction_hu: np.ndarray | torch.Tensor,
    reference_hu: np.ndarray | torch.Tensor,
    windows: dict[str, tuple[float, float]] = REPORT_WINDOWS,
) -> dict[str, float]:
    """
    PSNR (dB, data range 1) and SSIM (MONAI's) of two (H, W) images in HU, in every window mapped to [0, 1].

    Returns ``{"psnr_<window>": ..., "ssim_<window>": ...}`` for each window name.
    """
    scores = {}
    for name, (low, high) in windows.items():
        a, b = (
            ((torch.as_tensor(np.asarray(x), dtype=torch.float32) - low) / (high - low)).clamp(0.0, 1.0)[None, None]
            for x in (prediction_hu, reference_hu)
        )
        scores[f"psnr_{name}"] = float(PSNRMetric(max_val=1.0)(a, b))
        scores[f"ssim_{name}"] = float(SSIMMetric(spatial_dims=2, data_range=1.0)(a, b))
    return scores


def git_commit(repository: os.PathLike | str) -> str:
    """HEAD of ``repository``, marked when tracked files have uncommitted changes; ``"unknown"`` without git."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repository, capture_output=True, text=True)
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repository, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    if commit.returncode != 0:
        return "unknown"
    return commit.stdout.strip() + (" (with uncommitted changes)" if status.stdout.strip() else "")


def provenance(
    command: Sequence[str], repository: os.PathLike | str, device: str = "cpu", threads: int | None = None
) -> str:
    """The sentence a report starts with: the command (shell-quoted) that wrote it, the commit of ``repository``
    (:func:`git_commit`), the date, the machine, CPU cores, torch version, threads (this process's when None) and
    device."""
    return (
        f"Output of `{shlex.join(command)}` at commit `{git_commit(repository)}` on {datetime.date.today()} "
        f"({platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {threads or torch.get_num_threads()} "
        f"threads, device {device})."
    )


def write_report(path: os.PathLike | str, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (:func:`bundle.io.atomic.atomic_output`: a reader sees the old or the new
    report, never a part); returns the path."""
    from bundle.io.atomic import atomic_output

    with atomic_output(path) as temporary:
        temporary.write_text(text)
    return Path(path)

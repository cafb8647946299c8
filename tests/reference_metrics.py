"""Independent image-quality references for the tests (written without the bundle's metric code)."""

from __future__ import annotations

import numpy as np


def paper_window_psnr(hu: np.ndarray, reference_hu: np.ndarray) -> float:
    """PSNR (dB) with both images windowed to the paper's [-160, 240] HU -> [0, 1], data range 1."""
    a, b = (np.clip((x - (-160.0)) / 400.0, 0.0, 1.0) for x in (hu, reference_hu))
    return float(10.0 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))

"""docs/simulation.md: the hand-written template filled with measured values (bundle.simulation.report)."""

from __future__ import annotations

import re
import string
from pathlib import Path

import numpy as np
import pytest

from bundle.simulation.low_dose import LowDoseSimulator
from bundle.simulation.report import high_frequency_share, report_values

TEMPLATE = Path(__file__).resolve().parents[1] / "docs/templates/simulation.md"


def test_high_frequency_share_of_white_noise_is_the_share_of_frequencies():
    """White noise has a flat spectrum: its power above the cutoff is the share of frequency samples above it."""
    noise = np.random.default_rng(0).standard_normal((256, 256))
    frequencies = np.fft.fftfreq(256)
    radius = np.hypot(*np.meshgrid(frequencies, frequencies, indexing="ij"))
    assert high_frequency_share(noise) == pytest.approx(float(np.mean(radius > 0.3)), abs=0.01)
    smooth = np.cumsum(np.cumsum(noise, axis=0), axis=1)  # integrated noise: power falls as 1 / f^4
    assert high_frequency_share(smooth) < 0.01


def test_template_is_filled_with_every_measured_value():
    rows = [
        {"series": "A0001-x", "slice": "1-20.dcm", "spacing": 0.7, "dose": dose, "std": std, "mean": 0.3,
         "pixels": 1000, "ndct_std": ndct, "seconds": seconds}
        for dose, std, ndct, seconds in ((0.5, 8.0, 11.0, 1.0), (0.25, 14.0, 12.0, 2.0), (0.1, 25.0, 13.0, 4.0))
    ]  # fmt: skip
    spectrum = np.ones((128, 128))
    values = report_values(rows, {("A0001-x", 0.25): [spectrum]}, {0.0: 30.0, 2.0: 41.0}, {"astra `linear`": 0.5},
                           {"linear": (24.1, 0.15), "line": (26.5, 0.21)}, LowDoseSimulator(electronic_noise_std=2.0))
    page = string.Template(TEMPLATE.read_text()).substitute(values)  # KeyError if a placeholder had no value
    assert "${" not in page and not re.search(r"\$\w", page)
    page = " ".join(page.split())  # the prose wraps lines anywhere
    assert "At dose 0.25 the added noise in soft tissue is 14.0 to 14.0 HU" in page
    assert "full-dose noise of 8.0-8.0 HU" in page and "is 11.0-13.0 HU" in page
    assert "30.0 HU without electronic noise, 41.0 HU with se = 2" in page
    assert "26.5 instead of 24.1 HU" in page and "21 % instead of 15 %" in page
    assert "| A0001-x | 1-20.dcm | 0.700 | 0.25 | 14.0 | 8.08 | +0.30 | 1000 | 12.0 | 2.0 |" in page
    assert "2.0 s median (1.0-4.0 s) over the 3 runs" in page

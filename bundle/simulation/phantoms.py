"""Synthetic image-quality phantom (water cylinder with TTF inserts and low-contrast discs) and its simulated scans.

The phantom follows the layout of the ACR CT phantom's modules, in one slice: a water-like cylinder with
circular inserts of several contrasts for the task transfer function (AAPM TG-233) and a ring of small
low-contrast discs for detectability (d'). :func:`simulate_phantom_scans` puts it through the project's
projection-domain simulator: a noiseless filtered back-projection (the reconstruction's own blur) plus noise
realisations, which by the simulator's linearity are scaled to every dose.

Example::

    phantom = image_quality_phantom()
    scans = simulate_phantom_scans(phantom, doses=(0.1, 0.25), realisations=8)
    scans.low_dose(0.25)  # (8, 256, 256) HU, discs present
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from bundle.simulation.low_dose import LowDoseSimulator

__all__ = [
    "FILTER_WINDOWS",
    "ImageQualityPhantom",
    "PhantomInsert",
    "PhantomScans",
    "dose_noise_factor",
    "image_quality_phantom",
    "noiseless_reconstruction",
    "simulate_phantom_scans",
]


@dataclass(frozen=True)
class PhantomInsert:
    """A circular insert: centre (row, column) in pixels, radius in mm, contrast against the background in HU,
    and its use: ``"ttf"`` (resolution) or ``"detectability"`` (low-contrast disc)."""

    centre: tuple[float, float]
    radius_mm: float
    contrast_hu: float
    use: str


@dataclass(frozen=True)
class ImageQualityPhantom:
    """The phantom in HU with all inserts (``hu``) and without any (``absent_hu``: the water cylinder, the
    signal-absent image), both (size, size) float32, at ``pixel_spacing_mm``; ``background`` is the water HU."""

    hu: np.ndarray
    absent_hu: np.ndarray
    inserts: tuple[PhantomInsert, ...]
    pixel_spacing_mm: float
    background: float
    radius_mm: float

    def inserts_for(self, use: str) -> list[PhantomInsert]:
        return [insert for insert in self.inserts if insert.use == use]


def _discs(
    shape: tuple[int, int], discs: Sequence[tuple[tuple[float, float], float]], spacing: float, supersample: int
) -> list[np.ndarray]:
    """Area fraction (supersampled) of each pixel covered by each disc ((row, column) px, radius mm): (n, H, W)."""
    offsets = (np.arange(supersample) + 0.5) / supersample - 0.5
    rows = (np.arange(shape[0])[:, None] + offsets[None, :]).ravel()
    columns = (np.arange(shape[1])[:, None] + offsets[None, :]).ravel()
    out = []
    for (row, column), radius in discs:
        inside = np.hypot(rows[:, None] - row, columns[None, :] - column) * spacing <= radius
        out.append(inside.reshape(shape[0], supersample, shape[1], supersample).mean(axis=(1, 3)))
    return out


def image_quality_phantom(
    size: int = 256,
    pixel_spacing_mm: float = 0.8,
    diameter_mm: float = 190.0,
    background_hu: float = 0.0,
    ttf_contrasts_hu: Sequence[float] = (15.0, 50.0, 300.0, 900.0),
    ttf_radius_mm: float = 10.0,
    ttf_ring_mm: float = 65.0,
    disc_diameters_mm: Sequence[float] = (3.0, 5.0, 7.0, 10.0),
    disc_contrasts_hu: Sequence[float] = (5.0, 10.0, 15.0),
    disc_ring_mm: float = 30.0,
    supersample: int = 4,
) -> ImageQualityPhantom:
    """A water cylinder (``background_hu``, default 0 HU, in -1000 HU air) of ``diameter_mm`` on a size x size grid.

    - TTF inserts: one of radius ``ttf_radius_mm`` per ``ttf_contrasts_hu`` (HU above background), evenly spaced
      on a ring of radius ``ttf_ring_mm`` at 45 degrees off the axes; the profile to twice the radius is free of
      other structure with the defaults.
    - Low-contrast discs: every diameter of ``disc_diameters_mm`` at every contrast of ``disc_contrasts_hu``,
      evenly spaced on a ring of radius ``disc_ring_mm``, ordered contrast by contrast.

    Edges are partial-volume (each pixel's covered area, ``supersample``^2 points a pixel).
    """
    centre = ((size - 1) / 2, (size - 1) / 2)
    if diameter_mm / 2 >= (size / 2) * pixel_spacing_mm:
        raise ValueError(f"a {diameter_mm} mm phantom does not fit {size} pixels of {pixel_spacing_mm} mm")
    if ttf_ring_mm + 2 * ttf_radius_mm > diameter_mm / 2:
        raise ValueError("the TTF inserts' profiles (to twice their radius) leave the phantom")

    def on_ring(count: int, ring_mm: float, start: float) -> list[tuple[float, float]]:
        angles = start + 2 * np.pi * np.arange(count) / max(count, 1)
        ring = ring_mm / pixel_spacing_mm
        return [(centre[0] - ring * np.cos(a), centre[1] + ring * np.sin(a)) for a in angles]

    inserts = [PhantomInsert(c, ttf_radius_mm, float(k), "ttf")
               for c, k in zip(on_ring(len(ttf_contrasts_hu), ttf_ring_mm, np.pi / 4), ttf_contrasts_hu)]  # fmt: skip
    discs = [(float(d) / 2, float(k)) for k in disc_contrasts_hu for d in disc_diameters_mm]
    disc_centres = on_ring(len(discs), disc_ring_mm, 0.0)
    inserts += [PhantomInsert(c, r, k, "detectability") for c, (r, k) in zip(disc_centres, discs)]
    shape = (size, size)
    body = _discs(shape, [(centre, diameter_mm / 2)], pixel_spacing_mm, supersample)[0]
    background = -1000.0 + (background_hu + 1000.0) * body
    coverage = _discs(shape, [(i.centre, i.radius_mm) for i in inserts], pixel_spacing_mm, supersample)
    full = background + sum(insert.contrast_hu * covered for insert, covered in zip(inserts, coverage))
    return ImageQualityPhantom(
        full.astype(np.float32), background.astype(np.float32), tuple(inserts), float(pixel_spacing_mm),
        float(background_hu), diameter_mm / 2,
    )  # fmt: skip


#: Apodisation windows of astra-toolbox's FBP filters against f / f_Nyquist (its Filters.cpp): the ramp times these.
FILTER_WINDOWS = {
    "ram-lak": lambda x: np.ones_like(x),
    "shepp-logan": lambda x: np.sinc(x / 2),
    "cosine": lambda x: np.cos(np.pi * x / 2),
    "hamming": lambda x: 0.54 + 0.46 * np.cos(np.pi * x),
    "hann": lambda x: 0.5 * (1 + np.cos(np.pi * x)),
}


def noiseless_reconstruction(hu: np.ndarray, pixel_spacing_mm: float, simulator: LowDoseSimulator) -> np.ndarray:
    """The image ``hu`` (H, W) as the simulator's filtered back-projection renders it at infinite dose (HU, float32).

    Ideal FBP with a ramp filter apodised by window W (``simulator.filter_name``) and the detector's Nyquist
    frequency 0.5 / pixel has the 2D transfer function W(|f| / f_N), zero beyond f_N: this applies it by FFT (the
    image padded with its border value). Reconstructing the projections of a piecewise-constant phantom through
    astra instead adds a moire pattern of several HU (discretisation, not physics); the simulator itself only ever
    reconstructs noise. Windows that stay open at f_N (ram-lak, shepp-logan) ring at strong edges (Gibbs), as sharp
    kernels do.
    """
    image = np.asarray(hu, dtype=np.float64)
    h, w = image.shape
    padded = np.pad(image, ((h // 2, h // 2), (w // 2, w // 2)), mode="edge")
    fy = np.fft.fftfreq(padded.shape[0])[:, None] / 0.5  # in units of the Nyquist frequency
    fx = np.fft.rfftfreq(padded.shape[1])[None, :] / 0.5
    radius = np.hypot(fy, fx)
    transfer = np.where(radius <= 1.0, FILTER_WINDOWS[simulator.filter_name](np.minimum(radius, 1.0)), 0.0)
    filtered = np.fft.irfft2(np.fft.rfft2(padded) * transfer, s=padded.shape)
    return filtered[h // 2 : h // 2 + h, w // 2 : w // 2 + w].astype(np.float32)


def dose_noise_factor(dose_fraction: float) -> float:
    """sqrt((1 - a) / a): the simulator's added noise at dose a relative to the full-dose scan's own quantum noise
    (which is the added noise at a = 0.5); FBP is linear, so noise images scale by it (electronic noise aside)."""
    if not 0.0 < dose_fraction <= 1.0:
        raise ValueError(f"dose_fraction must be in (0, 1], got {dose_fraction}")
    return float(np.sqrt((1.0 - dose_fraction) / dose_fraction))


@dataclass(frozen=True)
class PhantomScans:
    """Simulated scans of an :class:`ImageQualityPhantom`, all in HU, float32.

    ``truth``: the noiseless reconstruction with all inserts (H, W); ``truth_absent``: of the water cylinder alone.
    ``full_dose_noise`` and ``added_noise``: (K, H, W) independent unit realisations (the full-dose scan's
    quantum noise). The normal-dose scan k is truth + full_dose_noise[k]; the scan at dose a adds
    ``dose_noise_factor(a) * added_noise[k]`` to it. Signal-present and signal-absent scans share their noise
    (simulated through the phantom with its inserts), so their difference shows an insert without noise.
    """

    truth: np.ndarray
    truth_absent: np.ndarray
    full_dose_noise: np.ndarray
    added_noise: np.ndarray
    doses: tuple[float, ...]

    def normal_dose(self, signal_present: bool = True) -> np.ndarray:
        """(K, H, W) normal-dose scans."""
        return (self.truth if signal_present else self.truth_absent) + self.full_dose_noise

    def low_dose(self, dose_fraction: float, signal_present: bool = True) -> np.ndarray:
        """(K, H, W) scans at ``dose_fraction`` of the normal dose."""
        return self.normal_dose(signal_present) + dose_noise_factor(dose_fraction) * self.added_noise


def simulate_phantom_scans(
    phantom: ImageQualityPhantom,
    doses: Sequence[float] = (0.1, 0.25, 0.5),
    realisations: int = 8,
    simulator: LowDoseSimulator | None = None,
    seed: int = 0,
) -> PhantomScans:
    """Noiseless reconstructions (:func:`noiseless_reconstruction`) and 2 x ``realisations`` unit noise images of
    ``phantom`` through ``simulator`` (default: the project's :class:`LowDoseSimulator`), seeded; each noise image
    is the simulator's added noise at dose 0.5 (scale 1). About 1 s a noise image for 256 x 256 pixels at 720 views
    here."""
    simulator = simulator or LowDoseSimulator()
    spacing = phantom.pixel_spacing_mm
    rng = np.random.default_rng(seed)
    noise = np.stack([simulator.noise_hu(phantom.hu, 0.5, spacing, rng) for _ in range(2 * realisations)])
    return PhantomScans(
        noiseless_reconstruction(phantom.hu, spacing, simulator),
        noiseless_reconstruction(phantom.absent_hu, spacing, simulator),
        noise[:realisations],
        noise[realisations:],
        tuple(float(d) for d in doses),
    )

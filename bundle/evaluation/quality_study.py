"""A denoiser's image quality on simulated low dose: real CT blocks and the synthetic phantom, measured and reported.

Real slices (HU, (H, W)) get the project's projection-domain noise at each dose (one unit realisation a slice,
scaled by sqrt((1 - a) / a)); the denoiser's output is compared with the input and the normal-dose slice in flat
ROIs (HU bias, noise, NPS). The synthetic phantom (:mod:`bundle.simulation.phantoms`) adds the task transfer
function of its inserts and the NPW detectability d' of its low-contrast discs, over noise realisations.
:func:`write_report` turns the results into Markdown, figures and a verdict against the goals of the project's
issue 16 (:data:`GOALS`).

The denoiser is any callable ``denoise(hu, dose_fraction, pixel_spacing_mm) -> hu`` on (H, W) or (N, H, W) HU
arrays, e.g. ``bundle.evaluation.denoise.load_denoiser()`` or, for a test, a Gaussian filter.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from bundle.evaluation.image_quality import (
    extract_rois,
    hu_bias,
    noise_power_spectrum,
    nps_frequencies,
    npw_detectability,
    place_flat_rois,
    radial_average,
    roi_noise,
    task_transfer_function,
)
from bundle.simulation.low_dose import LowDoseSimulator, out_of_field_mask
from bundle.simulation.phantoms import ImageQualityPhantom, PhantomScans, dose_noise_factor

__all__ = [
    "GOALS",
    "Denoiser",
    "PhantomResult",
    "SeriesResult",
    "measure_phantom",
    "measure_series",
    "verdicts",
    "write_report",
]

Denoiser = Callable[[np.ndarray, float, float], np.ndarray]
"""``denoise(hu (H, W) or (N, H, W), dose_fraction, pixel_spacing_mm) -> hu`` of the same shape."""

GOALS = {
    "hu_bias": "|HU bias| of the output <= 2 HU",
    "noise_ratio": "output noise / normal-dose noise in 0.8-1.2",
    "nps_peak": "NPS peak frequency of the output within 10 % of the normal-dose image's",
    "ttf50": "TTF50 of the output at the lowest contrast >= the low-dose input's",
    "d_prime": "d' of the output >= the low-dose input's, every disc at every dose",
}
IMAGES = ("reference", "input", "output")
METHOD = """## Method

- Low dose: the project's projection-domain simulator (`bundle.simulation.LowDoseSimulator`) gives one unit noise
  realisation a slice (the added noise at dose 0.5); FBP is linear, so the input at dose a is the normal-dose slice
  plus sqrt((1 - a) / a) times it (the electronic-noise term makes this approximate at the lowest doses). The
  denoiser is told the true dose fraction. Sharp-kernel blocks get ram-lak noise, the others Hann.
- Flat ROIs (`bundle.evaluation.place_flat_rois`): 15 x 15 pixels inside the body, all pixels of the smoothed
  normal-dose slice in fat (-150 to -50 HU) or soft tissue / water (-50 to 150 HU), in the lowest quarter of local
  gradient energy, up to 8 a class and slice, without overlap. HU bias = mean(image - normal dose) over ROIs; noise
  = pooled std over ROIs and slices. On real CT the normal-dose image is noisy itself: the noise ratio compares the
  output with the normal-dose noise, which is what a dose-aware denoiser should keep.
- NPS (ICRU 87): 32 x 32 ROIs placed the same way (up to 16 a class, overlapping by up to half), first-order
  (plane) detrended, averaged over ROIs and slices, radially averaged in bins of one frequency step. On real CT the
  ROIs hold each image itself (residual anatomy adds low-frequency power, alike for all three images); on the
  synthetic phantom they hold image - noise-free truth (noise only).
- Synthetic phantom (`bundle.simulation.image_quality_phantom`): 190 mm water cylinder, 256 x 256 pixels of 0.8 mm;
  four 20 mm inserts of +15, +50, +300 and +900 HU for the TTF, twelve low-contrast discs (3, 5, 7, 10 mm at +5,
  +10, +15 HU) for d'. Normal dose = noiseless FBP (the Hann window) + one unit noise realisation; each scan has a
  signal-absent twin (the water cylinder alone) with the same noise.
- TTF (AAPM TG-233): radial ESF, around the known centre, of the mean over realisations of the paired difference
  (signal present - absent: the noise cancels, exactly for the linear reference and input, whose TTFs are the
  noiseless reconstruction's), 0.08 mm bins, from the centre to twice the radius; derivative, a Tukey window over
  +- 6 mm of the edge (flat over +- 3 mm), |FFT| normalised at 0; TTF50 / TTF10 by linear interpolation. For the
  output, the difference is the denoiser's response to the insert in the presence of the dose's noise.
- d' (non-prewhitening matched filter): template = mean paired difference (present - absent) in a square ROI of side
  diameter + 8 mm; d' = s.s / std(s.n) over signal-absent ROIs at 24 places on the discs' ring, each minus its mean
  over realisations. With K realisations its relative standard error is about 1 / sqrt(2 (24 (K - 1))).
"""
ROI_SIZE, NPS_ROI_SIZE = 15, 32
LSF_HALF_WIDTH_MM = 6.0


@dataclass
class Spectrum:
    """Radially averaged NPS (mm^-1, HU^2 mm^2) with its mean and peak frequency (mm^-1)."""

    frequencies: np.ndarray
    nps: np.ndarray
    mean_frequency: float
    peak_frequency: float

    @classmethod
    def of(cls, rois: Sequence[np.ndarray], pixel_spacing_mm: float) -> Spectrum | None:
        if not len(rois):
            return None
        frequencies, nps = radial_average(noise_power_spectrum(np.concatenate(rois), pixel_spacing_mm))
        return cls(frequencies, nps, *nps_frequencies(frequencies, nps))


@dataclass
class SeriesResult:
    """One block at one dose, for each of :data:`IMAGES`: HU bias and its standard error over ROIs (HU), noise (HU)
    and NPS; ``uniform``: a phantom, whose flat-ROI NPS is noise only (the NPS-peak goal is judged on these)."""

    name: str
    dose: float
    slices: int
    hu_bias: dict[str, float]
    hu_bias_se: dict[str, float]
    noise: dict[str, float]
    spectra: dict[str, Spectrum | None]
    uniform: bool

    @property
    def noise_ratio(self) -> float:
        return self.noise["output"] / self.noise["reference"]


@dataclass
class PhantomResult:
    """The synthetic phantom at one dose: flat-water measures (as :class:`SeriesResult`, noise-only NPS), TTFs by
    insert contrast (HU) and d' by disc (diameter mm, contrast HU), each for :data:`IMAGES`."""

    flat: SeriesResult
    ttf: dict[float, dict[str, object]] = field(default_factory=dict)
    d_prime: dict[tuple[float, float], dict[str, float]] = field(default_factory=dict)


def _flat_measures(name, dose, references, images, spacing, uniform, truth=None) -> SeriesResult:
    """Pool HU bias, noise and NPS over slices; ``images[kind]`` are (H, W) lists aligned with ``references``.
    With ``truth`` (noise-free), bias is against it and the NPS is of image - truth (noise only)."""
    bias, variances, rois_of = {k: [] for k in IMAGES}, {k: [] for k in IMAGES}, {k: [] for k in IMAGES}
    for index, reference in enumerate(references):
        placement = reference if truth is None else truth
        rois = place_flat_rois(placement, ROI_SIZE)
        nps_rois = place_flat_rois(placement, NPS_ROI_SIZE, 16, min_separation_px=NPS_ROI_SIZE // 2)
        for kind in IMAGES:
            image = images[kind][index]
            if rois:
                target = reference if truth is None else truth
                bias[kind] += [hu_bias(image, target, [roi]) for roi in rois]
                variances[kind].append(roi_noise(image, rois) ** 2)
            if nps_rois:
                rois_of[kind].append(extract_rois(image if truth is None else image - truth, nps_rois))
    return SeriesResult(
        name, dose, len(references),
        {k: float(np.mean(v)) if v else float("nan") for k, v in bias.items()},
        {k: float(np.std(v, ddof=1) / np.sqrt(len(v))) if len(v) > 1 else float("nan") for k, v in bias.items()},
        {k: float(np.sqrt(np.mean(v))) if v else float("nan") for k, v in variances.items()},
        {k: Spectrum.of(v, spacing) for k, v in rois_of.items()},
        uniform,
    )  # fmt: skip


def measure_series(
    denoise: Denoiser,
    name: str,
    slices_hu: Sequence[np.ndarray],
    pixel_spacing_mm: float,
    doses: Sequence[float],
    simulator: LowDoseSimulator | None = None,
    paddings: Sequence[np.ndarray | None] | None = None,
    seed: int = 0,
    uniform: bool = False,
) -> list[SeriesResult]:
    """Simulate each dose of ``doses`` from normal-dose ``slices_hu`` ((H, W) HU, one pixel spacing), denoise, and
    measure in flat ROIs of the normal-dose slices; one result per dose. ``paddings``: out-of-field masks;
    ``uniform``: the slices are of a uniform phantom (see :class:`SeriesResult`)."""
    simulator = simulator or LowDoseSimulator()
    references = [np.asarray(s, dtype=np.float32) for s in slices_hu]
    paddings = paddings or [None] * len(references)
    unit_noise = []
    for index, (hu, padding) in enumerate(zip(references, paddings)):
        untouched = out_of_field_mask(hu, padding)
        noise = simulator.noise_hu(hu, 0.5, pixel_spacing_mm, np.random.default_rng([seed, index]), ~untouched)
        unit_noise.append(np.where(untouched, 0.0, noise).astype(np.float32))
    results = []
    for dose in doses:
        inputs = np.stack([hu + dose_noise_factor(dose) * n for hu, n in zip(references, unit_noise)])
        outputs = np.asarray(denoise(inputs, dose, pixel_spacing_mm))
        images = {"reference": references, "input": list(inputs), "output": list(outputs)}
        results.append(_flat_measures(name, dose, references, images, pixel_spacing_mm, uniform))
    return results


def _disc_roi(centre: tuple[float, float], side: int) -> tuple[slice, slice]:
    top, left = (int(round(c)) - side // 2 for c in centre)
    return slice(top, top + side), slice(left, left + side)


def measure_phantom(denoise: Denoiser, phantom: ImageQualityPhantom, scans: PhantomScans) -> list[PhantomResult]:
    """TTF, d' and flat-water measures of the phantom at each dose of ``scans``, for the normal-dose scans, the
    low-dose input and the denoised input; means over the K noise realisations.

    - TTF: of the mean over realisations of (signal-present - signal-absent image), paired (same noise), per TTF
      insert, the LSF windowed to +- 6 mm around the edge. The pairing cancels the noise (exactly for the linear
      reference and input, whose TTFs are therefore the noiseless one), so low-contrast TTFs are not noise-limited.
    - d' (NPW): signal = mean over realisations of (signal-present - signal-absent image), paired (same noise),
      in a square ROI of side diameter + 8 mm around the disc; noise = the same ROIs of the signal-absent images
      at twice as many places on the discs' ring (uniform water there), minus each place's mean over realisations.
    - flat water: bias against the noise-free truth, NPS of image - truth.
    """
    spacing = phantom.pixel_spacing_mm
    discs = phantom.inserts_for("detectability")
    ring = [d.centre for d in discs]
    centre = (np.array(phantom.hu.shape) - 1) / 2
    places = ring + [tuple(centre + _rotate(np.subtract(c, centre), np.pi / len(ring))) for c in ring]
    reference, reference_absent = scans.normal_dose(), scans.normal_dose(signal_present=False)
    results = []
    for dose in scans.doses:
        present, absent = scans.low_dose(dose), scans.low_dose(dose, signal_present=False)
        stacks = {
            "reference": (reference, reference_absent),
            "input": (present, absent),
            "output": (np.asarray(denoise(present, dose, spacing)), np.asarray(denoise(absent, dose, spacing))),
        }
        images = {kind: list(stacks[kind][0]) for kind in IMAGES}
        flat = _flat_measures("synthetic phantom", dose, [scans.truth] * len(reference), images, spacing, True,
                              scans.truth)
        result = PhantomResult(flat)
        differences = {kind: (stacks[kind][0] - stacks[kind][1]).mean(axis=0) for kind in IMAGES}
        for insert in phantom.inserts_for("ttf"):
            result.ttf[insert.contrast_hu] = {
                kind: task_transfer_function(differences[kind], insert.centre, insert.radius_mm, spacing,
                                             lsf_half_width_mm=LSF_HALF_WIDTH_MM)
                for kind in IMAGES
            }
        k = len(reference)
        for disc in discs:
            side = int(round((2 * disc.radius_mm + 8.0) / spacing)) | 1
            scores = {}
            for kind in IMAGES:
                with_signal, without = stacks[kind]
                roi = _disc_roi(disc.centre, side)
                signal = (with_signal[(slice(None), *roi)] - without[(slice(None), *roi)]).mean(axis=0)
                patches = [without[(slice(None), *_disc_roi(place, side))] for place in places]
                noise = np.concatenate([p - p.mean(axis=0) for p in patches]) * np.sqrt(k / (k - 1))
                scores[kind] = npw_detectability(signal, noise)
            result.d_prime[(2 * disc.radius_mm, disc.contrast_hu)] = scores
        results.append(result)
    return results


def _rotate(vector: np.ndarray, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([c * vector[0] - s * vector[1], s * vector[0] + c * vector[1]])


def _f(value: float, digits: int = 2, signed: bool = False) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:{'+' if signed else ''}.{digits}f}"


def _peak(result: SeriesResult, kind: str) -> float:
    spectrum = result.spectra[kind]
    return spectrum.peak_frequency if spectrum else float("nan")


def _mean_frequency(result: SeriesResult, kind: str) -> float:
    spectrum = result.spectra[kind]
    return spectrum.mean_frequency if spectrum else float("nan")


def verdicts(series: Sequence[SeriesResult], phantom: Sequence[PhantomResult]) -> dict[str, tuple[bool, str]]:
    """Per goal of :data:`GOALS`: (met, the worst case in words). NaN measures count as not met."""
    flats = [*series, *(p.flat for p in phantom)]
    worst_bias = max(flats, key=lambda r: abs(r.hu_bias["output"]) if np.isfinite(r.hu_bias["output"]) else np.inf)
    ratios = [(abs(r.noise_ratio - 1.0) if np.isfinite(r.noise_ratio) else np.inf, r) for r in flats]
    worst_ratio = max(ratios, key=lambda x: x[0])[1]
    shifts = [(abs(_peak(r, "output") / _peak(r, "reference") - 1), r) for r in flats if r.uniform]
    shifts = [(s if np.isfinite(s) else np.inf, r) for s, r in shifts] or [(np.inf, None)]
    worst_shift, shift_case = max(shifts, key=lambda x: x[0])
    shift_detail = "no phantom measured" if shift_case is None else (
        f"phantoms only, where the NPS is noise only: largest shift {_f(100 * worst_shift, 0)} % ({shift_case.name}, "
        f"dose {shift_case.dose:g})")  # fmt: skip
    out = {
        "hu_bias": (abs(worst_bias.hu_bias["output"]) <= 2.0,
                    f"worst {_f(worst_bias.hu_bias['output'], 2, True)} +- {_f(worst_bias.hu_bias_se['output'])} HU "
                    f"({worst_bias.name}, dose {worst_bias.dose:g})"),
        "noise_ratio": (all(0.8 <= r.noise_ratio <= 1.2 for r in flats),
                        f"furthest from 1: {_f(worst_ratio.noise_ratio)} ({worst_ratio.name}, "
                        f"dose {worst_ratio.dose:g})"),
        "nps_peak": (worst_shift <= 0.1, shift_detail),
    }  # fmt: skip
    if phantom:
        lowest = min(phantom[0].ttf)
        ttf_cases = [(p.flat.dose, p.ttf[lowest]["output"].ttf50, p.ttf[lowest]["input"].ttf50) for p in phantom]
        ttf_ok = [np.isfinite(o) and np.isfinite(i) and o >= i for _, o, i in ttf_cases]
        d_cases = [(p.flat.dose, disc, s["output"], s["input"]) for p in phantom for disc, s in p.d_prime.items()]
        d_failed = [c for c in d_cases if not c[2] >= c[3]]
        out["ttf50"] = (all(ttf_ok), f"{lowest:g} HU insert, output vs input in mm^-1: " + "; ".join(
            f"dose {d:g}: {_f(o, 3)} vs {_f(i, 3)}" for d, o, i in ttf_cases))
        out["d_prime"] = (not d_failed, f"{len(d_failed)} of {len(d_cases)} disc-dose cases below the input")
    return out


def _figure_bytes(fig) -> bytes:
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=80)
    plt.close(fig)
    return buffer.getvalue()


def _nps_figure(groups: dict[str, list[SeriesResult]]) -> bytes:
    import matplotlib.pyplot as plt

    doses = sorted({r.dose for rows in groups.values() for r in rows})
    fig, axes = plt.subplots(len(groups), len(doses), figsize=(3.2 * len(doses), 2.6 * len(groups)), squeeze=False)
    for row, (name, results) in enumerate(groups.items()):
        for column, dose in enumerate(doses):
            ax = axes[row, column]
            for result in (r for r in results if r.dose == dose):
                for kind, style in zip(IMAGES, ("k-", "r--", "b-")):
                    if result.spectra[kind]:
                        ax.plot(result.spectra[kind].frequencies, result.spectra[kind].nps, style, label=kind)
            ax.set_title(f"{name}, dose {dose:g}", fontsize=8)
            ax.set_xlabel("frequency (mm$^{-1}$)", fontsize=7)
            ax.set_ylabel("NPS (HU$^2$ mm$^2$)", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6)
    return _figure_bytes(fig)


def _ttf_figure(phantom: Sequence[PhantomResult]) -> bytes:
    import matplotlib.pyplot as plt

    contrasts = sorted(phantom[0].ttf)
    size = (3 * len(contrasts), 2.5 * len(phantom))
    fig, axes = plt.subplots(len(phantom), len(contrasts), figsize=size, squeeze=False)
    for row, result in enumerate(phantom):
        for column, contrast in enumerate(contrasts):
            ax = axes[row, column]
            for kind, style in zip(IMAGES, ("k-", "r--", "b-")):
                ttf = result.ttf[contrast][kind]
                ax.plot(ttf.frequencies, ttf.ttf, style, label=kind)
            ax.axhline(0.5, color="grey", lw=0.5)
            ax.set_ylim(-0.05, 1.15)
            ax.set_title(f"{contrast:g} HU insert, dose {result.flat.dose:g}", fontsize=8)
            ax.set_xlabel("frequency (mm$^{-1}$)", fontsize=7)
            ax.tick_params(labelsize=6)
    axes[0, 0].legend(fontsize=6)
    return _figure_bytes(fig)


def _flat_table(results: Sequence[SeriesResult]) -> list[str]:
    lines = [
        "| block | dose | slices | HU bias in / out (HU, +- standard error) | noise ref / in / out (HU) "
        "| noise ratio out/ref "
        "| NPS mean freq ref / in / out (mm^-1) | NPS peak freq ref / in / out (mm^-1) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r.name} | {r.dose:g} | {r.slices} | "
            f"{' / '.join(f'{_f(r.hu_bias[k], 2, True)} +- {_f(r.hu_bias_se[k], 2)}' for k in ('input', 'output'))} "
            f"| {' / '.join(_f(r.noise[k], 1) for k in IMAGES)} | {_f(r.noise_ratio)} "
            f"| {' / '.join(_f(_mean_frequency(r, k), 3) for k in IMAGES)} "
            f"| {' / '.join(_f(_peak(r, k), 3) for k in IMAGES)} |"
        )
    return lines


def write_report(
    path: Path,
    series: Sequence[SeriesResult],
    phantom: Sequence[PhantomResult],
    header: str,
    notes: str = "",
) -> Path:
    """Write the Markdown report at ``path`` and its figures in ``path.with_suffix('')/`` (nps.png, ttf.png);
    ``header`` (the command and commit) opens it, ``notes`` follow the tables, then :data:`METHOD`."""
    import matplotlib

    matplotlib.use("Agg")
    path = Path(path)
    figures = path.with_suffix("")
    figures.mkdir(parents=True, exist_ok=True)
    groups: dict[str, list[SeriesResult]] = {}
    for result in [*series, *(p.flat for p in phantom)]:
        groups.setdefault(result.name, []).append(result)
    (figures / "nps.png").write_bytes(_nps_figure(groups))
    lines = [header, "", "## Verdict", ""]
    for goal, (met, detail) in verdicts(series, phantom).items():
        lines.append(f"- {'MET' if met else 'NOT MET'}: {GOALS[goal]} ({detail}).")
    lines += ["", "## HU accuracy, noise and noise power spectrum", ""]
    lines += _flat_table([*series, *(p.flat for p in phantom)])
    lines += ["", f"![1D NPS of the reference, input and output]({figures.name}/nps.png)", ""]
    if phantom:
        (figures / "ttf.png").write_bytes(_ttf_figure(phantom))
        lines += ["## Task transfer function (synthetic phantom)", "",
                  "| dose | insert contrast (HU) | TTF50 ref / in / out (mm^-1) | TTF10 ref / in / out (mm^-1) |",
                  "|---|---|---|---|"]  # fmt: skip
        for p in phantom:
            for contrast, ttfs in sorted(p.ttf.items()):
                lines.append(f"| {p.flat.dose:g} | {contrast:g} | {' / '.join(_f(ttfs[k].ttf50, 3) for k in IMAGES)} "
                             f"| {' / '.join(_f(ttfs[k].ttf10, 3) for k in IMAGES)} |")  # fmt: skip
        lines += ["", f"![TTF of the reference, input and output per insert and dose]({figures.name}/ttf.png)", "",
                  "## Low-contrast detectability (synthetic phantom, NPW d')", "",
                  "| dose | disc diameter (mm) | contrast (HU) | d' ref | d' in | d' out |",
                  "|---|---|---|---|---|---|"]
        for p in phantom:
            for (diameter, contrast), scores in sorted(p.d_prime.items(), key=lambda x: (x[0][1], x[0][0])):
                lines.append(f"| {p.flat.dose:g} | {diameter:g} | {contrast:g} | "
                             + " | ".join(_f(scores[k]) for k in IMAGES) + " |")  # fmt: skip
    text = "\n".join([*lines, "", notes, "", METHOD]).rstrip() + "\n"
    from bundle.utils.reporting import write_report as write_text_report

    return write_text_report(path, text)

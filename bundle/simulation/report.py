"""The simulator's validation report: measured on real chest CT, written into the prose of a hand-written template.

:func:`write_simulation_report` measures :class:`~bundle.simulation.low_dose.LowDoseSimulator` on slices of
Lung-PET-CT-Dx (added noise in soft tissue against dose, its noise power spectrum, the shoulder streaks, the speed of
the projectors) and fills ``docs/templates/simulation.md`` (``${name}`` placeholders, :class:`string.Template`) and
the figure. ``python scripts/simulate_low_dose.py --report_dir docs --source /path/to/lung-pet-ct-dx`` runs it.
"""

from __future__ import annotations

import io
import os
import platform
import string
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

from bundle.io.atomic import atomic_output
from bundle.io.ct_dicom import read_ct_slice
from bundle.simulation.low_dose import LowDoseSimulator

__all__ = ["REPORT_DOSES", "REPORT_SLICES", "high_frequency_share", "report_values", "write_simulation_report"]

REPORT_DOSES = (0.5, 0.25, 0.1)
#: Slices measured in the report: mid-chest (lungs, mediastinum, heart) of both patients, and one shoulder slice.
REPORT_SLICES = {"A0001-philips-kernel-B": ("1-20.dcm", "1-36.dcm"), "A0002-siemens-B40f": ("1-10.dcm", "1-17.dcm")}
SHOULDER_SLICE = "A0001-philips-kernel-B/1-08.dcm"
FIGURE_SLICE = "A0001-philips-kernel-B/1-36.dcm"
#: The slice on which the ``line`` projector's noise is compared with the default ``linear`` one.
PROJECTOR_SLICE = "A0002-siemens-B40f/1-17.dcm"
SOFT_TISSUE_HU = (-100.0, 150.0)
NPS_ROI = 128
HIGH_FREQUENCY_CYCLES_PER_PIXEL = 0.3


def soft_tissue_mask(hu: np.ndarray) -> np.ndarray:
    """Soft tissue (-100 to 150 HU) at least 4 pixels from any other material."""
    return ndimage.binary_erosion((hu > SOFT_TISSUE_HU[0]) & (hu < SOFT_TISSUE_HU[1]), iterations=4)


def noise_power_spectrum(noise: np.ndarray, spacing_mm: float, centre: tuple[int, int]) -> np.ndarray:
    """2D noise power spectrum (HU^2 mm^2, fftshifted) of the ``NPS_ROI`` square around ``centre``."""
    half = NPS_ROI // 2
    patch = noise[centre[0] - half : centre[0] + half, centre[1] - half : centre[1] + half].astype(np.float64)
    return np.abs(np.fft.fftshift(np.fft.fft2(patch - patch.mean()))) ** 2 * spacing_mm**2 / patch.size


def radial_profile(spectrum: np.ndarray, spacing_mm: float, bins: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged spectrum against spatial frequency in cycles/mm (bin centres)."""
    frequencies = np.fft.fftshift(np.fft.fftfreq(spectrum.shape[0], d=spacing_mm))
    radius = np.hypot(*np.meshgrid(frequencies, frequencies, indexing="ij"))
    edges = np.linspace(0.0, frequencies.max(), bins + 1)
    index = np.digitize(radius.ravel(), edges) - 1
    valid = (index >= 0) & (index < bins)
    totals = np.bincount(index[valid], spectrum.ravel()[valid], minlength=bins)
    counts = np.maximum(np.bincount(index[valid], minlength=bins), 1)
    return (edges[:-1] + edges[1:]) / 2, totals / counts


def time_projectors(hu: np.ndarray, spacing_mm: float, num_views: int) -> dict[str, float]:
    """Seconds for one forward projection plus one FBP of a slice, per projector library and type."""
    import astra
    from skimage.transform import iradon, radon

    timings = {}
    attenuation = (np.clip(0.0192 * (1 + hu / 1000.0), 0, None) * spacing_mm).astype(np.float32)
    for projector in ("linear", "line", "strip"):
        operator = LowDoseSimulator(num_views=num_views, projector=projector).operator(hu.shape)
        start = time.perf_counter()
        operator.reconstruct("FBP", operator.FP(attenuation), extraOptions={"FilterType": "hann"})
        timings[f"astra-toolbox {astra.__version__} CPU `{projector}`"] = time.perf_counter() - start
    angles = np.linspace(0.0, 180.0, num_views, endpoint=False)
    start = time.perf_counter()
    iradon(radon(attenuation, angles, circle=False), angles, circle=False, filter_name="hann")
    timings["scikit-image `radon` + `iradon`"] = time.perf_counter() - start
    return timings


def local_std(hu: np.ndarray, size: int = 7) -> np.ndarray:
    """Standard deviation in ``size`` x ``size`` windows (HU): noise plus fine texture in flat tissue."""
    mean = ndimage.uniform_filter(hu.astype(np.float64), size)
    variance = ndimage.uniform_filter(hu.astype(np.float64) ** 2, size) - mean**2
    return np.sqrt(np.maximum(variance, 0.0) * size**2 / (size**2 - 1))


def high_frequency_share(noise: np.ndarray, cutoff: float = HIGH_FREQUENCY_CYCLES_PER_PIXEL) -> float:
    """Share of the power of an (H, W) noise image above ``cutoff`` cycles/pixel (radial frequency)."""
    power = np.abs(np.fft.fft2(noise - noise.mean())) ** 2
    radius = np.hypot(*np.meshgrid(np.fft.fftfreq(noise.shape[0]), np.fft.fftfreq(noise.shape[1]), indexing="ij"))
    return float(power[radius > cutoff].sum() / power.sum())


def compare_projectors(source_dir: Path, seed: int) -> dict[str, tuple[float, float]]:
    """Added noise std in soft tissue (HU) and its high-frequency share, at dose 0.25 on :data:`PROJECTOR_SLICE`,
    for the ``linear`` (default) and ``line`` projectors."""
    ct = read_ct_slice(source_dir / PROJECTOR_SLICE)
    spacing, soft = float(ct.dataset.PixelSpacing[0]), soft_tissue_mask(ct.hu)
    measured = {}
    for projector in ("linear", "line"):
        noise = LowDoseSimulator(projector=projector)(ct.hu, 0.25, spacing, ct.padding, rng=seed) - ct.hu
        measured[projector] = (float(noise[soft].std()), high_frequency_share(noise))
    return measured


def _range(values: list[float], separator: str = "-") -> str:
    return f"{min(values):.1f}{separator}{max(values):.1f}"


def write_simulation_report(source_dir: Path, docs_dir: Path, template: Path, seed: int = 0, header: str = "") -> Path:
    """Measure the default simulator on the Lung-PET-CT-Dx slices under ``source_dir`` and write
    ``docs_dir/simulation.md`` (``template`` filled, ``header``, e.g. :func:`bundle.utils.provenance`, as the
    paragraph under its title) and ``docs_dir/simulation.png``, atomically; returns the page."""
    simulator = LowDoseSimulator()
    rows, spectra, figure_images = [], {}, {}
    for series, names in REPORT_SLICES.items():
        for index, name in enumerate(names):
            ct = read_ct_slice(source_dir / series / name)
            spacing = float(ct.dataset.PixelSpacing[0])
            soft = soft_tissue_mask(ct.hu)
            ndct_std = float(np.median(local_std(ct.hu)[soft]))
            centre = tuple(int(np.clip(c, NPS_ROI // 2, s - NPS_ROI // 2)) for c, s in
                           zip(ndimage.center_of_mass(ct.hu > -500), ct.hu.shape))  # fmt: skip
            for dose in REPORT_DOSES:
                start = time.perf_counter()
                low_dose = simulator(ct.hu, dose, spacing, ct.padding, rng=np.random.default_rng([seed, index]))
                seconds = time.perf_counter() - start
                noise = low_dose - ct.hu
                rows.append(
                    {"series": series, "slice": name, "spacing": spacing, "dose": dose, "std": noise[soft].std(),
                     "mean": noise[soft].mean(), "pixels": int(soft.sum()), "ndct_std": ndct_std, "seconds": seconds}
                )  # fmt: skip
                spectra.setdefault((series, dose), []).append(noise_power_spectrum(noise, spacing, centre))
                if f"{series}/{name}" == FIGURE_SLICE:
                    figure_images[dose] = low_dose
                    figure_images["ndct"], figure_images["spacing"] = ct.hu, spacing

    shoulder = read_ct_slice(source_dir / SHOULDER_SLICE)
    shoulder_spacing, shoulder_soft = float(shoulder.dataset.PixelSpacing[0]), soft_tissue_mask(shoulder.hu)
    shoulder_std = {
        se: (LowDoseSimulator(electronic_noise_std=se)(shoulder.hu, 0.25, shoulder_spacing, rng=seed) - shoulder.hu)[
            shoulder_soft
        ].std()
        for se in (0.0, simulator.electronic_noise_std)
    }
    ndct = figure_images["ndct"]
    timings = time_projectors(ndct, figure_images["spacing"], simulator.num_views)

    projectors = compare_projectors(source_dir, seed)
    with atomic_output(docs_dir / "simulation.png") as temporary:
        temporary.write_bytes(_figure(figure_images, spectra, rows, simulator))
    values = report_values(rows, spectra, shoulder_std, timings, projectors, simulator)
    page = docs_dir / "simulation.md"
    with atomic_output(page) as temporary:
        title, _, body = string.Template(Path(template).read_text()).substitute(values).partition("\n")
        temporary.write_text(f"{title}\n\n{header}\n{body}" if header else f"{title}\n{body}")
    return page


def _figure(images: dict, spectra: dict, rows: list, simulator: LowDoseSimulator) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from PIL import Image

    window = dict(cmap="gray", vmin=40 - 200, vmax=40 + 200)
    ndct = images["ndct"]
    body = np.argwhere(ndct > -500)
    (top, left), (bottom, right) = body.min(axis=0), body.max(axis=0) + 1
    crop = np.s_[top:bottom, left:right]
    fig, axes = plt.subplots(2, 4, figsize=(13, 7.2), dpi=80)
    std = {(r["series"], r["slice"], r["dose"]): r["std"] for r in rows}
    series, name = FIGURE_SLICE.split("/")
    axes[0, 0].imshow(ndct[crop], **window)
    axes[0, 0].set_title(f"NDCT (real), {series}/{name}", fontsize=9)
    for ax, dose in zip(axes[0, 1:], REPORT_DOSES):
        ax.imshow(images[dose][crop], **window)
        ax.set_title(f"simulated dose {dose:g}: +{std[(series, name, dose)]:.1f} HU std in soft tissue", fontsize=9)
    axes[1, 0].imshow((images[0.25] - ndct)[crop], cmap="gray", vmin=-60, vmax=60)
    axes[1, 0].set_title("added noise at dose 0.25 (window -60..60 HU)", fontsize=9)
    for ax in axes.ravel()[:5]:
        ax.axis("off")

    spacing = images["spacing"]
    mean_spectrum = np.mean(spectra[(series, 0.25)], axis=0)
    extent = np.array([-1, 1, -1, 1]) * 0.5 / spacing
    axes[1, 1].imshow(np.log10(mean_spectrum + 1e-3), cmap="magma", extent=extent)
    axes[1, 1].set_title(f"2D NPS, dose 0.25, {series} (log10 HU² mm²)", fontsize=9)
    axes[1, 1].set_xlabel("cycles/mm", fontsize=8)
    for (series_name, dose), items in sorted(spectra.items()):
        frequency, profile = radial_profile(np.mean(items, axis=0), next(r["spacing"] for r in rows if r["series"] == series_name))
        style = "-" if series_name.startswith("A0001") else "--"
        axes[1, 2].plot(frequency, profile, style, label=f"{series_name.split('-')[0]} dose {dose:g}")
    axes[1, 2].set_xlabel("spatial frequency (cycles/mm)", fontsize=8)
    axes[1, 2].set_ylabel("NPS (HU² mm²)", fontsize=8)
    axes[1, 2].set_title("radial NPS of the added noise", fontsize=9)
    axes[1, 2].legend(fontsize=7)
    for series_name in REPORT_SLICES:
        doses = np.array(REPORT_DOSES)
        measured = [np.mean([r["std"] for r in rows if r["series"] == series_name and r["dose"] == d]) for d in doses]
        scale = np.mean(np.array(measured) / np.sqrt((1 - doses) / doses))
        curve = np.linspace(0.08, 0.6, 50)
        line = axes[1, 3].plot(doses, measured, "o", label=f"{series_name.split('-')[0]} measured")[0]
        axes[1, 3].plot(curve, scale * np.sqrt((1 - curve) / curve), ":", color=line.get_color(),
                        label=f"{scale:.1f}·sqrt((1-a)/a)")  # fmt: skip
    axes[1, 3].set_xlabel("dose fraction a", fontsize=8)
    axes[1, 3].set_ylabel("added noise std in soft tissue (HU)", fontsize=8)
    axes[1, 3].set_title("added noise against dose", fontsize=9)
    axes[1, 3].legend(fontsize=7)
    fig.suptitle(
        f"Projection-domain low-dose simulation (I0 {simulator.incident_photons:g}, electronic noise std "
        f"{simulator.electronic_noise_std:g}, {simulator.num_views} views, {simulator.filter_name} FBP); "
        "CT: Lung-PET-CT-Dx (TCIA, CC BY 4.0)",
        fontsize=10,
    )
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    quantised = Image.open(buffer).convert("RGB").quantize(colors=128)
    out = io.BytesIO()
    quantised.save(out, format="PNG", optimize=True)
    return out.getvalue()


def report_values(
    rows: list, spectra: dict, shoulder_std: dict, timings: dict, projectors: dict, simulator: LowDoseSimulator
) -> dict[str, str]:
    """The placeholders of the template (``${name}``), formatted: the measured tables and figures of
    :func:`write_simulation_report` (rows per slice and dose, noise spectra per series and dose, shoulder stds per
    electronic noise, projector seconds, and the ``line``/``linear`` comparison of :func:`compare_projectors`)."""
    table = [
        "| series | slice | pixel (mm) | dose | added std, soft tissue (HU) | std / sqrt((1-a)/a) | mean change (HU) |"
        " soft-tissue pixels | NDCT local std (HU) | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        normalised = r["std"] / np.sqrt((1 - r["dose"]) / r["dose"])
        table.append(
            f"| {r['series']} | {r['slice']} | {r['spacing']:.3f} | {r['dose']:g} | {r['std']:.1f} | {normalised:.2f} |"
            f" {r['mean']:+.2f} | {r['pixels']} | {r['ndct_std']:.1f} | {r['seconds']:.1f} |"
        )
    peaks = []
    for (series, dose), items in sorted(spectra.items()):
        if dose == 0.25:
            spacing = next(r["spacing"] for r in rows if r["series"] == series)
            frequency, profile = radial_profile(np.mean(items, axis=0), spacing)
            low = profile[frequency < 0.05].mean()
            peaks.append(
                f"| {series} | {frequency[np.argmax(profile)]:.2f} | {low / profile.max():.2f} |"
                f" {0.5 / spacing:.2f} |"
            )
    quarter = [r["std"] for r in rows if r["dose"] == 0.25]
    implied = [r["std"] for r in rows if r["dose"] == 0.5]
    ndct = [r["ndct_std"] for r in rows]
    simulate_seconds = [r["seconds"] for r in rows]
    timing_rows = [f"| {name} | {seconds:.2f} |" for name, seconds in timings.items()]
    return {
        "num_views": str(simulator.num_views),
        "incident_photons": f"{simulator.incident_photons:g}",
        "electronic_noise_std": f"{simulator.electronic_noise_std:g}",
        "filter_name": simulator.filter_name,
        "soft_tissue_low": f"{SOFT_TISSUE_HU[0]:g}",
        "soft_tissue_high": f"{SOFT_TISSUE_HU[1]:g}",
        "measurement_table": "\n".join(table),
        "quarter_dose_std_range": _range(quarter, " to "),
        "implied_full_dose_std_range": _range(implied),
        "ndct_local_std_range": _range(ndct),
        "shoulder_slice": SHOULDER_SLICE,
        "shoulder_std_without_electronic": f"{shoulder_std[0.0]:.1f}",
        "shoulder_std_with_electronic": f"{shoulder_std[simulator.electronic_noise_std]:.1f}",
        "nps_roi": str(NPS_ROI),
        "nps_table": "\n".join(peaks),
        "simulate_seconds_median": f"{np.median(simulate_seconds):.1f}",
        "simulate_seconds_range": _range(simulate_seconds),
        "simulate_runs": str(len(simulate_seconds)),
        "cpu_cores": str(os.cpu_count()),
        "processor": platform.processor() or platform.machine(),
        "projector_table": "\n".join(timing_rows),
        "projector_slice": PROJECTOR_SLICE,
        "linear_std": f"{projectors['linear'][0]:.1f}",
        "line_std": f"{projectors['line'][0]:.1f}",
        "linear_high": f"{100 * projectors['linear'][1]:.0f}",
        "line_high": f"{100 * projectors['line'][1]:.0f}",
    }

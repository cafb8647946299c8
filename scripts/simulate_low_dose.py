"""Simulate low-dose CT DICOM from normal-dose DICOM, or regenerate the simulator's validation report.

Simulate one file or every series under a folder (outputs mirror the input's folders; existing files are kept)::

    python scripts/simulate_low_dose.py --input /data/ndct/series1 --output /data/ldct --dose-fraction 0.25 --seed 0

Measure the simulator on real CT and write ``docs/simulation.md`` and ``docs/simulation.png``::

    python scripts/simulate_low_dose.py --report docs --source /work/shared/data/lung-pet-ct-dx

Needs the ``bundle`` package importable (``pip install -e .`` or ``PYTHONPATH=.`` from the repository root).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import astra
import matplotlib
import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.transform import iradon, radon

from bundle.io.ct_dicom import read_ct_slice
from bundle.io.layouts import find_dicom_series
from bundle.simulation.low_dose import LowDoseSimulator
from bundle.simulation.paired import add_simulator_arguments, simulate_dicom_slice, simulator_from_arguments

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the non-interactive backend)

REPORT_DOSES = (0.5, 0.25, 0.1)
#: Slices measured in the report: mid-chest (lungs, mediastinum, heart) of both patients, and one shoulder slice.
REPORT_SLICES = {"A0001-philips-kernel-B": ("1-20.dcm", "1-36.dcm"), "A0002-siemens-B40f": ("1-10.dcm", "1-17.dcm")}
SHOULDER_SLICE = "A0001-philips-kernel-B/1-08.dcm"
FIGURE_SLICE = "A0001-philips-kernel-B/1-36.dcm"
SOFT_TISSUE_HU = (-100.0, 150.0)
NPS_ROI = 128


def simulate_input(
    input_path: Path, output_dir: Path, dose_fraction: float, seed: int, simulator: LowDoseSimulator
) -> int:
    """Simulate a DICOM file, or every DICOM series under a folder, into ``output_dir``; returns the slices written."""
    if input_path.is_file():
        jobs = [(input_path, output_dir / input_path.name)]
    else:
        jobs = [
            (f, output_dir / f.relative_to(input_path)) for _, files in find_dicom_series(input_path) for f in files
        ]
    written = 0
    for source, output in jobs:
        if not output.exists():
            simulate_dicom_slice(source, output, dose_fraction, seed, simulator)
            written += 1
    print(f"{written} slices simulated, {len(jobs) - written} already present, in {output_dir}")
    return written


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


def _spacing(rows: list[dict], series: str) -> float:
    return next(r["spacing"] for r in rows if r["series"] == series)


def _atomic_write(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_bytes(data)
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_report(source_dir: Path, docs_dir: Path, seed: int = 0) -> None:
    """Measure the default simulator on real chest CT and write ``simulation.md`` and ``simulation.png``."""
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

    docs_dir.mkdir(parents=True, exist_ok=True)
    _atomic_write(docs_dir / "simulation.png", _figure(figure_images, spectra, rows, simulator))
    text = _report_text(rows, spectra, shoulder_std, timings, simulator, source_dir)
    _atomic_write(docs_dir / "simulation.md", text.encode())
    print(f"wrote {docs_dir / 'simulation.md'} and {docs_dir / 'simulation.png'}")


def _figure(images: dict, spectra: dict, rows: list, simulator: LowDoseSimulator) -> bytes:
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
        frequency, profile = radial_profile(np.mean(items, axis=0), _spacing(rows, series_name))
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


def _report_text(
    rows: list, spectra: dict, shoulder_std: dict, timings: dict, simulator: LowDoseSimulator, source_dir: Path
) -> str:
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
            spacing = _spacing(rows, series)
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
    return f"""# Low-dose simulation

`bundle.simulation.low_dose` turns a normal-dose CT slice (NDCT, HU) into a simulated low-dose slice (LDCT) by
projection-domain noise insertion. This page states the method and the figures measured on real CT; regenerate
it (and `simulation.png`) with

    PYTHONPATH=. python scripts/simulate_low_dose.py --report docs --source {source_dir}

## Use

```python
from bundle.simulation import LowDoseSimulator, SimulateLowDosed, simulate_low_dose

ldct_hu = simulate_low_dose(ndct_hu, dose_fraction=0.25, pixel_spacing_mm=0.7, rng=0)  # (H, W) HU -> (H, W) HU
simulator = LowDoseSimulator()  # holds the geometry: one astra projector per slice size, reused
ldct_hu = simulator(ndct_hu, 0.1, 0.7, padding=ct_slice.padding, rng=np.random.default_rng(1))
# on-the-fly training pairs in a MONAI pipeline (after LoadImaged(..., ensure_channel_first=True)):
SimulateLowDosed(keys="label", output_keys="image", dose_range=(0.1, 0.5))
```

Command line (DICOM in, DICOM out: ImageType DERIVED\\SECONDARY, the parameters in DerivationDescription, new
series; `--incident-photons`, `--electronic-noise-std`, `--num-views`, `--filter` set the model):

    python scripts/simulate_low_dose.py --input FILE_OR_DIR --output DIR --dose-fraction 0.25 --seed 0
    python scripts/prepare_dataset.py --input DIR --output DIR --dose-fraction 0.25 --seed 0 \\
        --val-patients 2 --test-patients 2

`prepare_dataset.py` writes `ndct/<series>/` (copies), `ldct-<dose>/<series>/` (simulated; NIfTI volumes become
2D NIfTI slices) and `datalist.json` (MONAI format, split by PatientID); each slice's noise is seeded by `--seed`,
the SOPInstanceUID and the dose, so reruns skip finished slices and resume to identical files. With `--layout mayo`
or `--layout tcia` it pairs real low-dose data instead (assumed layouts: `bundle/io/layouts.py`).

## Method

1. HU to linear attenuation: mu = mu_water (1 + HU / 1000), clipped at 0, with mu_water = 0.0192 /mm (water at
   about 70 keV, the effective energy of a 120 kVp beam; NIST XCOM 0.193 cm²/g). Pixels outside the field of
   view (declared PixelPaddingValue, anything below -1024 HU, and a constant -1024 HU region touching the image
   border that is larger than one image row, as some scanners write outside the scan circle) do not attenuate and
   are returned unchanged.
2. Forward projection of the attenuation (pixel spacing in mm times mu in /mm: dimensionless line integrals p)
   in a parallel-beam geometry: {simulator.num_views} views over 180°, one detector cell per pixel, detector as
   wide as the image diagonal, astra-toolbox CPU Joseph (`linear`) projector.
3. Extra log-domain noise of a scan at dose fraction a (Yu et al. 2012), with I0 = {simulator.incident_photons:g}
   incident photons per ray and view and electronic noise standard deviation se = {simulator.electronic_noise_std:g}
   counts: `p_low = p + sqrt((1-a)/a * e^p/I0 * (1 + (1+a)/a * se^2 * e^p/I0)) * N(0, 1)`.
4. Filtered back-projection ({simulator.filter_name} apodised ramp) of the noise `p_low - p` only, converted to HU
   (x 1000 / (mu_water x pixel spacing)) and added to the NDCT: the noiseless part of the LDCT is exactly the NDCT,
   and the NDCT's own noise stays: with I0 matching the real scan, NDCT variance plus added variance is the
   variance of a real scan at the lower dose.

I0 and the filter were chosen so that the added noise at a = 0.25 is 10-25 HU in soft tissue for 0.65-0.85 mm
pixels on chest CT, the level of the real quarter-dose data the paper trains on (an assumption, not a measured
calibration against a real low-dose scan); the Hann filter gives a noise texture matching the smooth kernels (B,
B40f) used as targets. The electronic noise default is a choice too: it only matters on photon-starved paths.

## Measured on real chest CT (Lung-PET-CT-Dx, normal dose, 120 kVp)

Added noise = LDCT - NDCT, in soft tissue (NDCT between {SOFT_TISSUE_HU[0]:g} and {SOFT_TISSUE_HU[1]:g} HU, 4 pixels
away from other tissue), seeded:

{chr(10).join(table)}

- At dose 0.25 the added noise in soft tissue is {min(quarter):.1f} to {max(quarter):.1f} HU on these slices.
- The added std divided by sqrt((1-a)/a) (column 6) is nearly constant across doses, as the quantum term of the
  model demands; it grows a little at low dose, where the electronic term (weighted by (1+a)/a) counts more. The
  synthetic-phantom tests (no electronic noise) check the scaling within 10 % and the noise against a direct
  Poisson transmission simulation.
- Consistency of I0 with these scans: at a = 0.5 the added variance equals the model's full-dose quantum variance,
  so the model implies full-dose noise of {min(implied):.1f}-{max(implied):.1f} HU; the NDCT's own median local
  standard deviation in 7 x 7 windows of soft tissue (noise plus fine texture) is {min(ndct):.1f}-{max(ndct):.1f} HU.
- The mean HU in soft tissue changes by well under 2 HU (column 7).
- Shoulder level ({SHOULDER_SLICE}, the most attenuating slice, dose 0.25): {shoulder_std[0.0]:.1f} HU without
  electronic noise, {shoulder_std[simulator.electronic_noise_std]:.1f} HU with se = {simulator.electronic_noise_std:g}:
  photon-starved lateral paths give the streaks real low-dose scans show there.

Noise power spectrum of the added noise at dose 0.25 ({NPS_ROI} x {NPS_ROI} pixels around the body's centre,
averaged over the slices above): ramp-like with a Hann roll-off, i.e. spatially correlated, not white.

| series | NPS peak (cycles/mm) | NPS below 0.05 cycles/mm / peak | Nyquist (cycles/mm) |
|---|---|---|---|
{chr(10).join(peaks)}

![NDCT, simulated LDCT at three doses, added noise, its noise power spectrum and std against dose](simulation.png)

## Speed

One 512 x 512 slice, full simulation (projection, noise, FBP): {np.median(simulate_seconds):.1f} s median
({min(simulate_seconds):.1f}-{max(simulate_seconds):.1f} s) over the {len(simulate_seconds)} runs above, on
{os.cpu_count()} CPU cores shared with other jobs ({platform.processor() or platform.machine()}). Projector choice, one
forward projection plus one FBP of the same slice at {simulator.num_views} views (single measurement):

| projector | seconds |
|---|---|
{chr(10).join(timing_rows)}

The default is astra's `linear` (Joseph) projector: `line` is about as fast (within the run-to-run spread here) but
its back-projection aliases more noise into high frequencies (on A0002 1-17 at dose 0.25: 26.5 instead of 24.1 HU,
21 % instead of 15 % of the noise power above 0.3 cycles/pixel); `strip` and scikit-image are 2-4 times slower.
Fan-beam geometry was not used: astra's CPU FBP is parallel-beam only.

## Limits

- Parallel beam, not the scanner's fan or cone beam with bowtie filter and tube current modulation; a 2D slice
  stands for the thick-slice data it was reconstructed from. Noise magnitude, its 1/dose scaling, its correlation
  and its streaks along attenuating paths are modelled; beam hardening and scanner-specific texture are not.
- The NDCT's own noise is kept (not simulated): noisier normal-dose inputs give noisier low-dose outputs.
- Sharp-kernel NDCT (e.g. Philips L, Siemens B70f) gets the same Hann-filtered added noise: choose `--filter
  ram-lak` to match a sharp kernel's texture.

## Tests

`tests/test_low_dose_simulation.py` (synthetic water disc and bone-insert phantoms, 128 x 128): closed forms of
the attenuation and noise formulas, added std proportional to sqrt((1-a)/a) within 10 % across a = 0.5, 0.25, 0.1,
agreement with a direct Poisson transmission simulation within 10 %, mean change < 2 HU, non-flat (ramp-like) noise
power spectrum, streaks along the line through two dense inserts, padding untouched, seeded determinism and the
MONAI transform.
"""


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, help="a CT DICOM file or a folder of series")
    parser.add_argument("--output", type=Path, help="output folder")
    parser.add_argument("--dose-fraction", type=float, default=0.25)
    parser.add_argument("--seed", type=int, default=0)
    add_simulator_arguments(parser)
    parser.add_argument("--report", type=Path, help="write simulation.md and simulation.png into this folder")
    parser.add_argument("--source", type=Path, help="with --report: the Lung-PET-CT-Dx folder to measure on")
    args = parser.parse_args(argv)
    if args.report:
        if not args.source:
            parser.error("--report needs --source")
        write_report(args.source, args.report, args.seed)
    elif args.input and args.output:
        simulate_input(args.input, args.output, args.dose_fraction, args.seed, simulator_from_arguments(args))
    else:
        parser.error("give --input and --output, or --report and --source")


if __name__ == "__main__":
    main()

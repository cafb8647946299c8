"""The dose-aware denoiser on held-out blocks at every dose, against its own input and against BM3D given the truth.

For each normal-dose test slice of a block datalist (:func:`bundle.simulation.blocks.prepare_block_datalist`) and
each dose fraction, the bundle's simulator at its defaults (what a user runs: I0 2e5, electronic noise 5, 720 views)
makes the low-dose slice, seeded by the slice and the dose, with the reconstruction filter that matches the scan's
kernel (:data:`KERNEL_NOISE_FILTERS`: a real low-dose scan is reconstructed with the kernel of the normal-dose one,
so its added noise has that kernel's texture); the denoiser is told the true dose. A stress test adds noise of
one fixed filter to every kernel instead (Hann noise on a sharp kernel: far less noise than the dose implies,
of another texture). The
input and the output are scored against the normal-dose slice in three windows (the paper's, the anatomy's own
and the narrow brain window), and in the normal-dose slice's flat regions (HU shift, noise ratio to the normal
dose). Rows go to a CSV as they are measured, so an interrupted run resumes.

Example::

    rows = evaluate_blocks(load_denoiser(), "work/pairs/datalist.json", "work/generalisation.csv")
"""

from __future__ import annotations

import csv
import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from bundle.evaluation.denoise import hu_window
from bundle.evaluation.image_quality import hu_bias, place_flat_rois, roi_noise
from bundle.io.atomic import atomic_output
from bundle.io.ct_dicom import read_ct_slice
from bundle.simulation.low_dose import LowDoseSimulator
from bundle.simulation.paired import slice_rng
from bundle.utils.reporting import windowed_quality

__all__ = [
    "ANATOMY_WINDOWS_HU",
    "BRAIN_WINDOW_HU",
    "DOSE_FRACTIONS",
    "KERNEL_NOISE_FILTERS",
    "PAPER_WINDOW_HU",
    "bm3d_oracle",
    "evaluate_blocks",
    "read_rows",
    "held_out_slices",
]

DOSE_FRACTIONS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9)
PAPER_WINDOW_HU = (-160.0, 240.0)
BRAIN_WINDOW_HU = (0.0, 80.0)
#: each anatomy's own window: chest (centre -600, width 1500), abdomen (50, 400), phantom (water, 0, 200)
ANATOMY_WINDOWS_HU = {"chest": (-1350.0, 150.0), "abdomen": (-150.0, 250.0), "phantom": (-100.0, 100.0)}
#: reconstruction filter of the simulated added noise per kernel class of a block: smooth kernels (Philips B,
#: Siemens B40f, GE standard) Hann, sharp kernels (Philips L, Siemens B70f) the unapodised ramp
KERNEL_NOISE_FILTERS = {"smooth": "hann", "sharp": "ram-lak"}

Denoise = Callable[[np.ndarray, float], np.ndarray]


def held_out_slices(datalist: os.PathLike | str, slice_step: int = 1, split: str = "test") -> Iterator[dict]:
    """The ``split`` entries of a block datalist (``"test"``, or ``"validation"`` to select a model without the test
    blocks), one per normal-dose slice (the validation split lists each at two doses), every ``slice_step``-th of
    each block, with absolute ``label``."""
    datalist = Path(datalist)
    entries = json.loads(datalist.read_text())[split]
    by_block: dict[str, list[dict]] = {}
    seen: set[str] = set()
    for entry in entries:
        if entry["label"] not in seen:
            seen.add(entry["label"])
            by_block.setdefault(entry["block"], []).append(entry)
    for block_entries in by_block.values():
        for entry in block_entries[::slice_step]:
            yield {**entry, "label": str((datalist.parent / entry["label"]).resolve())}


def bm3d_oracle(low_dose_hu: np.ndarray, normal_dose_hu: np.ndarray,
                window_hu: tuple[float, float] | None = None) -> np.ndarray:
    """BM3D in correlated-noise mode given the true noise power spectrum of the added noise (an upper bound no user
    has), in the network's window (``hu_window`` of ``configs/inference.json`` when None); returns HU."""
    from bundle.baselines.bm3d import bm3d_denoise
    from bundle.baselines.noise_spectrum import noise_power_spectrum

    low, high = window_hu or hu_window()
    scale = high - low
    image = ((low_dose_hu - low) / scale).astype(np.float64)
    noise = (low_dose_hu - normal_dose_hu) / scale
    return bm3d_denoise(image, noise_psd=noise_power_spectrum(noise)) * scale + low


def _scores(prefix: str, image: np.ndarray, reference: np.ndarray, windows: dict, rois: list) -> dict[str, float]:
    row = {f"{prefix}_{k}": v for k, v in windowed_quality(image, reference, windows).items()}
    row[f"{prefix}_hu_shift"] = hu_bias(image, reference, rois) if rois else float("nan")
    row[f"{prefix}_noise_ratio"] = roi_noise(image, rois) / roi_noise(reference, rois) if rois else float("nan")
    return row


def read_rows(path: os.PathLike | str) -> list[dict]:
    """Rows of a results CSV (numbers as floats)."""
    if not Path(path).exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        for key, value in row.items():
            try:
                row[key] = float(value)
            except ValueError:
                pass
    return rows


def _write_rows(path: Path, rows: Sequence[dict]) -> None:
    fields = list(dict.fromkeys(key for row in rows for key in row))
    with atomic_output(path) as temporary:
        with open(temporary, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)


@functools.lru_cache(maxsize=None)
def noise_simulator(kernel: str, noise_filter: str | None = None) -> LowDoseSimulator:
    """The simulator at its defaults with the filter of :data:`KERNEL_NOISE_FILTERS` for ``kernel`` ("smooth" or
    "sharp"), or ``noise_filter`` whatever the kernel."""
    if noise_filter is None and kernel not in KERNEL_NOISE_FILTERS:
        raise ValueError(f"kernel class {kernel!r} is not one of {sorted(KERNEL_NOISE_FILTERS)}")
    return LowDoseSimulator(filter_name=noise_filter or KERNEL_NOISE_FILTERS[kernel])


def simulated_low_dose(entry: dict, dose: float, ct, seed: int, simulator: LowDoseSimulator,
                       cache_dir: os.PathLike | str | None = None) -> np.ndarray:
    """The low-dose HU of a held-out slice at ``dose`` (seeded by the slice and the dose), kept in ``cache_dir``
    (one ``.npy`` per slice and dose) when given, so a rerun or another model is scored on the very same noise."""
    cached = None
    if cache_dir is not None:
        name = f"{entry['block']}-{Path(entry['label']).stem}-{simulator.filter_name}-seed{seed}-dose{dose:g}.npy"
        cached = Path(cache_dir) / name
        if cached.exists():
            return np.load(cached)
    rng = slice_rng(seed, str(ct.dataset.SOPInstanceUID), dose)
    low_dose = simulator(ct.hu.astype(np.float32), dose, float(ct.dataset.PixelSpacing[0]), ct.padding, rng=rng)
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        with atomic_output(cached) as temporary:
            with open(temporary, "wb") as f:
                np.save(f, low_dose)
    return low_dose


def evaluate_blocks(
    denoise: Denoise | None,
    datalist: os.PathLike | str,
    results_csv: os.PathLike | str,
    dose_fractions: Sequence[float] = DOSE_FRACTIONS,
    slice_step: int = 4,
    bm3d_dose_fractions: Sequence[float] = (0.25,),
    bm3d_anatomies: Sequence[str] = ("chest", "abdomen"),
    bm3d_slice_step: int = 2,
    seed: int = 1000,
    noise_filter: str | None = None,
    kernels: Sequence[str] = ("smooth", "sharp"),
    cache_dir: os.PathLike | str | None = None,
    split: str = "test",
) -> list[dict]:
    """
    Score ``denoise(low_dose_hu, dose_fraction)`` and its input on every ``slice_step``-th ``split`` slice of each block
    of ``datalist`` whose kernel class is in ``kernels``, at each dose; BM3D with the true noise spectrum too at
    ``bm3d_dose_fractions`` on every ``bm3d_slice_step``-th of those slices of ``bm3d_anatomies``. The added noise
    has the filter of :data:`KERNEL_NOISE_FILTERS` for the block's kernel, or ``noise_filter`` on every block. One
    row per (slice, dose) in ``results_csv`` (kept and skipped on a rerun). Returns all rows. With ``denoise``
    None, only simulates into ``cache_dir``.
    """
    results_csv = Path(results_csv)
    rows = read_rows(results_csv)
    done = {(row["label"], float(row["dose_fraction"])) for row in rows}
    counters: dict[str, int] = {}
    for entry in held_out_slices(datalist, slice_step, split):
        if entry["kernel"] not in kernels:
            continue
        simulator = noise_simulator(entry["kernel"], noise_filter)
        position = counters[entry["block"]] = counters.get(entry["block"], -1) + 1
        pending = [dose for dose in dose_fractions if (entry["label"], float(dose)) not in done]
        if not pending:
            continue
        ct = read_ct_slice(entry["label"])
        reference = ct.hu.astype(np.float32)
        if denoise is None:
            for dose in pending:
                simulated_low_dose(entry, dose, ct, seed, simulator, cache_dir)
            print(f"{entry['block']} {Path(entry['label']).name}: simulated {len(pending)} doses", flush=True)
            continue
        rois = place_flat_rois(reference)
        windows = {"paper": PAPER_WINDOW_HU, "own": ANATOMY_WINDOWS_HU[entry["anatomy"]], "brain": BRAIN_WINDOW_HU}
        for dose in pending:
            low_dose = simulated_low_dose(entry, dose, ct, seed, simulator, cache_dir)
            output = denoise(low_dose, dose)
            row = {
                "block": entry["block"], "anatomy": entry["anatomy"], "kernel": entry["kernel"],
                "label": entry["label"], "dose_fraction": float(dose), "noise_filter": simulator.filter_name,
                "flat_rois": len(rois),
                "reference_noise_hu": roi_noise(reference, rois) if rois else float("nan"),
                **_scores("input", low_dose, reference, windows, rois),
                **_scores("output", output, reference, windows, rois),
            }
            if (dose in bm3d_dose_fractions and entry["anatomy"] in bm3d_anatomies
                    and position % bm3d_slice_step == 0):
                row.update(_scores("bm3d_oracle", bm3d_oracle(low_dose, reference), reference, windows, rois))
            rows.append(row)
            _write_rows(results_csv, rows)
        print(f"{entry['block']} {Path(entry['label']).name}: {len(pending)} doses", flush=True)
    return rows


def _mean(rows: Sequence[dict], key: str) -> float:
    values = [float(row[key]) for row in rows if key in row and row[key] != "" and np.isfinite(float(row[key]))]
    return float(np.mean(values)) if values else float("nan")


def summarise(rows: Sequence[dict]) -> list[dict]:
    """Means over the slices of each (block, dose): input, output and their difference per metric and window."""
    cases: dict[tuple[str, float], list[dict]] = {}
    for row in rows:
        cases.setdefault((str(row["block"]), float(row["dose_fraction"])), []).append(row)
    summary = []
    for (block, dose), case in sorted(cases.items()):
        item: dict = {"block": block, "anatomy": case[0]["anatomy"], "dose_fraction": dose, "slices": len(case)}
        for metric in ("psnr", "ssim"):
            for window in ("paper", "own", "brain"):
                for method in ("input", "output"):
                    item[f"{method}_{metric}_{window}"] = _mean(case, f"{method}_{metric}_{window}")
                item[f"gain_{metric}_{window}"] = item[f"output_{metric}_{window}"] - item[f"input_{metric}_{window}"]
        for key in ("input_hu_shift", "output_hu_shift", "output_noise_ratio", "input_noise_ratio",
                    "reference_noise_hu"):
            item[key] = _mean(case, key)
        with_bm3d = [row for row in case if "bm3d_oracle_psnr_paper" in row and row["bm3d_oracle_psnr_paper"] != ""]
        if with_bm3d:
            item["bm3d_slices"] = len(with_bm3d)
            for key in ("psnr_paper", "ssim_paper", "psnr_own", "ssim_own"):
                item[f"bm3d_oracle_{key}"] = _mean(with_bm3d, f"bm3d_oracle_{key}")
                item[f"output_on_bm3d_slices_{key}"] = _mean(with_bm3d, f"output_{key}")
        summary.append(item)
    return summary


def _f(value: float, digits: int = 2, signed: bool = False) -> str:
    if not np.isfinite(value):
        return "-"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def report_markdown(summary: Sequence[dict]) -> str:
    """The Markdown tables of :func:`summarise`'s cases: worst case first, then every block x dose, then BM3D."""
    gains = [(item[f"gain_{m}_{w}"], item["block"], item["dose_fraction"], m, w) for item in summary
             for m in ("psnr", "ssim") for w in ("paper", "own", "brain")]
    worse = [g for g in gains if g[0] < 0]
    lines = ["## Worst case", ""]
    for metric, unit, digits in (("psnr", "dB", 2), ("ssim", "", 4)):
        for window in ("paper", "own", "brain"):
            gain, block, dose, *_ = min(g for g in gains if g[3] == metric and g[4] == window)
            lines.append(f"- {metric.upper()} gain over the input, {window} window: worst {_f(gain, digits, True)} "
                         f"{unit} ({block}, dose {dose:g})".replace(" ()", ""))
    lines.append(f"- cases (block x dose x metric x window) where the output is worse than its input: {len(worse)} "
                 f"of {len(gains)}" + (": " + "; ".join(f"{b} dose {d:g} {m} {w} {_f(g, 4, True)}"
                                                          for g, b, d, m, w in worse) if worse else ""))
    ratios = [item["output_noise_ratio"] for item in summary if np.isfinite(item["output_noise_ratio"])]
    shifted = [item for item in summary if np.isfinite(item["output_hu_shift"])]
    if ratios:
        worst = max(shifted, key=lambda item: abs(item["output_hu_shift"]))
        lines.append(f"- flat regions: output / normal-dose noise ratio {min(ratios):.2f} to {max(ratios):.2f}; "
                     f"largest |mean HU shift| {abs(worst['output_hu_shift']):.2f} HU ({worst['block']}, dose "
                     f"{worst['dose_fraction']:g}; the input's there {_f(worst['input_hu_shift'], 2, True)} HU); "
                     f"within 2 HU in {sum(abs(i['output_hu_shift']) <= 2 for i in shifted)} of {len(shifted)} "
                     "cases")
    lines += ["", "## Every held-out block and dose", "",
              "Means over the block's evaluated slices. PSNR in dB (window mapped to [0, 1]); gain = output - input. "
              "Noise ratio: noise std in the normal-dose image's flat regions, over the normal dose's. HU shift: "
              "mean HU there minus the normal dose's; the input's is zero in expectation (the noise has zero mean), "
              "so its size shows what the ROIs' noise alone makes of it.", "",
              "| block | dose | slices | PSNR paper in / out (gain) | PSNR own in / out (gain) | "
              "PSNR brain in / out (gain) | SSIM paper in / out | SSIM own in / out | noise ratio in / out | "
              "HU shift in / out |", "|" + "---|" * 10]
    for item in summary:
        cells = [item["block"], f"{item['dose_fraction']:g}", str(item["slices"])]
        for window in ("paper", "own", "brain"):
            cells.append(f"{_f(item[f'input_psnr_{window}'])} / {_f(item[f'output_psnr_{window}'])} "
                         f"({_f(item[f'gain_psnr_{window}'], 2, True)})")
        for window in ("paper", "own"):
            cells.append(f"{_f(item[f'input_ssim_{window}'], 4)} / {_f(item[f'output_ssim_{window}'], 4)}")
        cells.append(f"{_f(item['input_noise_ratio'])} / {_f(item['output_noise_ratio'])}")
        cells.append(f"{_f(item['input_hu_shift'], 2, True)} / {_f(item['output_hu_shift'], 2, True)}")
        lines.append("| " + " | ".join(cells) + " |")
    bm3d = [item for item in summary if "bm3d_oracle_psnr_paper" in item]
    if bm3d:
        lines += ["", "## Against BM3D given the true noise power spectrum (oracle)", "",
                  "BM3D (correlated-noise mode) is given the noise power spectrum of the very noise that was added: "
                  "an upper bound no user has. Same slices for both.", "",
                  "| block | dose | slices | PSNR paper BM3D / ours (margin) | SSIM paper BM3D / ours | "
                  "PSNR own BM3D / ours (margin) | SSIM own BM3D / ours |", "|" + "---|" * 7]
        for item in bm3d:
            cells = [item["block"], f"{item['dose_fraction']:g}", str(item["bm3d_slices"])]
            for window in ("paper", "own"):
                ours, theirs = item[f"output_on_bm3d_slices_psnr_{window}"], item[f"bm3d_oracle_psnr_{window}"]
                cells.append(f"{_f(theirs)} / {_f(ours)} ({_f(ours - theirs, 2, True)})")
                cells.append(f"{_f(item[f'bm3d_oracle_ssim_{window}'], 4)} / "
                             f"{_f(item[f'output_on_bm3d_slices_ssim_{window}'], 4)}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparison_figure(denoise: Denoise, entry: dict, dose: float, path: os.PathLike | str, seed: int = 1000,
                      cache_dir: os.PathLike | str | None = None) -> Path:
    """PNG of one held-out slice at ``dose``: input, output and normal dose in the anatomy's window and the brain
    window, each with its central quarter enlarged (the noise of :func:`evaluate_blocks`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ct = read_ct_slice(entry["label"])
    reference = ct.hu.astype(np.float32)
    low_dose = simulated_low_dose(entry, dose, ct, seed, noise_simulator(entry["kernel"]), cache_dir)
    output = denoise(low_dose, dose)
    height, width = reference.shape
    zoom = (slice(3 * height // 8, 5 * height // 8), slice(3 * width // 8, 5 * width // 8))
    windows = {"own": ANATOMY_WINDOWS_HU[entry["anatomy"]], "brain": BRAIN_WINDOW_HU}
    fig, axes = plt.subplots(4, 3, figsize=(9, 12))
    for column, (title, image) in enumerate(
        ((f"input, dose {dose:g}", low_dose), (f"output, dose_fraction {dose:g}", output), ("normal dose", reference))
    ):
        for row, (name, (low, high)) in enumerate(windows.items()):
            for part, view in enumerate((image, image[zoom])):
                axis = axes[2 * row + part, column]
                axis.imshow(view, cmap="gray", vmin=low, vmax=high)
                axis.set_axis_off()
                axis.set_title(f"{title}\n{name} window [{low:g}, {high:g}] HU" if part == 0 else "centre, enlarged",
                               fontsize=8)
    fig.suptitle(f"{entry['block']} ({Path(entry['label']).name})")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_output(path) as temporary:
        fig.savefig(temporary, format="png", dpi=80)
    plt.close(fig)
    return path

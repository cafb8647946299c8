"""The report of :func:`bundle.evaluation.benchmark.run_benchmark`: tables, verdicts, CSV and figures."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bundle.utils import PAPER_WINDOW_HU, provenance, write_report

__all__ = ["comparison_figure", "dose_figure", "kernel_figure", "markdown_table", "summarise", "verdict",
           "write_benchmark_report", "zoom_box"]  # fmt: skip


def summarise(result: dict, dose: float) -> dict:
    """Mean and std over the slices at ``dose`` of every metric, median seconds per slice."""
    rows = [r for r in result["slices"] if r["dose_fraction"] == dose]
    summary = {"method": result["method"], "description": result["description"], "slices": len(rows)}
    for key in ("psnr_paper", "ssim_paper", "psnr_chest", "ssim_chest"):
        values = np.array([r[key] for r in rows])
        summary[key], summary[f"{key}_std"] = float(values.mean()), float(values.std())
    summary["seconds_per_slice"] = float(np.median([r["seconds"] for r in rows]))
    summary["peak_extra_mib"] = result["peak_extra_mib"]
    summary["parameters"] = result["parameters"]
    return summary


def markdown_table(summaries: list[dict], records: dict[str, dict]) -> str:
    """One row a method: PSNR and SSIM (mean ± std) in both windows, seconds, memory, parameters, training."""
    lines = [
        "| method | PSNR paper (dB) | SSIM paper | PSNR chest (dB) | SSIM chest | s / slice | peak MiB | parameters "
        "| training |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for s in summaries:
        record = records.get(s["method"])
        training = "-"
        if record and "pretrained" in record:
            training = record["pretrained"]
        elif record:
            training = f"{record['patches']} patches, {record['train_seconds'] / 60:.0f} min"
        cells = [
            f"{s['psnr_paper']:.2f} ± {s['psnr_paper_std']:.2f}",
            f"{s['ssim_paper']:.4f} ± {s['ssim_paper_std']:.4f}",
            f"{s['psnr_chest']:.2f} ± {s['psnr_chest_std']:.2f}",
            f"{s['ssim_chest']:.4f} ± {s['ssim_chest_std']:.4f}",
            f"{s['seconds_per_slice']:.2f}",
            f"{s['peak_extra_mib']:.0f}",
            f"{s['parameters']:,}" if s["parameters"] else "-",
            training,
        ]
        lines.append(f"| {s['method']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def verdict(summaries: dict[str, dict]) -> list[str]:
    """Plain sentences: does each StructKPN beat BM3D and RED-CNN on PSNR and SSIM (paper window), by how much."""
    lines = []
    for ours in [m for m in summaries if m.startswith("structkpn") and m in ("structkpn", "structkpn_shipped")]:
        for peer in ("bm3d", "redcnn"):
            if peer not in summaries:
                continue
            d_psnr = summaries[ours]["psnr_paper"] - summaries[peer]["psnr_paper"]
            d_ssim = summaries[ours]["ssim_paper"] - summaries[peer]["ssim_paper"]
            word = "beats" if d_psnr > 0 and d_ssim > 0 else "does not beat"
            lines.append(
                f"- `{ours}` {word} `{peer}` in the paper's window: PSNR {d_psnr:+.2f} dB, SSIM {d_ssim:+.4f}."
            )
    return [*lines, ""] if lines else []


def zoom_box(reference_hu: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` square with the most fine structure (gradient energy in the paper window)."""
    from scipy import ndimage

    windowed = np.clip((reference_hu - PAPER_WINDOW_HU[0]) / (PAPER_WINDOW_HU[1] - PAPER_WINDOW_HU[0]), 0, 1)
    energy = ndimage.uniform_filter(np.hypot(*np.gradient(windowed)), size)
    half = size // 2
    inner = energy[half : energy.shape[0] - half, half : energy.shape[1] - half]
    row, column = np.unravel_index(np.argmax(inner), inner.shape)
    return int(row), int(column)


def comparison_figure(images: dict[str, np.ndarray], path: Path, zoom: int) -> None:
    """Grid of full slices (paper window) and, below, the zoomed region of each (as the paper's Fig. 3)."""
    from matplotlib import patches, pyplot as plt

    row, column = zoom_box(images["reference"], zoom)
    figure, axes = plt.subplots(2, len(images), figsize=(2.6 * len(images), 5.6), layout="constrained")
    for index, (name, hu) in enumerate(images.items()):
        axes[0, index].imshow(hu, cmap="gray", vmin=PAPER_WINDOW_HU[0], vmax=PAPER_WINDOW_HU[1])
        axes[0, index].add_patch(patches.Rectangle((column, row), zoom, zoom, fill=False, color="yellow", lw=1))
        axes[0, index].set_title(name, fontsize=9)
        axes[1, index].imshow(
            hu[row : row + zoom, column : column + zoom], cmap="gray", vmin=PAPER_WINDOW_HU[0], vmax=PAPER_WINDOW_HU[1]
        )
        for axis in axes[:, index]:
            axis.axis("off")
    figure.suptitle(f"window {PAPER_WINDOW_HU[0]:.0f} to {PAPER_WINDOW_HU[1]:.0f} HU", fontsize=10)
    figure.savefig(path, dpi=90)
    plt.close(figure)


def kernel_figure(
    denoiser, hu: np.ndarray, reference_hu: np.ndarray, dose_fraction: float, window_hu: tuple[float, float], path: Path
) -> dict[str, tuple[int, int]]:
    """Kernels a StructKPN ``denoiser`` (:class:`~bundle.evaluation.denoise.Denoiser`) predicts on the (H, W)
    low-dose slice ``hu`` at a flat region, an edge and fine structure of its normal-dose ``reference_hu``
    (Fig. 2f-h; gradient statistics of the reference windowed from ``window_hu`` to [0, 1], as in training); returns
    the points, (row, column)."""
    from matplotlib import pyplot as plt
    from scipy import ndimage

    from bundle.evaluation.masks import body_mask
    from bundle.losses.gradient_statistics import gradient_statistics

    network = denoiser.network
    with torch.inference_mode():
        kernels = network.predict_kernels(denoiser.network_input(hu, dose_fraction))[0].cpu()
    low, high = window_hu
    label = torch.from_numpy(np.clip((reference_hu - low) / (high - low), 0.0, 1.0))
    strength, coherence = gradient_statistics(label[None, None].double())[0].float().numpy()
    inner = ndimage.binary_erosion(body_mask(reference_hu, opening_iterations=3), iterations=16)
    smoothed_hu = ndimage.uniform_filter(reference_hu, 15)
    points = {
        "flat": np.where(inner & (np.abs(smoothed_hu - 50) < 50), -strength, -np.inf),
        "edge": np.where(inner & (strength > np.percentile(strength[inner], 95)), coherence, -np.inf),
        "fine structure": np.where(inner & (smoothed_hu < -500) & (coherence < np.median(coherence[inner])), strength, -np.inf),
    }
    points = {name: tuple(int(i) for i in np.unravel_index(np.argmax(score), score.shape)) for name, score in points.items()}
    k = network.kernel_size
    figure, axes = plt.subplots(1, 4, figsize=(12, 3.4), layout="constrained")
    axes[0].imshow(reference_hu, cmap="gray", vmin=-1000, vmax=400)
    for (name, (row, column)), color in zip(points.items(), ("cyan", "red", "orange")):
        axes[0].plot(column, row, "o", color=color, ms=6, mfc="none")
        axes[0].annotate(name, (column, row), color=color, fontsize=8, xytext=(4, 4), textcoords="offset points")
    axes[0].set_title("normal-dose reference, [-1000, 400] HU", fontsize=9)
    for axis, (name, (row, column)) in zip(axes[1:], points.items()):
        # tap (s + r) * k + t + r weights x[m - s, n - t]: flipped on both axes it lies as the neighbourhood does
        stencil = kernels[:, row, column].reshape(k, k).flip(0, 1).numpy()
        shown = axis.imshow(stencil, cmap="viridis")
        axis.set_title(f"{name} (row {row}, col {column})", fontsize=9)
        figure.colorbar(shown, ax=axis, shrink=0.8)
    for axis in axes:
        axis.axis("off")
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return points


def dose_figure(results: dict[str, dict], methods: Sequence[str], path: Path) -> list[str]:
    """PSNR (paper window) against dose fraction for ``methods`` (as the paper's Fig. 5); returns Markdown rows."""
    from matplotlib import pyplot as plt

    doses = sorted({r["dose_fraction"] for m in methods for r in results[m]["slices"]})
    figure, axis = plt.subplots(figsize=(5.5, 3.8), layout="constrained")
    lines = ["| method | " + " | ".join(f"dose {d:g}" for d in doses) + " |", "|---" * (len(doses) + 1) + "|"]
    for method in methods:
        means = [np.mean([r["psnr_paper"] for r in results[method]["slices"] if r["dose_fraction"] == d]) for d in doses]
        axis.plot(doses, means, "o-", label=method)
        lines.append(f"| {method} | " + " | ".join(f"{m:.2f}" for m in means) + " |")
    axis.set_xlabel("dose fraction")
    axis.set_ylabel("PSNR (dB), window [-160, 240] HU")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return lines



def write_benchmark_report(settings, methods: list[str], selection: dict, records: dict, results: dict) -> Path:
    """Write ``settings.report`` (Markdown, atomically), its CSV and figures in the folder of its stem; returns it."""
    import matplotlib

    matplotlib.use("Agg")
    from bundle.evaluation.benchmark import ABLATIONS, METHODS, method_denoiser
    from bundle.evaluation.denoise import hu_window
    from bundle.evaluation.loss_map import dominant_components, loss_component_figure
    from bundle.io.ct_dicom import read_ct_slice

    window_hu = hu_window(settings.repo / "configs/inference.json")
    figures = settings.report.with_suffix("")
    figures.mkdir(parents=True, exist_ok=True)
    relative = figures.name
    summaries = {m: summarise(results[m], selection["dose"]) for m in methods}
    with open(figures / "benchmark.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(next(iter(summaries.values()))))
        writer.writeheader()
        writer.writerows(summaries.values())

    main_methods = [m for m in methods if m in settings.methods or m in settings.pretrained]
    test_count = len({e["label"] for e in selection["entries"]})
    budget = (
        f"{settings.epochs} epochs x {selection['train_slices']} slices x {settings.patches_per_slice} patches of "
        f"{settings.patch_size[0]}x{settings.patch_size[1]} = {settings.epochs * selection['train_slices'] * settings.patches_per_slice} "
        f"patches, batch {settings.batch_size} slices ({settings.batch_size * settings.patches_per_slice} patches), "
        f"{settings.epochs * math.ceil(selection['train_slices'] / settings.batch_size)} iterations, Adam lr "
        f"{settings.learning_rate:g} with cosine decay"
    )
    text = [
        "# Benchmark",
        "",
        provenance(settings.command, settings.repo, "cpu", settings.threads),
        "",
        f"- Test: {test_count} slices of the datalist's `{settings.test_split}` split at dose fraction {selection['dose']:g} "
        f"(doses {', '.join(f'{d:g}' for d in selection['doses'])} for the dose curve).",
        f"- Training (every learned method, identical): {budget}.",
        "- PSNR and SSIM (MONAI PSNRMetric, SSIMMetric) per slice, mean ± std over slices, in the paper's window "
        "[-160, 240] HU and the chest window (centre -600, width 1500 HU), each mapped to [0, 1].",
        "- s / slice: median wall time of one 512x512 slice; peak MiB: resident memory the method adds beyond the "
        "loaded model and data (sampled every 2 ms).",
        "",
        f"## Methods at dose {selection['dose']:g}",
        "",
        markdown_table([summaries[m] for m in main_methods], records),
        "",
        *[f"- `{m}`: {results[m]['description']}" for m in main_methods],
        "",
        *verdict(summaries),
    ]
    for ablation in settings.ablations:
        members = [m for m in ABLATIONS[ablation] if m in summaries]  # in the order of the ablation
        text += [f"## Ablation: {ablation}", "", markdown_table([summaries[m] for m in members], records), ""]
    base = settings.datalist.parent
    entry = next(e for e in selection["entries"]
                 if e["label"] == selection["figure_label"] and e["dose_fraction"] == selection["dose"])  # fmt: skip
    reference_hu = read_ct_slice(base / entry["label"]).hu
    images = {"reference": reference_hu}
    for m in main_methods:
        images[m] = np.load(settings.output_dir / "results" / f"{m}.figure.npy")
    comparison_figure(images, figures / "comparison.png", zoom=max(reference_hu.shape[0] // 4, 32))
    text += ["## Figures", "", f"Slice `{selection['figure_label']}` at dose {selection['dose']:g}:", ""]
    text += [f"![comparison]({relative}/comparison.png)", ""]
    dominant, _, _ = dominant_components(reference_hu, window_hu)
    loss_component_figure(reference_hu, dominant, figures / "loss_components.png",
                          f"{Path(entry['label']).parent.name}/{Path(entry['label']).name}")  # fmt: skip
    text += ["Structure-aware loss: largest weight per pixel (red L2, gray L1, orange SSIM):", ""]
    text += [f"![loss components]({relative}/loss_components.png)", ""]
    if "structkpn" in results:
        denoiser = method_denoiser(METHODS["structkpn"], settings.repo, settings.output_dir / "runs/structkpn/model.pt")
        low_dose_hu = read_ct_slice(base / entry["image"]).hu
        kernel_figure(denoiser, low_dose_hu, np.clip(reference_hu, *window_hu), entry["dose_fraction"], window_hu,
                      figures / "kernels.png")  # fmt: skip
        text += ["Kernels of `structkpn` (as laid over the image, centre pixel in the middle):", ""]
        text += [f"![kernels]({relative}/kernels.png)", ""]
    dose_methods = [m for m in settings.dose_methods if m in results]
    if len(selection["doses"]) > 1 and dose_methods:
        rows = dose_figure(results, dose_methods, figures / "psnr_vs_dose.png")
        text += ["## PSNR (paper window) against dose", "", *rows, "", f"![PSNR against dose]({relative}/psnr_vs_dose.png)", ""]
    text += [f"Per-method figures: `{relative}/benchmark.csv`; per-slice results in `results/` of the output folder.", ""]
    if settings.notes:
        link = Path(os.path.relpath(Path(settings.notes).resolve(), settings.report.parent.resolve())).as_posix()
        text += [f"What was tried, and the caveats: [{Path(settings.notes).name}]({link}).", ""]
    write_report(settings.report, "\n".join(text) + "\n")
    print(settings.report.read_text())
    return settings.report

"""The report of :func:`bundle.evaluation.benchmark.run_benchmark`: tables per dose and anatomy, the input and paper
comparisons, CSV and figures."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from bundle.utils import PAPER_WINDOW_HU, provenance, write_report

__all__ = ["MULTI_SLICE_PAIRS", "block_means", "comparison_figure", "kernel_figure", "line_figure",
           "dose_ablation_section", "multi_slice_section", "worse_than_input", "write_benchmark_report", "zoom_box"]  # fmt: skip

METRICS = ("psnr_paper", "ssim_paper", "psnr_own", "ssim_own")


def block_means(result: dict, dose: float) -> dict[str, dict[str, float]]:
    """Per block: mean of every metric over the result's slices at ``dose``, median seconds, slice count."""
    blocks: dict[str, list[dict]] = {}
    for row in result["slices"]:
        if row["dose_fraction"] == dose:
            blocks.setdefault(row["block"], []).append(row)
    return {
        block: {"anatomy": rows[0]["anatomy"], "kernel": rows[0]["kernel"], "slices": len(rows),
                "seconds": float(np.median([r["seconds"] for r in rows])),
                **{key: float(np.mean([r[key] for r in rows])) for key in METRICS}}  # fmt: skip
        for block, rows in blocks.items()
    }


def _group_means(means: dict[str, dict], blocks: Sequence[str]) -> dict[str, float]:
    """Each metric averaged over ``blocks`` (each block weighs the same)."""
    return {key: float(np.mean([means[b][key] for b in blocks])) for key in METRICS}


def worse_than_input(results: dict[str, dict], doses: Sequence[float]) -> dict[str, list[tuple]]:
    """Per method: every (block, dose, metric, difference) where its block mean is below the input's (``ldct``)."""
    worse: dict[str, list[tuple]] = {}
    for method, result in results.items():
        if method == "ldct":
            continue
        worse[method] = []
        for dose in doses:
            ours, theirs = block_means(result, dose), block_means(results["ldct"], dose)
            for block in ours:
                for key in METRICS:
                    if ours[block][key] < theirs[block][key]:
                        worse[method].append((block, dose, key, ours[block][key] - theirs[block][key]))
    return worse


def zoom_box(reference_hu: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` square with the most fine structure (gradient energy in the paper window)."""
    from scipy import ndimage

    windowed = np.clip((reference_hu - PAPER_WINDOW_HU[0]) / (PAPER_WINDOW_HU[1] - PAPER_WINDOW_HU[0]), 0, 1)
    energy = ndimage.uniform_filter(np.hypot(*np.gradient(windowed)), size)
    half = size // 2
    inner = energy[half : energy.shape[0] - half, half : energy.shape[1] - half]
    row, column = np.unravel_index(np.argmax(inner), inner.shape)
    return int(row), int(column)


def comparison_figure(images: dict[str, np.ndarray | None], path: Path, zoom: int, window_hu: tuple[float, float],
                      title: str) -> None:  # fmt: skip
    """Full slices in ``window_hu`` (first ``images`` entry: the reference) and, below, the region of ``zoom``
    pixels with the most fine structure, enlarged (as the paper's Fig. 3). A ``None`` image is a blank panel marked
    as missing."""
    from matplotlib import patches, pyplot as plt

    row, column = zoom_box(next(iter(images.values())), zoom)
    low, high = window_hu
    figure, axes = plt.subplots(2, len(images), figsize=(2.2 * len(images), 4.8), layout="constrained", squeeze=False)
    for index, (name, hu) in enumerate(images.items()):
        for axis in axes[:, index]:
            axis.axis("off")
        if hu is None:
            axes[0, index].set_title(f"{name}\n(slice not here: rerun the job)", fontsize=7)
            continue
        axes[0, index].imshow(hu, cmap="gray", vmin=low, vmax=high)
        axes[0, index].add_patch(patches.Rectangle((column, row), zoom, zoom, fill=False, color="yellow", lw=1))
        axes[0, index].set_title(name, fontsize=8)
        axes[1, index].imshow(hu[row : row + zoom, column : column + zoom], cmap="gray", vmin=low, vmax=high)
    figure.suptitle(f"{title}, window [{low:g}, {high:g}] HU", fontsize=10)
    figure.savefig(path, dpi=70)
    plt.close(figure)


def kernel_figure(
    denoiser, hu: np.ndarray, reference_hu: np.ndarray, dose_fraction: float, window_hu: tuple[float, float], path: Path
) -> dict[str, tuple[int, int]]:
    """Kernels a StructKPN denoiser (with ``.network`` and ``.network_input``) predicts on the (H, W) low-dose slice
    ``hu`` at a flat region, an edge and fine structure of its normal-dose ``reference_hu`` (Fig. 2f-h; gradient
    statistics of the reference windowed from ``window_hu`` to [0, 1], as in training); returns the points,
    (row, column). A multi-slice network is given ``hu`` as its (S, H, W) adjacent slices: one row of kernels a
    slice, each titled with its share of the weight (all taps of all slices sum to 1)."""
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
    slices = int(getattr(network, "slices", 1))
    k, kn = network.kernel_size, int(getattr(network, "neighbour_size", network.kernel_size))
    # taps: the centre slice's k * k first, then kn * kn a neighbour in slice order (StructKPN.predict_kernels)
    sizes = [k if s == slices // 2 else kn for s in range(slices)]
    order = [slices // 2, *[s for s in range(slices) if s != slices // 2]]
    starts, tap = {}, 0
    for s in order:
        starts[s], tap = tap, tap + sizes[s] ** 2
    figure, axes = plt.subplots(slices, 4, figsize=(12, 3.4 * slices + 0.3 * (slices > 1)), layout="constrained",
                                squeeze=False)  # fmt: skip
    axes[0, 0].imshow(reference_hu, cmap="gray", vmin=-1000, vmax=400)
    for (name, (row, column)), color in zip(points.items(), ("cyan", "red", "orange")):
        axes[0, 0].plot(column, row, "o", color=color, ms=6, mfc="none")
        axes[0, 0].annotate(name, (column, row), color=color, fontsize=8, xytext=(4, 4), textcoords="offset points")
    axes[0, 0].set_title("normal-dose reference, [-1000, 400] HU", fontsize=9)
    for s in range(slices):
        for axis, (name, (row, column)) in zip(axes[s, 1:], points.items()):
            # tap (s + r) * k + t + r weights x[m - s, n - t]: flipped on both axes it lies as the neighbourhood does
            taps = kernels[starts[s] : starts[s] + sizes[s] ** 2, row, column]
            shown = axis.imshow(taps.reshape(sizes[s], sizes[s]).flip(0, 1).numpy(), cmap="viridis")
            title = f"{name} (row {row}, col {column})"
            if slices > 1:
                title += f"\nslice {s - slices // 2:+d}: {100 * float(taps.sum()):.0f} % of the weight"
            axis.set_title(title, fontsize=9)
            figure.colorbar(shown, ax=axis, shrink=0.8)
    for axis in axes.flat:
        axis.axis("off")
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return points


def line_figure(series: dict[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str, path: Path,
                log_y: bool = False) -> None:  # fmt: skip
    """One line a name of ``series`` (x values, y values), with a legend: PSNR against dose (as the paper's
    Fig. 5), training loss against epoch (log scale: the losses differ in scale)."""
    from matplotlib import pyplot as plt

    figure, axis = plt.subplots(figsize=(6.0, 3.9), layout="constrained")
    for name, (x, y) in series.items():
        axis.plot(x, y, "o-" if len(x) < 10 else "-", label=name)
    if log_y:
        axis.set_yscale("log")
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=7)
    figure.savefig(path, dpi=85)
    plt.close(figure)


def _cell(means: dict[str, float], window: str) -> str:
    return f"{means[f'psnr_{window}']:.2f} / {means[f'ssim_{window}']:.4f}"


def _training(record: dict | None) -> str:
    if not record:
        return "-"
    if "pretrained" in record:
        return f"pretrained: `{record['pretrained']}`"
    return f"{record['patches']:,} patches ({record['epochs']} epochs), {record['train_seconds'] / 60:.0f} min"


def _chosen(pilot: dict | None) -> str:
    """A learned family's learning rate or a classical method's noise strength, and the validation scores."""
    if not pilot or "chosen" not in pilot:
        return "-"
    if "epochs" in pilot:
        scores = ", ".join(f"{lr}: {s['validation_psnr']:.2f}" for lr, s in pilot["scores"].items())
        return f"learning rate {pilot['chosen']:g} (pilot {pilot['epochs']} epochs, validation dB {scores})"
    scores = ", ".join(f"{k}: {s['validation_psnr']:.2f} dB, {len(s['below_input'])} below the input"
                       for k, s in pilot["scores"].items())  # fmt: skip
    return f"noise strength {pilot['chosen']:g} (validation: {scores})"


#: multi-slice StructKPN against single-slice, same budget and data: (multi-slice, single-slice, budget)
MULTI_SLICE_PAIRS = (("structkpn_s3", "structkpn", "main"), ("structkpn_s3_sa", "structkpn_sa", "ablation"),
                     ("structkpn_s3_n21", "structkpn_sa", "ablation"))  # fmt: skip


def multi_slice_section(results: dict, means: dict, anatomies: dict[str, list[str]], doses: Sequence[float],
                         ablation_epochs: int) -> list[str]:  # fmt: skip
    """Multi-slice StructKPN against single-slice (issue #18's test: >= 0.3 dB PSNR with SSIM not lower, per anatomy
    at doses up to 0.25, paper window; time and memory per slice within 1.5x)."""
    pairs = [(m, s, b) for m, s, b in MULTI_SLICE_PAIRS if m in results and s in results]
    if not pairs:
        return []
    text = ["## Multi-slice StructKPN against single-slice", "",
            "Same data, pipeline and budget; each test slice is given with its two neighbours (their own simulated "
            "noise). Cells: multi-slice - single-slice, PSNR dB / SSIM, paper window. The test (doses up to 0.25, "
            "every anatomy): >= +0.3 dB with SSIM not lower.", "",
            "| multi - single | dose | " + " | ".join(anatomies) + " | test |", "|---" * (len(anatomies) + 3) + "|"]
    for multi, single, budget in pairs:
        label = f"`{multi}` - `{single}`" + (f" ({ablation_epochs} epochs)" if budget == "ablation" else "")
        for d in doses:
            deltas = {a: (_group_means(means[multi][d], g), _group_means(means[single][d], g))
                      for a, g in anatomies.items()}  # fmt: skip
            cells = [f"{x['psnr_paper'] - y['psnr_paper']:+.2f} / {x['ssim_paper'] - y['ssim_paper']:+.4f}"
                     for x, y in deltas.values()]  # fmt: skip
            failing = [a for a, (x, y) in deltas.items()
                       if x["psnr_paper"] - y["psnr_paper"] < 0.3 or x["ssim_paper"] < y["ssim_paper"]]  # fmt: skip
            verdict = "-" if d > 0.25 else ("holds" if not failing else "fails: " + ", ".join(failing))
            text.append(f"| {label} | {d:g} | " + " | ".join(cells) + f" | {verdict} |")
    text += ["", "| multi / single | s / slice | peak MiB |", "|---|---|---|"]
    for multi, single, _ in pairs:
        seconds = [float(np.median([r["seconds"] for r in results[m]["slices"]])) for m in (multi, single)]
        memory = [results[m]["peak_extra_mib"] for m in (multi, single)]
        text.append(f"| `{multi}` / `{single}` | {seconds[0] / seconds[1]:.2f}x | "
                    + (f"{memory[0] / memory[1]:.2f}x |" if memory[1] > 0 else "- |"))  # fmt: skip
    return [*text, ""]


def dose_ablation_section(results: dict, means: dict, blocks: Sequence[str], doses: Sequence[float],
                          members: Sequence[str], ablation_epochs: int) -> list[str]:  # fmt: skip
    """A dose-blind network trained over every dose against the same network trained at one dose (its name ends in
    ``_d`` and the dose in percent, e.g. ``redcnn_d50``), beside the input: overall PSNR / SSIM (paper window) at
    each test dose and the cases below the input there; the test of why a blind baseline falls below its input."""
    rows = [m for m in ("ldct", *members) if m in results]
    if "ldct" not in rows or len(rows) < 3:
        return []
    worse = worse_than_input({m: results[m] for m in rows}, doses)
    cases = len(blocks) * len(METRICS)
    text = ["## Ablation: dose (a dose-blind baseline, over every dose and at one)", "",
            "The first network is trained over every dose (0.05-0.95, the main budget), the second at the one dose "
            f"in its name only ({ablation_epochs} epochs); neither is told the dose. Overall PSNR / SSIM, paper "
            "window; in brackets, the block x metric x window cases (of "
            f"{cases} a dose) below the input.", "",
            "| method | " + " | ".join(f"dose {d:g}" for d in doses) + " |", "|---" * (len(doses) + 1) + "|"]
    for m in rows:
        cells = []
        for d in doses:
            below = f" ({sum(1 for c in worse[m] if c[1] == d)})" if m != "ldct" else ""
            cells.append(_cell(_group_means(means[m][d], blocks), "paper") + below)
        text.append(f"| `{m}` | " + " | ".join(cells) + " |")
    return [*text, ""]


def write_benchmark_report(settings, order: list[str], selection: dict, records: dict, pilots: dict,
                           results: dict) -> Path:  # fmt: skip
    """Write ``settings.report`` (Markdown, atomically), ``benchmark.csv`` and the figures in the folder of its stem,
    from the finished ``results`` (methods of ``order`` without one are listed as pending); returns the report."""
    import matplotlib

    matplotlib.use("Agg")
    from bundle.evaluation.benchmark import (ABLATIONS, METHODS, PAPER_TABLES, low_dose_slice, low_dose_stack,
                                            method_denoiser, method_of, neighbour_stacks, training_curve)
    from bundle.evaluation.denoise import hu_window
    from bundle.evaluation.generalisation import ANATOMY_WINDOWS_HU
    from bundle.evaluation.loss_map import dominant_components, loss_component_figure
    from bundle.io.ct_dicom import read_ct_slice

    figures = settings.report.with_suffix("")
    figures.mkdir(parents=True, exist_ok=True)
    relative = figures.name
    doses, main_dose = selection["doses"], selection["dose"]
    done = [m for m in order if m in results]
    pending = [m for m in order if m not in results]
    blocks = list(selection["figure_labels"])
    anatomies: dict[str, list[str]] = {}
    for entry in selection["entries"]:
        if entry["block"] not in anatomies.setdefault(entry["anatomy"], []):
            anatomies[entry["anatomy"]].append(entry["block"])
    means = {m: {d: block_means(results[m], d) for d in doses} for m in done}
    description = {m: method_of(m).description for m in order}

    with open(figures / "benchmark.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "block", "anatomy", "kernel", "dose_fraction", "slices", *METRICS, "seconds"])
        for m in done:
            for d in doses:
                for block, item in means[m][d].items():
                    writer.writerow([m, block, item["anatomy"], item["kernel"], d, item["slices"],
                                     *[f"{item[k]:.4f}" for k in METRICS], f"{item['seconds']:.3f}"])  # fmt: skip

    train_slices = selection["train_slices"]
    main_patches = settings.epochs * train_slices * settings.patches_per_slice
    ablation_patches = settings.ablation_epochs * train_slices * settings.patches_per_slice
    slices_per_block = {b: sum(e["block"] == b for e in selection["entries"]) for b in blocks}
    seconds = sum(r.get("train_seconds", 0.0) for r in records.values())
    seconds += sum(s.get("train_seconds", s.get("seconds", 0.0)) for p in pilots.values() for s in p["scores"].values())
    seconds += sum(row["seconds"] for m in done for row in results[m]["slices"])
    text = [
        "# Benchmark",
        "",
        provenance(settings.command, settings.repo, "cpu", settings.threads),
        "",
        "- Test: the held-out blocks of every anatomy and kernel, 1 in "
        f"{settings.slice_step} slices ({', '.join(f'{b}: {n}' for b, n in slices_per_block.items())}), at dose "
        f"fractions {', '.join(f'{d:g}' for d in doses)}: the low-dose slices of `docs/generalisation.md` (the "
        "bundle's simulator at its defaults, the reconstruction filter of the block's kernel, seed "
        f"{selection['seed']}). Every method sees the same slices; methods that take it are told the true dose.",
        "- PSNR (dB) / SSIM (MONAI PSNRMetric, SSIMMetric) per slice, averaged over a block's slices, in the paper's "
        "window [-160, 240] HU and the anatomy's own ("
        + ", ".join(f"{a} [{w[0]:g}, {w[1]:g}]" for a, w in ANATOMY_WINDOWS_HU.items() if a in anatomies)
        + " HU), each mapped to [0, 1]. An anatomy's figure is the mean over its blocks; overall, over all blocks.",
        f"- Training (every learned method, identical pipeline and data: the datalist's {train_slices} training "
        f"slices, noise drawn by `configs/train.json`): {settings.epochs} epochs x {train_slices} slices x "
        f"{settings.patches_per_slice} patches of {settings.patch_size[0]}x{settings.patch_size[1]} = "
        f"{main_patches:,} patches (the ablations: {settings.ablation_epochs} epochs, {ablation_patches:,} "
        f"patches), batch {settings.batch_size} slices, Adam with cosine decay. Learning rate per family: "
        f"{settings.pilot_epochs}-epoch pilots at {', '.join(f'{lr:g}' for lr in settings.learning_rates)}, "
        f"scored by PSNR (paper window) on the pairs of 1 in {settings.validation_step} slices of the datalist's "
        f"validation split (every dose of it; {selection['validation_slices']} pairs in all; no test block), the "
        "best kept; ablations use their "
        "family's rate. The weights scored are the last epoch's.",
        "- Classical methods (BM3D and K-SVD as a user runs them, and as oracles): the noise strength, the share of "
        "their noise estimate (oracles: of the true noise) they remove, chosen from "
        f"{', '.join(f'{x:g}' for x in settings.noise_strengths)} on the same validation pairs: the best mean PSNR "
        "(paper window) among the strengths below the input in no validation block mean (any metric, either window), "
        "else the strength below it in the fewest.",
        "- s / slice: median wall time of one 512x512 slice, HU to HU; peak MiB: resident memory the method adds "
        "beyond the loaded model and data (sampled every 2 ms), each method in its own process.",
        f"- CPU time so far (training, pilots and denoising, 2 cores): {seconds / 3600:.1f} h.",
        "",
    ]
    if pending:
        text += ["**Not finished yet** (rerun the command to continue): " + ", ".join(f"`{m}`" for m in pending)
                 + ". Their rows are missing below.", ""]  # fmt: skip

    text += ["## Methods", "",
             "| method | description | parameters | training | chosen on validation | s / slice | peak MiB |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for m in order:
        result = results.get(m)
        family = METHODS[m].family if m in METHODS else ""
        cells = [description[m], f"{result['parameters']:,}" if result and result["parameters"] else "-",
                 _training(records.get(m)), _chosen(pilots.get(family or m)),
                 f"{np.median([r['seconds'] for r in result['slices']]):.2f}" if result else "-",
                 f"{result['peak_extra_mib']:.0f}" if result else "-"]  # fmt: skip
        text.append(f"| `{m}` | " + " | ".join(cells) + " |")
    text.append("")

    main_table = [m for m in done if m in settings.methods or m in settings.pretrained]
    overall_psnr: dict[str, dict[float, float]] = {}
    for d in [main_dose, *[x for x in doses if x != main_dose]]:
        header = " | ".join(f"{a} paper | {a} own" for a in anatomies)
        text += [f"## Dose {d:g}: PSNR / SSIM per anatomy", "", f"| method | {header} | overall paper | overall own |",
                 "|---" * (2 * len(anatomies) + 3) + "|"]  # fmt: skip
        for m in main_table:
            cells = []
            for a, members in anatomies.items():
                group = _group_means(means[m][d], members)
                cells += [_cell(group, "paper"), _cell(group, "own")]
            overall = _group_means(means[m][d], blocks)
            overall_psnr.setdefault(m, {})[d] = overall["psnr_paper"]
            text.append(f"| `{m}` | " + " | ".join([*cells, _cell(overall, "paper"), _cell(overall, "own")]) + " |")
        text.append("")
    text += [f"## Dose {main_dose:g}: PSNR / SSIM (paper window) per block", "",
             "| method | " + " | ".join(blocks) + " |", "|---" * (len(blocks) + 1) + "|"]  # fmt: skip
    for m in main_table:
        text.append(f"| `{m}` | " + " | ".join(_cell(means[m][main_dose][b], "paper") for b in blocks) + " |")
    text.append("")

    if "ldct" in results:
        worse = worse_than_input({m: results[m] for m in done}, doses)
        text += ["## Against the input", "",
                 "Cases (block x dose x metric x window, block means) where a method is below the low-dose input:", ""]
        for m, cases in worse.items():
            total = len(blocks) * len(doses) * len(METRICS)
            listed = "; ".join(f"{b} {d:g} {k} {v:+.3f}" for b, d, k, v in sorted(cases, key=lambda c: c[3])[:6])
            text.append(f"- `{m}`: {len(cases)} of {total}" + (f" (worst: {listed})" if cases else ""))
        text.append("")

    ours = [m for m in ("structkpn", "structkpn_s3", *settings.pretrained) if m in results]
    peers = [m for m in main_table if m not in ours and m != "ldct"]
    if ours and peers:
        text += [f"## StructKPN's margins at dose {main_dose:g} (paper window, PSNR dB / SSIM)", "",
                 "The paper's margins (NIH, quarter dose): over BM3D +1.08 dB (the issue's test: >= 1.1), over RED-CNN "
                 "+0.21 dB.", "", "| ours - peer | " + " | ".join(anatomies) + " | overall |",
                 "|---" * (len(anatomies) + 2) + "|"]  # fmt: skip
        for o in ours:
            for p in peers:
                cells = []
                for members in [*anatomies.values(), blocks]:
                    a, b = _group_means(means[o][main_dose], members), _group_means(means[p][main_dose], members)
                    cells.append(f"{a['psnr_paper'] - b['psnr_paper']:+.2f} / {a['ssim_paper'] - b['ssim_paper']:+.4f}")
                text.append(f"| `{o}` - `{p}` | " + " | ".join(cells) + " |")
        for o in ours:
            for p, threshold in (("bm3d", 1.1), ("redcnn", 0.21)):
                if p not in results:
                    continue
                holds = {a: _group_means(means[o][main_dose], members)["psnr_paper"]
                         - _group_means(means[p][main_dose], members)["psnr_paper"] >= threshold
                         for a, members in anatomies.items()}  # fmt: skip
                verdict = ", ".join(f"{a} {'holds' if h else 'does not hold'}" for a, h in holds.items())
                text.append(f"- `{o}` over `{p}` by >= {threshold} dB: {verdict}.")
        text.append("")

    text += multi_slice_section(results, means, anatomies, doses, settings.ablation_epochs)

    tables = {"methods": "Table 1 (methods)", "loss": "Table 2 (losses)", "kernel_size": "Table 3 (kernel sizes)"}
    for key, title in tables.items():
        rows = [m for m in PAPER_TABLES[key] if m in results]
        if not rows or (key != "methods" and key not in settings.ablations):
            continue
        text += [f"## The paper's {title}, beside ours at dose {main_dose:g}", "",
                 "Paper: NIH (AAPM) data, quarter dose, window [-160, 240] HU. Ours: overall mean over the blocks, "
                 "same window. Different data, so the gains over the input and the order of the rows are what "
                 "compare.", "",
                 "| method | paper PSNR / SSIM | paper gain over LDCT | ours PSNR / SSIM | our gain over the input | "
                 "ours - paper (PSNR) |", "|---|---|---|---|---|---|"]  # fmt: skip
        paper_input = PAPER_TABLES["methods"]["ldct"]
        ours_input = _group_means(means["ldct"][main_dose], blocks) if "ldct" in means else None
        for m in rows:
            paper = PAPER_TABLES[key][m]
            measured = _group_means(means[m][main_dose], blocks)
            our_gain = (f"{measured['psnr_paper'] - ours_input['psnr_paper']:+.2f} / "
                        f"{measured['ssim_paper'] - ours_input['ssim_paper']:+.4f}") if ours_input else "-"  # fmt: skip
            text.append(f"| `{m}` | {paper[0]:.2f} / {paper[1]:.3f} | {paper[0] - paper_input[0]:+.2f} / "
                        f"{paper[1] - paper_input[1]:+.3f} | {_cell(measured, 'paper')} | {our_gain} | "
                        f"{measured['psnr_paper'] - paper[0]:+.2f} |")  # fmt: skip
        text.append("")
    for ablation in settings.ablations:
        members = [m for m in ABLATIONS[ablation] if m in results]
        if ablation == "dose":
            text += dose_ablation_section(results, means, blocks, doses, members, settings.ablation_epochs)
            continue
        if not members:
            continue
        text += [f"## Ablation: {ablation} (dose {main_dose:g}, {settings.ablation_epochs} epochs)", "",
                 f"| method | {' | '.join(anatomies)} | overall paper | overall own |",
                 "|---" * (len(anatomies) + 3) + "|"]  # fmt: skip
        for m in members:
            cells = [_cell(_group_means(means[m][main_dose], group), "paper") for group in anatomies.values()]
            overall = _group_means(means[m][main_dose], blocks)
            text.append(f"| `{m}` | " + " | ".join([*cells, _cell(overall, "paper"), _cell(overall, "own")]) + " |")
        text.append("")

    curves = {m: training_curve(settings.output_dir / "runs" / m / "train.log") for m in order}
    curves = {m: c for m, c in curves.items() if c}
    if curves:
        line_figure({m: (range(1, len(c) + 1), c) for m, c in curves.items()}, "epoch", "mean training loss",
                    figures / "training_curves.png", log_y=True)
        text += ["## Training curves", "", "Mean training loss per epoch (each run's own loss; runs still going end "
                 "early):", "", f"![training curves]({relative}/training_curves.png)", ""]  # fmt: skip
    if main_table:
        text += ["## Figures", "", f"Each block's middle test slice at dose {main_dose:g}, in its anatomy's window; "
                 "below, the region with the most fine structure, enlarged.", ""]  # fmt: skip
        for block, label in selection["figure_labels"].items():
            reference = read_ct_slice(label).hu.astype(np.float32)
            images = {"normal dose": reference}
            slices = {m: settings.output_dir / "results" / m / f"{block}.npy" for m in main_table}
            images.update({m: np.load(path) if path.exists() else None for m, path in slices.items()})
            anatomy = next(e["anatomy"] for e in selection["entries"] if e["block"] == block)
            comparison_figure(images, figures / f"{block}.png", max(reference.shape[0] // 5, 32),
                              ANATOMY_WINDOWS_HU[anatomy], f"{block}, dose {main_dose:g}")  # fmt: skip
            text += [f"![{block}]({relative}/{block}.png)", ""]
        chest = next((b for b in blocks if b.startswith("chest")), blocks[0])
        reference = read_ct_slice(selection["figure_labels"][chest]).hu.astype(np.float32)
        window_hu = hu_window(settings.repo / "configs/inference.json")
        dominant, _, _ = dominant_components(reference, window_hu)
        loss_component_figure(reference, dominant, figures / "loss_components.png", chest)
        text += ["Structure-aware loss: largest weight per pixel (red L2, gray L1, orange SSIM):", "",
                 f"![loss components]({relative}/loss_components.png)", ""]  # fmt: skip
        kpn = next((m for m in ("structkpn", *settings.pretrained) if m in results), None)
        if kpn:
            entry = next(e for e in selection["entries"] if e["label"] == selection["figure_labels"][chest])
            weights = (Path(settings.pretrained[kpn]) if kpn in settings.pretrained
                       else settings.output_dir / "runs" / kpn / "model.pt")  # fmt: skip
            denoiser = method_denoiser(method_of(kpn), settings.repo, weights)
            kernel_figure(denoiser, low_dose_slice(entry, main_dose, settings), np.clip(reference, *window_hu),
                          main_dose, window_hu, figures / "kernels.png")  # fmt: skip
            text += [f"Kernels of `{kpn}` (as laid over the image, centre pixel in the middle):", "",
                     f"![kernels]({relative}/kernels.png)", ""]  # fmt: skip
        if "structkpn_s3" in results:
            entry = next(e for e in selection["entries"] if e["label"] == selection["figure_labels"][chest])
            denoiser = method_denoiser(METHODS["structkpn_s3"], settings.repo,
                                       settings.output_dir / "runs" / "structkpn_s3" / "model.pt")  # fmt: skip
            stack = low_dose_stack(entry, neighbour_stacks(settings, 3)[entry["label"]], main_dose, settings)
            kernel_figure(denoiser, stack, np.clip(reference, *window_hu), main_dose, window_hu,
                          figures / "kernels_s3.png")  # fmt: skip
            text += ["Kernels of `structkpn_s3` over the slice and its neighbours (rows: slices -1, 0, +1; each "
                     "with its share of the weight):", "", f"![kernels over slices]({relative}/kernels_s3.png)", ""]
        if len(doses) > 1:
            by_method = {m: (sorted(psnr), [psnr[d] for d in sorted(psnr)]) for m, psnr in overall_psnr.items()}
            line_figure(by_method, "dose fraction", "PSNR (dB), window [-160, 240] HU", figures / "psnr_vs_dose.png")
            text += ["PSNR (paper window, mean over the blocks) against dose:", "",
                     f"![PSNR against dose]({relative}/psnr_vs_dose.png)", ""]  # fmt: skip
    text += [f"Per block, method and dose: `{relative}/benchmark.csv`; per slice: `results/` of the output folder.", ""]
    if settings.notes:
        link = Path(os.path.relpath(Path(settings.notes).resolve(), settings.report.parent.resolve())).as_posix()
        text += [f"What was tried, and the caveats: [{Path(settings.notes).name}]({link}).", ""]
    write_report(settings.report, "\n".join(text) + "\n")
    return settings.report

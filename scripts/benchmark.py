"""Benchmark StructKPN against RED-CNN, WavResNet, BM3D and K-SVD on a datalist's test split (paper Tables 1-3).

    python scripts/benchmark.py --datalist /data/paired/datalist.json --output_dir /data/benchmark \\
        --report /data/benchmark/benchmark.md --dose 0.25 --epochs 6 --ablations loss kernel_size preset

1. Trains every learned method with the bundle's own ``configs/train.json`` and the same budget (epochs, batch,
   patches, learning rate), swapping only the network and loss override configs (``configs/networks``,
   ``configs/losses``): ``python -m monai.bundle run training --config_file "['configs/train.json', ...]"``.
   Each run goes to ``output_dir/runs/<method>`` and resumes from its last epoch checkpoint when rerun.
2. Evaluates every method, each in its own process (clean peak memory), on the test slices at ``--dose``, and
   at every other dose of the split for ``--dose_methods``: PSNR and SSIM per slice in the paper's window
   ([-160, 240] HU) and the chest window (centre -600, width 1500 HU), both mapped to [0, 1]; seconds per slice;
   peak resident memory beyond the loaded model and data. A dose-aware StructKPN (train.json's default) gets its
   conditioning channels at each slice's ``dose_fraction`` (timed with it), the baselines the image alone.
   Results go to ``output_dir/results/<method>.json``; finished methods are skipped when rerun.
3. Writes ``--report`` (Markdown), a CSV and PNG figures beside it (in ``<report stem>/``): the comparison grid
   with a zoomed region, the structure-aware loss map, predicted kernels at a flat region, an edge and fine
   structure, and PSNR against dose.

Methods: ``ldct`` (the low-dose input itself), ``bm3d`` (optional ``bm3d`` package), ``ksvd``, ``redcnn`` and
``wavresnet`` (MSE loss, as published), ``structkpn`` (lite preset, structure-aware loss, k = 21). Ablations add
``redcnn_l1``, ``redcnn_sa``, ``structkpn_l1`` (``loss``), ``structkpn_k15`` ... ``structkpn_k27``
(``kernel_size``) and ``structkpn_authors`` (``preset``). ``--pretrained NAME=PATH`` adds already trained
StructKPN weights (e.g. the shipped ``models/model.pt``), reported with their own, different budget.

On a GPU the same command runs unchanged (train.json picks the device); raise ``--epochs`` there.
Needs the ``bundle`` package importable and runs from the repository root.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bundle.utils import PAPER_WINDOW_HU, git_commit, windowed_quality

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Method:
    """A denoiser of the benchmark: ``kind`` is identity, classical or learned."""

    name: str
    kind: str
    description: str
    config_files: tuple[str, ...] = ()
    overrides: dict = field(default_factory=dict)


METHODS = {
    m.name: m
    for m in [
        Method("ldct", "identity", "low-dose input"),
        Method("bm3d", "classical", "BM3D, white-noise mode, sigma estimated from the input"),
        Method("ksvd", "classical", "K-SVD, dictionary learned on the input, OMP"),
        Method("redcnn", "learned", "RED-CNN, MSE loss", ("configs/networks/redcnn.json", "configs/losses/mse.json")),
        Method(
            "wavresnet",
            "learned",
            "WavResNet (stationary Haar), MSE loss",
            ("configs/networks/wavresnet.json", "configs/losses/mse.json"),
        ),
        Method("structkpn", "learned", "StructKPN lite, structure-aware loss, k = 21"),
        Method("redcnn_l1", "learned", "RED-CNN, L1 loss", ("configs/networks/redcnn.json", "configs/losses/l1.json")),
        Method("redcnn_sa", "learned", "RED-CNN, structure-aware loss", ("configs/networks/redcnn.json",)),
        Method("structkpn_l1", "learned", "StructKPN lite, L1 loss", ("configs/losses/l1.json",)),
        *[
            Method(f"structkpn_k{k}", "learned", f"StructKPN lite, structure-aware loss, k = {k}", (), {"kernel_size": k})
            for k in (15, 19, 23, 27)
        ],
        Method(
            "structkpn_authors",
            "learned",
            "StructKPN authors' preset (full resolution, 24 blocks), structure-aware loss",
            ("configs/networks/structkpn_authors.json",),
        ),
    ]
}
ABLATIONS = {
    "loss": ("redcnn", "redcnn_l1", "redcnn_sa", "structkpn_l1", "structkpn"),
    "kernel_size": ("structkpn_k15", "structkpn_k19", "structkpn", "structkpn_k23", "structkpn_k27"),
    "preset": ("structkpn", "structkpn_authors"),
}
KERNEL_SIZE = {"structkpn": 21, **{f"structkpn_k{k}": k for k in (15, 19, 23, 27)}}


def _bundle_args(method: Method) -> list[str]:
    """``--config_file`` and overrides of ``python -m monai.bundle`` for a learned method."""
    config_files = ["configs/train.json", *method.config_files]
    args = ["--meta_file", "configs/metadata.json", "--config_file", repr(config_files)]
    for key, value in method.overrides.items():
        args += [f"--{key}", str(value)]
    return args


def _conditioning(parser) -> Callable[[torch.Tensor, float], torch.Tensor]:
    """The network input from a windowed (1, H, W) image at a dose fraction, as train.json's validation makes it:
    (3, H, W) for a dose-aware StructKPN (:class:`~bundle.transforms.AddDoseConditiond`), the image itself for a
    single-channel network (``dose_aware: false``)."""
    from monai.transforms import Compose

    condition = Compose(parser.get_parsed_content("validate#conditioning_transforms"))
    return lambda image, dose_fraction: condition({"image": image, "dose_fraction": dose_fraction})["image"]


def _parser_for(method: Method, extra: dict | None = None):
    """The bundle's train config with the method's overrides, as a MONAI ConfigParser."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config([str(REPO / "configs/train.json"), *[str(REPO / f) for f in method.config_files]])
    parser.update({"bundle_root": str(REPO), **method.overrides, **(extra or {})})
    return parser


# ---------------------------------------------------------------------------------------------------- training


def train(method: Method, args: argparse.Namespace, run_dir: Path, train_count: int) -> dict:
    """Train ``method`` with train.json (resuming an interrupted run); returns the run's record."""
    record_path = run_dir / "done.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "monai.bundle", "run", "training", *_bundle_args(method)]
    command += ["--logging_file", "configs/logging.conf", "--bundle_root", str(REPO)]
    command += ["--dataset_dir", str(args.dataset_dir), "--datalist", str(args.datalist)]
    command += ["--ckpt_dir", str(run_dir), "--output_dir", str(run_dir / "log")]
    command += ["--epochs", str(args.epochs), "--batch_size", str(args.batch_size)]
    command += ["--patches_per_slice", str(args.patches_per_slice), "--patch_size", repr(list(args.patch_size))]
    command += ["--learning_rate", str(args.learning_rate), "--val_interval", str(10**9)]
    command += ["--validate#dataset#data", "$[]"]  # no validation during benchmark training
    checkpoints = sorted(run_dir.glob("training_checkpoint_*.pt"), key=os.path.getmtime)
    if checkpoints:
        command += ["--resume_from", str(checkpoints[-1])]
    elapsed_path = run_dir / "elapsed_seconds.txt"
    elapsed = float(elapsed_path.read_text()) if elapsed_path.exists() else 0.0
    print(f"[train] {method.name}: {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    with open(run_dir / "train.log", "a") as log:
        result = subprocess.run(command, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
    elapsed += time.perf_counter() - start
    elapsed_path.write_text(f"{elapsed:.1f}")
    if result.returncode != 0:
        raise RuntimeError(f"training {method.name} failed (exit {result.returncode}); see {run_dir / 'train.log'}")
    state = torch.load(run_dir / "training_final.pt", map_location="cpu", weights_only=True)["model"]
    torch.save(state, run_dir / "model.pt")
    iterations = args.epochs * math.ceil(train_count / args.batch_size)
    record = {
        "command": shlex.join(command),
        "train_seconds": round(elapsed, 1),
        "epochs": args.epochs,
        "iterations": iterations,
        "patches": args.epochs * train_count * args.patches_per_slice,
    }
    record_path.write_text(json.dumps(record, indent=2))
    return record


# -------------------------------------------------------------------------------------------------- evaluation


def evaluate(method: Method, args: argparse.Namespace, weights: Path | None, output: Path) -> None:
    """Worker: denoise the selected test slices with ``method`` and write ``output`` (JSON) and the figure slice."""
    from monai.transforms import Compose

    from bundle.utils import PeakMemorySampler

    torch.set_num_threads(args.threads)
    selection = json.loads((args.output_dir / "test_selection.json").read_text())
    entries = [e for e in selection["entries"] if e["dose_fraction"] == selection["dose"] or args.all_doses]
    parser = _parser_for(method, {"dataset_dir": str(args.dataset_dir), "datalist": str(args.datalist)})
    load = Compose(parser.get_parsed_content("load_transforms"))
    low, high = parser["hu_window"]
    base = args.datalist.parent
    slices = [load({"image": str(base / e["image"]), "label": str(base / e["label"])}) for e in entries]

    # every denoiser maps the windowed (1, H, W) image at its dose fraction to the (1, H, W) denoised image
    if method.kind == "learned":
        network = parser.get_parsed_content("network_def")
        network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
        network.eval()
        condition = _conditioning(parser)  # timed with the network: part of a dose-aware model's inference

        def denoise(image: torch.Tensor, dose_fraction: float) -> torch.Tensor:
            with torch.inference_mode():
                return network(torch.as_tensor(condition(image, dose_fraction))[None])[0]

    elif method.name == "bm3d":
        from bundle.baselines.bm3d import bm3d_denoise

        def denoise(image: torch.Tensor, dose_fraction: float) -> torch.Tensor:
            return torch.from_numpy(bm3d_denoise(image.as_tensor()[0].numpy().astype(np.float64))[None]).float()

    elif method.name == "ksvd":
        from bundle.baselines.ksvd import ksvd_denoise

        def denoise(image: torch.Tensor, dose_fraction: float) -> torch.Tensor:
            return torch.from_numpy(ksvd_denoise(image.as_tensor()[0].numpy().astype(np.float64), random_state=0)[None]).float()

    else:

        def denoise(image: torch.Tensor, dose_fraction: float) -> torch.Tensor:
            return image.as_tensor().clone()

    rows = []
    with PeakMemorySampler() as memory:
        for entry, data in zip(entries, slices):
            start = time.perf_counter()
            prediction = denoise(data["image"], entry["dose_fraction"])
            seconds = time.perf_counter() - start
            to_hu = lambda x: torch.as_tensor(x)[0].float() * (high - low) + low  # noqa: E731
            prediction_hu, reference_hu = to_hu(prediction), to_hu(data["label"])
            rows.append({**entry, "seconds": seconds, **windowed_quality(prediction_hu, reference_hu)})
            if entry["label"] == selection["figure_label"] and entry["dose_fraction"] == selection["dose"]:
                np.save(output.with_suffix(".figure.npy"), prediction_hu.numpy())
            print(f"[{method.name}] {entry['image']}: {rows[-1]['psnr_paper']:.2f} dB, {seconds:.2f} s", flush=True)
    result = {
        "method": method.name,
        "description": method.description,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "peak_extra_mib": memory.extra / 2**20,
        "parameters": sum(p.numel() for p in network.parameters()) if method.kind == "learned" else None,
        "slices": rows,
    }
    temporary = output.with_suffix(".tmp")
    temporary.write_text(json.dumps(result, indent=1))
    temporary.replace(output)


# ----------------------------------------------------------------------------------------------------- report


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


def kernel_figure(args: argparse.Namespace, weights: Path, selection: dict, path: Path) -> dict[str, tuple[int, int]]:
    """Kernels StructKPN predicts at a flat region, an edge and fine structure of the figure slice (Fig. 2f-h)."""
    from matplotlib import pyplot as plt
    from monai.transforms import Compose

    from bundle.losses.gradient_statistics import gradient_statistics

    method = METHODS["structkpn"]
    parser = _parser_for(method)
    load = Compose(parser.get_parsed_content("load_transforms"))
    low, high = parser["hu_window"]
    base = args.datalist.parent
    figure_entry = next(
        e for e in selection["entries"] if e["label"] == selection["figure_label"] and e["dose_fraction"] == selection["dose"]
    )
    data = load({"image": str(base / figure_entry["image"]), "label": str(base / figure_entry["label"])})
    network = parser.get_parsed_content("network_def")
    network.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    network.eval()
    image = torch.as_tensor(_conditioning(parser)(data["image"], figure_entry["dose_fraction"]))[None]
    with torch.inference_mode():
        kernels = network.predict_kernels(image)[0]
    label = data["label"].as_tensor()
    strength, coherence = gradient_statistics(label[None].double())[0].float().numpy()
    reference_hu = (label[0].numpy() * (high - low) + low).T  # MONAI arrays are (x, y): transpose for display
    strength, coherence = strength.T, coherence.T
    from scipy import ndimage

    body = ndimage.binary_fill_holes(ndimage.binary_opening(reference_hu > -500, iterations=3))
    components, count = ndimage.label(body)
    body = components == (1 + np.argmax(ndimage.sum(body, components, range(1, count + 1))))
    inner = ndimage.binary_erosion(body, iterations=16)
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
        # (x, y) arrays: tap (s + r) * k + t + r weights x[m - s, n - t]; flip both axes, transpose for display
        stencil = kernels[:, column, row].reshape(k, k).flip(0, 1).T.numpy()
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


def select_test_slices(args: argparse.Namespace) -> dict:
    """Test entries (every dose) of up to ``max_test_slices`` reference slices, evenly spaced; the figure slice."""
    datalist = json.loads(args.datalist.read_text())
    entries = datalist[args.test_split]
    for entry in entries:
        entry.setdefault("dose_fraction", args.dose)
    doses = sorted({e["dose_fraction"] for e in entries})
    if args.dose not in doses:
        raise ValueError(f"{args.datalist}: no test entries at dose {args.dose} (doses present: {doses})")
    labels = sorted({e["label"] for e in entries if e["dose_fraction"] == args.dose})
    if args.max_test_slices and len(labels) > args.max_test_slices:
        labels = [labels[int(i)] for i in np.linspace(0, len(labels) - 1, args.max_test_slices).round()]
    chosen = [e for e in entries if e["label"] in labels]
    return {
        "dose": args.dose,
        "doses": doses,
        "figure_label": labels[len(labels) // 2],
        "train_slices": len(datalist[args.train_split]),
        "entries": chosen,
    }


def write_report(args: argparse.Namespace, methods: list[str], selection: dict, records: dict, results: dict) -> None:
    figures = args.report.with_suffix("")
    figures.mkdir(parents=True, exist_ok=True)
    relative = figures.name
    summaries = {m: summarise(results[m], selection["dose"]) for m in methods}
    with open(figures / "benchmark.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(next(iter(summaries.values()))))
        writer.writeheader()
        writer.writerows(summaries.values())

    main_methods = [m for m in methods if m in args.methods or m in args.pretrained_names]
    test_count = len({e["label"] for e in selection["entries"]})
    budget = (
        f"{args.epochs} epochs x {selection['train_slices']} slices x {args.patches_per_slice} patches of "
        f"{args.patch_size[0]}x{args.patch_size[1]} = {args.epochs * selection['train_slices'] * args.patches_per_slice} "
        f"patches, batch {args.batch_size} slices ({args.batch_size * args.patches_per_slice} patches), "
        f"{args.epochs * math.ceil(selection['train_slices'] / args.batch_size)} iterations, Adam lr "
        f"{args.learning_rate:g} with cosine decay"
    )
    text = [
        "# Benchmark",
        "",
        f"Produced by `{args.command}` at commit `{git_commit(REPO)}` on {datetime.date.today()} "
        f"({platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {args.threads} threads, CPU).",
        "",
        f"- Test: {test_count} slices of the datalist's `{args.test_split}` split at dose fraction {selection['dose']:g} "
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
    for ablation in args.ablations:
        members = [m for m in ABLATIONS[ablation] if m in summaries]
        text += [f"## Ablation: {ablation}", "", markdown_table([summaries[m] for m in members], records), ""]
    images = {"reference": None}
    figure_path = args.output_dir / "results"
    reference = next(e for e in selection["entries"] if e["label"] == selection["figure_label"])
    from bundle.io.ct_dicom import read_ct_slice

    images["reference"] = read_ct_slice(args.datalist.parent / reference["label"]).hu
    for m in main_methods:
        images[m] = np.load(figure_path / f"{m}.figure.npy").T  # MONAI (x, y) -> display (row, column)
    comparison_figure(images, figures / "comparison.png", zoom=max(images["reference"].shape[0] // 4, 32))
    text += ["## Figures", "", f"Slice `{selection['figure_label']}` at dose {selection['dose']:g}:", ""]
    text += [f"![comparison]({relative}/comparison.png)", ""]
    subprocess.run(
        [sys.executable, "scripts/loss_component_map.py", "--dicom", str(args.datalist.parent / reference["label"]),
         "--output", str(figures / "loss_components.png")],
        cwd=REPO, check=True, capture_output=True,
    )
    text += ["Structure-aware loss: largest weight per pixel (red L2, gray L1, orange SSIM):", ""]
    text += [f"![loss components]({relative}/loss_components.png)", ""]
    if "structkpn" in results:
        kernel_figure(args, args.output_dir / "runs/structkpn/model.pt", selection, figures / "kernels.png")
        text += ["Kernels of `structkpn` (as laid over the image, centre pixel in the middle):", ""]
        text += [f"![kernels]({relative}/kernels.png)", ""]
    dose_methods = [m for m in args.dose_methods if m in results]
    if len(selection["doses"]) > 1 and dose_methods:
        rows = dose_figure(results, dose_methods, figures / "psnr_vs_dose.png")
        text += ["## PSNR (paper window) against dose", "", *rows, "", f"![PSNR against dose]({relative}/psnr_vs_dose.png)", ""]
    text += [f"Per-method figures: `{relative}/benchmark.csv`; per-slice results in `{args.output_dir}/results`.", ""]
    if args.notes:
        text += [args.notes.read_text()]
    temporary = args.report.with_suffix(".tmp")
    temporary.write_text("\n".join(text) + "\n")
    temporary.replace(args.report)
    print(args.report.read_text())


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", type=Path, required=True, help="datalist with training and test splits")
    parser.add_argument("--dataset_dir", type=Path, help="root of the datalist's paths (default: its folder)")
    parser.add_argument("--output_dir", type=Path, required=True, help="training runs and per-method results")
    parser.add_argument("--report", type=Path, help="Markdown report (default: output_dir/benchmark.md)")
    parser.add_argument("--methods", nargs="+", default=["ldct", "bm3d", "ksvd", "redcnn", "wavresnet", "structkpn"])
    parser.add_argument("--ablations", nargs="*", default=[], choices=sorted(ABLATIONS))
    parser.add_argument("--pretrained", nargs="*", default=[], metavar="NAME=PATH", help="extra StructKPN weights")
    parser.add_argument("--dose", type=float, default=0.25, help="dose fraction of the main table")
    parser.add_argument("--dose_methods", nargs="*", default=["ldct", "bm3d", "redcnn", "structkpn"])
    parser.add_argument("--train_split", default="training")
    parser.add_argument("--test_split", default="test")
    parser.add_argument("--max_test_slices", type=int, default=0, help="evenly spaced subset (0: all)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--patches_per_slice", type=int, default=8)
    parser.add_argument("--patch_size", type=int, nargs=2, default=(64, 64))
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--notes", type=Path, help="Markdown appended to the report (what was tried, caveats)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker_weights", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--all_doses", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.datalist = args.datalist.resolve()
    args.dataset_dir = (args.dataset_dir or args.datalist.parent).resolve()
    args.output_dir = args.output_dir.resolve()
    args.report = (args.report or args.output_dir / "benchmark.md").resolve()
    args.pretrained = dict(spec.split("=", 1) for spec in args.pretrained)
    args.pretrained_names = list(args.pretrained)
    args.command = shlex.join(["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)])
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        method = METHODS.get(args.worker) or Method(args.worker, "learned", "StructKPN lite, pretrained")
        evaluate(method, args, args.worker_weights, args.output_dir / "results" / f"{args.worker}.json")
        return
    if "bm3d" in args.methods:
        try:
            import bm3d  # noqa: F401
        except ImportError:
            print("bm3d is not installed (pip install -e '.[bm3d]'): skipping BM3D.", file=sys.stderr)
            args.methods = [m for m in args.methods if m != "bm3d"]
    methods = list(dict.fromkeys([*args.methods, *[m for a in args.ablations for m in ABLATIONS[a]]]))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    (args.output_dir / "results").mkdir(exist_ok=True)
    selection = select_test_slices(args)
    selection_path = args.output_dir / "test_selection.json"
    if selection_path.exists() and json.loads(selection_path.read_text()) != selection:
        raise SystemExit(f"{selection_path} was made with other test settings: use a new --output_dir")
    selection_path.write_text(json.dumps(selection, indent=1))

    records: dict[str, dict] = {}
    weights: dict[str, Path] = {}
    for name in methods:
        if METHODS[name].kind == "learned":
            records[name] = train(METHODS[name], args, args.output_dir / "runs" / name, selection["train_slices"])
            weights[name] = args.output_dir / "runs" / name / "model.pt"
    for name, path in args.pretrained.items():
        records[name] = {"pretrained": f"pretrained: {path}"}
        weights[name] = Path(path).resolve()
    results = {}
    for name in [*methods, *args.pretrained]:
        output = args.output_dir / "results" / f"{name}.json"
        if not output.exists():
            command = [sys.executable, str(Path(__file__).resolve()), *(sys.argv[1:] if argv is None else argv)]
            command += ["--worker", name]
            if name in weights:
                command += ["--worker_weights", str(weights[name])]
            if name in args.dose_methods:
                command += ["--all_doses"]
            print(f"[evaluate] {name}", flush=True)
            subprocess.run(command, cwd=REPO, check=True)
        results[name] = json.loads(output.read_text())
    write_report(args, [*methods, *args.pretrained], selection, records, results)


if __name__ == "__main__":
    main()

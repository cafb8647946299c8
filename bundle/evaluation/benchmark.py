"""The method benchmark: every denoiser on a datalist's test split (paper Tables 1-3), trained with the same budget.

Methods (:data:`METHODS`) share one call signature, ``denoise(hu, dose_fraction) -> hu`` on (H, W) slices in HU
(:func:`method_denoiser`): ``ldct`` (the low-dose input itself), ``bm3d``, ``ksvd``, and learned methods, each
``configs/train.json`` with its own network and loss override configs (``configs/networks``, ``configs/losses``),
denoising through ``configs/inference.json``'s window and (for a dose-aware network) dose conditioning.

:func:`run_benchmark` trains every learned method with ``python -m monai.bundle run training`` (resumable), evaluates
each method in a fresh process (:func:`~bundle.evaluation.isolation.run_in_fresh_process`: clean peak memory) and
writes the report (:func:`bundle.evaluation.benchmark_report.write_benchmark_report`).
"""

from __future__ import annotations

import json
import math
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from bundle.evaluation.isolation import run_in_fresh_process

__all__ = ["ABLATIONS", "METHODS", "BenchmarkSettings", "Method", "evaluate", "method_denoiser", "run_benchmark",
           "select_test_slices", "train"]  # fmt: skip


@dataclass(frozen=True)
class Method:
    """A denoiser of the benchmark: ``kind`` is ``"identity"``, ``"classical"`` or ``"learned"``; a learned one is
    ``configs/train.json`` with ``config_files`` (relative to the repository) and ``overrides`` on top."""

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
        Method("wavresnet", "learned", "WavResNet (stationary Haar), MSE loss",
               ("configs/networks/wavresnet.json", "configs/losses/mse.json")),  # fmt: skip
        Method("structkpn", "learned", "StructKPN lite, structure-aware loss, k = 21"),
        Method("redcnn_l1", "learned", "RED-CNN, L1 loss", ("configs/networks/redcnn.json", "configs/losses/l1.json")),
        Method("redcnn_sa", "learned", "RED-CNN, structure-aware loss", ("configs/networks/redcnn.json",)),
        Method("structkpn_l1", "learned", "StructKPN lite, L1 loss", ("configs/losses/l1.json",)),
        *[
            Method(f"structkpn_k{k}", "learned", f"StructKPN lite, structure-aware loss, k = {k}", (), {"kernel_size": k})
            for k in (15, 19, 23, 27)
        ],
        Method("structkpn_authors", "learned",
               "StructKPN authors' preset (full resolution, 24 blocks), structure-aware loss",
               ("configs/networks/structkpn_authors.json",)),  # fmt: skip
    ]
}
ABLATIONS = {
    "loss": ("redcnn", "redcnn_l1", "redcnn_sa", "structkpn_l1", "structkpn"),
    "kernel_size": ("structkpn_k15", "structkpn_k19", "structkpn", "structkpn_k23", "structkpn_k27"),
    "preset": ("structkpn", "structkpn_authors"),
}


@dataclass
class BenchmarkSettings:
    """What :func:`run_benchmark` runs: the data, the methods, the test dose(s), the shared training budget, where
    results and the report go (``report``'s figures in the folder of its stem), and the command stated in it."""

    repo: Path
    datalist: Path
    dataset_dir: Path
    output_dir: Path
    report: Path
    command: list[str]
    methods: list[str] = field(default_factory=lambda: ["ldct", "bm3d", "ksvd", "redcnn", "wavresnet", "structkpn"])
    ablations: list[str] = field(default_factory=list)
    pretrained: dict[str, str] = field(default_factory=dict)
    dose: float = 0.25
    dose_methods: list[str] = field(default_factory=lambda: ["ldct", "bm3d", "redcnn", "structkpn"])
    train_split: str = "training"
    test_split: str = "test"
    max_test_slices: int = 0
    epochs: int = 6
    batch_size: int = 2
    patches_per_slice: int = 8
    patch_size: tuple[int, int] = (64, 64)
    learning_rate: float = 2e-4
    notes: Path | None = None
    threads: int = field(default_factory=torch.get_num_threads)


def method_of(name: str) -> Method:
    """The registered method ``name``, or pretrained StructKPN weights added under that name."""
    return METHODS.get(name) or Method(name, "learned", "StructKPN lite, pretrained")


def method_denoiser(method: Method, repo: Path, weights: Path | None = None) -> Callable[[np.ndarray, float], np.ndarray]:
    """``denoise(hu, dose_fraction) -> hu`` of ``method`` on an (H, W) slice in HU; a learned method's is a
    :class:`~bundle.evaluation.denoise.Denoiser` (its network: ``.network``) with the ``weights`` file."""
    from bundle.evaluation.denoise import hu_window, load_denoiser, load_network, windowed

    inference = repo / "configs/inference.json"
    if method.kind == "learned":
        config_files = [repo / "configs/train.json", *[repo / f for f in method.config_files]]
        network = load_network(config_files, weights, **method.overrides)
        return load_denoiser(inference, network=network, dose_aware=bool(getattr(network, "dose_aware", False)))
    if method.name == "bm3d":
        from bundle.baselines.bm3d import bm3d_denoise

        return windowed(bm3d_denoise, hu_window(inference))
    if method.name == "ksvd":
        from bundle.baselines.ksvd import ksvd_denoise

        return windowed(lambda image: ksvd_denoise(image, random_state=0), hu_window(inference))
    return windowed(lambda image: image, hu_window(inference))  # the input, clipped to the network's window


def train(method: Method, settings: BenchmarkSettings, train_count: int) -> dict:
    """Train ``method`` with train.json into ``output_dir/runs/<name>`` (resuming an interrupted run, nothing to do
    when done); returns the run's record (command, seconds, epochs, iterations, patches)."""
    run_dir = settings.output_dir / "runs" / method.name
    record_path = run_dir / "done.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    config_files = ["configs/train.json", *method.config_files]
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", "configs/metadata.json",
               "--config_file", repr(config_files)]  # fmt: skip
    for key, value in method.overrides.items():
        command += [f"--{key}", str(value)]
    command += ["--logging_file", "configs/logging.conf", "--bundle_root", str(settings.repo)]
    command += ["--dataset_dir", str(settings.dataset_dir), "--datalist", str(settings.datalist)]
    command += ["--ckpt_dir", str(run_dir), "--output_dir", str(run_dir / "log")]
    command += ["--epochs", str(settings.epochs), "--batch_size", str(settings.batch_size)]
    command += ["--patches_per_slice", str(settings.patches_per_slice), "--patch_size", repr(list(settings.patch_size))]
    command += ["--learning_rate", str(settings.learning_rate), "--val_interval", str(10**9)]
    command += ["--validate#dataset#data", "$[]"]  # no validation during benchmark training
    checkpoints = sorted(run_dir.glob("training_checkpoint_*.pt"), key=os.path.getmtime)
    if checkpoints:
        command += ["--resume_from", str(checkpoints[-1])]
    elapsed_path = run_dir / "elapsed_seconds.txt"
    elapsed = float(elapsed_path.read_text()) if elapsed_path.exists() else 0.0
    print(f"[train] {method.name}: {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    with open(run_dir / "train.log", "a") as log:
        result = subprocess.run(command, cwd=settings.repo, stdout=log, stderr=subprocess.STDOUT)
    elapsed += time.perf_counter() - start
    elapsed_path.write_text(f"{elapsed:.1f}")
    if result.returncode != 0:
        raise RuntimeError(f"training {method.name} failed (exit {result.returncode}); see {run_dir / 'train.log'}")
    state = torch.load(run_dir / "training_final.pt", map_location="cpu", weights_only=True)["model"]
    torch.save(state, run_dir / "model.pt")
    record = {
        "command": shlex.join(command),
        "train_seconds": round(elapsed, 1),
        "epochs": settings.epochs,
        "iterations": settings.epochs * math.ceil(train_count / settings.batch_size),
        "patches": settings.epochs * train_count * settings.patches_per_slice,
    }
    record_path.write_text(json.dumps(record, indent=2))
    return record


def evaluate(method: Method, settings: BenchmarkSettings, weights: Path | None, all_doses: bool) -> Path:
    """Denoise the selected test slices (at the main dose, or every dose) with ``method``; writes and returns
    ``output_dir/results/<name>.json`` (per slice: PSNR/SSIM in the report windows, seconds HU to HU; the peak
    memory beyond the loaded model and data) and the figure slice's output (``<name>.figure.npy``, HU)."""
    from bundle.evaluation.denoise import hu_window
    from bundle.io.atomic import atomic_output
    from bundle.io.ct_dicom import read_ct_slice
    from bundle.utils import PeakMemorySampler, windowed_quality

    torch.set_num_threads(settings.threads)
    output = settings.output_dir / "results" / f"{method.name}.json"
    selection = json.loads((settings.output_dir / "test_selection.json").read_text())
    entries = [e for e in selection["entries"] if e["dose_fraction"] == selection["dose"] or all_doses]
    base = settings.datalist.parent
    denoise = method_denoiser(method, settings.repo, weights)
    low, high = hu_window(settings.repo / "configs/inference.json")
    slices = [(read_ct_slice(base / e["image"]).hu, np.clip(read_ct_slice(base / e["label"]).hu, low, high))
              for e in entries]  # fmt: skip
    rows = []
    with PeakMemorySampler() as memory:
        for entry, (image_hu, reference_hu) in zip(entries, slices):
            start = time.perf_counter()
            prediction_hu = denoise(image_hu, entry["dose_fraction"])
            seconds = time.perf_counter() - start
            rows.append({**entry, "seconds": seconds, **windowed_quality(prediction_hu, reference_hu)})
            if entry["label"] == selection["figure_label"] and entry["dose_fraction"] == selection["dose"]:
                np.save(output.with_suffix(".figure.npy"), np.asarray(prediction_hu, dtype=np.float32))
            print(f"[{method.name}] {entry['image']}: {rows[-1]['psnr_paper']:.2f} dB, {seconds:.2f} s", flush=True)
    network = getattr(denoise, "network", None)
    result = {
        "method": method.name,
        "description": method.description,
        "threads": torch.get_num_threads(),
        "device": "cpu",
        "peak_extra_mib": memory.extra / 2**20,
        "parameters": sum(p.numel() for p in network.parameters()) if network is not None else None,
        "slices": rows,
    }
    with atomic_output(output) as temporary:
        temporary.write_text(json.dumps(result, indent=1))
    return output


def select_test_slices(settings: BenchmarkSettings) -> dict:
    """Test entries (every dose) of up to ``max_test_slices`` reference slices, evenly spaced; the figure slice."""
    datalist = json.loads(settings.datalist.read_text())
    entries = datalist[settings.test_split]
    for entry in entries:
        entry.setdefault("dose_fraction", settings.dose)
    doses = sorted({e["dose_fraction"] for e in entries})
    if settings.dose not in doses:
        raise ValueError(f"{settings.datalist}: no test entries at dose {settings.dose} (doses present: {doses})")
    labels = sorted({e["label"] for e in entries if e["dose_fraction"] == settings.dose})
    if settings.max_test_slices and len(labels) > settings.max_test_slices:
        labels = [labels[int(i)] for i in np.linspace(0, len(labels) - 1, settings.max_test_slices).round()]
    return {
        "dose": settings.dose,
        "doses": doses,
        "figure_label": labels[len(labels) // 2],
        "train_slices": len(datalist[settings.train_split]),
        "entries": [e for e in entries if e["label"] in labels],
    }


def run_benchmark(settings: BenchmarkSettings) -> None:
    """Train (resumably), evaluate each method in a fresh process (finished ones are skipped), write the report."""
    from bundle.evaluation.benchmark_report import write_benchmark_report

    if "bm3d" in settings.methods:
        try:
            import bm3d  # noqa: F401
        except ImportError:
            print("bm3d is not installed (pip install -e '.[bm3d]'): skipping BM3D.", file=sys.stderr)
            settings.methods = [m for m in settings.methods if m != "bm3d"]
    methods = list(dict.fromkeys([*settings.methods, *[m for a in settings.ablations for m in ABLATIONS[a]]]))
    (settings.output_dir / "results").mkdir(parents=True, exist_ok=True)
    selection = select_test_slices(settings)
    selection_path = settings.output_dir / "test_selection.json"
    if selection_path.exists() and json.loads(selection_path.read_text()) != selection:
        raise SystemExit(f"{selection_path} was made with other test settings: use a new output_dir")
    selection_path.write_text(json.dumps(selection, indent=1))
    records: dict[str, dict] = {}
    weights: dict[str, Path] = {}
    for name in methods:
        if METHODS[name].kind == "learned":
            records[name] = train(METHODS[name], settings, selection["train_slices"])
            weights[name] = settings.output_dir / "runs" / name / "model.pt"
    for name, path in settings.pretrained.items():
        records[name] = {"pretrained": f"pretrained: {path}"}
        weights[name] = Path(path).resolve()
    results = {}
    for name in [*methods, *settings.pretrained]:
        output = settings.output_dir / "results" / f"{name}.json"
        if not output.exists():
            print(f"[evaluate] {name}", flush=True)
            run_in_fresh_process(evaluate, method_of(name), settings, weights.get(name), name in settings.dose_methods)
        results[name] = json.loads(output.read_text())
    write_benchmark_report(settings, [*methods, *settings.pretrained], selection, records, results)

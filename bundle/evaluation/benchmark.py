"""The method benchmark (paper Tables 1-3) on the held-out blocks of every anatomy and kernel, each method at its best.

Test data: every ``slice_step``-th normal-dose slice of each ``test`` block of a block datalist
(:func:`bundle.simulation.blocks.prepare_block_datalist`; the shipped model's is made by
``scripts/prepare_shipped_model_data.py``) at each dose of ``doses``, made low-dose as
:mod:`bundle.evaluation.generalisation` does (the bundle's simulator at its defaults, the reconstruction filter of
the block's kernel, seeded by slice and dose: the very noise of ``docs/generalisation.md``). Every method maps a slice
in HU to HU with one call, ``denoise(hu, dose_fraction, added_noise_hu)`` (:func:`method_denoiser`); only the oracle
rows read the added noise.

Methods (:data:`METHODS`): ``ldct`` (the input); BM3D and K-SVD as a user runs them (noise power spectrum, or level,
estimated from the slice's flattest tiles) and as oracles (given those of the very noise that was added: upper bounds
no user has); learned methods, each ``configs/train.json`` with its network and loss override configs
(``configs/networks``, ``configs/losses``), all trained on the datalist's training split by the same pipeline (same
slices, noise draws and patches) with the same budget, each at the learning rate its family's pilot runs score best
on the datalist's validation split (:func:`select_learning_rate`), and each classical method at the noise strength
(the share of its noise estimate it removes) chosen there (:func:`select_noise_strength`); the test blocks never
choose anything. The
multi-slice StructKPN (``structkpn_s3``) is given each test slice with its neighbours, simulated as the slice is, with
their own noise (:func:`low_dose_stack`; the datalist lists them when prepared with neighbours).

:func:`run_benchmark` resumes after a kill at any point (every stage writes its output atomically and skips what
exists; training resumes from its last epoch checkpoint) and rewrites the report after each method, naming what is
still to run (:func:`bundle.evaluation.benchmark_report.write_benchmark_report`).
"""

from __future__ import annotations

import json
import math
import os
import re
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

__all__ = ["ABLATIONS", "MAIN_METHODS", "METHODS", "PAPER_TABLES", "BenchmarkSettings", "Method",
           "chosen_noise_strength", "evaluate", "low_dose_slice", "low_dose_stack", "method_denoiser",
           "neighbour_stacks", "run_benchmark", "select_learning_rate", "select_noise_strength", "select_test_slices",
           "slice_id", "train", "training_curve", "validation_pairs", "validation_psnr", "validation_scores"]  # fmt: skip

Denoise = Callable[[np.ndarray, float, "np.ndarray | None"], np.ndarray]


@dataclass(frozen=True)
class Method:
    """A denoiser of the benchmark. ``kind``: ``"identity"``, ``"classical"``, ``"oracle"`` (a classical method given
    the added noise) or ``"learned"``: ``configs/train.json`` with ``config_files`` (relative to the repository) and
    ``overrides`` on top, trained with the ``budget`` (``"main"`` or ``"ablation"``) at the learning rate chosen for
    its ``family``."""

    name: str
    kind: str
    description: str
    config_files: tuple[str, ...] = ()
    overrides: dict = field(default_factory=dict)
    budget: str = "main"
    family: str = ""

    @property
    def slices(self) -> int:
        """Adjacent slices the method is fed (``overrides["slices"]``, the multi-slice StructKPN; else 1)."""
        return int(self.overrides.get("slices", 1))


_REDCNN, _WAVRESNET = "configs/networks/redcnn.json", "configs/networks/wavresnet.json"
_UNET = "configs/networks/basicunet.json"
_MSE, _L1 = "configs/losses/mse.json", "configs/losses/l1.json"
_MULTI_SLICE = {"slices": 3, "network_def#neighbour_kernel_size": 11}  # the neighbours' kernels: 1.3x the time of S = 1
METHODS = {
    m.name: m
    for m in [
        Method("ldct", "identity", "low-dose input"),
        Method("bm3d", "classical", "BM3D, correlated noise, the added share of the slice's estimated spectrum"),
        Method("bm3d_oracle", "oracle", "BM3D, correlated noise, given the true noise power spectrum (upper bound)"),
        Method("ksvd", "classical", "K-SVD, dictionary learned on the slice, the added share of its estimated noise"),
        Method("ksvd_oracle", "oracle", "K-SVD, given the true noise level (upper bound)"),
        Method("structkpn", "learned", "StructKPN lite, dose-aware, structure-aware loss, k = 21", family="structkpn"),
        Method("structkpn_s3", "learned", "StructKPN lite over 3 slices: k = 21 centre, 11 x 11 neighbour kernels", (),
               _MULTI_SLICE, family="structkpn"),  # fmt: skip
        Method("redcnn", "learned", "RED-CNN, MSE loss", (_REDCNN, _MSE), family="redcnn"),
        Method("unet", "learned", "MONAI BasicUNet predicting the residual, MSE loss", (_UNET, _MSE), family="unet"),
        Method("wavresnet", "learned", "WavResNet (stationary Haar), MSE loss", (_WAVRESNET, _MSE), family="wavresnet"),
        Method("redcnn_l1", "learned", "RED-CNN, L1 loss", (_REDCNN, _L1), budget="ablation", family="redcnn"),
        Method("redcnn_sa", "learned", "RED-CNN, structure-aware loss", (_REDCNN,), budget="ablation", family="redcnn"),
        Method("redcnn_d50", "learned", "RED-CNN, MSE loss, trained at dose 0.5 only", (_REDCNN, _MSE),
               {"dose_range": [0.5, 0.5]}, budget="ablation", family="redcnn"),  # fmt: skip
        Method("structkpn_l1", "learned", "StructKPN lite, L1 loss", (_L1,), budget="ablation", family="structkpn"),
        Method("structkpn_sa", "learned", "StructKPN lite, structure-aware loss, k = 21", budget="ablation",
               family="structkpn"),  # fmt: skip
        *[
            Method(f"structkpn_k{k}", "learned", f"StructKPN lite, structure-aware loss, k = {k}", (),
                   {"kernel_size": k}, budget="ablation", family="structkpn")  # fmt: skip
            for k in (15, 19, 23, 27)
        ],
        Method("structkpn_s3_n21", "learned", "StructKPN lite over 3 slices, 21 x 21 kernels on every slice", (),
               {"slices": 3}, budget="ablation", family="structkpn"),  # fmt: skip
        Method("structkpn_s3_sa", "learned", "StructKPN lite over 3 slices: k = 21 centre, 11 x 11 neighbour kernels",
               (), _MULTI_SLICE, budget="ablation", family="structkpn"),  # fmt: skip
        Method("structkpn_authors", "learned", "StructKPN authors' preset (full resolution, 24 blocks)",
               ("configs/networks/structkpn_authors.json",), budget="ablation", family="structkpn"),  # fmt: skip
    ]
}
MAIN_METHODS = ("ldct", "bm3d", "bm3d_oracle", "ksvd", "ksvd_oracle", "structkpn", "structkpn_s3", "redcnn", "unet",
                "wavresnet")  # fmt: skip
ABLATIONS = {
    "loss": ("redcnn_l1", "redcnn_sa", "structkpn_l1", "structkpn_sa"),
    "kernel_size": ("structkpn_k15", "structkpn_k19", "structkpn_sa", "structkpn_k23", "structkpn_k27"),
    "preset": ("structkpn_sa", "structkpn_authors"),
    "slices": ("structkpn_sa", "structkpn_s3_sa", "structkpn_s3_n21"),
    "dose": ("redcnn", "redcnn_d50"),  # a dose-blind baseline trained over every dose, and at the one it is tested at
}
#: the paper's PSNR (dB) / SSIM on its NIH data at quarter dose, window [-160, 240] HU: Table 1 (methods), Table 2
#: (losses), Table 3 (kernel sizes), under this benchmark's method names
PAPER_TABLES = {
    "methods": {"ldct": (27.93, 0.829), "ksvd": (31.11, 0.860), "bm3d": (31.48, 0.871), "wavresnet": (32.32, 0.876),
                "redcnn": (32.35, 0.887), "structkpn": (32.56, 0.893)},
    "loss": {"redcnn_l1": (32.35, 0.887), "redcnn_sa": (32.42, 0.890), "structkpn_l1": (32.45, 0.888),
             "structkpn_sa": (32.56, 0.893)},
    "kernel_size": {"structkpn_k15": (32.50, 0.890), "structkpn_k19": (32.55, 0.893), "structkpn_sa": (32.56, 0.893),
                    "structkpn_k23": (32.58, 0.894), "structkpn_k27": (32.53, 0.891)},
}  # fmt: skip


@dataclass
class BenchmarkSettings:
    """What :func:`run_benchmark` runs: the block datalist, the methods, the doses (``dose``: the main tables'), the
    test slices, the budgets, the pilot learning rates and noise strengths, where results and the report go (figures
    in the folder of its stem) and the command the report states."""

    repo: Path
    datalist: Path
    output_dir: Path
    report: Path
    command: list[str]
    methods: list[str] = field(default_factory=lambda: list(MAIN_METHODS))
    ablations: list[str] = field(default_factory=list)
    pretrained: dict[str, str] = field(default_factory=dict)
    doses: tuple[float, ...] = (0.1, 0.25, 0.5)
    dose: float = 0.25
    slice_step: int = 4
    seed: int = 1000
    cache_dir: Path | None = None
    epochs: int = 50
    ablation_epochs: int = 10
    pilot_epochs: int = 2
    learning_rates: tuple[float, ...] = (1e-4, 3e-4, 1e-3)
    validation_step: int = 2
    noise_strengths: tuple[float, ...] = (0.25, 0.5, 1.0)
    batch_size: int = 2
    patches_per_slice: int = 8
    patch_size: tuple[int, int] = (64, 64)
    notes: Path | None = None
    threads: int = field(default_factory=torch.get_num_threads)
    report_only: bool = False

    @property
    def low_dose_dir(self) -> Path:
        """Where the simulated low-dose test slices are kept (``cache_dir``, else ``output_dir/low_dose``)."""
        return Path(self.cache_dir) if self.cache_dir else self.output_dir / "low_dose"

    def budget_epochs(self, method: Method) -> int:
        return self.epochs if method.budget == "main" else self.ablation_epochs


def method_of(name: str) -> Method:
    """The registered method ``name``, or pretrained StructKPN weights added under that name."""
    return METHODS.get(name) or Method(name, "learned", "StructKPN lite, pretrained")


def method_denoiser(method: Method, repo: Path, weights: Path | None = None, noise_strength: float = 1.0) -> Denoise:
    """``denoise(hu, dose_fraction, added_noise_hu=None) -> hu`` of ``method`` on an (H, W) slice in HU.

    A learned method runs through ``configs/inference.json``'s window and, when dose-aware, its conditioning at
    ``dose_fraction`` (:class:`~bundle.evaluation.denoise.Denoiser`, network at ``.network``, with ``weights``); a
    multi-slice one (:attr:`Method.slices` = S > 1) is given the (S, H, W) slice and its neighbours, in slice order.
    Classical methods see the slice in that window mapped to [0, 1]. As a user runs them, they estimate the noise
    power spectrum of the slice from its flattest tiles and keep the share a dose reduction adds: noise variance
    grows as 1 / dose, so ``1 - dose_fraction`` of a low-dose slice's noise power was added to the normal dose's
    (the normal-dose image keeps its own noise, as the learned methods are trained to). Oracle ones are given the
    added noise itself (same units). Either way, ``noise_strength`` scales the noise power they are told to remove
    (K-SVD's noise level by its square root): 1 is the estimate (or the truth) as it is; below 1, gentler.
    ``ldct`` returns the input unchanged, as the scanner gives it.
    """
    from bundle.evaluation.denoise import hu_window, load_denoiser, load_network

    inference = repo / "configs/inference.json"
    low, high = hu_window(inference)
    if method.kind == "learned":
        network = load_network([repo / "configs/train.json", *[repo / f for f in method.config_files]], weights,
                               **method.overrides)  # fmt: skip
        denoiser = load_denoiser(inference, network=network, dose_aware=bool(getattr(network, "dose_aware", False)),
                                 slices=method.slices)  # fmt: skip

        def learned(hu: np.ndarray, dose_fraction: float, added_noise_hu: np.ndarray | None = None) -> np.ndarray:
            if method.slices > 1:  # (S, H, W): the slice with its neighbours
                return denoiser.centre(hu, dose_fraction)
            return denoiser(hu, dose_fraction)

        learned.network, learned.network_input = denoiser.network, denoiser.network_input
        return learned
    if method.kind == "identity":
        return lambda hu, dose_fraction, added_noise_hu=None: np.asarray(hu, dtype=np.float32)

    from bundle.baselines.bm3d import bm3d_denoise
    from bundle.baselines.ksvd import ksvd_denoise
    from bundle.baselines.noise_spectrum import (
        estimate_noise_power_spectrum,
        noise_power_spectrum,
        noise_std_from_power_spectrum,
    )

    if not noise_strength > 0:
        raise ValueError(f"{method.name}: noise_strength must be > 0, got {noise_strength}")

    def classical(hu: np.ndarray, dose_fraction: float, added_noise_hu: np.ndarray | None = None) -> np.ndarray:
        image = np.clip((np.asarray(hu, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        if method.kind == "oracle":
            if added_noise_hu is None:
                raise ValueError(f"{method.name} is an oracle: it needs the added noise (added_noise_hu)")
            noise = np.asarray(added_noise_hu, dtype=np.float64) / (high - low)
            psd, sigma = noise_power_spectrum(noise), float(noise.std())
        else:  # the image's noise, and of it the share a dose reduction to dose_fraction added: 1 - dose_fraction
            if not 0.0 < dose_fraction < 1.0:
                raise ValueError(f"{method.name} needs a dose fraction in (0, 1), got {dose_fraction}")
            psd = (1.0 - dose_fraction) * estimate_noise_power_spectrum(image)
            sigma = noise_std_from_power_spectrum(psd)
        psd, sigma = noise_strength * psd, math.sqrt(noise_strength) * sigma
        if method.name.startswith("bm3d"):
            denoised = bm3d_denoise(image, noise_psd=psd)
        else:
            denoised = ksvd_denoise(image, sigma=sigma, random_state=0)
        return (np.asarray(denoised) * (high - low) + low).astype(np.float32)

    return classical


def train(method: Method, settings: BenchmarkSettings, epochs: int, learning_rate: float, run_dir: Path) -> dict:
    """Train ``method`` with train.json for ``epochs`` at ``learning_rate`` into ``run_dir`` (resuming an
    interrupted run; nothing to do when done); returns the run's record (command, seconds, epochs, iterations,
    patches, learning rate). The weights are ``run_dir/model.pt``."""
    record_path = run_dir / "done.json"
    if record_path.exists():
        return json.loads(record_path.read_text())
    run_dir.mkdir(parents=True, exist_ok=True)
    train_count = len(json.loads(settings.datalist.read_text())["training"])
    command = [sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", "configs/metadata.json",
               "--config_file", repr(["configs/train.json", *method.config_files])]  # fmt: skip
    for key, value in method.overrides.items():
        command += [f"--{key}", str(value)]
    command += ["--logging_file", "configs/logging.conf", "--bundle_root", str(settings.repo)]
    command += ["--dataset_dir", str(settings.datalist.parent), "--datalist", str(settings.datalist)]
    command += ["--ckpt_dir", str(run_dir), "--output_dir", str(run_dir / "log")]
    command += ["--epochs", str(epochs), "--batch_size", str(settings.batch_size)]
    command += ["--patches_per_slice", str(settings.patches_per_slice), "--patch_size", repr(list(settings.patch_size))]
    command += ["--learning_rate", str(learning_rate), "--val_interval", str(10**9)]
    command += ["--validate#dataset#data", "$[]"]  # the validation split only chooses learning rates (pilots)
    checkpoints = sorted(run_dir.glob("training_checkpoint_*.pt"), key=os.path.getmtime)
    if checkpoints:
        command += ["--resume_from", str(checkpoints[-1])]
    elapsed_path = run_dir / "elapsed_seconds.txt"
    elapsed = float(elapsed_path.read_text()) if elapsed_path.exists() else 0.0
    print(f"[train] {run_dir.name}: {shlex.join(command)}", flush=True)
    start = time.perf_counter()
    with open(run_dir / "train.log", "a") as log:
        result = subprocess.run(command, cwd=settings.repo, stdout=log, stderr=subprocess.STDOUT)
    elapsed += time.perf_counter() - start
    elapsed_path.write_text(f"{elapsed:.1f}")
    if result.returncode != 0:
        raise RuntimeError(f"training {run_dir.name} failed (exit {result.returncode}); see {run_dir / 'train.log'}")
    state = torch.load(run_dir / "training_final.pt", map_location="cpu", weights_only=True)["model"]
    torch.save(state, run_dir / "model.pt")
    for checkpoint in run_dir.glob("training_*.pt"):  # the weights are kept; optimizer states are not needed now
        checkpoint.unlink()
    record = {
        "command": shlex.join(command),
        "train_seconds": round(elapsed, 1),
        "epochs": epochs,
        "learning_rate": learning_rate,
        "iterations": epochs * math.ceil(train_count / settings.batch_size),
        "patches": epochs * train_count * settings.patches_per_slice,
    }
    record_path.write_text(json.dumps(record, indent=2))
    return record


def validation_pairs(datalist: Path, step: int) -> list[dict]:
    """The pairs of the datalist's ``validation`` split of every ``step``-th normal-dose slice (in datalist order),
    at each dose the split has for it."""
    entries = json.loads(Path(datalist).read_text())["validation"]
    kept = set(list(dict.fromkeys(entry["label"] for entry in entries))[::step])
    return [entry for entry in entries if entry["label"] in kept]


def validation_scores(method: Method, settings: BenchmarkSettings, weights: Path | None = None,
                      noise_strength: float = 1.0) -> list[dict]:  # fmt: skip
    """``method``'s PSNR (dB) and SSIM in the paper's and the anatomy's window on each pair of every
    ``validation_step``-th slice of the datalist's ``validation`` split (:func:`validation_pairs`: low-dose ``image``,
    normal-dose ``label``, ``dose_fraction``; an oracle is given ``image - label``), one row a pair, with its block,
    anatomy, kernel, dose and seconds (the rows :func:`evaluate` writes for test slices)."""
    from bundle.evaluation.generalisation import ANATOMY_WINDOWS_HU
    from bundle.io.ct_dicom import read_ct_slice
    from bundle.utils import PAPER_WINDOW_HU, windowed_quality

    torch.set_num_threads(settings.threads)
    entries = validation_pairs(settings.datalist, settings.validation_step)
    if not entries:
        raise ValueError(f"{settings.datalist}: the validation split is empty; pilots need it to choose settings")
    denoise = method_denoiser(method, settings.repo, weights, noise_strength)
    rows = []
    for entry in entries:
        missing = [key for key in ("block", "anatomy", "kernel") if key not in entry]
        if missing:
            raise ValueError(f"{settings.datalist}: validation pair {entry['label']} has no {', '.join(missing)}: "
                             "the benchmark takes a block datalist (scripts/prepare_shipped_model_data.py)")  # fmt: skip
        image = read_ct_slice(settings.datalist.parent / entry["image"]).hu.astype(np.float32)
        label = read_ct_slice(settings.datalist.parent / entry["label"]).hu.astype(np.float32)
        dose = float(entry["dose_fraction"])
        start = time.perf_counter()
        output = denoise(image, dose, image - label)
        seconds = time.perf_counter() - start
        windows = {"paper": PAPER_WINDOW_HU, "own": ANATOMY_WINDOWS_HU[entry["anatomy"]]}
        rows.append({**{key: entry[key] for key in ("block", "anatomy", "kernel", "label")}, "dose_fraction": dose,
                     "seconds": seconds, **windowed_quality(output, label, windows)})  # fmt: skip
    return rows


def validation_psnr(method: Method, settings: BenchmarkSettings, weights: Path) -> float:
    """Mean PSNR (dB, paper window) of ``method`` with ``weights`` over :func:`validation_scores`."""
    return float(np.mean([row["psnr_paper"] for row in validation_scores(method, settings, weights)]))


def select_learning_rate(family: Method, settings: BenchmarkSettings) -> dict:
    """The learning rate of ``family``'s methods: ``pilot_epochs`` epochs at each of ``learning_rates`` (same data
    and schedule shape as the full run), each scored by :func:`validation_psnr`; the best is chosen. Written to
    ``output_dir/pilots/<family>.json`` as each pilot ends (a rerun continues)."""
    path = settings.output_dir / "pilots" / f"{family.family}.json"
    record = json.loads(path.read_text()) if path.exists() else {"epochs": settings.pilot_epochs, "scores": {}}
    for learning_rate in settings.learning_rates:
        if f"{learning_rate:g}" in record["scores"]:
            continue
        run_dir = settings.output_dir / "pilots" / f"{family.family}-lr{learning_rate:g}"
        run = train(family, settings, settings.pilot_epochs, learning_rate, run_dir)
        score = run_in_fresh_process(validation_psnr, family, settings, run_dir / "model.pt")
        record["scores"][f"{learning_rate:g}"] = {"validation_psnr": round(score, 3),
                                                  "train_seconds": run["train_seconds"]}  # fmt: skip
        print(f"[pilot] {family.family} lr {learning_rate:g}: validation PSNR {score:.2f} dB", flush=True)
        path.write_text(json.dumps(record, indent=2))
        (run_dir / "model.pt").unlink()  # scored: only the record is kept
    finite = {lr: s["validation_psnr"] for lr, s in record["scores"].items() if math.isfinite(s["validation_psnr"])}
    if not finite:
        raise RuntimeError(f"every pilot of {family.family} diverged (no finite validation PSNR): {record['scores']}")
    record["chosen"] = float(max(finite, key=finite.get))  # a diverged pilot (NaN) is never chosen
    path.write_text(json.dumps(record, indent=2))
    return record


def select_noise_strength(method: Method, settings: BenchmarkSettings) -> dict:
    """The noise strength of classical ``method`` (:func:`method_denoiser`): each of ``noise_strengths`` scored by
    :func:`validation_scores` against the input's; chosen: the best mean validation PSNR (paper window) among the
    strengths that are below the input in no validation block mean (block x dose x metric x window), else the
    strength below it in the fewest. BM3D and K-SVD remove what their noise model calls noise, which at the full
    estimate smooths fine structure away (SSIM below the input on sharp kernels); the input is the floor a user
    expects, so it selects first. Written to ``output_dir/pilots/<name>.json`` as each strength is scored."""
    from bundle.evaluation.benchmark_report import worse_than_input

    path = settings.output_dir / "pilots" / f"{method.name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    record = json.loads(path.read_text()) if path.exists() else {"validation_step": settings.validation_step,
                                                                 "scores": {}}  # fmt: skip
    doses = sorted({float(e["dose_fraction"]) for e in validation_pairs(settings.datalist, settings.validation_step)})
    given = {"slices": validation_scores(METHODS["ldct"], settings)}
    for strength in settings.noise_strengths:
        if f"{strength:g}" in record["scores"]:
            continue
        rows = run_in_fresh_process(validation_scores, method, settings, None, strength)
        below = worse_than_input({"ldct": given, method.name: {"slices": rows}}, doses)[method.name]
        record["scores"][f"{strength:g}"] = {
            "validation_psnr": round(float(np.mean([r["psnr_paper"] for r in rows])), 3),
            "validation_ssim": round(float(np.mean([r["ssim_paper"] for r in rows])), 4),
            "below_input": [[block, dose, key, round(delta, 4)] for block, dose, key, delta in below],
            "seconds": sum(r["seconds"] for r in rows)}  # fmt: skip
        print(f"[pilot] {method.name} noise strength {strength:g}: validation PSNR "
              f"{record['scores'][f'{strength:g}']['validation_psnr']:.2f} dB, below the input in {len(below)} "
              "cases", flush=True)  # fmt: skip
        path.write_text(json.dumps(record, indent=2))
    record["chosen"] = chosen_noise_strength({float(k): v for k, v in record["scores"].items()
                                              if float(k) in settings.noise_strengths})  # fmt: skip
    path.write_text(json.dumps(record, indent=2))
    return record


def chosen_noise_strength(scores: dict[float, dict]) -> float:
    """Of ``{strength: {"validation_psnr": dB, "below_input": [cases]}}``, the best PSNR among the strengths with no
    case below the input, else the strength with the fewest (ties: the better PSNR)."""
    return max(scores, key=lambda k: (-len(scores[k]["below_input"]), scores[k]["validation_psnr"]))


def _discard_other_strength(result_path: Path, noise_strength: float) -> None:
    """Remove a classical method's results made at another noise strength (before strengths were chosen: 1)."""
    if result_path.exists() and json.loads(result_path.read_text()).get("noise_strength", 1.0) != noise_strength:
        print(f"[evaluate] {result_path.stem}: results at another noise strength are redone", flush=True)
        for figure in result_path.with_suffix("").glob("*.npy"):
            figure.unlink()
        result_path.unlink()


def select_test_slices(settings: BenchmarkSettings) -> dict:
    """The test slices (every ``slice_step``-th of each block, absolute ``label``), doses, and each block's figure
    slice (its middle selected slice)."""
    from bundle.evaluation.generalisation import held_out_slices

    entries = [{k: v for k, v in e.items() if k != "label_slices"}  # the neighbours: neighbour_stacks
               for e in held_out_slices(settings.datalist, settings.slice_step)]  # fmt: skip
    if not entries:
        raise ValueError(f"{settings.datalist}: the test split is empty")
    if settings.dose not in settings.doses:
        raise ValueError(f"the main dose {settings.dose} is not one of the doses {settings.doses}")
    blocks: dict[str, list[str]] = {}
    for entry in entries:
        blocks.setdefault(entry["block"], []).append(entry["label"])
    datalist = json.loads(settings.datalist.read_text())
    return {
        "doses": list(settings.doses),
        "dose": settings.dose,
        "seed": settings.seed,
        "entries": entries,
        "figure_labels": {block: labels[len(labels) // 2] for block, labels in blocks.items()},
        "train_slices": len(datalist["training"]),
        "validation_slices": len(datalist.get("validation", [])),
    }


def neighbour_stacks(settings: BenchmarkSettings, slices: int) -> dict[str, list[str]]:
    """Each test slice's ``slices`` adjacent slices in slice order (absolute files, its own in the middle), from the
    datalist's ``label_slices`` (``prepare_block_datalist(neighbours=R)``), by the slice's absolute ``label``."""
    from bundle.evaluation.generalisation import held_out_slices

    half, stacks = slices // 2, {}
    for entry in held_out_slices(settings.datalist, settings.slice_step):
        around = entry.get("label_slices")
        if not isinstance(around, list) or len(around) < slices:
            raise ValueError(f"{settings.datalist}: test slice {entry['label']} lists no {slices} adjacent slices "
                             "(label_slices): prepare the datalist with neighbours "
                             f"(scripts/prepare_shipped_model_data.py --neighbours {half})")  # fmt: skip
        middle = len(around) // 2
        stacks[entry["label"]] = [str((settings.datalist.parent / path).resolve())
                                  for path in around[middle - half : middle + half + 1]]  # fmt: skip
    return stacks


def low_dose_stack(entry: dict, neighbours: list[str], dose: float, settings: BenchmarkSettings, ct=None) -> np.ndarray:
    """The (S, H, W) simulated low-dose HU of test ``entry``'s ``neighbours`` (its adjacent slices, in slice order) at
    ``dose``: each simulated as :func:`low_dose_slice` simulates a test slice, seeded by its own identity (independent
    noise), the centre one the very slice every single-slice method is given."""
    return np.stack([low_dose_slice(entry, dose, settings, ct) if path == entry["label"]
                     else low_dose_slice({**entry, "label": path}, dose, settings) for path in neighbours])  # fmt: skip


def slice_id(entry: dict) -> str:
    """A test slice's name that does not depend on where the data lie: ``<block>/<file name>``."""
    return f"{entry['block']}/{Path(entry['label']).name}"


def _portable(selection: dict) -> dict:
    """``selection`` with slice names for paths, to compare selections made on different machines."""
    return {**selection, "entries": [{**e, "label": slice_id(e)} for e in selection["entries"]],
            "figure_labels": {b: Path(label).name for b, label in selection["figure_labels"].items()}}  # fmt: skip


def low_dose_slice(entry: dict, dose: float, settings: BenchmarkSettings, ct=None) -> np.ndarray:
    """The simulated low-dose HU of test ``entry`` at ``dose`` (kept in ``settings.low_dose_dir``)."""
    from bundle.evaluation.generalisation import noise_simulator, simulated_low_dose
    from bundle.io.ct_dicom import read_ct_slice

    ct = ct or read_ct_slice(entry["label"])
    simulator = noise_simulator(entry["kernel"])
    return simulated_low_dose(entry, dose, ct, settings.seed, simulator, settings.low_dose_dir)


def evaluate(method: Method, settings: BenchmarkSettings, weights: Path | None, noise_strength: float = 1.0) -> Path:
    """Denoise every test slice at every dose with ``method``; writes ``output_dir/results/<name>.json`` as it goes
    (per slice and dose: PSNR/SSIM in the paper's and the anatomy's window, seconds HU to HU; the peak memory beyond
    the loaded model and data, the largest of the runs that wrote it), resuming what is there, and each block's
    figure slice at the main dose (``results/<name>/<block>.npy``, HU). ``noise_strength``: a classical method's
    (:func:`method_denoiser`), recorded."""
    from bundle.evaluation.generalisation import ANATOMY_WINDOWS_HU
    from bundle.io.atomic import atomic_output
    from bundle.io.ct_dicom import read_ct_slice
    from bundle.utils import PAPER_WINDOW_HU, PeakMemorySampler, windowed_quality

    torch.set_num_threads(settings.threads)
    output = settings.output_dir / "results" / f"{method.name}.json"
    figures = output.with_suffix("")
    figures.mkdir(parents=True, exist_ok=True)
    selection = json.loads((settings.output_dir / "test_selection.json").read_text())
    result = json.loads(output.read_text()) if output.exists() else {"peak_extra_mib": 0.0, "slices": []}
    done = {(slice_id(row), row["dose_fraction"]) for row in result["slices"]}  # (kept from any machine)
    denoise = method_denoiser(method, settings.repo, weights, noise_strength)
    stacks = neighbour_stacks(settings, method.slices) if method.slices > 1 else {}
    network = getattr(denoise, "network", None)
    result.update(method=method.name, description=method.description, threads=torch.get_num_threads(), device="cpu",
                  parameters=sum(p.numel() for p in network.parameters()) if network is not None else None)  # fmt: skip
    if method.kind in ("classical", "oracle"):
        result["noise_strength"] = noise_strength
    with PeakMemorySampler() as memory:
        for entry in selection["entries"]:
            figure = figures / f"{entry['block']}.npy"
            is_figure = entry["label"] == selection["figure_labels"][entry["block"]] and not figure.exists()
            pending = [dose for dose in selection["doses"]
                       if (slice_id(entry), dose) not in done or (is_figure and dose == selection["dose"])]  # fmt: skip
            if not pending:
                continue
            ct = read_ct_slice(entry["label"])
            reference = ct.hu.astype(np.float32)
            windows = {"paper": PAPER_WINDOW_HU, "own": ANATOMY_WINDOWS_HU[entry["anatomy"]]}
            for dose in pending:
                low_dose = low_dose_slice(entry, dose, settings, ct)
                given = low_dose_stack(entry, stacks[entry["label"]], dose, settings, ct) if stacks else low_dose
                start = time.perf_counter()
                prediction = denoise(given, dose, low_dose - reference)
                seconds = time.perf_counter() - start
                if is_figure and dose == selection["dose"]:
                    with atomic_output(figure) as temporary:
                        with open(temporary, "wb") as f:
                            np.save(f, np.asarray(prediction, dtype=np.float32))
                if (slice_id(entry), dose) in done:  # only the figure was missing (e.g. state from another machine)
                    continue
                row = {key: entry[key] for key in ("block", "anatomy", "kernel", "label")}
                result["slices"].append({**row, "dose_fraction": dose, "seconds": seconds,
                                         **windowed_quality(prediction, reference, windows)})  # fmt: skip
                result["peak_extra_mib"] = max(result["peak_extra_mib"], memory.extra / 2**20)
                with atomic_output(output) as temporary:
                    temporary.write_text(json.dumps(result, indent=1))
                print(f"[{method.name}] {entry['block']} {Path(entry['label']).name} dose {dose:g}: "
                      f"{result['slices'][-1]['psnr_paper']:.2f} dB, {seconds:.2f} s", flush=True)  # fmt: skip
    result["peak_extra_mib"] = max(result["peak_extra_mib"], memory.extra / 2**20)
    with atomic_output(output) as temporary:
        temporary.write_text(json.dumps(result, indent=1))
    return output


def _all_rows(result_path: Path, selection: dict) -> bool:
    """Are all the rows (every test slice at every dose) of a method's results there?"""
    if not result_path.exists():
        return False
    rows = json.loads(result_path.read_text())["slices"]
    return len(rows) >= len(selection["entries"]) * len(selection["doses"])


def _finished(result_path: Path, selection: dict) -> bool:
    """Are all the rows and figure slices (kept out of git: absent on a fresh clone) of a method's results there?"""
    figures = result_path.with_suffix("")
    return _all_rows(result_path, selection) and all(
        (figures / f"{block}.npy").exists() for block in selection["figure_labels"]
    )


def training_curve(log: Path) -> list[float]:
    """Mean training loss per epoch, from a train.json log (``Epoch: e/E, Iter: i/N -- train_loss: x`` lines; a
    resumed run's repeated epochs keep their last pass)."""
    epochs: dict[int, list[float]] = {}
    if log.exists():
        for line in log.read_text().splitlines():
            match = re.search(r"Epoch: (\d+)/\d+, Iter: (\d+)/\d+ -- train_loss: ([0-9.eE+-]+)", line)
            if match:
                epoch, iteration, loss = int(match[1]), int(match[2]), float(match[3])
                if iteration == 1:
                    epochs[epoch] = []
                epochs.setdefault(epoch, []).append(loss)
    return [float(np.mean(epochs[e])) for e in sorted(epochs)]


def run_benchmark(settings: BenchmarkSettings) -> None:
    """Simulate the test slices, evaluate the input and pretrained methods, each classical method at the noise
    strength chosen on the validation split, then for each learned method choose its family's learning rate, train
    and evaluate it (main methods first, then ablations); the report is
    rewritten after each method (finished stages are skipped on a rerun). With ``report_only``, only the report is
    written, from the results there are."""
    from bundle.evaluation.benchmark_report import write_benchmark_report

    if any(METHODS[m].kind in ("classical", "oracle") for m in settings.methods if m in METHODS):
        try:
            import bm3d  # noqa: F401
        except ImportError:
            print("bm3d is not installed (pip install -e '.[bm3d]'): skipping BM3D.", file=sys.stderr)
            settings.methods = [m for m in settings.methods if not m.startswith("bm3d")]
    clashes = [name for name in settings.pretrained if name in METHODS]
    if clashes:
        raise ValueError(f"pretrained names {clashes} are registered methods: choose other names")
    ablation_methods = [m for a in settings.ablations for m in ABLATIONS[a] if m not in settings.methods]
    methods = list(dict.fromkeys([*settings.methods, *ablation_methods]))
    settings.output_dir.mkdir(parents=True, exist_ok=True)
    (settings.output_dir / "results").mkdir(exist_ok=True)
    selection = select_test_slices(settings)
    selection_path = settings.output_dir / "test_selection.json"
    if selection_path.exists() and _portable(json.loads(selection_path.read_text())) != _portable(selection):
        raise SystemExit(f"{selection_path} was made with other test settings: use a new output_dir")
    selection_path.write_text(json.dumps(selection, indent=1))
    slices = max(method_of(m).slices for m in methods)
    stacks = neighbour_stacks(settings, slices) if slices > 1 else {}
    for entry in selection["entries"]:  # simulated once, in this process: evaluations only read them
        for dose in selection["doses"]:
            low_dose_slice(entry, dose, settings)
            if stacks:
                low_dose_stack(entry, stacks[entry["label"]], dose, settings)

    weights: dict[str, Path] = {name: Path(path).resolve() for name, path in settings.pretrained.items()}
    pilots: dict[str, dict] = {}
    kinds = ("identity", "pretrained", "classical", "oracle", "learned")  # the quick ones first
    order = sorted([*methods, *settings.pretrained], key=lambda m: kinds.index(
        "pretrained" if m in settings.pretrained else METHODS[m].kind))  # fmt: skip

    def report() -> None:  # from what is on disk: finished results, training records and pilots
        results, records = {}, {name: {"pretrained": path} for name, path in settings.pretrained.items()}
        for name in order:
            path = settings.output_dir / "results" / f"{name}.json"
            if _all_rows(path, selection):  # figure slices missing: the figures leave its panel blank
                results[name] = json.loads(path.read_text())
            done = settings.output_dir / "runs" / name / "done.json"
            if done.exists():
                records[name] = json.loads(done.read_text())
        pilot_records = {p.stem: json.loads(p.read_text()) for p in (settings.output_dir / "pilots").glob("*.json")}
        write_benchmark_report(settings, order, selection, records, pilot_records, results)

    report()
    if settings.report_only:
        return
    for name in order:
        method, noise_strength = method_of(name), 1.0
        result_path = settings.output_dir / "results" / f"{name}.json"
        if method.kind in ("classical", "oracle"):
            noise_strength = select_noise_strength(method, settings)["chosen"]
            _discard_other_strength(result_path, noise_strength)
        if method.kind == "learned" and name not in settings.pretrained:
            family = next(m for m in METHODS.values() if m.family == method.family and m.budget == "main")
            if method.family not in pilots:
                pilots[method.family] = select_learning_rate(family, settings)
            run_dir = settings.output_dir / "runs" / name
            train(method, settings, settings.budget_epochs(method), pilots[method.family]["chosen"], run_dir)
            weights[name] = run_dir / "model.pt"
        if not _finished(result_path, selection):
            print(f"[evaluate] {name}", flush=True)
            run_in_fresh_process(evaluate, method, settings, weights.get(name), noise_strength)
        report()
    report()

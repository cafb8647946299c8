"""Speed and memory of StructKPN inference and training, case by case, against references measured in the same run.

A case is named ``<kind>_<variant>`` (see :data:`CASES`) and measured by :func:`run_case`, which
:func:`run_speed_benchmark` calls in a fresh process per case and round (:func:`~bundle.evaluation.isolation.
run_in_fresh_process`), so each peak memory is the case's own. Every process keeps freed memory for reuse, as the
bundle's configs do (:func:`~bundle.utils.retain_freed_memory`), except ``local_conv_*`` and
``slice_lite_glibc_defaults``:

- ``local_conv_*``: the local convolution alone, forward and backward of one 512 x 512 image with k = 21, ours
  (:func:`~bundle.layers.local_conv2d`) and the naive unfold version; memory beyond the inputs and the kernel
  tensor, as a multiple of the kernel tensor.
- ``slice_*``: one real 512 x 512 CT slice from DICOM to denoised HU through :func:`~bundle.evaluation.denoise.
  load_denoiser` (read, the window and dose conditioning of ``configs/inference.json``, network, inverse window):
  median seconds over ``repeats`` after a warm-up, and peak resident memory beyond the imported libraries. Variants
  of the shipped model: eager (the bundle's path, band by band), the whole-slice reference path (all kernels formed
  at once, :meth:`~bundle.networks.StructKPN.predict_kernels`), the band path before
  :meth:`~bundle.networks.StructKPN.filter_band` (``Conv2d`` head, softmax, 441-tap loop), TorchScript
  (``models/model.ts``), ``inference_dtype="bfloat16"``, ``torch.compile``
  (:meth:`~bundle.networks.StructKPN.compile_inference`), one thread, glibc's default allocator settings, the
  previous single-dose model (read from git at :data:`SINGLE_DOSE_COMMIT`); the multi-slice network (the slice and
  two neighbours, 11 x 11 or 21 x 21 neighbour kernels, the shipped weights warm-started to 3 slices, against the
  single-slice time and memory of the same run); the authors' preset and RED-CNN (random
  weights: their time does not depend on them); BM3D on the same windowed slice.
- ``stages_lite``: where one slice's time goes: window and dose conditioning, backbone, bands (head, softmax and
  Eq. 1), against the reference band path (``Conv2d`` head, ``torch.softmax``, 441-tap loop).
- ``series_*``: ``inference.json`` on a whole series (DICOM in, DICOM out), slices per second.
- ``train_*``: training steps (forward, structure-aware loss, backward, Adam) at 64 x 64, batch 16, patches/s.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bundle.evaluation.isolation import run_in_fresh_process
from bundle.utils.reporting import windowed_quality

__all__ = ["CASES", "SINGLE_DOSE_COMMIT", "SpeedOptions", "pool_rounds", "run_case", "run_speed_benchmark", "table"]

SINGLE_DOSE_COMMIT = "7bf69aa"
"""The last commit whose ``models/model.pt`` is the single-dose model (bundle 0.1.0)."""
SLICE_VARIANTS = (
    "lite",
    "lite_single_dose",
    "lite_whole_slice",
    "lite_conv_head_bands",
    "lite_torchscript",
    "lite_bf16",
    "lite_compile",
    "lite_1thread",
    "lite_glibc_defaults",
    "lite_3_slices",
    "lite_3_slices_n21",
    "authors",
    "redcnn",
)
#: neighbour kernel size of the multi-slice variants (``lite_3_slices``: 11 x 11, as the benchmark's structkpn_s3)
MULTI_SLICE_VARIANTS = {"lite_3_slices": 11, "lite_3_slices_n21": 21}
TRAIN_BATCH = 16  # patches of 64 x 64 a training step
CASES = (
    "local_conv_naive",
    "local_conv_ours",
    *[f"slice_{v}" for v in SLICE_VARIANTS],
    "slice_bm3d",
    "stages_lite",
    "series_lite",
    "series_authors",
    "train_lite",
    "train_authors",
)


@dataclass(frozen=True)
class SpeedOptions:
    """What the cases run on: the repository (configs, models), a low-dose DICOM slice and its normal-dose reference,
    a series (and a shorter one for the authors' preset), timed ``repeats`` after a warm-up, on ``device``; outputs
    of the slice cases are saved in ``scratch`` for the table's differences."""

    repo: Path
    slice: Path
    reference_slice: Path | None
    series: Path
    authors_series: Path | None
    repeats: int
    device: str
    scratch: Path


def _timed(function: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    """Run once to warm up, then ``repeats`` times; returns the timings in seconds and the last result."""
    result = function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return times, result


class _Reference(torch.nn.Module):
    """A reference inference path of a StructKPN ``network`` (its weights and stages, another order of work)."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network


class _WholeSlice(_Reference):
    """The reference path: all k * k kernels of the slice formed at once (``predict_kernels``, dose-aware: mixed
    with the identity), then Eq. 1 on the image channels."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from bundle.layers import local_conv2d

        return local_conv2d(x[:, : self.network.in_channels], self.network.predict_kernels(x))


class _ConvHeadBands(_Reference):
    """The band path with the reference band filter: per band ``local_conv2d_padded(band, kernels(features))``
    (``Conv2d`` head, ``torch.softmax``, the 441-tap loop), instead of :meth:`StructKPN.filter_band`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from bundle.layers import local_conv2d_padded, pad_for_local_conv

        network = self.network
        image, predictor_input, identity_weight = network.split_input(x)
        features, padded = network.backbone(predictor_input), pad_for_local_conv(image, network.kernel_size)
        rows, halo = network.inference_band_rows, network.kernel_size - 1
        bands = []
        for top in range(0, image.shape[2], rows):
            kernels = network.kernels(features[:, :, top : top + rows])
            bands.append(local_conv2d_padded(padded[:, :, top : top + kernels.shape[2] + halo], kernels))
        filtered = torch.cat(bands, dim=2)
        return filtered if identity_weight is None else torch.lerp(filtered, image, identity_weight)


def _slice_denoiser(variant: str, options: SpeedOptions) -> Callable[[np.ndarray], np.ndarray]:
    """The (H, W) HU -> HU denoiser of a ``slice_*`` variant: inference.json's transforms around its network."""
    from bundle.evaluation.denoise import configured_network, hu_window, load_denoiser, load_network, windowed
    from bundle.networks import REDCNN

    config, weights = options.repo / "configs/inference.json", options.repo / "models/model.pt"
    if variant == "bm3d":
        from bundle.baselines.bm3d import bm3d_denoise

        return windowed(bm3d_denoise, hu_window(config))
    if variant == "redcnn":
        return load_denoiser(config, device=options.device, network=REDCNN(), dose_aware=False)
    if variant == "authors":
        network = configured_network(config, network_def__preset="authors")
        return load_denoiser(config, device=options.device, network=network)
    if variant == "lite_torchscript":
        network = torch.jit.load(str(options.repo / "models/model.ts"), map_location=options.device)
        return load_denoiser(config, device=options.device, network=network)
    if variant == "lite_single_dose":
        single_dose = options.scratch / "single_dose_model.pt"  # a file with no settings beside it: loaded unchecked
        single_dose.write_bytes(subprocess.run(["git", "show", f"{SINGLE_DOSE_COMMIT}:models/model.pt"], cwd=options.repo,
                                           check=True, capture_output=True).stdout)  # fmt: skip
        return load_denoiser(config, single_dose, options.device, dose_aware=False)
    if variant in MULTI_SLICE_VARIANTS:  # the shipped weights warm-started to 3 slices (as training starts)
        from bundle.networks import multi_slice_state_dict

        kn = MULTI_SLICE_VARIANTS[variant]
        state = multi_slice_state_dict(torch.load(weights, map_location="cpu", weights_only=True), 3, kn)
        network = configured_network(options.repo / "configs/train.json", slices=3,
                                     network_def__neighbour_kernel_size=kn)  # fmt: skip
        network.load_state_dict(state)
        denoiser = load_denoiser(config, device=options.device, network=network, slices=3)
        return lambda hu: denoiser.centre(np.stack([hu, hu, hu]))  # the slice with two neighbours
    dtype = "bfloat16" if variant == "lite_bf16" else "float32"
    network = load_network(config, weights, options.device, inference_dtype=dtype)
    wrapped = {"lite_whole_slice": _WholeSlice, "lite_conv_head_bands": _ConvHeadBands}.get(variant)
    if variant == "lite_compile":
        network.compile_inference()
    return load_denoiser(config, device=options.device, network=wrapped(network) if wrapped else network)


def case_local_conv(naive: bool, options: SpeedOptions) -> dict:
    from bundle.layers import local_conv2d, local_conv2d_unfold
    from bundle.utils import PeakMemorySampler

    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 512, 512, generator=generator).to(options.device).requires_grad_()
    kernels = torch.softmax(torch.randn(1, 441, 512, 512, generator=generator), 1).to(options.device).requires_grad_()
    function = local_conv2d_unfold if naive else local_conv2d

    def step() -> None:
        image.grad = kernels.grad = None
        function(image, kernels).sum().backward()

    with PeakMemorySampler() as memory:
        times, _ = _timed(step, options.repeats)
    kernel_bytes = kernels.numel() * kernels.element_size()
    return {"seconds": times, "peak_extra_mib": memory.extra / 2**20, "kernel_tensor_mib": kernel_bytes / 2**20}


def case_slice(variant: str, options: SpeedOptions) -> dict:
    from bundle.io.ct_dicom import read_ct_slice
    from bundle.utils import PeakMemorySampler

    if variant == "lite_1thread":
        torch.set_num_threads(1)
    with PeakMemorySampler() as memory:  # baseline: the imported libraries only
        denoiser = _slice_denoiser(variant, options)
        denoise = lambda: denoiser(read_ct_slice(options.slice).hu)  # noqa: E731
        compile_start = time.perf_counter()
        denoise()  # warm-up (and compilation for torch.compile)
        first_seconds = time.perf_counter() - compile_start
        times, output = _timed(denoise, options.repeats)
    np.save(options.scratch / f"slice_{variant}.npy", np.asarray(output, dtype=np.float32))
    return {"seconds": times, "first_seconds": first_seconds, "peak_extra_mib": memory.extra / 2**20}


def case_stages(variant: str, options: SpeedOptions) -> dict:
    """Median seconds a stage of one slice in the shipped network (eager, float32): the window and the dose
    conditioning (inference.json's transforms), the backbone, the bands, and the reference band stages."""
    from bundle.io.ct_dicom import read_ct_slice
    from bundle.layers import local_conv2d_padded, pad_for_local_conv

    denoiser = _slice_denoiser(variant, options)
    network = denoiser.network
    hu = read_ct_slice(options.slice).hu
    prepare = lambda: denoiser.network_input(hu)  # noqa: E731

    rows, halo = network.inference_band_rows, network.kernel_size - 1
    with torch.inference_mode():
        image, predictor_input, _ = network.split_input(prepare())
        padded = pad_for_local_conv(image, network.kernel_size)
        features = network.backbone(predictor_input)
        bands = [(features[:, :, top : top + rows], padded[:, :, top : top + rows + halo])
                 for top in range(0, image.shape[2], rows)]  # fmt: skip
        logits = [network.head(band) for band, _ in bands]
        kernels = [torch.softmax(band, dim=1) for band in logits]
        stages = {
            "conditioning": prepare,
            "backbone": lambda: network.backbone(predictor_input),
            "bands": lambda: [network.filter_band(band, padded_band) for band, padded_band in bands],
            "conv_head": lambda: [network.head(band) for band, _ in bands],
            "softmax": lambda: [torch.softmax(band, dim=1) for band in logits],
            "tap_loop": lambda: [local_conv2d_padded(p, k) for (_, p), k in zip(bands, kernels)],
        }
        seconds = {name: float(np.median(_timed(stage, options.repeats)[0])) for name, stage in stages.items()}
    return {"stages": seconds}


def case_series(variant: str, options: SpeedOptions) -> dict:
    from monai.bundle import ConfigWorkflow

    from bundle.evaluation.denoise import configured_network
    from bundle.io.paths import find_ct_inputs

    series = options.authors_series if variant == "authors" and options.authors_series else options.series
    overrides = {"dataset_dir": str(series), "output_dir": str(options.scratch / f"series_{variant}")}
    config = options.repo / "configs/inference.json"
    if variant == "authors":
        weights = options.scratch / "authors_random.pt"
        torch.save(configured_network(config, network_def__preset="authors").state_dict(), weights)
        overrides.update({"network_def#preset": "authors", "ckpt_path": str(weights)})
    workflow = ConfigWorkflow(config_file=str(config), meta_file=str(options.repo / "configs/metadata.json"),
                              workflow_type="infer", bundle_root=str(options.repo), **overrides)  # fmt: skip
    workflow.initialize()
    slices = 0
    for entry in find_ct_inputs(series):  # a series is a list of files or a folder of one series' files
        files = entry["image"] if isinstance(entry["image"], list) else [entry["image"]]
        slices += sum(len([f for f in Path(p).iterdir() if f.is_file()]) if Path(p).is_dir() else 1 for p in files)
    start = time.perf_counter()
    workflow.run()
    seconds = time.perf_counter() - start
    workflow.finalize()
    return {"seconds": [seconds], "slices": slices, "slices_per_second": slices / seconds}


def case_train(variant: str, options: SpeedOptions) -> dict:
    """Training steps of StructKPN as train.json builds it (dose-aware: the conditioning channels come with the
    patches, made by the data transforms, so they are random inputs here)."""
    from bundle.evaluation.denoise import configured_network
    from bundle.losses import StructureAwareLoss

    torch.manual_seed(0)
    network = configured_network(options.repo / "configs/train.json", network_def__preset=variant)
    network = network.to(options.device).train()
    optimizer = torch.optim.Adam(network.parameters(), 2e-4)
    loss = StructureAwareLoss()
    channels = network.in_channels + (2 if network.dose_aware else 0)
    image = torch.rand(TRAIN_BATCH, channels, 64, 64, device=options.device)
    target = torch.rand(TRAIN_BATCH, 3, 64, 64, device=options.device)

    def step() -> None:
        optimizer.zero_grad()
        loss(network(image), target).backward()
        optimizer.step()

    times, _ = _timed(step, options.repeats)
    return {"seconds": times, "patches_per_second": TRAIN_BATCH / float(np.median(times))}


def run_case(name: str, options: SpeedOptions) -> dict:
    """Measure case ``name`` (one of :data:`CASES`) in this process; returns its JSON-able result."""
    from bundle.utils import retain_freed_memory

    # as the bundle's configs do ("retain_freed_memory"); not for the local convolution alone, whose memory is the
    # operation's own, and not for the case that shows what the retention gains
    if not name.startswith("local_conv") and name != "slice_lite_glibc_defaults":
        retain_freed_memory()
    if name.startswith("local_conv"):
        return case_local_conv(name.endswith("naive"), options)
    kind, _, variant = name.partition("_")
    cases = {"slice": case_slice, "stages": case_stages, "series": case_series, "train": case_train}
    return cases[kind](variant, options)


def pool_rounds(runs: list[dict]) -> dict:
    """One case's results over the rounds: all timings pooled, the largest peak memory, per-stage medians."""
    done = [run for run in runs if "error" not in run]
    if not done:
        return runs[-1]
    pooled = dict(done[-1])
    if "seconds" in pooled:
        pooled["seconds"] = [seconds for run in done for seconds in run["seconds"]]
        median = float(np.median(pooled["seconds"]))
        if "slices" in pooled:
            pooled["slices_per_second"] = pooled["slices"] / median
        if "patches_per_second" in pooled:
            pooled["patches_per_second"] = TRAIN_BATCH / median
    if "peak_extra_mib" in pooled:
        pooled["peak_extra_mib"] = max(run["peak_extra_mib"] for run in done)
    if "stages" in pooled:
        pooled["stages"] = {stage: float(np.median([run["stages"][stage] for run in done])) for stage in pooled["stages"]}
    return pooled


def run_speed_benchmark(cases: Sequence[str], options: SpeedOptions, rounds: int = 1) -> dict[str, dict]:
    """Every case in its own fresh process, the whole list ``rounds`` times (a slow spell of a shared host then hits
    every case alike); returns each case's pooled result (:func:`pool_rounds`), ``{"error": ...}`` if it failed."""
    runs: dict[str, list[dict]] = {name: [] for name in cases}
    for round_index in range(rounds):
        for name in cases:
            try:
                runs[name].append(run_in_fresh_process(run_case, name, options))
            except Exception as error:  # noqa: BLE001 - a failed case is a row of the table, the others still run
                runs[name].append({"error": " ".join(f"{type(error).__name__}: {error}".split())[:200]})
            print(f"round {round_index + 1}, {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
    return {name: pool_rounds(case_runs) for name, case_runs in runs.items()}


def table(results: dict[str, dict], options: SpeedOptions) -> str:
    """The Markdown table of the results: medians, ratios to the references of the same run, HU differences of
    the fast paths against the eager one, PSNR (paper window) against the normal-dose slice."""
    median = {name: float(np.median(r["seconds"])) for name, r in results.items() if "seconds" in r}
    lines = ["| case | median s | ratio | peak extra MiB | notes |", "|---|---|---|---|---|"]

    def row(name: str, ratio: str, notes: str = "") -> None:
        if name not in results:
            return
        r = results[name]
        if "error" in r:
            lines.append(f"| {name} | - | - | - | failed: {r['error']} |")
            return
        peak = f"{r['peak_extra_mib']:.0f}" if "peak_extra_mib" in r else "-"
        lines.append(f"| {name} | {median[name]:.3f} | {ratio} | {peak} | {notes} |")

    naive = median.get("local_conv_naive")
    for name in ("local_conv_naive", "local_conv_ours"):
        if name in results and "error" not in results[name]:
            r = results[name]
            ratio = f"{median[name] / naive:.2f}x naive time" if naive else "-"
            row(name, ratio, f"peak = {r['peak_extra_mib'] / r['kernel_tensor_mib']:.2f}x the {r['kernel_tensor_mib']:.0f} MiB kernel tensor")
    reference = options.scratch / "slice_lite.npy"
    truth = None
    if options.reference_slice:
        from bundle.io.ct_dicom import read_ct_slice

        truth = read_ct_slice(options.reference_slice).hu
    for variant in (*SLICE_VARIANTS, "bm3d"):
        name = f"slice_{variant}"
        if name not in median:
            row(name, "-")
            continue
        ratios = []
        if variant == "lite_single_dose" and "slice_lite" in median:
            ratios.append(f"shipped dose-aware model takes {median['slice_lite'] / median[name]:.2f}x this time")
        if variant in MULTI_SLICE_VARIANTS and "slice_lite" in median:
            ratios.append(f"{median[name] / median['slice_lite']:.2f}x the time of slice_lite")
            single = results["slice_lite"].get("peak_extra_mib")
            if single and "peak_extra_mib" in results[name]:
                ratios.append(f"{results[name]['peak_extra_mib'] / single:.2f}x its memory")
        for peer in ("bm3d", "redcnn"):
            if f"slice_{peer}" in median and peer != variant:
                ratios.append(f"{median[f'slice_{peer}'] / median[name]:.1f}x faster than {peer}")
        notes = []
        output_path = options.scratch / f"{name}.npy"
        if variant not in ("lite", "lite_single_dose", "authors", "redcnn") and reference.exists() and output_path.exists():
            difference = np.abs(np.load(output_path) - np.load(reference)).max()
            notes.append(f"max abs diff vs eager {difference:.3g} HU")
        if truth is not None and output_path.exists() and variant not in ("authors", "redcnn"):
            notes.append(f"PSNR {windowed_quality(np.load(output_path), truth)['psnr_paper']:.3f} dB")
        if variant == "lite_compile":
            notes.append(f"first call {results[name]['first_seconds']:.0f} s")
        if variant in ("authors", "redcnn"):
            notes.append("random weights")
        row(name, "; ".join(ratios) or "-", "; ".join(notes))
    if "stages_lite" in results and "error" not in results["stages_lite"]:
        stage = results["stages_lite"]["stages"]
        before = stage["conv_head"] + stage["softmax"] + stage["tap_loop"]
        lines.append(
            f"| stages_lite | {stage['conditioning'] + stage['backbone'] + stage['bands']:.3f} | "
            f"{before / stage['bands']:.1f}x faster bands than before | - | window and conditioning "
            f"{stage['conditioning']:.3f} s + backbone {stage['backbone']:.3f} s + bands {stage['bands']:.3f} s (head, "
            f"softmax and Eq. 1 of all 16-row bands); before: Conv2d head {stage['conv_head']:.3f} s + softmax "
            f"{stage['softmax']:.3f} s + 441-tap loop {stage['tap_loop']:.3f} s = {before:.3f} s |"
        )
    for name in ("series_lite", "series_authors"):
        if name in results and "error" not in results[name]:
            r = results[name]
            row(name, "-", f"{r['slices']} slices, {r['slices_per_second']:.2f} slices/s (DICOM in and out)")
    for name in ("train_lite", "train_authors"):
        if name in results and "error" not in results[name]:
            row(name, "-", f"{results[name]['patches_per_second']:.1f} patches/s (64x64, batch 16)")
    return "\n".join(lines) + "\n"

"""Speed and memory of StructKPN inference and training against the naive local convolution, BM3D and RED-CNN.

    python scripts/benchmark_speed.py --report docs/performance.md

Every case runs in its own process (so its peak memory is its own) and prints one JSON line; the table compares
them with references measured in the same run. Every process keeps freed memory for reuse, as the bundle's configs
do (:func:`~bundle.utils.retain_freed_memory`), except ``local_conv_*`` and ``slice_lite_glibc_defaults``:

- ``local_conv_*``: the local convolution alone, forward and backward of one 512 x 512 image with k = 21, ours
  (:func:`~bundle.layers.local_conv.local_conv2d`) and the naive unfold version; memory beyond the inputs and the
  kernel tensor, as a multiple of the kernel tensor.
- ``slice_*``: one real 512 x 512 CT slice from DICOM to denoised HU (read, HU, window, dose conditioning for a
  dose-aware network, network, HU): median seconds over ``--repeats`` after a warm-up, and peak resident memory
  beyond the imported libraries (model, data, conditioning, kernel prediction, local convolution and HU round trip
  included). StructKPN is built as ``configs/inference.json`` builds it (``network_def``, dose-aware by default,
  conditioned by :class:`~bundle.transforms.AddDoseConditiond` at its ``dose_fraction``). Variants of the shipped
  model: eager
  (the bundle's path, band by band), the whole-slice reference path (all kernels formed at once, as in training),
  TorchScript (``models/model.ts``), ``inference_dtype="bfloat16"``, ``torch.compile`` (backbone and band), one
  thread, glibc's default allocator settings; the authors' preset and RED-CNN (random weights: their time does not depend on the weights); BM3D on
  the same slice.
  Output differences are max |HU| against the eager path, PSNR in the paper's window against the normal-dose slice.
- ``stages_lite``: where one slice's time goes in the shipped network: the dose conditioning (none for a
  single-dose network), the backbone, and the bands (head, softmax and Eq. 1) against the same work done as before
  (``Conv2d`` head, ``torch.softmax``, 441-tap loop).
- ``--rounds N`` runs the whole list N times and pools each case's timings: the shared host has slow spells of
  minutes, and rounds spread them over all cases instead of letting one case's process fall into one.
- ``series_*``: the bundle's ``inference.json`` on a whole series (DICOM in, DICOM out), slices per second.
- ``train_*``: training steps (forward, structure-aware loss, backward, Adam) at 64 x 64, batch 16, patches/s.

Needs the ``bundle`` package importable; runs from the repository root. On a GPU the same cases run on CUDA when
``--device cuda`` is given (BM3D and K-SVD stay on the CPU).
"""

from __future__ import annotations

import argparse
import datetime
import io
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from bundle.utils import git_commit, windowed_quality

REPO = Path(__file__).resolve().parents[1]
SINGLE_DOSE_COMMIT = "7bf69aa"  # the last commit whose models/model.pt is the single-dose model
HU_WINDOW = (-1024.0, 3072.0)  # the bundle's input window (configs/*.json "hu_window")
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
    "authors",
    "redcnn",
)
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


def _timed(function: Callable[[], object], repeats: int) -> tuple[list[float], object]:
    """Run once to warm up, then ``repeats`` times; returns the timings in seconds and the last result."""
    result = function()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append(time.perf_counter() - start)
    return times, result


def _inference_config(**overrides: object):
    """``configs/inference.json`` as a MONAI ConfigParser, with ``overrides`` (keys as on the command line)."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "configs/inference.json"))
    parser.update(overrides)
    return parser


def _conditioning() -> Callable[[torch.Tensor], torch.Tensor]:
    """The dose conditioning of ``inference.json``: (1, H, W) windowed image -> (3, H, W) (image, noise std, dose)."""
    from bundle.transforms import AddDoseConditiond

    condition = AddDoseConditiond(keys="image", dose_fraction=_inference_config().get_parsed_content("dose_fraction"))
    return lambda image: condition({"image": image})["image"]


def _authors_network() -> torch.nn.Module:
    """inference.json's StructKPN with the authors' preset, random weights (its time does not depend on them)."""
    return _inference_config(**{"network_def#preset": "authors"}).get_parsed_content("network_def")


def _network(variant: str, device: torch.device) -> torch.nn.Module:
    """The network of a ``slice_*`` or ``stages_*`` variant; StructKPN as inference.json builds it."""
    from bundle.networks import REDCNN

    if variant == "redcnn":
        return REDCNN().eval().to(device)
    if variant == "lite_torchscript":
        return torch.jit.load(str(REPO / "models/model.ts"), map_location=device).eval()
    if variant == "authors":
        return _authors_network().eval().to(device)
    if variant == "lite_single_dose":  # the previous shipped model (bundle 0.1.0): no dose conditioning
        network = _inference_config(dose_aware=False).get_parsed_content("network_def")
        weights = subprocess.run(["git", "show", f"{SINGLE_DOSE_COMMIT}:models/model.pt"], cwd=REPO, check=True,
                                 capture_output=True).stdout
        network.load_state_dict(torch.load(io.BytesIO(weights), map_location="cpu", weights_only=True))
        return network.eval().to(device)
    dtype = "bfloat16" if variant == "lite_bf16" else "float32"
    network = _inference_config(inference_dtype=dtype).get_parsed_content("network_def")
    network.load_state_dict(torch.load(REPO / "models/model.pt", map_location="cpu", weights_only=True))
    network = network.eval().to(device)
    if variant == "lite_compile":  # the backbone, and the head, softmax and Eq. 1 of a band (21 steps unrolled)
        network.compile_inference()
    if variant == "lite_whole_slice":
        return _WholeSlice(network)
    if variant == "lite_conv_head_bands":
        return _ConvHeadBands(network)
    return network


class _WholeSlice(torch.nn.Module):
    """The reference path: all k * k kernels of the slice formed at once (``predict_kernels``, dose-aware: mixed
    with the identity), then Eq. 1 on the image channels."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.dose_aware = network.dose_aware

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from bundle.layers import local_conv2d

        return local_conv2d(x[:, : self.network.in_channels], self.network.predict_kernels(x))


class _ConvHeadBands(torch.nn.Module):
    """The band path as it was before ``StructKPN.filter_band``: per band, the ``Conv2d`` head, ``torch.softmax``
    over the k * k channels and the 441-tap loop of :func:`~bundle.layers.local_conv.local_conv2d_padded`."""

    def __init__(self, network: torch.nn.Module) -> None:
        super().__init__()
        self.network = network
        self.dose_aware = network.dose_aware

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        image, predictor_input, identity_weight = self.network.split_input(x)
        filtered = _conv_head_bands(self.network, image, self.network.backbone(predictor_input))
        return filtered if identity_weight is None else torch.lerp(filtered, image, identity_weight)


def _conv_head_bands(network: torch.nn.Module, image: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    from bundle.layers.local_conv import local_conv2d_padded, pad_for_local_conv

    padded = pad_for_local_conv(image, network.kernel_size)
    rows, halo = network.inference_band_rows, network.kernel_size - 1
    bands = []
    for top in range(0, image.shape[2], rows):
        kernels = network.kernels(features[:, :, top : top + rows])
        bands.append(local_conv2d_padded(padded[:, :, top : top + kernels.shape[2] + halo], kernels))
    return torch.cat(bands, dim=2)


def case_local_conv(naive: bool, args: argparse.Namespace) -> dict:
    from bundle.layers.local_conv import local_conv2d, local_conv2d_unfold
    from bundle.utils import PeakMemorySampler

    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, 512, 512, generator=generator).to(device).requires_grad_()
    kernels = torch.softmax(torch.randn(1, 441, 512, 512, generator=generator), 1).to(device).requires_grad_()
    function = local_conv2d_unfold if naive else local_conv2d

    def step() -> None:
        image.grad = kernels.grad = None
        local_conv2d_sum = function(image, kernels).sum()
        local_conv2d_sum.backward()

    with PeakMemorySampler() as memory:
        times, _ = _timed(step, args.repeats)
    kernel_bytes = kernels.numel() * kernels.element_size()
    return {"seconds": times, "peak_extra_mib": memory.extra / 2**20, "kernel_tensor_mib": kernel_bytes / 2**20}


def case_slice(variant: str, args: argparse.Namespace) -> dict:
    from bundle.io.ct_dicom import read_ct_slice
    from bundle.utils import PeakMemorySampler

    if variant == "lite_1thread":
        torch.set_num_threads(1)
    device = torch.device(args.device)
    with PeakMemorySampler() as memory:  # baseline: the imported libraries only
        network = None if variant == "bm3d" else _network(variant, device)
        condition = _conditioning() if getattr(network, "dose_aware", False) else None

        def denoise() -> np.ndarray:
            hu = read_ct_slice(args.slice).hu
            window = np.clip((hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]), 0.0, 1.0)
            if variant == "bm3d":
                from bundle.baselines.bm3d import bm3d_denoise

                return bm3d_denoise(window) * (HU_WINDOW[1] - HU_WINDOW[0]) + HU_WINDOW[0]
            image = torch.from_numpy(window.astype(np.float32))[None]
            if condition is not None:  # part of inference: inference.json's AddDoseConditiond
                image = condition(image)
            image = image[None].to(device)
            with torch.inference_mode():
                output = network(image)
            return output[0, 0].cpu().numpy() * (HU_WINDOW[1] - HU_WINDOW[0]) + HU_WINDOW[0]

        compile_start = time.perf_counter()
        denoise()  # warm-up (and compilation for torch.compile)
        first_seconds = time.perf_counter() - compile_start
        times, output = _timed(denoise, args.repeats)
    np.save(args.scratch / f"slice_{variant}.npy", output.astype(np.float32))
    return {"seconds": times, "first_seconds": first_seconds, "peak_extra_mib": memory.extra / 2**20}


def case_stages(variant: str, args: argparse.Namespace) -> dict:
    """Where the time of one slice goes in the network (shipped model, eager, float32): median seconds a stage
    (the dose conditioning of a dose-aware network is a stage, 0 otherwise)."""
    from bundle.io.ct_dicom import read_ct_slice
    from bundle.layers.local_conv import local_conv2d_padded, pad_for_local_conv

    network = _network(variant, torch.device(args.device))
    hu = read_ct_slice(args.slice).hu
    window = torch.from_numpy(np.clip((hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0]), 0.0, 1.0).astype(np.float32))
    condition = _conditioning() if network.dose_aware else lambda x: x
    rows, halo = network.inference_band_rows, network.kernel_size - 1
    with torch.inference_mode():
        image, predictor_input, _ = network.split_input(condition(window[None])[None].to(args.device))
        padded = pad_for_local_conv(image, network.kernel_size)
        features = network.backbone(predictor_input)
        bands = [(features[:, :, top : top + rows], padded[:, :, top : top + rows + halo]) for top in range(0, image.shape[2], rows)]
        logits = [network.head(band) for band, _ in bands]
        kernels = [torch.softmax(band, dim=1) for band in logits]
        stages = {
            "conditioning": (lambda: condition(window[None])) if network.dose_aware else (lambda: None),
            "backbone": lambda: network.backbone(predictor_input),
            "bands": lambda: [network.filter_band(band, padded_band) for band, padded_band in bands],
            "conv_head": lambda: [network.head(band) for band, _ in bands],
            "softmax": lambda: [torch.softmax(band, dim=1) for band in logits],
            "tap_loop": lambda: [local_conv2d_padded(p, k) for (_, p), k in zip(bands, kernels)],
        }
        seconds = {name: float(np.median(_timed(stage, args.repeats)[0])) for name, stage in stages.items()}
    return {"stages": seconds}


def case_series(variant: str, args: argparse.Namespace) -> dict:
    from monai.bundle import ConfigWorkflow

    from bundle.io.paths import find_ct_inputs

    series = args.authors_series if variant == "authors" and args.authors_series else args.series
    overrides = {"dataset_dir": str(series), "output_dir": str(args.scratch / f"series_{variant}")}
    if variant == "authors":
        weights = args.scratch / "authors_random.pt"
        torch.save(_authors_network().state_dict(), weights)
        overrides.update({"network_def#preset": "authors", "ckpt_path": str(weights)})
    workflow = ConfigWorkflow(
        config_file=str(REPO / "configs/inference.json"),
        meta_file=str(REPO / "configs/metadata.json"),
        workflow_type="infer",
        bundle_root=str(REPO),
        **overrides,
    )
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


def case_train(variant: str, args: argparse.Namespace) -> dict:
    """Training steps of StructKPN as train.json builds it (dose-aware: the conditioning channels come with the
    patches, made by the data transforms, so they are random inputs here)."""
    from monai.bundle import ConfigParser

    from bundle.losses import StructureAwareLoss

    device = torch.device(args.device)
    torch.manual_seed(0)
    parser = ConfigParser()
    parser.read_config(str(REPO / "configs/train.json"))
    parser.update({"network_def#preset": variant})
    network = parser.get_parsed_content("network_def").to(device).train()
    optimizer = torch.optim.Adam(network.parameters(), 2e-4)
    loss = StructureAwareLoss()
    channels = network.in_channels + (2 if network.dose_aware else 0)
    image = torch.rand(TRAIN_BATCH, channels, 64, 64, device=device)
    target = torch.rand(TRAIN_BATCH, 3, 64, 64, device=device)

    def step() -> None:
        optimizer.zero_grad()
        loss(network(image), target).backward()
        optimizer.step()

    times, _ = _timed(step, args.repeats)
    return {"seconds": times, "patches_per_second": TRAIN_BATCH / float(np.median(times))}


def run_case(name: str, args: argparse.Namespace) -> dict:
    from bundle.utils import retain_freed_memory

    # as the bundle's configs do ("retain_freed_memory"); not for the local convolution alone, whose memory is the
    # operation's own, and not for the case that shows what the retention gains
    if not name.startswith("local_conv") and name != "slice_lite_glibc_defaults":
        retain_freed_memory()
    kind, _, variant = name.partition("_")
    if name.startswith("local_conv"):
        return case_local_conv(name.endswith("naive"), args)
    cases = {"slice": case_slice, "stages": case_stages, "series": case_series, "train": case_train}
    return cases[kind](variant, args)


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


def table(results: dict[str, dict], args: argparse.Namespace) -> str:
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
    reference = args.scratch / "slice_lite.npy"
    truth = None
    if args.reference_slice:
        from bundle.io.ct_dicom import read_ct_slice

        truth = read_ct_slice(args.reference_slice).hu
    for variant in (*SLICE_VARIANTS, "bm3d"):
        name = f"slice_{variant}"
        if name not in median:
            row(name, "-")
            continue
        ratios = []
        if variant == "lite_single_dose" and "slice_lite" in median:
            ratios.append(f"shipped dose-aware model takes {median['slice_lite'] / median[name]:.2f}x this time")
        for peer in ("bm3d", "redcnn"):
            if f"slice_{peer}" in median and peer != variant:
                ratios.append(f"{median[f'slice_{peer}'] / median[name]:.1f}x faster than {peer}")
        notes = []
        output_path = args.scratch / f"{name}.npy"
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
            f"{before / stage['bands']:.1f}x faster bands than before | - | conditioning "
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


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slice", type=Path, default=REPO / "sample_data/ldct-0.25/A0002-siemens-B40f/1-04.dcm")
    parser.add_argument("--reference_slice", type=Path, default=REPO / "sample_data/ndct/A0002-siemens-B40f/1-04.dcm")
    parser.add_argument("--series", type=Path, default=REPO / "sample_data/ldct-0.25/A0002-siemens-B40f")
    parser.add_argument("--authors_series", type=Path, help="a shorter series for series_authors (default: --series)")
    parser.add_argument("--cases", nargs="+", default=list(CASES), choices=CASES)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs of a case in one process, after a warm-up")
    parser.add_argument(
        "--rounds", type=int, default=1, help="run the whole list of cases this many times, pooling each case's runs"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--report", type=Path, help="also write the table, command and commit to this Markdown file")
    parser.add_argument("--notes", type=Path, help="Markdown appended to the report (what was tried, and why)")
    parser.add_argument("--scratch", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.case:
        print(json.dumps(run_case(args.case, args)))
        return ""
    argv = list(sys.argv[1:] if argv is None else argv)
    runs: dict[str, list[dict]] = {name: [] for name in args.cases}
    with tempfile.TemporaryDirectory() as scratch:
        args.scratch = Path(scratch)
        for round_index in range(args.rounds):  # round by round, so a slow spell of the host hits every case alike
            for name in args.cases:
                command = [sys.executable, str(Path(__file__).resolve()), *argv, "--case", name, "--scratch", scratch]
                done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
                if done.returncode == 0:
                    runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
                else:
                    runs[name].append({"error": (done.stderr.strip().splitlines() or ["?"])[-1][:200]})
                print(f"round {round_index + 1}, {name}: {runs[name][-1]}", file=sys.stderr, flush=True)
        results = {name: pool_rounds(case_runs) for name, case_runs in runs.items()}
        markdown = table(results, args)
    print(markdown, end="")
    if args.report:
        header = (
            f"Output of `{shlex.join(['python', 'scripts/benchmark_speed.py', *argv])}` at commit `{git_commit(REPO)}` "
            f"on {datetime.date.today()} ({platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, device {args.device}).\n\n"
        )
        temporary = args.report.with_suffix(".tmp")
        notes = "\n" + args.notes.read_text() if args.notes else ""
        temporary.write_text(header + markdown + notes)
        temporary.replace(args.report)
    return markdown


if __name__ == "__main__":
    main()

"""The benchmark, speed and generalisation scripts, run small on the embedded sample, and the fast inference paths."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.io import read_ct_slice
from bundle.networks import StructKPN
from bundle.utils import windowed_quality

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
sys.path.insert(0, str(REPO / "scripts"))

import benchmark_speed  # noqa: E402
import evaluate_generalisation  # noqa: E402


def paper_window_psnr(hu: np.ndarray, reference_hu: np.ndarray) -> float:
    """Independent PSNR: both images windowed to [-160, 240] HU -> [0, 1], data range 1."""
    a, b = (np.clip((x - (-160.0)) / 400.0, 0.0, 1.0) for x in (hu, reference_hu))
    return float(10.0 * np.log10(1.0 / np.mean((a.astype(np.float64) - b) ** 2)))


def sample_slice_and_shipped_model() -> tuple[torch.Tensor, StructKPN]:
    """A real low-dose sample slice windowed as the bundle does ([-1024, 3072] HU -> [0, 1]), and the shipped model."""
    ldct = read_ct_slice(SAMPLE / "ldct-0.25/A0002-siemens-B40f/1-04.dcm").hu
    image = torch.from_numpy(((ldct.clip(-1024, 3072) + 1024) / 4096).astype(np.float32))[None, None]
    network = StructKPN()
    network.load_state_dict(torch.load(REPO / "models/model.pt", map_location="cpu", weights_only=True))
    return image, network.eval()


def test_benchmark_trains_evaluates_and_reports(tmp_path):
    """One-epoch StructKPN and the low-dose input on one test slice: tables, CSV, figures, resumable."""
    output, report = tmp_path / "bench", tmp_path / "report" / "benchmark.md"
    command = [
        sys.executable, "scripts/benchmark.py", "--datalist", str(SAMPLE / "datalist.json"), "--output_dir",
        str(output), "--report", str(report), "--methods", "ldct", "structkpn", "--epochs", "1",
        "--max_test_slices", "1", "--dose_methods", "ldct",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    selection = json.loads((output / "test_selection.json").read_text())
    (entry,) = selection["entries"]
    ldct = read_ct_slice(SAMPLE / entry["image"]).hu.clip(-1024, 3072)
    ndct = read_ct_slice(SAMPLE / entry["label"]).hu.clip(-1024, 3072)
    expected = paper_window_psnr(ldct, ndct)

    rows = {row["method"]: row for row in csv.DictReader(open(report.with_suffix("") / "benchmark.csv"))}
    assert set(rows) == {"ldct", "structkpn"}
    assert float(rows["ldct"]["psnr_paper"]) == pytest.approx(expected, abs=1e-3)
    assert 0.0 < float(rows["structkpn"]["ssim_paper"]) <= 1.0
    record = json.loads((output / "runs/structkpn/done.json").read_text())
    assert record["patches"] == 1 * len(json.loads((SAMPLE / "datalist.json").read_text())["training"]) * 8
    text = report.read_text()
    assert text.index("| ldct |") < text.index("| structkpn |")  # the low-dose input is the first row
    for figure in ("comparison.png", "loss_components.png", "kernels.png"):
        assert (report.with_suffix("") / figure).stat().st_size > 1000

    # rerunning trains and evaluates nothing again
    before = (output / "results/structkpn.json").stat().st_mtime_ns
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[train]" not in again.stdout and "[evaluate]" not in again.stdout
    assert (output / "results/structkpn.json").stat().st_mtime_ns == before


def test_speed_benchmark_prints_local_convolution_ratios(tmp_path):
    report = tmp_path / "performance.md"
    command = [sys.executable, "scripts/benchmark_speed.py", "--cases", "local_conv_naive", "local_conv_ours"]
    done = subprocess.run([*command, "--repeats", "1", "--report", str(report)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| local_conv")]
    assert len(rows) == 2
    assert "the 441 MiB kernel tensor" in rows[1]  # 441 * 512 * 512 float32 = 441 MiB, closed form
    assert "x naive time" in rows[1]
    assert report.read_text().startswith("Output of `python scripts/benchmark_speed.py")


def test_speed_benchmark_compares_the_band_path_with_the_whole_slice_path():
    """The table states the fast path's difference in HU and splits the network's time into its stages."""
    command = [sys.executable, "scripts/benchmark_speed.py", "--repeats", "1", "--cases", "slice_lite"]
    command += ["slice_lite_whole_slice", "stages_lite"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {line.split(" | ")[0][2:]: line for line in done.stdout.splitlines() if line.startswith("| s")}
    assert set(rows) == {"slice_lite", "slice_lite_whole_slice", "stages_lite"}, done.stdout
    difference = re.search(r"max abs diff vs eager ([0-9.e-]+) HU", rows["slice_lite_whole_slice"])
    assert difference and float(difference.group(1)) < 0.05
    total = float(rows["stages_lite"].split(" | ")[1])
    backbone, bands = (float(x) for x in re.search(r"backbone ([0-9.]+) s \+ bands ([0-9.]+) s", rows["stages_lite"]).groups())
    assert total == pytest.approx(backbone + bands, abs=0.002)  # the row's total is the sum of its stages


def test_speed_rounds_pool_timings_and_keep_the_worst_memory():
    rounds = [
        {"seconds": [1.0, 3.0], "peak_extra_mib": 10.0, "slices": 6},
        {"error": "killed"},
        {"seconds": [2.0], "peak_extra_mib": 30.0, "slices": 6},
    ]
    pooled = benchmark_speed.pool_rounds(rounds)
    assert pooled["seconds"] == [1.0, 3.0, 2.0] and pooled["peak_extra_mib"] == 30.0
    assert pooled["slices_per_second"] == 3.0  # 6 slices / median 2 s
    stages = benchmark_speed.pool_rounds([{"stages": {"backbone": b}} for b in (0.3, 0.1, 0.2)])
    assert stages["stages"] == {"backbone": 0.2}
    assert benchmark_speed.pool_rounds([{"error": "a"}, {"error": "b"}]) == {"error": "b"}


def test_fast_inference_paths_equal_the_reference_path_in_hu():
    """Shipped model on a real slice: banded eager and TorchScript equal the whole-slice kernels path (Eq. 1)."""
    image, network = sample_slice_and_shipped_model()
    scripted = torch.jit.load(str(REPO / "models/model.ts"), map_location="cpu").eval()
    with torch.inference_mode():
        from bundle.layers import local_conv2d

        reference = local_conv2d(image, network.predict_kernels(image))  # all k * k kernels formed at once
        banded, script_output = network(image), scripted(image)
    for fast in (banded, script_output):
        # float rounding only (head as matrix products, exp2, taps summed in another order): 0.010 HU measured
        difference_hu = (fast - reference).abs() * 4096
        assert float(difference_hu.max()) < 0.05 and float(difference_hu.mean()) < 0.001


def test_generalisation_phantoms():
    """The phantoms are what their docstrings say; one evaluation row has the metrics of input and output."""
    phantom, uniform = evaluate_generalisation.chest_phantom_hu(128)
    assert phantom.shape == (128, 128) and phantom[uniform].std() == 0 and phantom[uniform].mean() == 40.0
    assert {-1000.0, -850.0, 40.0, 700.0, 1000.0} <= set(np.unique(phantom).tolist())
    shepp = evaluate_generalisation.shepp_logan_hu(128)
    assert shepp.min() == -1000.0 and shepp.max() == 1500.0
    row = windowed_quality(phantom, phantom)
    assert row["ssim_paper"] == pytest.approx(1.0) and np.isinf(row["psnr_paper"])


def test_bfloat16_inference_stays_within_a_few_hu_of_float32():
    """The opt-in bf16 path on a real slice (backbone only): mean |diff| under 0.1 HU, max 3 HU; output float32."""
    image, network = sample_slice_and_shipped_model()
    with torch.inference_mode():
        full = network(image)
        network.inference_dtype = "bfloat16"
        half = network(image)
    difference_hu = (half - full).abs() * 4096
    assert half.dtype == torch.float32
    assert float(difference_hu.mean()) < 0.1 and float(difference_hu.max()) < 3.0  # measured 0.022 and 1.48 HU

"""The benchmark and speed scripts, run small on the embedded sample, and the shipped model's fast inference paths."""

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

from bundle.evaluation.benchmark import METHODS, method_denoiser
from bundle.evaluation.denoise import load_denoiser
from bundle.evaluation.speed import pool_rounds
from bundle.io import read_ct_slice
from bundle.transforms import AddDoseConditiond
from reference_metrics import paper_window_psnr

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"


def sample_slice_and_shipped_model() -> tuple[torch.Tensor, torch.nn.Module]:
    """A real low-dose sample slice as the shipped model takes it (windowed as the bundle does, [-1024, 3072] HU ->
    [0, 1], then the dose conditioning at quarter dose: (1, 3, H, W)), and the shipped model as inference.json
    builds it."""
    ldct = read_ct_slice(SAMPLE / "ldct-0.25/A0002-siemens-B40f/1-04.dcm").hu
    window = torch.from_numpy(((ldct.clip(-1024, 3072) + 1024) / 4096).astype(np.float32))[None]
    image = AddDoseConditiond(keys="image", dose_fraction=0.25)({"image": window})["image"][None]
    network = load_denoiser(REPO / "configs/inference.json", REPO / "models/model.pt").network
    assert network.dose_aware and image.shape[1] == 3
    return image, network.eval()


def block_datalist(tmp_path: Path) -> Path:
    """A block datalist of the embedded sample: its training and validation pairs (copied, absolute paths) and one
    held-out normal-dose test slice of each of two blocks (Siemens B40f chest)."""
    sample = json.loads((SAMPLE / "datalist.json").read_text())
    absolute = lambda e: {**e, "image": str(SAMPLE / e["image"]), "label": str(SAMPLE / e["label"])}  # noqa: E731
    test = [{"label": str(SAMPLE / e["label"]), "block": block, "anatomy": "chest", "kernel": "smooth"}
            for e, block in zip(sample["test"][:2], ("chest-a", "chest-b"))]  # fmt: skip
    tags = {"block": "chest-v", "anatomy": "chest", "kernel": "smooth"}  # as prepare_block_datalist tags them
    datalist = {"training": [absolute(e) for e in sample["training"]],
                "validation": [{**absolute(e), **tags} for e in sample["validation"][:1]], "test": test}  # fmt: skip
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps(datalist))
    return path


def test_benchmark_pilots_trains_evaluates_reports_and_resumes(tmp_path):
    """One-epoch pilots at two learning rates, StructKPN trained at the better one, the input and StructKPN scored
    on two held-out blocks: tables, CSV, figures; a rerun does nothing, a lost result is redone."""
    output, report = tmp_path / "bench", tmp_path / "report" / "benchmark.md"
    command = [
        sys.executable, "scripts/benchmark.py", "--datalist", str(block_datalist(tmp_path)), "--output_dir",
        str(output), "--report", str(report), "--methods", "ldct", "structkpn", "--epochs", "1", "--pilot_epochs",
        "1", "--learning_rates", "0.0001", "0.001", "--validation_step", "1", "--doses", "0.25", "--slice_step", "1",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]

    # the input's row is the PSNR of the very low-dose slice it was given, computed independently
    selection = json.loads((output / "test_selection.json").read_text())
    assert [e["block"] for e in selection["entries"]] == ["chest-a", "chest-b"]
    rows = list(csv.DictReader(open(report.with_suffix("") / "benchmark.csv")))
    for row in (r for r in rows if r["method"] == "ldct"):
        entry = next(e for e in selection["entries"] if e["block"] == row["block"])
        (low_dose,) = (output / "low_dose").glob(f"{row['block']}-{Path(entry['label']).stem}-*-dose0.25.npy")
        expected = paper_window_psnr(np.load(low_dose), read_ct_slice(entry["label"]).hu)
        assert float(row["psnr_paper"]) == pytest.approx(expected, abs=1e-3)
    assert {(r["method"], r["block"]) for r in rows} == {(m, b) for m in ("ldct", "structkpn") for b in ("chest-a", "chest-b")}

    # the learning rate with the better validation score trains the run
    pilot = json.loads((output / "pilots/structkpn.json").read_text())
    scores = {float(lr): s["validation_psnr"] for lr, s in pilot["scores"].items()}
    assert set(scores) == {0.0001, 0.001} and pilot["chosen"] == max(scores, key=scores.get)
    record = json.loads((output / "runs/structkpn/done.json").read_text())
    assert record["learning_rate"] == pilot["chosen"]
    assert record["patches"] == 1 * 4 * 8  # 1 epoch x 4 training slices x 8 patches
    text = report.read_text()
    assert text.index("| `ldct` |") < text.index("| `structkpn` |")
    for figure in ("chest-a.png", "chest-b.png", "loss_components.png", "kernels.png", "training_curves.png"):
        assert (report.with_suffix("") / figure).stat().st_size > 1000, figure

    # rerunning trains and evaluates nothing again, also with the state moved from a machine whose data lay
    # elsewhere (other absolute paths); a lost result (no figure slices either) is redone
    for name in ("test_selection.json", "results/structkpn.json"):
        state = output / name
        state.write_text(state.read_text().replace(str(SAMPLE), "/elsewhere/sample_data"))
    before = (output / "results/structkpn.json").stat().st_mtime_ns
    (output / "results/ldct.json").unlink()
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[train]" not in again.stdout and "[pilot]" not in again.stdout
    assert "[evaluate] ldct" in again.stdout and "[evaluate] structkpn" not in again.stdout
    assert (output / "results/structkpn.json").stat().st_mtime_ns == before

    # --report_only writes the report from what is there and runs nothing; a result whose figure slices are not
    # there (they stay out of git, so a fresh clone has none) keeps its rows, its figure panel is marked missing
    (output / "results/ldct.json").unlink()
    for figure_slice in (output / "results/structkpn").glob("*.npy"):
        figure_slice.unlink()
    report.unlink()
    only = subprocess.run([*command, "--report_only"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert only.returncode == 0, only.stderr[-3000:]
    assert "[evaluate]" not in only.stdout and not (output / "results/ldct.json").exists()
    assert "**Not finished yet**" in report.read_text() and "| `structkpn` |" in report.read_text()
    assert {r["method"] for r in csv.DictReader(open(report.with_suffix("") / "benchmark.csv"))} == {"structkpn"}
    assert (report.with_suffix("") / "chest-a.png").stat().st_size > 1000
    assert not list((output / "results/structkpn").glob("*.npy"))


def test_training_curve_reads_the_last_pass_of_each_epoch(tmp_path):
    """Epoch means from a train.json log, a resumed epoch counted once (its last pass)."""
    from bundle.evaluation.benchmark import training_curve

    log = tmp_path / "train.log"
    lines = ["Epoch: 1/2, Iter: 1/2 -- train_loss: 0.5", "Epoch: 1/2, Iter: 2/2 -- train_loss: 0.3",
             "Epoch: 2/2, Iter: 1/2 -- train_loss: 9.0", "resumed", "Epoch: 2/2, Iter: 1/2 -- train_loss: 0.2",
             "Epoch: 2/2, Iter: 2/2 -- train_loss: 0.1"]  # fmt: skip
    log.write_text("\n".join(f"2026-12-01 10:00:00,000 - INFO - {line} " for line in lines))
    assert training_curve(log) == pytest.approx([0.4, 0.15])


def test_oracle_methods_need_the_added_noise_and_use_its_level():
    """K-SVD given the true noise level denoises a noisy flat image towards its value; without the noise it refuses."""
    rng = np.random.default_rng(0)
    flat = np.full((64, 64), 40.0, dtype=np.float32)
    noise = rng.normal(0.0, 30.0, flat.shape).astype(np.float32)
    denoise = method_denoiser(METHODS["ksvd_oracle"], REPO)
    with pytest.raises(ValueError, match="ksvd_oracle is an oracle"):
        denoise(flat + noise, 0.25)
    output = denoise(flat + noise, 0.25, noise)
    assert np.abs(output - flat).std() < 0.5 * noise.std()


def test_benchmark_feeds_dose_aware_structkpn_its_conditioning_and_baselines_the_image(tmp_path):
    """Each learned method's network (train.json + its configs) takes the input the benchmark makes for it."""
    from bundle.evaluation.denoise import configured_network
    from bundle.transforms import local_noise_std

    hu = np.random.default_rng(0).uniform(-1100.0, 3200.0, (48, 40)).astype(np.float32)
    image = torch.from_numpy(((hu.clip(-1024, 3072) + 1024) / 4096).astype(np.float32))
    for name, dose_aware in (("structkpn", True), ("structkpn_authors", True), ("redcnn", False), ("unet", False), ("wavresnet", False)):
        method = METHODS[name]
        weights = tmp_path / f"{name}.pt"  # the untrained weights of the method's own configs
        configs = [REPO / "configs/train.json", *[REPO / f for f in method.config_files]]
        torch.save(configured_network(configs, **method.overrides).state_dict(), weights)
        denoiser = method_denoiser(method, REPO, weights)
        inputs = denoiser.network_input(hu, 0.4)[0]
        if dose_aware:  # image, its local noise std, the slice's dose fraction
            assert inputs.shape == (3, 48, 40) and torch.allclose(inputs[0], image, atol=1e-6)
            assert torch.allclose(inputs[1], local_noise_std(inputs[0]), atol=1e-6) and torch.all(inputs[2] == 0.4)
        else:
            assert inputs.shape == (1, 48, 40) and torch.allclose(inputs[0], image, atol=1e-6)
        assert denoiser(hu, 0.4).shape == (48, 40), name


def test_identity_method_returns_the_input_unchanged():
    """The low-dose row is the input as the scanner gives it, HU below and above the network's window included."""
    hu = np.array([[-2000.0, -1024.0, 0.0], [40.0, 3072.0, 5000.0], [1.5, -3.25, 100.0]], dtype=np.float32)
    np.testing.assert_array_equal(method_denoiser(METHODS["ldct"], REPO)(hu, 0.25), hu)


def test_speed_benchmark_prints_local_convolution_ratios(tmp_path):
    report = tmp_path / "performance.md"
    command = [sys.executable, "scripts/benchmark_speed.py", "--cases", "local_conv_naive", "local_conv_ours"]
    done = subprocess.run([*command, "--repeats", "1", "--report", str(report)], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split(" | ") for line in done.stdout.splitlines() if line.startswith("| local_conv")]
    assert [row[0] for row in rows] == ["| local_conv_naive", "| local_conv_ours"]
    naive_s, ours_s = float(rows[0][1]), float(rows[1][1])
    ratio = float(re.fullmatch(r"([0-9.]+)x naive time", rows[1][2]).group(1))
    assert ratio == pytest.approx(ours_s / naive_s, abs=0.01 + 0.002 * ratio / min(ours_s, naive_s))
    multiple, kernel_mib = re.search(r"peak = ([0-9.]+)x the ([0-9]+) MiB kernel tensor", rows[1][4]).groups()
    assert int(kernel_mib) == 441 * 512 * 512 * 4 // 2**20  # (1, 441, 512, 512) float32, closed form: 441 MiB
    assert float(multiple) == pytest.approx(float(rows[1][3]) / 441, abs=0.01)
    assert report.read_text().startswith("Output of `python scripts/benchmark_speed.py")


def test_speed_table_states_each_figure_from_the_measurements():
    """The table's ratios, multiples and sums are computed from the measured results (synthetic ones here)."""
    from bundle.evaluation.speed import SpeedOptions, table

    stages = {"conditioning": 0.01, "backbone": 0.2, "bands": 0.1, "conv_head": 0.3, "softmax": 0.1, "tap_loop": 0.2}
    results = {
        "local_conv_naive": {"seconds": [4.0, 2.0, 3.0], "peak_extra_mib": 900.0, "kernel_tensor_mib": 441.0},
        "local_conv_ours": {"seconds": [0.5, 1.0, 0.75], "peak_extra_mib": 44.1, "kernel_tensor_mib": 441.0},
        "slice_lite": {"seconds": [0.4], "peak_extra_mib": 100.0},
        "slice_lite_3_slices": {"seconds": [0.5, 0.52, 0.6], "peak_extra_mib": 130.0},
        "slice_redcnn": {"seconds": [2.0]},
        "stages_lite": {"stages": stages},
        "series_lite": {"seconds": [1.0], "slices": 4, "slices_per_second": 3.5},
    }
    options = SpeedOptions(REPO, Path("x"), None, Path("x"), None, 1, "cpu", Path("/nonexistent"))
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table(results, options).splitlines()[2:]}
    assert rows["local_conv_naive"][1:3] == ["3.000", "1.00x naive time"]
    assert rows["local_conv_ours"][1:4] == ["0.750", "0.25x naive time", "44"]  # medians 0.75 / 3.0
    assert rows["local_conv_ours"][4].startswith("peak = 0.10x the 441 MiB kernel tensor")
    assert rows["slice_lite"][2] == "5.0x faster than redcnn"  # 2.0 / 0.4
    assert rows["slice_lite_3_slices"][2].startswith("1.30x the time of slice_lite; 1.30x its memory")  # 0.52 / 0.4
    assert rows["stages_lite"][1] == "0.310"  # 0.01 + 0.2 + 0.1
    assert rows["stages_lite"][2] == "6.0x faster bands than before"  # (0.3 + 0.1 + 0.2) / 0.1
    assert "= 0.600 s" in rows["stages_lite"][4]
    assert "4 slices, 3.50 slices/s" in rows["series_lite"][4]


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
    stages = re.search(r"conditioning ([0-9.]+) s \+ backbone ([0-9.]+) s \+ bands ([0-9.]+) s", rows["stages_lite"])
    conditioning, backbone, bands = (float(x) for x in stages.groups())
    assert conditioning > 0.0  # the dose-aware model's inputs are part of its time
    # the stages timed one by one add up to about the time of the whole slice, timed in another process
    whole = float(rows["slice_lite"].split(" | ")[1])
    assert 1 / 3 < total / whole < 3, (total, whole)


def test_speed_rounds_pool_timings_and_keep_the_worst_memory():
    rounds = [
        {"seconds": [1.0, 3.0], "peak_extra_mib": 10.0, "slices": 6},
        {"error": "killed"},
        {"seconds": [2.0], "peak_extra_mib": 30.0, "slices": 6},
    ]
    pooled = pool_rounds(rounds)
    assert pooled["seconds"] == [1.0, 3.0, 2.0] and pooled["peak_extra_mib"] == 30.0
    assert pooled["slices_per_second"] == 3.0  # 6 slices / median 2 s
    stages = pool_rounds([{"stages": {"backbone": b}} for b in (0.3, 0.1, 0.2)])
    assert stages["stages"] == {"backbone": 0.2}
    assert pool_rounds([{"error": "a"}, {"error": "b"}]) == {"error": "b"}


def test_fast_inference_paths_equal_the_reference_path_in_hu():
    """Shipped model on a real slice: banded eager and TorchScript equal the whole-slice kernels path (Eq. 1)."""
    image, network = sample_slice_and_shipped_model()
    scripted = torch.jit.load(str(REPO / "models/model.ts"), map_location="cpu").eval()
    with torch.inference_mode():
        from bundle.layers import local_conv2d

        # all k * k kernels (mixed with the identity by the dose) formed at once, applied to the image channel
        reference = local_conv2d(image[:, :1], network.predict_kernels(image))
        banded, script_output = network(image), scripted(image)
    for fast in (banded, script_output):
        # float rounding only (head as matrix products, exp2, taps summed in another order): 0.018 HU measured
        difference_hu = (fast - reference).abs() * 4096
        assert float(difference_hu.max()) < 0.05 and float(difference_hu.mean()) < 0.001


def test_bfloat16_inference_stays_within_a_few_hu_of_float32():
    """The opt-in bf16 path on a real slice (backbone only): mean |diff| under 0.1 HU, max 10 HU; output float32.

    bf16 keeps 8 mantissa bits, so each kernel logit carries a relative error of up to 2^-9; on a pixel whose
    neighbourhood spans a high-contrast edge that moves the weighted average by a few HU."""
    image, network = sample_slice_and_shipped_model()
    with torch.inference_mode():
        full = network(image)
        network.inference_dtype = "bfloat16"
        half = network(image)
    difference_hu = (half - full).abs() * 4096
    assert half.dtype == torch.float32
    # measured with the shipped 0.3.0 model: mean 0.044 HU, max 7.05 HU (0.2.0: mean 0.042 HU, max 3.53 HU)
    assert float(difference_hu.mean()) < 0.1 and float(difference_hu.max()) < 10.0


def test_speed_benchmark_times_the_shipped_model_against_the_single_dose_model(tmp_path):
    """The dose-aware model's time is stated against the single-dose model it replaced (issue #13: within 1.25x),
    whose weights come from the git history: both cases load and run."""
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=REPO, capture_output=True, text=True)
    if shallow.stdout.strip() != "false":
        pytest.skip("needs the git history (the single-dose weights are an earlier commit's)")
    command = [sys.executable, "scripts/benchmark_speed.py", "--cases", "slice_lite", "slice_lite_single_dose",
               "--repeats", "1"]  # fmt: skip
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = {r[0][2:]: r for r in (line.split(" | ") for line in done.stdout.splitlines()) if r[0].startswith("| slice_")}
    lite_s, single_s = float(rows["slice_lite"][1]), float(rows["slice_lite_single_dose"][1])
    ratio = float(re.fullmatch(r"shipped dose-aware model takes ([0-9.]+)x this time", rows["slice_lite_single_dose"][2]).group(1))
    assert ratio == pytest.approx(lite_s / single_s, abs=0.006 + 0.002 / min(lite_s, single_s))
    # each denoised the quarter-dose sample slice well above its input (27.7 dB; the single-dose model was trained
    # at quarter dose)
    assert all(float(re.search(r"PSNR ([0-9.]+) dB", rows[c][4]).group(1)) > 30 for c in rows)

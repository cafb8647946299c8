"""End-to-end runs of the bundle's configs on the embedded sample data, as the Model Zoo's tests run them."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from skimage.metrics import structural_similarity

from bundle.evaluation.denoise import load_denoiser
from bundle.io import read_ct_slice
from bundle.networks import StructKPN
from bundle.transforms import AddDoseConditiond

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
META = str(CONFIGS / "metadata.json")
LOGGING = str(CONFIGS / "logging.conf")
SAMPLE = REPO / "sample_data"
DATALIST = json.loads((SAMPLE / "datalist.json").read_text())


def workflow(workflow_type: str, config_files: list[str], **overrides) -> ConfigWorkflow:
    files = [str(CONFIGS / f) for f in config_files]
    flow = ConfigWorkflow(
        config_file=files if len(files) > 1 else files[0],
        meta_file=META,
        logging_file=LOGGING,
        workflow_type=workflow_type,
        **overrides,
    )
    flow.initialize()
    assert flow.check_properties() == []
    return flow


def sample_training(out: Path, config_files: Sequence[str] = ("train.json",), **overrides) -> ConfigWorkflow:
    """The training workflow on the embedded sample, writing under ``out`` (``models/``, ``eval/``)."""
    return workflow(
        "train",
        list(config_files),
        ckpt_dir=str(out / "models"),
        output_dir=str(out / "eval"),
        dataset_dir=str(SAMPLE),
        **overrides,
    )


def psnr_in_window(pred_hu: np.ndarray, label_hu: np.ndarray, window=(-160.0, 240.0)) -> float:
    """PSNR with data range 1 after mapping the HU window to [0, 1] (the paper's convention)."""
    lo, hi = window
    a = np.clip((pred_hu - lo) / (hi - lo), 0, 1)
    b = np.clip((label_hu - lo) / (hi - lo), 0, 1)
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


def near_identity_checkpoint(path: Path, centre_logit: float = 60.0) -> Path:
    """The StructKPN that inference.json builds (its network_def, e.g. dose-aware), with kernels that are (to float
    precision) the centre tap: output = input."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    net = parser.get_parsed_content("network_def")
    last = net.head[-1]  # the 1x1 convolution giving the k*k kernel logits
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
        last.bias[net.kernel_size**2 // 2] = centre_logit
    torch.save(net.state_dict(), path)
    return path


def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Three epochs of training on the sample (validation each epoch), shared by the later tests; with the
    validation PSNR and a copy of the weights at each validation."""
    out = tmp_path_factory.mktemp("train")
    flow = sample_training(out, epochs=3, val_interval=1, patches_per_slice=4)
    trainer = flow.parser.get_parsed_content("train#trainer")
    network, validations = flow.parser.get_parsed_content("network"), []
    flow.parser.get_parsed_content("validate#evaluator").add_event_handler(
        Events.EPOCH_COMPLETED,
        lambda engine: validations.append(
            (engine.state.metrics["val_psnr"], {k: v.detach().clone() for k, v in network.state_dict().items()})
        ),
    )
    flow.run()
    flow.finalize()
    return out, trainer, validations


def test_training_saves_best_model_and_resumable_state(trained):
    out, trainer, validations = trained
    n_train = len(DATALIST["training"])
    assert trainer.state.epoch == 3
    assert trainer.state.iteration == 3 * int(np.ceil(n_train / 2))
    assert np.isfinite(trainer.state.output[0]["loss"])
    state = torch.load(out / "models" / "model.pt", map_location="cpu")
    # README: "The best model by validation PSNR is saved as models/model.pt" (the first of equal bests)
    assert len(validations) == 3
    best = max(range(3), key=lambda i: (validations[i][0], -i))
    for key, value in validations[best][1].items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0, msg=f"model.pt is not epoch {best + 1}'s {key}")
    if best < 2:  # the final weights differ from the best ones: model.pt is not simply the last epoch's
        assert any(not torch.equal(state[k], v) for k, v in validations[2][1].items())
    # the settings it was trained with, beside it: those inference.json loads it with
    assert json.loads((out / "models" / "model.json").read_text()) == json.loads((REPO / "models" / "model.json").read_text())
    network = load_denoiser(CONFIGS / "inference.json", out / "models" / "model.pt").network  # strict: keys, shapes
    assert isinstance(network, StructKPN) and network.dose_aware
    assert set(state) == set(network.state_dict())  # a plain state dict, loadable by inference.json
    assert (out / "models" / "training_final.pt").is_file()
    assert list((out / "eval").glob("events.out.tfevents*")), "TensorBoard log written"


def test_training_resumes_from_checkpoint(trained, tmp_path):
    out, _, _ = trained
    flow = sample_training(
        tmp_path, epochs=4, val_interval=5, patches_per_slice=2, resume_from=str(out / "models" / "training_final.pt")
    )
    trainer = flow.parser.get_parsed_content("train#trainer")
    flow.run()
    assert trainer.state.epoch == 4
    assert trainer.state.iteration == 4 * int(np.ceil(len(DATALIST["training"]) / 2))  # continued, not restarted
    flow.finalize()


def test_evaluate_writes_per_slice_and_mean_metrics(trained, tmp_path):
    out, _, _ = trained
    flow = workflow(
        "train",
        ["train.json", "evaluate.json"],
        ckpt_path=str(out / "models" / "model.pt"),
        output_dir=str(tmp_path),
        dataset_dir=str(SAMPLE),
    )
    flow.run()
    flow.finalize()
    with open(tmp_path / "metrics.csv") as f:
        means = {row[0]: float(row[1]) for row in csv.reader(f)}
    assert {"test_psnr", "test_ssim", "input_psnr", "input_ssim"} <= set(means)
    with open(tmp_path / "input_psnr_raw.csv") as f:
        rows = list(csv.reader(f))[1:]
    test_items = DATALIST["test"]
    assert len(rows) == len(test_items)
    # Independent check of the input's PSNR: read the DICOM files with pydicom and compute it in numpy.
    expected = []
    for item in test_items:
        ldct = read_ct_slice(SAMPLE / item["image"]).hu.clip(-1024, 3072)
        ndct = read_ct_slice(SAMPLE / item["label"]).hu.clip(-1024, 3072)
        expected.append(psnr_in_window(ldct, ndct))
    assert means["input_psnr"] == pytest.approx(np.mean(expected), abs=1e-3)
    # The output's PSNR and SSIM: the trained model run slice by slice through load_denoiser (inference.json's
    # window and conditioning at each item's dose), scored in numpy and scikit-image in the metric window.
    denoise = load_denoiser(CONFIGS / "inference.json", out / "models" / "model.pt")
    psnrs, ssims = [], []
    for item in test_items:
        ldct = read_ct_slice(SAMPLE / item["image"]).hu
        ndct = read_ct_slice(SAMPLE / item["label"]).hu.clip(-1024, 3072)
        denoised = denoise(ldct, dose_fraction=item["dose_fraction"])
        psnrs.append(psnr_in_window(denoised, ndct))
        unit = [np.clip((x - -160.0) / 400.0, 0, 1) for x in (denoised, ndct)]
        ssims.append(structural_similarity(*unit, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False))
    assert means["test_psnr"] == pytest.approx(np.mean(psnrs), abs=1e-3)
    assert means["test_ssim"] == pytest.approx(np.mean(ssims), abs=5e-3)


def test_inference_denoises_each_series_without_touching_inputs(tmp_path):
    ldct_dir = SAMPLE / Path(DATALIST["test"][0]["image"]).parts[0]
    before = tree_digest(ldct_dir)
    ckpt = near_identity_checkpoint(tmp_path / "identity.pt")
    flow = workflow(
        "infer", ["inference.json"], ckpt_path=str(ckpt), dataset_dir=str(ldct_dir), output_dir=str(tmp_path / "out")
    )
    flow.run()
    flow.finalize()
    assert tree_digest(ldct_dir) == before, "inputs must never be modified"
    inputs = sorted(p.relative_to(ldct_dir) for p in ldct_dir.rglob("*") if p.is_file())
    outputs = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert outputs == inputs, "DICOM input gives a derived DICOM file per input file, in the mirrored tree"
    series = {str(Path(item["image"]).parent) for item in DATALIST["training"] + DATALIST["test"]}
    series = {s for s in series if s.startswith(ldct_dir.name)}
    derived_series = {pydicom.dcmread(tmp_path / "out" / p).SeriesInstanceUID for p in outputs}
    assert len(derived_series) == len(series)
    # The identity network makes the whole DICOM -> HU -> window -> network -> HU -> DICOM chain checkable exactly;
    # values outside the window [-1024, 3072] HU pass through unchanged.
    for path in inputs:
        expected = read_ct_slice(ldct_dir / path).hu
        np.testing.assert_allclose(read_ct_slice(tmp_path / "out" / path).hu, expected, atol=1.0)


def test_inference_without_weights_says_how_to_get_them(tmp_path):
    with pytest.raises(Exception) as raised:
        workflow("infer", ["inference.json"], ckpt_path=str(tmp_path / "missing.pt"), output_dir=str(tmp_path)).run()
    causes = [raised.value]
    while causes[-1].__cause__ is not None:  # MONAI wraps errors of config expressions in RuntimeError
        causes.append(causes[-1].__cause__)
    assert any(isinstance(e, FileNotFoundError) and "missing.pt: no model weights" in str(e) for e in causes)
    assert "run training" in str(causes[-1])
    assert not [p for p in tmp_path.rglob("*") if p.is_file()]


def test_command_line_verify_and_export(trained, tmp_path):
    out, _, _ = trained
    env = dict(os.environ, PYTHONPATH=str(REPO))
    base = ["--meta_file", META, "--config_file", str(CONFIGS / "inference.json")]
    subprocess.run([sys.executable, "-m", "monai.bundle", "verify_net_in_out", "network_def", *base], check=True, cwd=REPO, env=env)
    exported = tmp_path / "model.ts"
    subprocess.run(
        [sys.executable, "-m", "monai.bundle", "ckpt_export", "network_def", "--filepath", str(exported),
         "--ckpt_file", str(out / "models" / "model.pt"), *base],
        check=True, cwd=REPO, env=env,
    )
    scripted = torch.jit.load(str(exported))
    net = load_denoiser(CONFIGS / "inference.json", out / "models" / "model.pt").network
    # the dose-aware network's input: a windowed image, its local noise std and the dose fraction
    x = AddDoseConditiond(keys="image", dose_fraction=0.25)({"image": torch.rand(1, 40, 52)})["image"][None]
    assert x.shape == (1, 3, 40, 52)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), atol=1e-5, rtol=1e-5)


def test_command_line_training_with_run_id(tmp_path):
    """The README's form: `python -m monai.bundle run training ...` with command-line overrides."""
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training", "--meta_file", META,
        "--config_file", str(CONFIGS / "train.json"), "--logging_file", LOGGING,
        "--bundle_root", str(REPO), "--ckpt_dir", str(tmp_path / "models"), "--output_dir", str(tmp_path / "eval"),
        "--epochs", "1", "--val_interval", "1", "--patches_per_slice", "2",
    ]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "train_loss" in result.stdout + result.stderr
    assert (tmp_path / "models" / "model.pt").is_file()


@pytest.mark.skipif(shutil.which("torchrun") is None, reason="torchrun not on PATH")
def test_multi_gpu_config_runs_ddp_on_cpu_with_gloo(tmp_path):
    cmd = [
        "torchrun", "--standalone", "--nnodes=1", "--nproc_per_node=2", "-m", "monai.bundle", "run",
        "--meta_file", META, "--config_file", f"['{CONFIGS / 'train.json'}','{CONFIGS / 'multi_gpu_train.json'}']",
        "--logging_file", LOGGING, "--bundle_root", str(REPO), "--ckpt_dir", str(tmp_path / "models"),
        "--output_dir", str(tmp_path / "eval"), "--epochs", "1", "--val_interval", "1", "--patches_per_slice", "2",
    ]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu")
    network = load_denoiser(CONFIGS / "inference.json", tmp_path / "models" / "model.pt").network  # strict load
    assert set(state) == set(network.state_dict())  # saved unwrapped from DistributedDataParallel

"""The noise strength of the benchmark's classical methods: what it scales, and its choice on the validation split
with the low-dose input as the floor."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest

from bundle.baselines.ksvd import ksvd_denoise
from bundle.evaluation.benchmark import (
    METHODS,
    BenchmarkSettings,
    chosen_noise_strength,
    method_denoiser,
    run_benchmark,
    select_noise_strength,
)
from bundle.io import read_ct_slice
from reference_metrics import paper_window_psnr

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
CROP = (slice(200, 296), slice(160, 256))  # 96 x 96 pixels of mediastinum and lung


def crop_dicom(source: Path, target: Path) -> str:
    """Write the ``CROP`` of DICOM slice ``source`` to ``target`` (same tags, smaller image); returns ``target``."""
    ds = pydicom.dcmread(source)
    pixels = ds.pixel_array[CROP].copy()
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target)
    return str(target)


def cropped_settings(tmp_path: Path, noise_strengths: tuple[float, ...]) -> BenchmarkSettings:
    """A block datalist of 96 x 96 crops of the sample: two validation pairs at quarter dose (block chest-v) and one
    held-out normal-dose test slice (block chest-t)."""
    root = tmp_path / "data"
    block = {"anatomy": "chest", "kernel": "smooth"}
    validation = [{"image": crop_dicom(SAMPLE / f"ldct-0.25/A0002-siemens-B40f/{n}", root / f"ldct/{n}"),
                   "label": crop_dicom(SAMPLE / f"ndct/A0002-siemens-B40f/{n}", root / f"ndct/{n}"),
                   "dose_fraction": 0.25, "block": "chest-v", **block} for n in ("1-04.dcm", "1-10.dcm")]  # fmt: skip
    test = [{"label": crop_dicom(SAMPLE / "ndct/A0002-siemens-B40f/1-17.dcm", root / "ndct/1-17.dcm"),
             "block": "chest-t", **block}]  # fmt: skip
    datalist = root / "datalist.json"
    datalist.write_text(json.dumps({"training": [], "validation": validation, "test": test}))
    return BenchmarkSettings(repo=REPO, datalist=datalist, output_dir=tmp_path / "bench", report=tmp_path / "r.md",
                             command=["test"], methods=["ldct", "ksvd_oracle"], doses=(0.25,), slice_step=1,
                             validation_step=1, noise_strengths=noise_strengths, threads=2)  # fmt: skip


def test_noise_strength_scales_the_noise_power_a_classical_method_removes():
    """K-SVD's oracle at strength s is K-SVD at sqrt(s) times the true noise level (power scales as s); a gentler
    strength leaves more of the noise; a non-positive strength is refused."""
    rng = np.random.default_rng(0)
    flat = np.full((64, 64), 40.0, dtype=np.float32)
    noise = rng.normal(0.0, 30.0, flat.shape).astype(np.float32)
    residual = {}
    for strength in (0.25, 1.0):
        output = method_denoiser(METHODS["ksvd_oracle"], REPO, noise_strength=strength)(flat + noise, 0.25, noise)
        image = np.clip((flat + noise - (-1024.0)) / 4096.0, 0.0, 1.0).astype(np.float64)
        expected = ksvd_denoise(image, sigma=np.sqrt(strength) * noise.std() / 4096.0, random_state=0) * 4096 - 1024
        np.testing.assert_allclose(output, expected, atol=1e-2)
        residual[strength] = float(np.std(output - flat))
    assert residual[1.0] < 0.5 * noise.std() and residual[0.25] > residual[1.0]
    with pytest.raises(ValueError, match="noise_strength must be > 0"):
        method_denoiser(METHODS["bm3d"], REPO, noise_strength=0.0)


def test_the_chosen_strength_is_the_best_validation_psnr_that_never_falls_below_the_input():
    below = [["chest-v", 0.5, "ssim_paper", -0.01]]
    scores = {0.25: {"validation_psnr": 30.0, "below_input": []}, 0.5: {"validation_psnr": 31.0, "below_input": []},
              1.0: {"validation_psnr": 32.0, "below_input": below}}  # fmt: skip
    assert chosen_noise_strength(scores) == 0.5  # the best PSNR, 1.0, is below the input once
    scores[0.5]["below_input"] = below * 2
    assert chosen_noise_strength(scores) == 0.25
    scores[0.25]["below_input"] = below * 3
    assert chosen_noise_strength(scores) == 1.0  # none clean: the fewest cases below the input


def test_strengths_are_scored_on_validation_and_results_at_another_strength_are_redone(tmp_path):
    """Each strength's validation PSNR is the mean of an independent PSNR of the denoised pairs, its cases below the
    input are those where that PSNR is lower; rerunning scores nothing again. The benchmark evaluates the oracle at
    the chosen strength, and results left from another strength are discarded, not kept as finished."""
    settings = cropped_settings(tmp_path, (0.25, 1.0))
    record = select_noise_strength(METHODS["ksvd_oracle"], settings)
    pairs = json.loads(settings.datalist.read_text())["validation"]
    for strength in (0.25, 1.0):
        denoise = method_denoiser(METHODS["ksvd_oracle"], REPO, noise_strength=strength)
        psnr, given = [], []
        for pair in pairs:
            image, label = (read_ct_slice(pair[k]).hu.astype(np.float32) for k in ("image", "label"))
            psnr.append(paper_window_psnr(denoise(image, 0.25, image - label), label))
            given.append(paper_window_psnr(image, label))
        score = record["scores"][f"{strength:g}"]
        assert score["validation_psnr"] == pytest.approx(np.mean(psnr), abs=2e-3)
        below_psnr = [case for case in score["below_input"] if case[2] == "psnr_paper"]
        assert bool(below_psnr) == (np.mean(psnr) < np.mean(given))  # one block: the block mean against the input's
    assert record["chosen"] == chosen_noise_strength({float(k): v for k, v in record["scores"].items()})
    path = settings.output_dir / "pilots/ksvd_oracle.json"
    before = path.read_text()
    assert select_noise_strength(METHODS["ksvd_oracle"], settings)["chosen"] == record["chosen"]
    assert json.loads(path.read_text())["scores"] == json.loads(before)["scores"]

    # a finished result from before the choice (no noise_strength: 1) with made-up scores is redone at the chosen 0.5
    settings = cropped_settings(tmp_path, (0.5,))
    results = settings.output_dir / "results"
    (results / "ksvd_oracle").mkdir(parents=True)
    np.save(results / "ksvd_oracle/chest-t.npy", np.zeros((96, 96), np.float32))
    row = {"block": "chest-t", "anatomy": "chest", "kernel": "smooth", "label": pairs[0]["label"],
           "dose_fraction": 0.25, "seconds": 1.0, "psnr_paper": 99.0, "ssim_paper": 1.0, "psnr_own": 99.0,
           "ssim_own": 1.0}  # fmt: skip
    made_up = {"method": "ksvd_oracle", "description": "", "threads": 2, "parameters": None, "peak_extra_mib": 0.0}
    (results / "ksvd_oracle.json").write_text(json.dumps({**made_up, "slices": [row]}))
    run_benchmark(settings)
    result = json.loads((results / "ksvd_oracle.json").read_text())
    assert result["noise_strength"] == 0.5 and len(result["slices"]) == 1
    assert result["slices"][0]["psnr_paper"] < 60.0
    assert "noise strength 0.5" in settings.report.read_text()


def test_validation_pairs_without_block_tags_are_refused_by_name(tmp_path):
    from bundle.evaluation.benchmark import validation_scores

    settings = cropped_settings(tmp_path, (1.0,))
    datalist = json.loads(settings.datalist.read_text())
    datalist["validation"] = [{k: v for k, v in e.items() if k != "anatomy"} for e in datalist["validation"]]
    settings.datalist.write_text(json.dumps(datalist))
    with pytest.raises(ValueError, match=r"validation pair .*1-04\.dcm has no anatomy: the benchmark takes a block"):
        validation_scores(METHODS["ldct"], settings)

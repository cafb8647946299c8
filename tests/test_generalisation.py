"""The held-out evaluation: kernel-matched noise, scores against closed forms, resumable rows and the worst case."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from bundle.evaluation.generalisation import (
    evaluate_blocks,
    held_out_slices,
    noise_simulator,
    report_markdown,
    summarise,
)
from dicom_factory import phantom_hu, write_ct_series


def test_noise_filter_follows_the_kernel():
    assert noise_simulator("smooth").filter_name == "hann"
    assert noise_simulator("sharp").filter_name == "ram-lak"
    assert noise_simulator("sharp", "hann").filter_name == "hann"
    with pytest.raises(ValueError, match="kernel class 'medium'"):
        noise_simulator("medium")


@pytest.fixture
def block_datalist(tmp_path):
    volume = phantom_hu(64, seed=0)[None]
    sharp = write_ct_series(tmp_path / "sharp", volume, pixel_spacing_mm=0.8)
    smooth = write_ct_series(tmp_path / "smooth", volume, pixel_spacing_mm=0.8, patient_id="TEST-002")
    entries = [{"label": os.path.relpath(p, tmp_path), "block": block, "anatomy": "abdomen", "kernel": kernel}
               for block, kernel, paths in (("b-sharp", "sharp", sharp), ("b-smooth", "smooth", smooth))
               for p in paths]
    path = tmp_path / "datalist.json"
    path.write_text(json.dumps({"test": entries}))
    return path


def test_identity_scores_as_its_input_and_a_rerun_resumes(block_datalist, tmp_path):
    calls = []

    def identity(low_dose_hu, dose_fraction):
        calls.append(dose_fraction)
        return low_dose_hu

    results = tmp_path / "rows.csv"
    rows = evaluate_blocks(identity, block_datalist, results, dose_fractions=(0.25, 0.5), slice_step=1,
                           bm3d_dose_fractions=(), cache_dir=tmp_path / "cache")
    assert len(rows) == 4 and len(calls) == 4
    assert {(r["block"], r["noise_filter"]) for r in rows} == {("b-sharp", "ram-lak"), ("b-smooth", "hann")}
    for row in rows:
        for key in ("psnr_paper", "ssim_own", "psnr_brain", "noise_ratio"):
            np.testing.assert_equal(row[f"output_{key}"], row[f"input_{key}"])
    quarter = [r for r in rows if r["dose_fraction"] == 0.25]
    half = {r["label"]: r for r in rows if r["dose_fraction"] == 0.5}
    assert all(r["input_psnr_paper"] < half[r["label"]]["input_psnr_paper"] for r in quarter)  # more noise
    assert len(list((tmp_path / "cache").glob("*-ram-lak-*.npy"))) == 2

    def must_not_run(low_dose_hu, dose_fraction):
        raise AssertionError("a finished (slice, dose) was measured again")

    again = evaluate_blocks(must_not_run, block_datalist, results, dose_fractions=(0.25, 0.5), slice_step=1,
                            bm3d_dose_fractions=(), cache_dir=tmp_path / "cache")
    assert len(again) == 4
    stress = evaluate_blocks(identity, block_datalist, tmp_path / "stress.csv", dose_fractions=(0.5,),
                             slice_step=1, bm3d_dose_fractions=(), noise_filter="hann", kernels=("sharp",))
    assert {(r["block"], r["noise_filter"]) for r in stress} == {("b-sharp", "hann")}
    # the apodised (Hann) filter passes less high-frequency noise than the ramp at the same dose
    assert stress[0]["input_psnr_paper"] > half[stress[0]["label"]]["input_psnr_paper"] + 1.0


def test_validation_split_scores_each_slice_once(block_datalist, tmp_path):
    """The validation split lists every slice at two doses: it is scored once a slice and dose, in block order."""
    test = json.loads(block_datalist.read_text())["test"]
    validation = [{**entry, "dose_fraction": dose} for entry in test for dose in (0.1, 0.5)]
    block_datalist.write_text(json.dumps({"test": test[:1], "validation": validation}))
    slices = list(held_out_slices(block_datalist, split="validation"))
    assert [s["label"] for s in slices] == [str((tmp_path / e["label"]).resolve()) for e in test]
    assert len(list(held_out_slices(block_datalist))) == 1  # the test split by default
    rows = evaluate_blocks(lambda hu, dose: hu, block_datalist, tmp_path / "rows.csv", dose_fractions=(0.5,),
                           slice_step=1, bm3d_dose_fractions=(), split="validation")
    assert sorted(r["label"] for r in rows) == sorted(s["label"] for s in slices)


def test_report_states_the_worst_case_and_counts_every_loss():
    def row(block, dose, gain_psnr, gain_ssim):
        base = {"block": block, "anatomy": "chest", "dose_fraction": dose, "reference_noise_hu": 10.0,
                "input_noise_ratio": 2.0, "output_noise_ratio": 1.0, "input_hu_shift": -0.25,
                "output_hu_shift": 0.5}
        for window in ("paper", "own", "brain"):
            base.update({f"input_psnr_{window}": 30.0, f"output_psnr_{window}": 30.0 + gain_psnr,
                         f"input_ssim_{window}": 0.9, f"output_ssim_{window}": 0.9 + gain_ssim})
        return base

    summary = summarise([row("a", 0.25, 2.0, 0.01), row("a", 0.25, 1.0, 0.01), row("b", 0.5, -0.5, 0.02)])
    assert summary[0]["gain_psnr_paper"] == pytest.approx(1.5)  # mean of the block's slices
    text = report_markdown(summary)
    assert "PSNR gain over the input, paper window: worst -0.50 dB (b, dose 0.5)" in text
    assert "worse than its input: 3 of 12" in text  # block b: PSNR in each of the 3 windows
    assert "| 2.00 / 1.00 | -0.25 / +0.50 |" in text  # noise ratio and HU shift, input / output
    assert "largest |mean HU shift| 0.50 HU (a, dose 0.25; the input's there -0.25 HU); within 2 HU in 2 of 2" in text

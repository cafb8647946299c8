"""The benchmark's multi-slice StructKPN: each test slice given with its neighbours, their own simulated noise."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bundle.evaluation.benchmark import (
    METHODS,
    BenchmarkSettings,
    evaluate,
    low_dose_slice,
    low_dose_stack,
    select_test_slices,
    neighbour_stacks,
)
from bundle.evaluation.denoise import configured_network, load_denoiser
from bundle.io import read_ct_slice
from reference_metrics import paper_window_psnr

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample_data"
#: four normal-dose slices of one sample series, in z order, standing in for a block's adjacent slices
SERIES = [f"ndct/A0002-siemens-B40f/1-{n}.dcm" for n in ("04", "10", "17", "24")]


def neighbour_settings(tmp_path: Path, with_neighbours: bool = True,
                       slices: tuple[int, ...] = (1, 2)) -> BenchmarkSettings:  # fmt: skip
    """Benchmark settings on a datalist whose one test block is the ``slices`` of ``SERIES`` (2nd and 3rd), each
    listing its three adjacent slices (``label_slices``, as ``prepare_block_datalist(neighbours=1)`` writes them)."""
    root = tmp_path / "data"
    root.mkdir(exist_ok=True)
    test = []
    for index in slices:
        entry = {"label": str(SAMPLE / SERIES[index]), "block": "chest-a", "anatomy": "chest", "kernel": "smooth"}
        if with_neighbours:
            entry["label_slices"] = [str(SAMPLE / s) for s in SERIES[index - 1 : index + 2]]
        test.append(entry)
    datalist = root / ("datalist.json" if with_neighbours else "datalist_plain.json")
    datalist.write_text(json.dumps({"training": [], "validation": [], "test": test}))
    return BenchmarkSettings(repo=REPO, datalist=datalist, output_dir=tmp_path / "bench", report=tmp_path / "r.md",
                             command=["test"], doses=(0.25,), slice_step=1, threads=2)  # fmt: skip


def test_a_test_slice_is_given_with_its_neighbours_each_with_its_own_noise(tmp_path):
    settings = neighbour_settings(tmp_path)
    stacks = neighbour_stacks(settings, 3)
    entry = select_test_slices(settings)["entries"][0]
    assert stacks[entry["label"]] == [str((SAMPLE / s).resolve()) for s in SERIES[:3]]
    stack = low_dose_stack(entry, stacks[entry["label"]], 0.25, settings)
    assert stack.shape == (3, 512, 512)
    np.testing.assert_array_equal(stack[1], low_dose_slice(entry, 0.25, settings))  # what single-slice methods get
    added = [stack[i] - read_ct_slice(SAMPLE / s).hu for i, s in enumerate(SERIES[:3])]
    for noise in added:  # quarter dose: tens of HU of added noise in every slice
        assert 5.0 < np.std(noise[200:300, 200:300]) < 200.0
    # independent noise: the added noise of a slice and of its neighbour do not correlate
    for other in (added[0], added[2]):
        assert abs(np.corrcoef(added[1][150:350, 150:350].ravel(), other[150:350, 150:350].ravel())[0, 1]) < 0.1


def test_the_neighbours_stay_out_of_the_stored_test_selection(tmp_path):
    """The selection (compared on a rerun to refuse other test settings) is the same with and without neighbours."""
    with_neighbours, without = neighbour_settings(tmp_path), neighbour_settings(tmp_path, with_neighbours=False)
    assert select_test_slices(with_neighbours) == select_test_slices(without)
    with pytest.raises(ValueError, match=r"1-10\.dcm lists no 3 adjacent slices .*--neighbours 1"):
        neighbour_stacks(without, 3)


def test_multi_slice_structkpn_is_scored_on_the_slice_with_its_neighbours(tmp_path):
    """evaluate() scores structkpn_s3 on its output for the stack in slice order; the same network given the
    slice alone (or the neighbours swapped) scores otherwise, so the row shows what the neighbours were."""
    settings = neighbour_settings(tmp_path, slices=(2,))
    settings.output_dir.mkdir(parents=True)
    selection = select_test_slices(settings)
    (settings.output_dir / "test_selection.json").write_text(json.dumps(selection))
    method = METHODS["structkpn_s3"]
    assert method.slices == 3
    network = configured_network([REPO / "configs/train.json"], **method.overrides)
    assert network.slices == 3 and network.neighbour_size == 11
    torch.manual_seed(0)
    with torch.no_grad():  # a kernel predictor that reads the neighbours (the untrained head copies the centre's)
        for parameter in network.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    weights = tmp_path / "structkpn_s3.pt"
    torch.save(network.state_dict(), weights)

    rows = json.loads(evaluate(method, settings, weights).read_text())["slices"]
    assert len(rows) == 1
    # the denoiser a user runs: inference.json's, at 3 slices with the neighbours' 11 x 11 kernels
    denoiser = load_denoiser(REPO / "configs/inference.json", weights, **method.overrides)
    stacks = neighbour_stacks(settings, 3)
    for row, entry in zip(rows, selection["entries"]):
        stack = low_dose_stack(entry, stacks[entry["label"]], 0.25, settings)
        reference = read_ct_slice(entry["label"]).hu
        assert row["psnr_paper"] == pytest.approx(paper_window_psnr(denoiser.centre(stack, 0.25), reference), abs=1e-3)
        swapped = paper_window_psnr(denoiser.centre(stack[::-1].copy(), 0.25), reference)
        assert abs(row["psnr_paper"] - swapped) > 1e-3


def _result(psnr: dict[tuple[str, float], float], ssim: float, seconds: float, memory: float) -> dict:
    """A results file: two slices a block and dose at the given block PSNR (paper window)."""
    rows = [{"block": block, "anatomy": block.split("-")[0], "kernel": "smooth", "dose_fraction": dose,
             "seconds": seconds, "psnr_paper": value + offset, "ssim_paper": ssim, "psnr_own": value,
             "ssim_own": ssim} for (block, dose), value in psnr.items() for offset in (-0.1, 0.1)]  # fmt: skip
    return {"slices": rows, "peak_extra_mib": memory}


def test_the_multi_slice_section_states_the_gain_and_the_test_per_anatomy():
    from bundle.evaluation.benchmark_report import block_means, multi_slice_section

    doses = (0.1, 0.25, 0.5)
    single = {(b, d): 30.0 for b in ("chest-a", "chest-b", "abdomen-a") for d in doses}
    # chest +0.5 dB (mean of +0.4 and +0.6), abdomen +0.2 dB at 0.1 and 0.25; +1 dB everywhere at 0.5 (not tested)
    multi = {(b, d): 30.0 + (1.0 if d == 0.5 else {"chest-a": 0.4, "chest-b": 0.6, "abdomen-a": 0.2}[b])
             for b, d in single}  # fmt: skip
    results = {"structkpn": _result(single, 0.80, 2.0, 100.0), "structkpn_s3": _result(multi, 0.81, 2.6, 130.0)}
    means = {m: {d: block_means(results[m], d) for d in doses} for m in results}
    anatomies = {"chest": ["chest-a", "chest-b"], "abdomen": ["abdomen-a"]}
    text = "\n".join(multi_slice_section(results, means, anatomies, doses, 10))
    assert "| `structkpn_s3` - `structkpn` | 0.1 | +0.50 / +0.0100 | +0.20 / +0.0100 | fails: abdomen |" in text
    assert "| `structkpn_s3` - `structkpn` | 0.5 | +1.00 / +0.0100 | +1.00 / +0.0100 | - |" in text
    assert "| `structkpn_s3` / `structkpn` | 1.30x | 1.30x |" in text
    assert multi_slice_section({"structkpn": results["structkpn"]}, means, anatomies, doses, 10) == []


def test_pilots_score_every_dose_of_the_validation_slices_they_take(tmp_path):
    from bundle.evaluation.benchmark import validation_pairs

    slices = [f"ndct/s{n}.dcm" for n in range(5)]  # each slice listed at dose 0.1, then 0.5, as the datalist does
    entries = [{"image": f"ldct-{d}/s{n}.dcm", "label": s, "dose_fraction": d} for n, s in enumerate(slices)
               for d in (0.1, 0.5)]  # fmt: skip
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [], "validation": entries}))
    pairs = validation_pairs(datalist, 2)
    assert [(p["label"], p["dose_fraction"]) for p in pairs] == [(slices[n], d) for n in (0, 2, 4) for d in (0.1, 0.5)]
    assert validation_pairs(datalist, 1) == entries


def test_the_dose_ablation_puts_each_network_beside_the_input_at_every_dose():
    from bundle.evaluation.benchmark_report import block_means, dose_ablation_section

    doses, blocks = (0.1, 0.5), ["chest-a", "abdomen-a"]
    ldct = {(b, d): 20.0 if d == 0.1 else 30.0 for b in blocks for d in doses}
    blind = {(b, d): 26.0 if d == 0.1 else 29.0 for b in blocks for d in doses}  # one amount removed: below at 0.5
    matched = {(b, d): 24.0 if d == 0.1 else 31.0 for b in blocks for d in doses}
    results = {"ldct": _result(ldct, 0.80, 0.0, 0.0), "redcnn": _result(blind, 0.82, 1.0, 1.0),
               "redcnn_d50": _result(matched, 0.79, 1.0, 1.0)}  # fmt: skip
    means = {m: {d: block_means(results[m], d) for d in doses} for m in results}
    text = "\n".join(dose_ablation_section(results, means, blocks, doses, ("redcnn", "redcnn_d50"), 10))
    assert "| `ldct` | 20.00 / 0.8000 | 30.00 / 0.8000 |" in text
    # blind: above the input at 0.1 in all 8 cases; below it at 0.5 in PSNR (2 windows x 2 blocks), SSIM above
    assert "| `redcnn` | 26.00 / 0.8200 (0) | 29.00 / 0.8200 (4) |" in text
    # matched to 0.5: above the input there in PSNR, below in SSIM (4); at 0.1 above in PSNR, below in SSIM (4)
    assert "| `redcnn_d50` | 24.00 / 0.7900 (4) | 31.00 / 0.7900 (4) |" in text
    assert dose_ablation_section({"ldct": results["ldct"], "redcnn": results["redcnn"]}, means, blocks, doses,
                                 ("redcnn",), 10) == []  # fmt: skip

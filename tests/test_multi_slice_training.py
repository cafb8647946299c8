"""Multi-slice training data: block datalists with the slices around each entry (simulated with independent noise,
from the entry's own block), the dose redrawn once for a slice stack, and train.json training with ``--slices 3``;
with ``slices`` 1 nothing changes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
import torch
from monai.bundle import ConfigWorkflow
from monai.data import load_decathlon_datalist
from monai.transforms import (ConcatItemsd, DeleteItemsd, LoadImaged, RandFlipd, RandRotate90d, RandSpatialCropSamplesd,
                              ScaleIntensityRanged)  # fmt: skip

from bundle.io import neighbour_keys, read_ct_slice, with_neighbour_slices
from bundle.simulation import RandDoseNoised, added_noise_scale
from bundle.simulation.blocks import prepare_block_datalist
from bundle.transforms import AddDoseConditiond, GradientStatisticsd, StackNeighbourSlicesd, ValidateCTImaged
from bundle.utils import read_bundle_config
from dicom_factory import phantom_hu, write_ct_slice

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
Z_MM = [3.0 * i for i in range(10)]
BLOCKS = {
    "reference_dose_fraction": 0.5,
    "training_views": 60,
    "validation_dose_fractions": [0.25],
    "series": [{"path": "patient/series", "block": "b", "anatomy": "chest", "kernel": "smooth",
                "filters": ["hann", "ram-lak"], "train": [0, 5], "train_step": 2, "validation": [6, 8], "test": [9, 10]}],
}  # fmt: skip


@pytest.fixture(scope="module")
def block_data(tmp_path_factory):
    """A 10-slice series (3 mm), written in reverse z order, and its block datalists without and with neighbours."""
    root = tmp_path_factory.mktemp("blocks")
    folder = root / "data" / "patient" / "series"
    folder.mkdir(parents=True)
    for i, z in enumerate(Z_MM):
        write_ct_slice(folder / f"{9 - i:02d}.dcm", phantom_hu(32, seed=i, noise_hu=5.0), z_mm=z, instance_number=10 - i)
    (root / "blocks.json").write_text(json.dumps(BLOCKS))
    plain = prepare_block_datalist(root / "blocks.json", root / "data", root / "plain")
    multi = prepare_block_datalist(root / "blocks.json", root / "data", root / "multi", neighbours=1)
    return root, plain, multi


def _z(path: Path) -> float:
    return float(pydicom.dcmread(path, stop_before_pixels=True).ImagePositionPatient[2])


def test_block_datalist_lists_the_slices_around_each_entry_from_its_own_block(block_data):
    root, plain, multi = block_data
    plain_list, multi_list = json.loads(plain.read_text()), json.loads(multi.read_text())
    stripped = {split: [{k: v for k, v in e.items() if not k.endswith("_slices")} for e in entries]
                for split, entries in multi_list.items()}  # fmt: skip
    assert stripped == plain_list  # the entries of neighbours=0, and their files, unchanged
    for entry in plain_list["training"] + plain_list["validation"]:
        for key in ("image", "label"):
            assert (root / "plain" / entry[key]).read_bytes() == (root / "multi" / entry[key]).read_bytes()
    ranges = {"training": (0.0, 12.0), "validation": (18.0, 21.0), "test": (27.0, 27.0)}
    for split, entries in multi_list.items():
        for entry in entries:
            centre = _z(root / "multi" / entry["label"])
            expected = [min(max(centre + dz, ranges[split][0]), ranges[split][1]) for dz in (-3.0, 0.0, 3.0)]
            keys = ("image", "label") if split != "test" else ("label",)
            for key in keys:
                assert [_z(root / "multi" / p) for p in entry[f"{key}_slices"]] == expected, (split, key)
                assert entry[f"{key}_slices"][1] == entry[key]
    assert [_z(root / "multi" / e["label"]) for e in multi_list["training"]] == [0.0, 6.0, 12.0]  # train_step 2


def test_training_neighbours_have_the_centre_filter_and_independent_noise(block_data):
    root, _, multi = block_data
    for entry in json.loads(multi.read_text())["training"]:
        filters = [pydicom.dcmread(root / "multi" / p).DerivationDescription for p in entry["image_slices"]]
        centre_filter = [word for word in ("hann", "ram-lak") if f" {word} filtered" in filters[1]]
        assert len(centre_filter) == 1 and all(f" {centre_filter[0]} filtered" in f for f in filters)
        noise = [read_ct_slice(root / "multi" / i).hu - read_ct_slice(root / "multi" / l).hu
                 for i, l in zip(entry["image_slices"], entry["label_slices"])]  # fmt: skip
        for side in (0, 2):
            if entry["image_slices"][side] != entry["image"]:  # a neighbour, not the replicated end of the block
                assert abs(np.corrcoef(noise[side].ravel(), noise[1].ravel())[0, 1]) < 0.3


def test_a_folder_left_by_other_settings_is_resimulated_so_a_stack_never_mixes_filters(block_data, tmp_path):
    """Resuming into pairs whose training images were made with the other filter (an earlier draw): those files are
    simulated again with the drawn one, files made with the same settings are kept, and every stack has one filter."""
    from bundle.simulation import LowDoseSimulator
    from bundle.simulation.paired import simulate_dicom_slice

    root, _, _ = block_data
    output = tmp_path / "pairs"
    first = json.loads(prepare_block_datalist(root / "blocks.json", root / "data", output).read_text())
    sources = {p.name: p for p in (root / "data/patient/series").glob("*.dcm")}
    for entry in first["training"]:
        image = output / entry["image"]
        drawn = "hann" if " hann filtered" in pydicom.dcmread(image).DerivationDescription else "ram-lak"
        other = LowDoseSimulator(num_views=60, filter_name="ram-lak" if drawn == "hann" else "hann")
        simulate_dicom_slice(sources[image.name], image, 0.5, 0, other)  # as an earlier draw left it
    kept = {e["image"]: (output / e["image"]).stat().st_mtime_ns for e in first["validation"]}
    multi = json.loads(prepare_block_datalist(root / "blocks.json", root / "data", output, neighbours=1).read_text())
    for entry in multi["training"]:
        filters = [pydicom.dcmread(output / p).DerivationDescription for p in entry["image_slices"]]
        expected = json.loads((root / "multi" / "datalist.json").read_text())  # made in a fresh folder
        fresh = next(e for e in expected["training"] if e["label"] == entry["label"])
        assert filters[1] == pydicom.dcmread(root / "multi" / fresh["image"]).DerivationDescription
        assert len({" hann filtered" in f for f in filters}) == 1
    assert {e["image"]: (output / e["image"]).stat().st_mtime_ns for e in multi["validation"]} == kept


def test_with_neighbour_slices_gives_the_load_keys_and_names_a_missing_entry(block_data):
    root, plain, multi = block_data
    items = load_decathlon_datalist(multi, data_list_key="training")
    assert with_neighbour_slices(items, 1) == items
    converted = with_neighbour_slices(items, 3)
    for item in converted:
        assert [item[k] for k in neighbour_keys(["image"], 3)] == item["image_slices"]
        assert all(Path(item[k]).is_file() for k in neighbour_keys(["image", "label"], 3))
    with pytest.raises(ValueError, match=r"lists 3 slices in image_slices, and slices=5 needs 5"):
        with_neighbour_slices(items, 5)
    with pytest.raises(ValueError, match=r"lists none in image_slices.*--neighbours 1"):
        with_neighbour_slices(load_decathlon_datalist(plain, data_list_key="training"), 3)


def test_a_slice_stack_shares_one_dose_draw_and_keeps_the_centre_metadata():
    from monai.data import MetaTensor

    slices = {f"image{s}": MetaTensor(torch.rand(1, 8, 8), meta={"filename_or_obj": f"{s}.dcm"}) for s in ("_-1", "", "_+1")}
    labels = {f"label{s}": torch.rand(1, 8, 8) for s in ("_-1", "", "_+1")}
    d = StackNeighbourSlicesd(keys="image", slices=3)({**slices, **labels})
    d = StackNeighbourSlicesd(keys="label", slices=3, output_key="label_slices")(d)
    assert set(d) == {"image", "label", "label_slices"} and d["image"].meta["filename_or_obj"] == ".dcm"
    torch.testing.assert_close(d["image"][0], slices["image_-1"][0])
    noised = RandDoseNoised(keys="label_slices", clip_range=None)
    noised.set_random_state(0)
    out = noised(d)
    scale = noised.sign * added_noise_scale(noised.dose_fraction, noised.photon_factor, 0.5)  # the call's one draw
    expected = d["label_slices"] + scale * (d["image"] - d["label_slices"])  # every slice
    torch.testing.assert_close(out["image"].as_tensor(), expected.as_tensor(), rtol=0, atol=1e-6)
    assert out["image"].shape == (3, 8, 8)


def test_single_slice_training_config_is_unchanged():
    parser = read_bundle_config(CONFIGS / "train.json")
    parser.update({"retain_freed_memory": False})
    assert parser.get_parsed_content("slices") == 1 and parser.get_parsed_content("load_keys") == ["image", "label"]
    transforms = parser.get_parsed_content("train#preprocessing").transforms
    assert [type(t) for t in transforms] == [LoadImaged, ValidateCTImaged, ScaleIntensityRanged, GradientStatisticsd,
                                             ConcatItemsd, DeleteItemsd, RandDoseNoised, AddDoseConditiond,
                                             RandSpatialCropSamplesd, RandFlipd, RandFlipd, RandRotate90d]  # fmt: skip
    assert transforms[6].keys == ("label",) and transforms[7].slices == 1
    datalist = str(parser.get_parsed_content("datalist"))
    for split, path in (("training", "train#dataset#data"), ("validation", "validate#dataset#data")):
        assert parser.get_parsed_content(path) == load_decathlon_datalist(datalist, data_list_key=split)
    assert parser.get_parsed_content("network_def").slices == 1


def test_training_with_three_slices_runs_on_a_block_datalist(block_data, tmp_path):
    root, _, multi = block_data
    flow = ConfigWorkflow(config_file=str(CONFIGS / "train.json"), meta_file=str(CONFIGS / "metadata.json"),
                          logging_file=str(CONFIGS / "logging.conf"), workflow_type="train", slices=3,
                          dataset_dir=str(multi.parent), datalist=str(multi), ckpt_dir=str(tmp_path / "models"),
                          output_dir=str(tmp_path / "eval"), epochs=1, val_interval=1, patch_size=[24, 24],
                          patches_per_slice=2, retain_freed_memory=False)  # fmt: skip
    flow.initialize()
    trainer = flow.parser.get_parsed_content("train#trainer")
    batch = next(iter(flow.parser.get_parsed_content("train#dataloader")))
    assert batch["image"].shape == (4, 5, 24, 24)  # 2 items x 2 patches; 3 slices, noise std, dose fraction
    flow.run()
    flow.finalize()
    assert trainer.state.iteration == 2 and np.isfinite(trainer.state.output[0]["loss"])
    settings = json.loads((tmp_path / "models" / "model.json").read_text())["network"]
    assert settings["slices"] == 3
    state = torch.load(tmp_path / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert state["stem.0.weight"].shape[1] == 5 and state["head.2.bias"].shape[0] == 3 * 441
    # evaluate.json scores it on the validation blocks: the centre slice is the low-dose input it is compared with
    evaluation = ConfigWorkflow(config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")],
                                meta_file=str(CONFIGS / "metadata.json"), logging_file=str(CONFIGS / "logging.conf"),
                                workflow_type="eval", slices=3, dataset_dir=str(multi.parent), datalist=str(multi),
                                evaluation_split="validation", ckpt_dir=str(tmp_path / "models"),
                                output_dir=str(tmp_path / "scores"), retain_freed_memory=False)  # fmt: skip
    evaluation.initialize()
    evaluator = evaluation.parser.get_parsed_content("validate#evaluator")
    evaluation.run()
    evaluation.finalize()
    metrics = evaluator.state.metrics
    assert set(metrics) >= {"test_psnr", "input_psnr"} and np.isfinite(metrics["test_psnr"])
    validation = json.loads(multi.read_text())["validation"]
    inputs = []
    for entry in validation:  # input PSNR of the centre slices in the metric window [-160, 240] HU mapped to [0, 1]
        low, label = (np.clip((read_ct_slice(multi.parent / entry[k]).hu + 160) / 400, 0, 1) for k in ("image", "label"))
        inputs.append(10 * np.log10(1 / np.mean((low - label) ** 2)))
    assert metrics["input_psnr"] == pytest.approx(np.mean(inputs), abs=1e-3)

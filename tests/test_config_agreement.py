"""train.json and inference.json must describe the same network on the same window, and metadata must match.

Each config works alone (``--config_file configs/inference.json``, as the Model Zoo runs it, from any working folder
given ``--bundle_root``) and takes the values and blocks it shares with the others from ``configs/common.json`` by
``"$bundle.utils.shared_config(@bundle_root, 'id', ...)"``: these tests fail when a config restates one of them
locally or the configs disagree, and ``tests/test_model_settings.py`` when a checkpoint is loaded with other settings
than its own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, verify_net_in_out
from monai.handlers import CheckpointLoader, IgniteMetricHandler, PeakSignalToNoiseRatio
from monai.metrics import SSIMMetric
from monai.transforms import LoadImaged, ScaleIntensityRanged

from bundle.io import network_settings
from bundle.losses import DEFAULT_STRENGTH_SCALE, STRENGTH_CALIBRATION_WINDOW_HU, StructureAwareLoss
from bundle.transforms import GradientStatisticsd, ValidateCTImaged
from bundle.utils import read_bundle_config, shared_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# a shared id as a config must write it: common.json's id under bundle_root, each value it reads the caller's own
SHARED = re.compile(r"\$bundle\.utils\.shared_config\(@bundle_root, '(?P<id>[\w#]+)'(?P<values>(?:, \w+=@\w+)*)\)")
SHARED_KEYS = ("hu_window", "kernel_size", "dose_aware", "device", "retain_freed_memory")
# where each config (with the files its usual command merges before it) places the shared blocks of common.json
TRAIN_BLOCKS = {
    "load_transforms": "load_transforms",
    "metric_window_transforms#0": "inverse_window",
    "validate#key_metric#val_psnr": "psnr",
    "validate#additional_metrics#val_ssim": "ssim",
}
EVALUATE_BLOCKS = {
    "load_transforms": "load_transforms",
    "metric_window_transforms#0": "inverse_window",
    "validate#handlers#0": "checkpoint_loader",
    "validate#key_metric#test_psnr": "psnr",
    "validate#additional_metrics#test_ssim": "ssim",
    "validate#additional_metrics#input_psnr#max_val": "psnr#max_val",
    "validate#additional_metrics#input_ssim#metric_fn": "ssim#metric_fn",
}
STANDALONE = {  # config files, the shared values they must not restate, their blocks from common.json
    "inference": (
        ["inference.json"],
        SHARED_KEYS,
        {"load_transforms": "load_transforms", "postprocessing#transforms#0": "inverse_window",
         "handlers#0": "checkpoint_loader"},
    ),
    "train": (["train.json"], SHARED_KEYS, TRAIN_BLOCKS),
    "evaluate": (["train.json", "evaluate.json"], SHARED_KEYS, EVALUATE_BLOCKS),
    "image_quality": (["train.json", "evaluate.json", "evaluate_image_quality.json"], SHARED_KEYS, EVALUATE_BLOCKS),
    # multi_gpu_train.json deliberately replaces device (one GPU per rank)
    "multi_gpu": (["train.json", "multi_gpu_train.json"], tuple(k for k in SHARED_KEYS if k != "device"), TRAIN_BLOCKS),
}  # fmt: skip
HU = torch.tensor([[[-3000.0, -1024.0, -160.0, 0.0, 40.0, 1500.0, 3072.0, 5000.0]]])  # (1, 1, 8) HU


def _parser(*names: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / name) for name in names])
    return parser


def _common() -> dict:
    return ConfigParser.load_config_file(CONFIGS / "common.json")


@pytest.mark.parametrize("name", sorted(STANDALONE))
def test_each_config_takes_the_shared_values_and_blocks_from_common_json(name):
    files, values, blocks = STANDALONE[name]
    parser = _parser(*files)
    for key in (*values, *blocks):  # as written: common.json's id, not a local restatement
        source = blocks.get(key, key)
        written = SHARED.fullmatch(str(parser[key]))
        assert written and written["id"] == source, (
            f"{files[-1]}: {key} is restated locally ({parser[key]!r}); "
            f"use $bundle.utils.shared_config(@bundle_root, '{source}', ...)"
        )
        for name, reference in re.findall(r", (\w+)=@(\w+)", written["values"]):
            assert name == reference, f"{key}: {name}=@{reference} gives common.json another config's value"


@pytest.mark.parametrize("name", sorted(STANDALONE))
def test_each_config_loads_alone_and_resolves_the_shared_ids_to_the_common_values(name):
    files, values, _ = STANDALONE[name]
    parser, common = _parser(*files), ConfigParser(_common())
    for key in values:
        assert parser.get_parsed_content(key) == common.get_parsed_content(key), key
    assert isinstance(parser.get_parsed_content("device"), torch.device)
    load, validate, window = parser.get_parsed_content("load_transforms")
    assert isinstance(load, LoadImaged) and isinstance(validate, ValidateCTImaged)
    assert validate.min_size == common.get_parsed_content("kernel_size")
    assert (window.scaler.a_min, window.scaler.a_max) == tuple(common.get_parsed_content("hu_window"))
    if name == "inference":
        assert validate.allow_volume and validate.add_depth and load.keys == window.keys == ("image",)
        (loader,) = [h for h in parser.get_parsed_content("handlers") if isinstance(h, CheckpointLoader)]
        assert loader.load_path == parser.get_parsed_content("ckpt_path")
        return
    assert not validate.allow_volume and load.keys == window.keys == ("image", "label")
    metrics = {**parser.get_parsed_content("validate#key_metric")}
    metrics.update(parser.get_parsed_content("validate#additional_metrics"))
    psnr = [m for m in metrics.values() if isinstance(m, PeakSignalToNoiseRatio)]
    ssim = [m.metric_fn for m in metrics.values() if isinstance(m.metric_fn, SSIMMetric)]
    assert psnr and ssim and all(isinstance(m, IgniteMetricHandler) for m in metrics.values())
    assert {m.metric_fn.max_val for m in psnr} == {common.get_parsed_content("psnr#max_val")}
    data_range = common.get_parsed_content("ssim#metric_fn#data_range")
    assert {(m.spatial_dims, m.data_range) for m in ssim} == {(2, data_range)}
    assert len({id(m) for m in ssim}) == len(ssim)  # one metric object (and its buffers) per handler


@pytest.mark.parametrize("override", [{"kernel_size": 15}, {"hu_window": [-1000, 2000]}])
def test_a_command_line_override_of_a_shared_value_reaches_every_block_that_uses_it(override, tmp_path):
    """``--kernel_size 15`` replaces the top-level value, and the shared blocks are built from the calling config's
    ``@kernel_size`` and ``@hu_window``, so they see the override."""
    for files in (["inference.json"], ["train.json", "evaluate.json"]):
        parser = _parser(*files)
        parser.update({**override, "ckpt_path": str(tmp_path / "untrained.pt")})  # no weights, nothing to check
        kernel_size, (low, high) = parser.get_parsed_content("kernel_size"), parser.get_parsed_content("hu_window")
        assert (kernel_size, [low, high]) != (21, [-1024, 3072])
        _, validate, window = parser.get_parsed_content("load_transforms")
        assert validate.min_size == parser.get_parsed_content("network_def").kernel_size == kernel_size
        assert (window.scaler.a_min, window.scaler.a_max) == (low, high)
        inverse = "postprocessing#transforms#0" if files == ["inference.json"] else "metric_window_transforms#0"
        assert (parser.get_parsed_content(inverse).scaler.b_min, parser.get_parsed_content(inverse).scaler.b_max) == (
            low, high
        )  # fmt: skip


def test_configs_run_from_another_working_folder_given_bundle_root(tmp_path, monkeypatch):
    """As the Model Zoo's CI runs a bundle: from another folder, with ``bundle_root`` (only the default ``"."`` misses
    common.json, with an error naming it)."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(RuntimeError) as error:  # MONAI's "Failed to evaluate" wraps the error
        _parser("inference.json").get_parsed_content("hu_window")
    assert isinstance(error.value.__cause__, FileNotFoundError)
    assert str(error.value.__cause__).startswith(f"{tmp_path.resolve() / 'configs' / 'common.json'}: no such file")
    bundle_root = str(CONFIGS.parent)
    # the CI's call; the metadata's 512 x 512 input shrunk to keep the test fast
    verify_net_in_out(net_id="network_def", meta_file=str(CONFIGS / "metadata.json"),
                      config_file=str(CONFIGS / "inference.json"), bundle_root=bundle_root, device="cpu",
                      **{"_meta_#network_data_format#inputs#image#spatial_shape": [32, 32]})  # fmt: skip
    inference = _parser("inference.json")
    inference.update({"bundle_root": bundle_root, "kernel_size": 15, "ckpt_path": str(tmp_path / "untrained.pt")})
    assert inference.get_parsed_content("hu_window") == ConfigParser(_common()).get_parsed_content("hu_window")
    load, validate = inference.get_parsed_content("preprocessing").transforms[:2]
    assert isinstance(load, LoadImaged) and isinstance(validate, ValidateCTImaged)
    assert validate.min_size == inference.get_parsed_content("network_def").kernel_size == 15
    train = _parser("train.json")
    train["bundle_root"] = bundle_root
    assert isinstance(train.get_parsed_content("network_def"), torch.nn.Module)
    assert len(_windows(train.get_parsed_content("validate#preprocessing").transforms)) == 1
    assert isinstance(train.get_parsed_content("validate#key_metric#val_psnr"), PeakSignalToNoiseRatio)
    evaluate = read_bundle_config([CONFIGS / "train.json", CONFIGS / "evaluate.json"])  # bundle_root from the path
    assert evaluate.get_parsed_content("validate#additional_metrics#input_psnr").metric_fn.max_val == 1.0


def test_shared_config_reads_a_block_only_with_the_values_it_references():
    """A block must get every id it references from the caller (else an override of the caller would not reach it)
    and nothing else; the values it gets are used as given."""
    root = CONFIGS.parent
    window = shared_config(root, "inverse_window", inverse_window_keys="pred", hu_window=[-1000, 1000])
    torch.testing.assert_close(torch.as_tensor(window({"pred": torch.tensor([[0.0, 0.5, 1.0]])})["pred"]),
                               torch.tensor([[-1000.0, 0.0, 1000.0]]))  # fmt: skip
    with pytest.raises(ValueError, match=r"common\.json#inverse_window reads .*missing \['inverse_window_keys'\]"):
        shared_config(root, "inverse_window", hu_window=[-1000, 1000])
    with pytest.raises(ValueError, match=r"not read \['kernel_size'\]"):
        shared_config(root, "inverse_window", inverse_window_keys="pred", hu_window=[-1000, 1000], kernel_size=15)
    with pytest.raises(KeyError, match="no shared setting 'window'"):
        shared_config(root, "window")


def test_training_and_inference_agree_on_window_and_network():
    train, inference = _parser("train.json"), _parser("inference.json")
    for key in SHARED_KEYS:
        assert train.get_parsed_content(key) == inference.get_parsed_content(key), key
    trained = train.get_parsed_content("network_def")
    served = inference.get_parsed_content("network_def")
    assert type(trained) is type(served)
    # the same constructor settings: identical parameter shapes and the same dose conditioning
    assert {k: v.shape for k, v in trained.state_dict().items()} == {k: v.shape for k, v in served.state_dict().items()}
    for attribute in ("kernel_size", "dose_aware", "output_noise", "noise_gain", "kernel_norm", "features"):
        assert getattr(trained, attribute) == getattr(served, attribute), attribute
    assert network_settings(trained) == network_settings(served)  # every constructor setting the weights depend on


def _windows(transforms) -> list[ScaleIntensityRanged]:
    return [t for t in transforms if isinstance(t, ScaleIntensityRanged)]


def test_training_and_inference_window_the_same_hu_the_same_way():
    """The window transforms themselves, applied to known HU: (HU - lo) / (hi - lo) clipped to [0, 1], and back."""
    train, inference = _parser("train.json"), _parser("inference.json")
    low, high = inference.get_parsed_content("hu_window")
    expected = ((HU - low) / (high - low)).clamp(0, 1)
    (train_window,) = _windows(train.get_parsed_content("load_transforms"))
    (inference_window,) = _windows(inference.get_parsed_content("preprocessing").transforms)
    for window in (train_window, inference_window):
        torch.testing.assert_close(torch.as_tensor(window({"image": HU, "label": HU})["image"]), expected)
    # the inverse windows: inference's postprocessing and the first metric transform of training/evaluation
    inverse_inference = inference.get_parsed_content("postprocessing").transforms[0]
    inverse_train = train.get_parsed_content("metric_window_transforms")[0]
    for inverse in (inverse_inference, inverse_train):
        torch.testing.assert_close(torch.as_tensor(inverse({"pred": expected})["pred"]), HU.clamp(low, high))


def test_image_quality_config_maps_back_to_hu_with_the_training_window():
    """Its postprocessing gives HU copies (training's window mapped back) and the metric-window images."""
    parser = _parser("train.json", "evaluate.json", "evaluate_image_quality.json")
    low, high = parser.get_parsed_content("hu_window")
    metric_low, metric_high = parser.get_parsed_content("metric_hu_window")
    unit = torch.tensor([[[0.0, 0.25, 0.28, 1.0]]])  # (1, 1, 4) in the network's [0, 1]
    data = parser.get_parsed_content("validate#postprocessing")(
        {"pred": unit.clone(), "label": unit.flip(-1), "image": torch.cat([unit, unit / 2, unit / 4])}
    )
    hu = low + unit * (high - low)
    torch.testing.assert_close(torch.as_tensor(data["pred_hu"]), hu)
    torch.testing.assert_close(torch.as_tensor(data["label_hu"]), hu.flip(-1))
    torch.testing.assert_close(torch.as_tensor(data["image_hu"])[:1], hu)
    in_metric_window = ((hu - metric_low) / (metric_high - metric_low)).clamp(0, 1)
    torch.testing.assert_close(torch.as_tensor(data["pred"]), in_metric_window)
    torch.testing.assert_close(torch.as_tensor(data["image_low_dose"]), in_metric_window)


def test_training_window_is_the_one_the_loss_strength_scale_was_calibrated_on():
    train = _parser("train.json")
    loss = train.get_parsed_content("loss")
    (statistics,) = [t for t in train.get_parsed_content("train#statistics_transforms") if isinstance(t, GradientStatisticsd)]
    assert isinstance(loss, StructureAwareLoss)
    assert loss.strength_scale == statistics.statistics.strength_scale == DEFAULT_STRENGTH_SCALE
    assert loss.patch_size == statistics.statistics.patch_size
    assert tuple(train.get_parsed_content("hu_window")) == STRENGTH_CALIBRATION_WINDOW_HU


def test_evaluation_scores_the_network_training_validates():
    """evaluate.json (merged over train.json) keeps train.json's network, window and metric window."""
    train, evaluate = _parser("train.json"), ConfigParser()
    evaluate.read_config([CONFIGS / "train.json", CONFIGS / "evaluate.json"])
    for key in ("hu_window", "metric_hu_window", "kernel_size", "dose_aware"):
        assert evaluate.get_parsed_content(key) == train.get_parsed_content(key), key
    assert network_settings(evaluate.get_parsed_content("network_def")) == network_settings(
        train.get_parsed_content("network_def")
    )


@pytest.mark.parametrize("name,expected", [("l1", torch.nn.L1Loss), ("mse", torch.nn.MSELoss)])
def test_loss_configs_are_the_torch_losses_on_the_image_alone(name, expected):
    parser = ConfigParser()
    parser.read_config([CONFIGS / "train.json", CONFIGS / "losses" / f"{name}.json"])
    loss = parser.get_parsed_content("loss")
    assert type(loss) is expected
    prediction, target = torch.tensor([[0.0, 0.5]]), torch.tensor([[1.0, 0.0]])
    assert float(loss(prediction, target)) == pytest.approx(0.75 if name == "l1" else 0.625)
    assert parser.get_parsed_content("train#statistics_transforms") == []  # the label keeps one channel


def test_metadata_declares_the_network_input():
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    image = metadata["network_data_format"]["inputs"]["image"]
    network = _parser("inference.json").get_parsed_content("network_def")
    assert image["num_channels"] == network.in_channels + (2 if network.dose_aware else 0)
    assert len(image["channel_def"]) == image["num_channels"]
    window = _parser("inference.json").get_parsed_content("hu_window")
    assert f"[{window[0]}, {window[1]}]" in image["channel_def"]["0"]
    # every HU window the metadata states is the network's
    stated = re.findall(r"window \[(-?\d+), (-?\d+)\]", json.dumps(metadata))
    assert len(stated) >= 4 and set(stated) == {(str(window[0]), str(window[1]))}
    assert metadata["version"] in metadata["changelog"]


@pytest.mark.parametrize("network", ["redcnn", "wavresnet", "basicunet"])
def test_single_channel_baselines_switch_the_dose_conditioning_off(network):
    parser = ConfigParser()
    parser.read_config([CONFIGS / "train.json", CONFIGS / "networks" / f"{network}.json"])
    names = [type(t).__name__ for t in parser.get_parsed_content("train#random_transforms")]
    names += [type(t).__name__ for t in parser.get_parsed_content("validate#preprocessing").transforms]
    assert "AddDoseConditiond" not in names  # one input channel: the image
    assert "RandDoseNoised" in names  # the same noise draws as StructKPN's (the same training data)
    assert "RandSpatialCropSamplesd" in names  # the rest of the chain is kept

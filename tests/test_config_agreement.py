"""train.json and inference.json must describe the same network on the same window, and metadata must match.

Each config works alone (``--config_file configs/inference.json``, as the Model Zoo runs it), so the values they
share are declared in each: these tests fail when they disagree, and ``tests/test_model_settings.py`` when a
checkpoint is loaded with other settings than its own.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser
from monai.transforms import ScaleIntensityRanged

from bundle.io import network_settings
from bundle.losses import DEFAULT_STRENGTH_SCALE, STRENGTH_CALIBRATION_WINDOW_HU, StructureAwareLoss
from bundle.transforms import GradientStatisticsd

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHARED_KEYS = ("hu_window", "kernel_size", "dose_aware", "device", "retain_freed_memory")
HU = torch.tensor([[[-3000.0, -1024.0, -160.0, 0.0, 40.0, 1500.0, 3072.0, 5000.0]]])  # (1, 1, 8) HU


def _parser(name: str) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CONFIGS / name)
    return parser


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
    parser = ConfigParser()
    parser.read_config([CONFIGS / "train.json", CONFIGS / "evaluate.json", CONFIGS / "evaluate_image_quality.json"])
    low, high = parser.get_parsed_content("hu_window")
    (inverse,) = _windows(parser.get_parsed_content("hu_copy_transforms"))
    unit = torch.tensor([[[0.0, 0.25, 1.0]]])
    data = inverse({"pred_hu": unit, "label_hu": unit, "image_hu": unit})
    torch.testing.assert_close(torch.as_tensor(data["pred_hu"]), low + unit * (high - low))


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
    assert "AddDoseConditiond" not in names and "RandDoseNoised" not in names
    assert "RandSpatialCropSamplesd" in names  # the rest of the chain is kept

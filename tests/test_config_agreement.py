"""train.json and inference.json must describe the same network on the same window, and metadata must match."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
SHARED_KEYS = ("hu_window", "kernel_size", "dose_aware")


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


def test_metadata_declares_the_network_input():
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    image = metadata["network_data_format"]["inputs"]["image"]
    network = _parser("inference.json").get_parsed_content("network_def")
    assert image["num_channels"] == network.in_channels + (2 if network.dose_aware else 0)
    assert len(image["channel_def"]) == image["num_channels"]
    window = _parser("inference.json").get_parsed_content("hu_window")
    assert f"[{window[0]}, {window[1]}]" in image["channel_def"]["0"]
    assert metadata["version"] in metadata["changelog"]


@pytest.mark.parametrize("network", ["redcnn", "wavresnet", "basicunet"])
def test_single_channel_baselines_switch_the_dose_conditioning_off(network):
    parser = ConfigParser()
    parser.read_config([CONFIGS / "train.json", CONFIGS / "networks" / f"{network}.json"])
    names = [type(t).__name__ for t in parser.get_parsed_content("train#random_transforms")]
    names += [type(t).__name__ for t in parser.get_parsed_content("validate#preprocessing").transforms]
    assert "AddDoseConditiond" not in names and "RandDoseNoised" not in names
    assert "RandSpatialCropSamplesd" in names  # the rest of the chain is kept

"""A checkpoint is loaded only with the settings it was trained with (bundle.io.model_settings)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser

from bundle.io import ModelSettingsError, check_model_settings, network_settings, settings_path, write_model_settings
from bundle.networks import STRUCTKPN_PRESETS, StructKPN

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
WINDOW = (-1024.0, 3072.0)


def _root_cause(error: BaseException) -> BaseException:
    while error.__cause__ is not None:  # MONAI wraps errors of config expressions in RuntimeError
        error = error.__cause__
    return error


@pytest.fixture
def checkpoint(tmp_path) -> Path:
    """A tiny StructKPN (kernel 5, dose-aware) saved as weights with its settings file."""
    path = tmp_path / "run" / "model.pt"
    path.parent.mkdir()
    network = StructKPN(kernel_size=5, dose_aware=True)
    torch.save(network.state_dict(), path)
    write_model_settings(path, network, WINDOW)
    return path


def test_settings_record_the_resolved_constructor_arguments():
    settings = network_settings(StructKPN(kernel_size=7, preset="authors", inference_dtype="bfloat16"))
    expected = {"_target_": "bundle.networks.structkpn.StructKPN", "in_channels": 1, "kernel_size": 7,
                "kernel_norm": "softmax", "dose_aware": False, "noise_gain": 40.0, **STRUCTKPN_PRESETS["authors"]}
    assert settings == expected  # preset resolved; inference_dtype, band rows and output_noise are runtime choices


def test_a_wrapped_network_is_recorded_as_the_network_it_wraps():
    class Wrapper(torch.nn.Module):  # as DistributedDataParallel holds its network
        def __init__(self, module: torch.nn.Module) -> None:
            super().__init__()
            self.module = module

    network = StructKPN(kernel_size=5)
    assert network_settings(Wrapper(network)) == network_settings(network)


def test_settings_file_sits_beside_the_weights(checkpoint):
    assert settings_path(checkpoint) == checkpoint.parent / "model.json"
    saved = json.loads(settings_path(checkpoint).read_text())
    assert saved["hu_window"] == [-1024.0, 3072.0]
    assert saved["network"]["kernel_size"] == 5 and saved["network"]["dose_aware"] is True


def test_own_settings_pass_and_runtime_choices_are_free(checkpoint):
    same = StructKPN(kernel_size=5, dose_aware=True, inference_dtype="bfloat16", output_noise="mmse")
    assert check_model_settings(checkpoint, [-1024, 3072], same, kernel_size=5, dose_aware=True) == str(checkpoint)


@pytest.mark.parametrize(
    "window,network,keywords,message",
    [
        ((-1000, 3000), None, {}, r"hu_window: trained \[-1024.0, 3072.0\], config \[-1000, 3000\]"),
        (WINDOW, None, {"kernel_size": 21}, r"kernel_size: trained 5, config 21 \(--kernel_size 5\)"),
        (WINDOW, StructKPN(kernel_size=5, dose_aware=False), {}, r"dose_aware: trained true, config false"),
        (WINDOW, StructKPN(kernel_size=5, dose_aware=True, noise_gain=10.0), {}, r"noise_gain: trained 40.0"),
        (WINDOW, StructKPN(kernel_size=5, dose_aware=True, preset="authors"), {}, r"features: trained 32, config 96; num_res_blocks"),
    ],
    ids=["window", "kernel_size", "dose_aware", "noise_gain", "preset"],
)
def test_other_settings_are_refused_naming_the_file_and_setting(checkpoint, window, network, keywords, message):
    with pytest.raises(ModelSettingsError, match=message) as raised:
        check_model_settings(checkpoint, window, network, **keywords)
    assert str(settings_path(checkpoint)) in str(raised.value) and str(checkpoint) in str(raised.value)


def test_another_network_class_is_refused(checkpoint):
    from bundle.networks import REDCNN

    with pytest.raises(ModelSettingsError, match=r"_target_: trained \"bundle.networks.structkpn.StructKPN\""):
        check_model_settings(checkpoint, WINDOW, REDCNN())


def test_weights_without_settings_load_unchecked_with_a_warning(tmp_path, caplog):
    weights = tmp_path / "old.pt"
    torch.save({}, weights)
    with caplog.at_level(logging.WARNING, logger="bundle.io.model_settings"):
        assert check_model_settings(weights, (0, 1), kernel_size=3) == str(weights)
    assert "old.json" in caplog.text and "unchecked" in caplog.text


def test_unreadable_settings_name_the_file(checkpoint):
    settings_path(checkpoint).write_text("{not json")
    with pytest.raises(ModelSettingsError, match=r"model.json: unreadable model settings"):
        check_model_settings(checkpoint, WINDOW)


def _inference(checkpoint: Path, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser.update({"ckpt_path": str(checkpoint), "kernel_size": 5, **overrides})
    return parser


def test_inference_builds_and_loads_a_checkpoint_with_its_own_settings(checkpoint):
    parser = _inference(checkpoint)
    assert parser.get_parsed_content("network_def").kernel_size == 5
    assert parser.get_parsed_content("handlers")[0].load_path == str(checkpoint)


def test_inference_and_export_refuse_a_checkpoint_trained_with_another_kernel_size(checkpoint):
    # ckpt_export and verify_net_in_out build only network_def: its _requires_ checks the file beside ckpt_path
    with pytest.raises(Exception) as raised:
        _inference(checkpoint, kernel_size=21).get_parsed_content("network_def")
    assert isinstance(_root_cause(raised.value), ModelSettingsError)
    assert "kernel_size: trained 5, config 21 (--kernel_size 5)" in str(_root_cause(raised.value))


def test_inference_loader_refuses_a_network_setting_the_checkpoint_lacks(checkpoint):
    parser = _inference(checkpoint, **{"network_def#noise_gain": 10.0})
    with pytest.raises(Exception) as raised:
        parser.get_parsed_content("handlers")
    assert "noise_gain: trained 40.0, config 10.0" in str(_root_cause(raised.value))


def test_evaluation_refuses_a_checkpoint_trained_on_another_window(checkpoint):
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    parser.update({"ckpt_path": str(checkpoint), "kernel_size": 5, "hu_window": [-1000, 2000]})
    with pytest.raises(Exception) as raised:
        parser.get_parsed_content("validate#handlers")
    assert "hu_window: trained [-1024.0, 3072.0], config [-1000, 2000]" in str(_root_cause(raised.value))


def test_training_writes_the_settings_of_the_network_it_trains(tmp_path):
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"ckpt_dir": str(tmp_path), "kernel_size": 7, "retain_freed_memory": False})
    parser.get_parsed_content("run#0")  # the first step of training's run (evaluation's run replaces it)
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved == {"network": network_settings(StructKPN(kernel_size=7, dose_aware=True)), "hu_window": list(WINDOW)}


def test_evaluation_writes_no_settings_file(tmp_path):
    """Only training writes model.json: evaluate.json (merged over train.json) replaces training's run."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "evaluate.json")])
    parser.update({"ckpt_dir": str(tmp_path), "retain_freed_memory": False})
    parser.get_parsed_content("initialize")
    assert "write_model_settings" not in json.dumps(parser.get("run")) and not list(tmp_path.iterdir())


def test_shipped_weights_have_the_settings_of_the_configs():
    """models/model.json (beside models/model.pt) agrees with what train.json trains and inference.json serves."""
    saved = json.loads((CONFIGS.parent / "models" / "model.json").read_text())
    for name in ("train.json", "inference.json"):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / name))
        network = parser.get_parsed_content("network_def")
        assert saved == {"network": network_settings(network), "hu_window": parser.get_parsed_content("hu_window")}, name


def test_load_network_checks_the_weights_it_is_given(checkpoint):
    from bundle.evaluation.denoise import load_network

    network = load_network(CONFIGS / "inference.json", checkpoint, kernel_size=5)  # its own settings: loads
    assert network.kernel_size == 5
    with pytest.raises(Exception) as raised:
        load_network(CONFIGS / "inference.json", checkpoint, kernel_size=5, **{"network_def#noise_gain": 3.0})
    assert "noise_gain: trained 40.0, config 3.0" in str(_root_cause(raised.value))

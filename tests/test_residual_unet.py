"""The MONAI-native baseline of configs/networks/basicunet.json: BasicUNet predicting the residual, started as the
identity by bundle.networks.zero_initialised; it trains with configs/train.json unchanged."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.layers import SkipConnection
from monai.networks.nets import BasicUNet

from bundle.networks import zero_initialised

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"
NETWORK_CONFIG = CONFIGS / "networks" / "basicunet.json"


def residual_unet() -> torch.nn.Module:
    """The network exactly as the config builds it."""
    parser = ConfigParser()
    parser.read_config(str(NETWORK_CONFIG))
    return parser.get_parsed_content("network_def")


def test_config_builds_a_monai_basicunet_inside_an_additive_skip_connection():
    net = residual_unet()
    assert isinstance(net, SkipConnection) and net.mode == "add"
    assert isinstance(net.submodule, BasicUNet)
    assert not net.submodule.final_conv.weight.any() and not net.submodule.final_conv.bias.any()
    assert sum(p.numel() for p in net.parameters()) == 1_978_433  # MONAI's default features (32, 32, 64, 128, 256, 32)


@pytest.mark.parametrize("training, shape", [(True, (33, 47)), (False, (64, 64))])
def test_untrained_network_is_exactly_the_identity_for_any_size(training, shape):
    torch.manual_seed(0)
    net = residual_unet().train(training)
    image = torch.rand(2, 1, *shape)
    with torch.no_grad():
        output = net(image)
    assert output.shape == image.shape
    torch.testing.assert_close(output, image, rtol=0, atol=0)


def test_first_step_learns_the_mean_error_then_the_residual_moves_the_image():
    """At the identity, d MSE / d bias of the zeroed last layer is 2 * mean(input - target) (closed form), the other
    layers get no gradient yet, and one step lowers the loss."""
    torch.manual_seed(0)
    net = residual_unet()
    clean = torch.rand(2, 1, 32, 32)
    noisy = clean + 0.05 * torch.randn_like(clean) + 0.02  # a bias the first step can remove
    loss = torch.nn.functional.mse_loss(net(noisy), clean)
    loss.backward()
    final = net.submodule.final_conv
    torch.testing.assert_close(final.bias.grad, (2 * (noisy - clean).mean()).reshape(1), rtol=1e-4, atol=1e-7)
    assert final.weight.grad.abs().sum() > 0
    assert all(not p.grad.any() for n, p in net.named_parameters() if not n.startswith("submodule.final_conv"))
    optimiser = torch.optim.SGD(net.parameters(), lr=0.1)
    optimiser.step()
    with torch.no_grad():
        assert torch.nn.functional.mse_loss(net(noisy), clean) < loss
        assert (net(noisy) - noisy).abs().max() > 1e-4


def test_zero_initialised_rejects_unknown_or_parameterless_layers():
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 1, 3), torch.nn.ReLU())
    assert zero_initialised(net, "0") is net and not net[0].weight.any()
    with pytest.raises(ValueError, match="no layer 'final_conv'"):
        zero_initialised(net, "final_conv")
    with pytest.raises(ValueError, match="no parameters"):
        zero_initialised(net, "1")


def test_trains_one_epoch_with_the_unchanged_training_config(tmp_path):
    flow = ConfigWorkflow(
        config_file=[str(CONFIGS / "train.json"), str(NETWORK_CONFIG)],
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type="train",
        ckpt_dir=str(tmp_path / "models"),
        output_dir=str(tmp_path / "eval"),
        dataset_dir=str(REPO / "sample_data"),
        epochs=1,
        val_interval=2,  # no validation in a one-epoch run
        patches_per_slice=2,
        dose_aware=False,  # the baselines take the one-channel low-dose image (no key at all in older configs)
    )
    flow.initialize()
    flow.run()
    trainer = flow.parser.get_parsed_content("train#trainer")
    network = flow.parser.get_parsed_content("network")
    flow.finalize()
    assert trainer.state.epoch == 1 and np.isfinite(trainer.state.output[0]["loss"])
    assert network.submodule.final_conv.weight.abs().sum() > 0  # it left the identity
    state = torch.load(tmp_path / "models" / "training_final.pt", map_location="cpu")
    assert set(state["model"]) == set(residual_unet().state_dict())

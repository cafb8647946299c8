"""RelativeToInputLoss: closed forms, gradients, and the training config that carries the input to it."""

from __future__ import annotations

import pytest
import torch
from ignite.engine import Events

from bundle.losses import RelativeToInputLoss, StructureAwareLoss
from tests.test_workflows import near_identity_checkpoint, sample_training


class PerImageMSE(torch.nn.Module):
    reduction = "none"

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((input - target) ** 2).mean(dim=(1, 2, 3))


def test_ratio_is_the_closed_form_of_a_shrunk_error() -> None:
    generator = torch.Generator().manual_seed(0)
    target = torch.rand(3, 1, 16, 16, generator=generator)
    noisy = target + 0.1 * torch.randn(3, 1, 16, 16, generator=generator)
    shrink = torch.tensor([0.0, 0.5, 2.0]).view(3, 1, 1, 1)
    prediction = target + shrink * (noisy - target)  # MSE(prediction) = shrink^2 * MSE(noisy)
    loss = RelativeToInputLoss(PerImageMSE(), target_channels=1, epsilon=0.0, reduction="none")
    ratio = loss(prediction, torch.cat([target, noisy], dim=1))
    torch.testing.assert_close(ratio, shrink.flatten() ** 2)
    mean = RelativeToInputLoss(PerImageMSE(), target_channels=1, epsilon=0.0)
    torch.testing.assert_close(mean(prediction, torch.cat([target, noisy], dim=1)), (shrink.flatten() ** 2).mean())
    halfway = RelativeToInputLoss(PerImageMSE(), target_channels=1, epsilon=0.0, power=0.5, reduction="none")
    input_mse = ((noisy - target) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(halfway(prediction, torch.cat([target, noisy], dim=1)), shrink.flatten() ** 2 * input_mse.sqrt())


def test_input_channel_picks_the_image_among_the_appended_channels() -> None:
    """Dose-aware input: the image, then its noise map and dose channel; the image at ``input_channel``."""
    target = torch.rand(2, 3, 24, 24)  # image, strength, coherence
    image = torch.rand(2, 1, 24, 24)
    network_input = torch.cat([torch.rand(2, 1, 24, 24), image, torch.full((2, 1, 24, 24), 0.5)], dim=1)
    loss = RelativeToInputLoss(StructureAwareLoss(reduction="none"), target_channels=3, input_channel=1, epsilon=0.0)
    torch.testing.assert_close(loss(image, torch.cat([target, network_input], dim=1)), torch.tensor(1.0))


def test_gradient_is_the_wrapped_gradient_over_the_input_loss() -> None:
    generator = torch.Generator().manual_seed(1)
    target = torch.rand(1, 1, 32, 32, generator=generator)
    noisy = target + 0.05 * torch.randn(1, 1, 32, 32, generator=generator)
    wrapped = StructureAwareLoss(reduction="none")
    prediction = (0.5 * (target + noisy)).requires_grad_()
    RelativeToInputLoss(wrapped, target_channels=1)(prediction, torch.cat([target, noisy], dim=1)).backward()
    plain = prediction.detach().clone().requires_grad_()
    wrapped(plain, target).sum().backward()
    torch.testing.assert_close(prediction.grad, plain.grad / (wrapped(noisy, target) + 1e-6))


def test_rejects_a_reduced_loss_and_a_target_without_the_input() -> None:
    with pytest.raises(ValueError, match="power"):
        RelativeToInputLoss(StructureAwareLoss(reduction="none"), target_channels=3, power=2.0)
    with pytest.raises(ValueError, match="reduction='none'"):
        RelativeToInputLoss(StructureAwareLoss(), target_channels=3)
    loss = RelativeToInputLoss(StructureAwareLoss(reduction="none"), target_channels=3, input_channel=0)
    with pytest.raises(ValueError, match="expected 3 target channels"):
        loss(torch.rand(1, 1, 16, 16), torch.rand(1, 3, 16, 16))
    with pytest.raises(ValueError, match="one value an image"):
        RelativeToInputLoss(torch.nn.MSELoss(reduction="none"), target_channels=1)(
            torch.rand(1, 1, 8, 8), torch.rand(1, 2, 8, 8)
        )


def test_training_config_carries_the_input_to_the_loss(tmp_path) -> None:
    """train.json + losses/relative_to_input.json on the sample: a network that returns its input scores 1."""
    flow = sample_training(
        tmp_path,
        ["train.json", "losses/relative_to_input.json"],
        epochs=1,
        val_interval=10,
        patches_per_slice=2,
        learning_rate=0.0,
        init_weights=str(near_identity_checkpoint(tmp_path / "identity.pt")),
    )
    losses: list[float] = []
    flow.parser.get_parsed_content("train#trainer").add_event_handler(
        Events.ITERATION_COMPLETED, lambda engine: losses.append(float(engine.state.output[0]["loss"]))
    )
    flow.run()
    flow.finalize()
    assert losses and max(losses) <= 1.0 + 1e-6
    assert max(losses) == pytest.approx(1.0, abs=1e-2)

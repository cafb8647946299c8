"""A loss taken relative to the input's own loss: every training image counts by its gain over doing nothing."""

from __future__ import annotations

import torch
from monai.utils import LossReduction
from torch import nn
from torch.nn.modules.loss import _Loss

__all__ = ["RelativeToInputLoss"]


class RelativeToInputLoss(_Loss):
    """
    ``loss(prediction, target) / loss(input, target) ** power`` per image: the loss of the prediction over the loss the
    network's own input (the low-dose image, returned unchanged) would have.

    A denoiser trained over doses 0.05-0.9 with a plain loss learns mostly from the noisiest images: the input of a
    dose-0.9 image is ~100 times closer to its target than a dose-0.05 one, so its share of the gradient is ~100
    times smaller, and the network is free to lose a little on the good scans (e.g. blurring low-contrast edges)
    to gain on the bad ones. Here each image's loss is divided by its input's, a constant of the data (no gradient
    flows through it): 1 is "as good as the input", and every image weighs by its relative gain, whatever its dose.
    ``power`` p between 0 and 1 divides by the input's loss to the power p instead: 0 is the wrapped loss itself,
    1 the ratio, 0.5 halfway (in log terms) between weighting every image equally and weighting its gain.

    The trainer passes only ``(prediction, target)``, so the input rides along as extra target channels: the
    target is (B, T + N, H, W), the T channels the wrapped loss takes (e.g. 3: image, strength, coherence for
    :class:`~bundle.losses.StructureAwareLoss` with precomputed statistics), then the N channels of the network
    input (``ConcatItemsd(keys=["label", "image"])``), of which channel ``input_channel`` is the image the network
    filters (the centre slice: ``slices // 2``).

    Args:
        loss: the wrapped loss, built with ``reduction="none"`` (one value an image, shape (B,)).
        target_channels: T, the target channels the wrapped loss takes.
        input_channel: index, within the N appended channels, of the (unfiltered) input image.
        epsilon: added to the input's loss, for images the input already matches (e.g. all padding).
        power: p, the power of the input's loss divided by (1: the ratio).
        reduction: ``"mean"`` or ``"sum"`` over the batch, or ``"none"`` for the (B,) ratios.

    Example::

        loss = RelativeToInputLoss(StructureAwareLoss(reduction="none"), target_channels=1, input_channel=0)
        target, noisy = torch.rand(2, 1, 64, 64), torch.rand(2, 1, 64, 64)
        prediction = noisy.clone().requires_grad_()
        loss(prediction, torch.cat([target, noisy], dim=1))  # 1.0: the prediction is the input
    """

    def __init__(
        self,
        loss: nn.Module,
        target_channels: int,
        input_channel: int = 0,
        epsilon: float = 1e-6,
        power: float = 1.0,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        super().__init__(reduction=LossReduction(reduction).value)
        if getattr(loss, "reduction", "none") != "none":
            raise ValueError(f"the wrapped loss must have reduction='none' (one value an image), got {loss.reduction!r}.")
        if target_channels < 1 or input_channel < 0:
            raise ValueError(f"target_channels must be >= 1 and input_channel >= 0, got {target_channels}, {input_channel}.")
        self.loss = loss
        self.target_channels = target_channels
        self.input_channel = input_channel
        self.epsilon = epsilon
        if not 0.0 <= power <= 1.0:
            raise ValueError(f"power must be in [0, 1], got {power}.")
        self.power = power

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Args:
            input: (B, C, H, W) predictions.
            target: (B, T + N, H, W): the wrapped loss's target channels, then the network input's channels.

        Returns:
            the ratio reduced over the batch, or per image with shape (B,) when ``reduction="none"``.
        """
        channel = self.target_channels + self.input_channel
        if target.shape[1] < channel + input.shape[1]:
            raise ValueError(
                f"target has {target.shape[1]} channels: expected {self.target_channels} target channels, then the "
                f"network input with its image at channel {self.input_channel} ({input.shape[1]} channel(s))."
            )
        reference = target[:, : self.target_channels]
        unfiltered = target[:, channel : channel + input.shape[1]].to(input.dtype)
        loss = self.loss(input, reference)
        if loss.ndim != 1 or loss.shape[0] != input.shape[0]:
            raise ValueError(f"the wrapped loss must return one value an image, shape ({input.shape[0]},), got {tuple(loss.shape)}.")
        with torch.no_grad():
            baseline = self.loss(unfiltered, reference)
        ratio = loss / (baseline + self.epsilon) ** self.power
        if self.reduction == LossReduction.MEAN.value:
            return ratio.mean()
        if self.reduction == LossReduction.SUM.value:
            return ratio.sum()
        return ratio

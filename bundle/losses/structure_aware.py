"""Structure-aware loss of StructKPN (paper Eqs. 4-6): L2, L1 and SSIM weighted per pixel by gradient statistics."""

from __future__ import annotations

import torch
from monai.metrics.regression import KernelType, compute_ssim_and_cs
from monai.utils import LossReduction
from torch.nn import functional as F
from torch.nn.modules.loss import _Loss

from bundle.losses.gradient_statistics import DEFAULT_STRENGTH_SCALE, gradient_statistics

__all__ = ["StructureAwareLoss"]


class StructureAwareLoss(_Loss):
    """
    Per-pixel mixture of L2, L1 and SSIM losses whose weights come from the gradient statistics of the target
    (normal-dose CT): L2 on coherent edges, SSIM on strong but non-coherent fine structure, L1 on flat regions.

    For every pixel (m, n), with strength ``s`` and coherence ``c`` of the target patch around it
    (:func:`~bundle.losses.gradient_statistics.gradient_statistics`):

    - Eq. 6: ``[g1, g2, g3] = softmax([c * sigma_l2, sigma_l1, s])``.
    - Eq. 5: ``Lw = g1 * (y_hat - y)^2 + g2 * |y_hat - y| + g3 * (1 - SSIM)``, where SSIM is the local SSIM map
      over an ``ssim_window`` window (MONAI's, on inputs reflect-padded to keep the full size). The paper writes
      ``-g3 * SSIM``; ``1 - SSIM`` differs by ``g3``, a constant of the target, so the gradients are the same and
      the loss is 0 for a perfect prediction and positive otherwise.
    - Eq. 4: ``L_S = sum_{m, n} (Lw + |y_hat - y|) / (2 H W)`` per image.

    The weights are functions of the target only and are treated as constants (no gradient flows through them).
    The statistics are taken from the target on the fly, or precomputed on the full slice (before cropping) by
    :class:`~bundle.transforms.statistics.GradientStatisticsd` and passed as target channels 1-2; they must then
    have been computed with the same ``patch_size`` and ``strength_scale`` as the loss's.

    Example::

        loss = StructureAwareLoss()
        prediction, target = torch.rand(2, 1, 64, 64, requires_grad=True), torch.rand(2, 1, 64, 64)
        loss(prediction, target).backward()
    """

    def __init__(
        self,
        sigma_l2: float = 1.8,
        sigma_l1: float = 0.35,
        strength_scale: float = DEFAULT_STRENGTH_SCALE,
        patch_size: int = 11,
        ssim_window: int = 11,
        ssim_kernel_sigma: float = 1.5,
        ssim_kernel_type: KernelType | str = KernelType.GAUSSIAN,
        ssim_k1: float = 0.01,
        ssim_k2: float = 0.03,
        data_range: float = 1.0,
        reduction: LossReduction | str = LossReduction.MEAN,
    ) -> None:
        """
        Args:
            sigma_l2: scale of the coherence logit of the L2 weight (paper: 1.8).
            sigma_l1: constant logit of the L1 weight (paper: 0.35).
            strength_scale: factor on ``sqrt(l1)`` giving the strength, the logit of the SSIM weight.
            patch_size: side ``kr`` of the patch of the gradient statistics, in pixels (paper: 11).
            ssim_window: side of the local SSIM window, in pixels (odd).
            ssim_kernel_sigma: standard deviation of the Gaussian SSIM window, in pixels.
            ssim_kernel_type: ``"gaussian"`` or ``"uniform"`` SSIM window.
            ssim_k1: SSIM luminance stability constant.
            ssim_k2: SSIM contrast stability constant.
            data_range: intensity range of the images (1.0 for CT windowed to [0, 1]).
            reduction: ``"none"`` returns Eq. 4 per image, shape (B,); ``"mean"`` and ``"sum"`` reduce over the batch.
        """
        super().__init__(reduction=LossReduction(reduction).value)
        if ssim_window < 1 or ssim_window % 2 == 0:
            raise ValueError(f"ssim_window must be a positive odd integer, got {ssim_window}.")
        self.sigma_l2 = sigma_l2
        self.sigma_l1 = sigma_l1
        self.strength_scale = strength_scale
        self.patch_size = patch_size
        self.ssim_window = ssim_window
        self.ssim_kernel_sigma = ssim_kernel_sigma
        self.ssim_kernel_type = KernelType(ssim_kernel_type)
        self.ssim_k1 = ssim_k1
        self.ssim_k2 = ssim_k2
        self.data_range = data_range

    def component_weights(self, target: torch.Tensor) -> torch.Tensor:
        """
        Eq. 6: per-pixel weights of the L2, L1 and SSIM terms.

        Args:
            target: (B, 1, H, W) target images, or (B, 3, H, W) with precomputed strength and coherence in
                channels 1 and 2.

        Returns:
            (B, 3, H, W) weights (L2, L1, SSIM) summing to 1 over the channels, without gradient.
        """
        if target.ndim != 4 or target.shape[1] not in (1, 3):
            raise ValueError(f"target must have shape (B, 1, H, W) or (B, 3, H, W), got {tuple(target.shape)}.")
        with torch.no_grad():
            if target.shape[1] == 3:
                strength, coherence = target[:, 1:2], target[:, 2:3]
            else:
                statistics = gradient_statistics(target, self.patch_size, self.strength_scale)
                strength, coherence = statistics[:, 0:1], statistics[:, 1:2]
            logits = torch.cat([coherence * self.sigma_l2, torch.full_like(strength, self.sigma_l1), strength], dim=1)
            return torch.softmax(logits, dim=1)

    def ssim_map(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Local SSIM of every ``ssim_window`` window, reflect-padded so that the map has the images' size.

        Args:
            input: (B, 1, H, W) predictions.
            target: (B, 1, H, W) target images.

        Returns:
            (B, 1, H, W) SSIM values in [-1, 1], of the input's dtype.
        """
        radius = self.ssim_window // 2
        padding = (radius, radius, radius, radius)
        ssim, _ = compute_ssim_and_cs(
            F.pad(input, padding, mode="reflect"),
            F.pad(target, padding, mode="reflect"),
            spatial_dims=2,
            kernel_size=(self.ssim_window, self.ssim_window),
            kernel_sigma=(self.ssim_kernel_sigma, self.ssim_kernel_sigma),
            data_range=self.data_range,
            kernel_type=self.ssim_kernel_type,
            k1=self.ssim_k1,
            k2=self.ssim_k2,
        )
        return ssim.to(input.dtype)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """
        Eqs. 4-5: the structure-aware loss.

        Args:
            input: (B, 1, H, W) predictions, same intensity scale as the target (e.g. CT windowed to [0, 1]).
            target: (B, 1, H, W) target images, or (B, 3, H, W) with precomputed strength and coherence in
                channels 1 and 2.

        Returns:
            the loss reduced over the batch, or per image with shape (B,) when ``reduction="none"``.
        """
        if input.ndim != 4 or input.shape[1] != 1:
            raise ValueError(f"input must have shape (B, 1, H, W), got {tuple(input.shape)}.")
        if target.shape[:1] + target.shape[2:] != input.shape[:1] + input.shape[2:]:
            raise ValueError(f"input {tuple(input.shape)} and target {tuple(target.shape)} differ in batch or size.")
        weights = self.component_weights(target).to(input.dtype)
        image = target[:, :1].to(input.dtype)
        error = input - image
        absolute_error = error.abs()
        weighted = (
            weights[:, 0:1] * error**2
            + weights[:, 1:2] * absolute_error
            + weights[:, 2:3] * (1 - self.ssim_map(input, image))
        )
        loss = (weighted + absolute_error).mean(dim=(1, 2, 3)) / 2
        if self.reduction == LossReduction.MEAN.value:
            return loss.mean()
        if self.reduction == LossReduction.SUM.value:
            return loss.sum()
        return loss

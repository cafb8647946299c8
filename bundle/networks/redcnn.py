"""RED-CNN, the residual encoder-decoder baseline of Chen et al. (2017)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["REDCNN"]


class REDCNN(nn.Module):
    """Residual encoder-decoder CNN for low-dose CT denoising (Chen et al., IEEE TMI 36(12), 2017).

    Five unpadded convolutions (``features`` filters, ``kernel_size`` x ``kernel_size``, stride 1, ReLU) shrink
    the image by ``kernel_size - 1`` pixels each; five transposed convolutions (``features`` x 4, then
    ``in_channels``) grow it back. Three shortcuts are added before the ReLU that follows them:

    - output of conv2 + deconv3,
    - output of conv4 + deconv1,
    - the input image + deconv5 (the last layer), so the network learns a residual.

    With the defaults the network has 1,848,865 parameters. The output is non-negative (final ReLU).

    Args:
        in_channels: number of image channels (input and output).
        features: filters in every hidden layer.
        kernel_size: square kernel size of every layer; inputs need ``H, W >= 5 * (kernel_size - 1) + 1``.

    Example::

        >>> net = REDCNN()
        >>> net(torch.rand(2, 1, 63, 64)).shape  # windowed CT in [0, 1], any H, W >= 21
        torch.Size([2, 1, 63, 64])
    """

    def __init__(self, in_channels: int = 1, features: int = 96, kernel_size: int = 5) -> None:
        super().__init__()
        self.min_size = 5 * (kernel_size - 1) + 1
        self.conv1 = nn.Conv2d(in_channels, features, kernel_size)
        self.conv2 = nn.Conv2d(features, features, kernel_size)
        self.conv3 = nn.Conv2d(features, features, kernel_size)
        self.conv4 = nn.Conv2d(features, features, kernel_size)
        self.conv5 = nn.Conv2d(features, features, kernel_size)
        self.deconv1 = nn.ConvTranspose2d(features, features, kernel_size)
        self.deconv2 = nn.ConvTranspose2d(features, features, kernel_size)
        self.deconv3 = nn.ConvTranspose2d(features, features, kernel_size)
        self.deconv4 = nn.ConvTranspose2d(features, features, kernel_size)
        self.deconv5 = nn.ConvTranspose2d(features, in_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Denoise ``x`` of shape (B, C, H, W), windowed CT in [0, 1]; returns the same shape."""
        if x.shape[-2] < self.min_size or x.shape[-1] < self.min_size:
            raise ValueError(f"REDCNN needs H, W >= {self.min_size}, got {list(x.shape)}.")
        out = F.relu(self.conv1(x))
        conv2_out = F.relu(self.conv2(out))
        out = F.relu(self.conv3(conv2_out))
        conv4_out = F.relu(self.conv4(out))
        out = F.relu(self.conv5(conv4_out))
        out = F.relu(self.deconv1(out) + conv4_out)
        out = F.relu(self.deconv2(out))
        out = F.relu(self.deconv3(out) + conv2_out)
        out = F.relu(self.deconv4(out))
        return F.relu(self.deconv5(out) + x)

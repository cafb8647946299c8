"""Local (per-pixel) convolution: every output pixel filtered with its own k x k kernel (StructKPN paper, Eq. 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = [
    "PADDING_MODES",
    "LocalConv2d",
    "kernel_size_from_taps",
    "local_conv2d",
    "local_conv2d_padded",
    "local_conv2d_unfold",
    "pad_for_local_conv",
]

PADDING_MODES = ("reflect", "replicate", "circular", "zeros")
"""Border handling of the local convolution, in ``torch.nn.Conv2d`` vocabulary (``"zeros"`` pads with 0)."""


def kernel_size_from_taps(num_taps: int) -> int:
    """Odd side ``k`` of a square kernel with ``num_taps = k * k`` taps; ``ValueError`` otherwise."""
    kernel_size = int(round(num_taps**0.5))
    if kernel_size * kernel_size != num_taps or kernel_size % 2 == 0:
        raise ValueError(f"kernels need k * k channels for an odd k, got {num_taps} channels.")
    return kernel_size


def pad_for_local_conv(image: torch.Tensor, kernel_size: int, padding_mode: str = "reflect") -> torch.Tensor:
    """
    Pad (B, C, H, W) ``image`` by ``r = kernel_size // 2`` pixels on each side, as Eq. 1 needs at the borders.

    ``padding_mode`` is one of ``"reflect"`` (default, mirror without repeating the edge pixel), ``"replicate"``,
    ``"circular"`` or ``"zeros"``. Reflect padding needs ``H > r`` and ``W > r``: a smaller image raises a
    ``ValueError`` naming its shape and the kernel size.
    """
    if padding_mode not in ["reflect", "replicate", "circular", "zeros"]:  # PADDING_MODES; TorchScript needs a literal
        raise ValueError(f"padding_mode must be 'reflect', 'replicate', 'circular' or 'zeros', got '{padding_mode}'.")
    radius = kernel_size // 2
    if padding_mode == "reflect" and (image.shape[-2] <= radius or image.shape[-1] <= radius):
        raise ValueError(
            f"image of shape {list(image.shape)} is too small for a {kernel_size} x {kernel_size} local "
            f"convolution: reflect padding by {radius} needs H and W > {radius}."
        )
    mode = "constant" if padding_mode == "zeros" else padding_mode
    return F.pad(image, [radius, radius, radius, radius], mode=mode)


def local_conv2d_padded(padded_image: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """
    Eq. 1 on an image already padded by ``r = k // 2`` on each side (a "valid" local convolution).

    ``out[b, c, m, n] = sum_{s, t = -r..r} x[b, c, m - s, n - t] * kernels[b, (s + r) * k + (t + r), m, n]`` with
    ``x[m, n] = padded_image[m + r, n + r]``: a true convolution, tap 0 weights the pixel at offset (+r, +r),
    i.e. the tap order is the reverse of an ``F.unfold`` (im2col) patch.

    The k * k taps are accumulated one shifted view at a time, so the forward pass forms neither the
    (B, C, k * k, H, W) patch tensor nor a product of that size. When a gradient is needed, a custom autograd
    function writes the kernel gradient tap by tap into one tensor of the kernels' size and saves nothing but
    its inputs, so training adds about one kernel tensor (the gradient itself) and a few (B, C, H, W) planes.
    TorchScript-compatible (scripted code takes the tap loop and differentiates it with autograd).

    Args:
        padded_image: (B, C, H + 2r, W + 2r).
        kernels: (B, k * k, H, W), one kernel per output pixel, shared by the C channels.

    Returns:
        (B, C, H, W).
    """
    kernel_size = kernel_size_from_taps(kernels.shape[1])
    batch, channels = padded_image.shape[0], padded_image.shape[1]
    height, width = kernels.shape[2], kernels.shape[3]
    expected = [batch, channels, height + kernel_size - 1, width + kernel_size - 1]
    if kernels.shape[0] != batch or list(padded_image.shape) != expected:
        raise ValueError(
            f"padded image {list(padded_image.shape)} does not match kernels {list(kernels.shape)}: "
            f"expected {expected}."
        )
    if not torch.jit.is_scripting() and torch.is_grad_enabled() and (padded_image.requires_grad or kernels.requires_grad):
        return _local_conv2d_autograd(padded_image, kernels)
    return _accumulate_taps(padded_image, kernels)


def _accumulate_taps(padded_image: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """The tap loop of :func:`local_conv2d_padded` (inputs already checked)."""
    kernel_size = kernel_size_from_taps(kernels.shape[1])
    height, width = kernels.shape[2], kernels.shape[3]
    taps = kernels.unsqueeze(2).unbind(1)
    out = padded_image.new_zeros([padded_image.shape[0], padded_image.shape[1], height, width])
    for s_index in range(kernel_size):
        row = kernel_size - 1 - s_index
        for t_index in range(kernel_size):
            col = kernel_size - 1 - t_index
            shifted = padded_image[:, :, row : row + height, col : col + width]
            out.addcmul_(shifted, taps[s_index * kernel_size + t_index])
    return out


class _LocalConv2dFunction(torch.autograd.Function):
    """Eq. 1 with a hand-written backward that never holds more than the kernel gradient and a few planes."""

    @staticmethod
    def forward(ctx, padded_image: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(padded_image, kernels)
        return _accumulate_taps(padded_image, kernels)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:  # type: ignore[override]
        padded_image, kernels = ctx.saved_tensors
        kernel_size = kernel_size_from_taps(kernels.shape[1])
        height, width = kernels.shape[2], kernels.shape[3]
        grad_image = torch.zeros_like(padded_image) if ctx.needs_input_grad[0] else None
        grad_kernels = torch.empty_like(kernels) if ctx.needs_input_grad[1] else None
        for s_index in range(kernel_size):
            row = kernel_size - 1 - s_index
            for t_index in range(kernel_size):
                col = kernel_size - 1 - t_index
                tap = s_index * kernel_size + t_index
                if grad_image is not None:  # d out / d x: the same tap weights, scattered back to the shifted view
                    grad_image[:, :, row : row + height, col : col + width].addcmul_(grad_output, kernels[:, tap : tap + 1])
                if grad_kernels is not None:  # d out / d kernel tap: the shifted image, summed over channels
                    shifted = padded_image[:, :, row : row + height, col : col + width]
                    torch.sum(grad_output * shifted, dim=1, out=grad_kernels[:, tap])
        return grad_image, grad_kernels


@torch.jit.unused
def _local_conv2d_autograd(padded_image: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    return _LocalConv2dFunction.apply(padded_image, kernels)


def local_conv2d(image: torch.Tensor, kernels: torch.Tensor, padding_mode: str = "reflect") -> torch.Tensor:
    """
    Filter every pixel of ``image`` with its own kernel (StructKPN paper, Eq. 1, with 0-based tap index)::

        out[m, n] = sum_{s, t = -r..r} image[m - s, n - t] * kernels[(s + r) * k + t + r, m, n]

    This is a true convolution (the paper writes ``+ 1`` for 1-based taps): tap 0 weights the neighbour at
    (m + r, n + r), so the tap order is the reverse of an ``F.unfold`` patch. Borders use ``padding_mode``
    (see :func:`pad_for_local_conv`); the fast path of :func:`local_conv2d_padded` is used.

    Args:
        image: (B, C, H, W); every channel is filtered with the same kernels (C = 1 for CT).
        kernels: (B, k * k, H, W) with odd k.
        padding_mode: ``"reflect"`` (default), ``"replicate"``, ``"circular"`` or ``"zeros"``.

    Returns:
        (B, C, H, W).

    Example::

        >>> image = torch.rand(1, 1, 37, 53)
        >>> kernels = torch.softmax(torch.randn(1, 25, 37, 53), dim=1)  # 5 x 5 convex weights per pixel
        >>> local_conv2d(image, kernels).shape
        torch.Size([1, 1, 37, 53])
    """
    _check_spatial_match(image, kernels)
    return local_conv2d_padded(
        pad_for_local_conv(image, kernel_size_from_taps(kernels.shape[1]), padding_mode), kernels
    )


def local_conv2d_unfold(image: torch.Tensor, kernels: torch.Tensor, padding_mode: str = "reflect") -> torch.Tensor:
    """
    Reference Eq. 1 through ``F.unfold`` (im2col): same arguments and result as :func:`local_conv2d`.

    It materialises the (B, C * k * k, H * W) patch tensor (about 0.46 GB for one 512 x 512 slice and k = 21,
    float32) and is several times slower: meant for tests and benchmarks.
    """
    _check_spatial_match(image, kernels)
    kernel_size = kernel_size_from_taps(kernels.shape[1])
    batch, channels, height, width = image.shape
    padded = pad_for_local_conv(image, kernel_size, padding_mode)
    patches = F.unfold(padded, kernel_size).view(batch, channels, kernel_size * kernel_size, height, width)
    return (patches.flip(2) * kernels.unsqueeze(1)).sum(2)


def _check_spatial_match(image: torch.Tensor, kernels: torch.Tensor) -> None:
    """Raise ``ValueError`` unless (B, C, H, W) ``image`` and (B, k * k, H, W) ``kernels`` share B, H and W."""
    if image.dim() != 4 or kernels.dim() != 4:
        raise ValueError(
            f"image and kernels must be 4D (B, C, H, W), got {list(image.shape)} and {list(kernels.shape)}."
        )
    if image.shape[0] != kernels.shape[0] or image.shape[2:] != kernels.shape[2:]:
        raise ValueError(f"image {list(image.shape)} and kernels {list(kernels.shape)} must share batch size and H, W.")


class LocalConv2d(nn.Module):
    """
    Module form of :func:`local_conv2d` (paper Eq. 1) with a fixed, validated ``kernel_size``.

    Args:
        kernel_size: odd side k of the per-pixel kernels; the kernels input has k * k channels.
        padding_mode: ``"reflect"`` (default), ``"replicate"``, ``"circular"`` or ``"zeros"``.

    Example::

        >>> layer = LocalConv2d(kernel_size=3)
        >>> layer(torch.rand(2, 1, 8, 9), torch.full((2, 9, 8, 9), 1 / 9)).shape  # 3 x 3 box filter
        torch.Size([2, 1, 8, 9])
    """

    def __init__(self, kernel_size: int, padding_mode: str = "reflect") -> None:
        super().__init__()
        if kernel_size < 1 or kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be a positive odd integer, got {kernel_size}.")
        if padding_mode not in PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {PADDING_MODES}, got {padding_mode!r}.")
        self.kernel_size = kernel_size
        self.padding_mode = padding_mode

    def forward(self, image: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
        """Filter (B, C, H, W) ``image`` with (B, k * k, H, W) ``kernels``; returns (B, C, H, W)."""
        taps = self.kernel_size * self.kernel_size
        if kernels.shape[1] != taps:
            raise ValueError(
                f"LocalConv2d(kernel_size={self.kernel_size}) needs {taps} kernel channels, got {kernels.shape[1]}."
            )
        return local_conv2d(image, kernels, self.padding_mode)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, padding_mode={self.padding_mode!r}"

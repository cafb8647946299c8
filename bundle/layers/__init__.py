"""Layers of StructKPN: the per-pixel local convolution (paper Eq. 1)."""

from .local_conv import (
    PADDING_MODES,
    LocalConv2d,
    kernel_size_from_taps,
    local_conv2d,
    local_conv2d_padded,
    local_conv2d_unfold,
    pad_for_local_conv,
)

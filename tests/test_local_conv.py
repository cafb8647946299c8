"""Local convolution (paper Eq. 1) against a naive implementation written from the formula."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bundle.layers import LocalConv2d, kernel_size_from_taps, local_conv2d, local_conv2d_padded, local_conv2d_unfold


def _border_index(index: np.ndarray, size: int, padding_mode: str) -> np.ndarray:
    """Source index of a possibly out-of-range pixel index (-1 marks a zero pixel)."""
    if padding_mode == "reflect":  # mirror without repeating the edge pixel: -1 -> 1, size -> size - 2
        index = np.abs(index)
        return np.where(index >= size, 2 * (size - 1) - index, index)
    if padding_mode == "replicate":
        return np.clip(index, 0, size - 1)
    if padding_mode == "circular":
        return index % size
    return np.where((index < 0) | (index >= size), -1, index)


def naive_eq1(image: np.ndarray, kernels: np.ndarray, padding_mode: str = "reflect") -> np.ndarray:
    """out[m, n] = sum_{s, t = -r..r} x[m - s, n - t] * V[m, n, (s + r) * k + t + r], a loop over (s, t)."""
    batch, channels, height, width = image.shape
    k = int(round(kernels.shape[1] ** 0.5))
    r = k // 2
    rows, cols = np.arange(height)[:, None], np.arange(width)[None, :]
    out = np.zeros(image.shape, dtype=np.float64)
    for s in range(-r, r + 1):
        for t in range(-r, r + 1):
            src_rows = _border_index(rows - s, height, padding_mode)
            src_cols = _border_index(cols - t, width, padding_mode)
            neighbour = image[
                :, :, np.broadcast_to(src_rows, (height, width)), np.broadcast_to(src_cols, (height, width))
            ]
            neighbour = np.where((src_rows < 0) | (src_cols < 0), 0.0, neighbour)
            out += neighbour * kernels[:, None, (s + r) * k + t + r]
    return out


@pytest.mark.parametrize(
    "shape, kernel_size",
    [((2, 1, 7, 9), 3), ((1, 3, 13, 11), 5), ((2, 1, 7, 9), 5), ((1, 1, 23, 25), 21), ((1, 2, 5, 6), 1)],
)
@pytest.mark.parametrize("padding_mode", ["reflect", "replicate", "circular", "zeros"])
def test_matches_naive_formula(shape, kernel_size, padding_mode):
    rng = np.random.default_rng(0)
    image = rng.normal(size=shape)
    kernels = rng.normal(size=(shape[0], kernel_size**2, *shape[2:]))
    expected = naive_eq1(image, kernels, padding_mode)
    result = local_conv2d(torch.from_numpy(image), torch.from_numpy(kernels), padding_mode)
    np.testing.assert_allclose(result.numpy(), expected, rtol=1e-12, atol=1e-12)


def test_tap_orientation_is_a_true_convolution():
    # a kernel that is 1 on tap (s, t) = (1, 0) only reads x[m - 1, n]: the image shifts down by one row
    image = torch.arange(30.0).view(1, 1, 5, 6)
    kernels = torch.zeros(1, 9, 5, 6)
    kernels[:, (1 + 1) * 3 + (0 + 1)] = 1.0
    out = local_conv2d(image, kernels)
    torch.testing.assert_close(out[0, 0, 1:], image[0, 0, :-1])
    torch.testing.assert_close(out[0, 0, 0], image[0, 0, 1])  # reflect: x[-1] = x[1]


def test_fast_path_equals_unfold_reference_float32():
    torch.manual_seed(0)
    image = torch.rand(3, 2, 31, 40)
    kernels = torch.softmax(torch.randn(3, 49, 31, 40), dim=1)
    torch.testing.assert_close(local_conv2d(image, kernels), local_conv2d_unfold(image, kernels), rtol=1e-5, atol=1e-6)


def test_unfold_reference_matches_naive_formula():
    rng = np.random.default_rng(1)
    image, kernels = rng.normal(size=(1, 2, 13, 11)), rng.normal(size=(1, 25, 13, 11))
    result = local_conv2d_unfold(torch.from_numpy(image), torch.from_numpy(kernels))
    np.testing.assert_allclose(result.numpy(), naive_eq1(image, kernels), rtol=1e-12, atol=1e-12)



@pytest.mark.parametrize("kernel_size", [3, 5])
def test_gradcheck_image_and_kernels(kernel_size, one_thread):
    torch.manual_seed(0)
    image = torch.randn(2, 2, 5, 6, dtype=torch.float64, requires_grad=True)
    kernels = torch.randn(2, kernel_size**2, 5, 6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(local_conv2d, (image, kernels))


def test_softmax_kernels_keep_a_constant_image():
    torch.manual_seed(0)
    image = torch.full((2, 1, 23, 25), 0.37)
    kernels = torch.softmax(3 * torch.randn(2, 441, 23, 25), dim=1)
    assert (local_conv2d(image, kernels) - 0.37).abs().max() < 1e-6


def test_padded_variant_on_a_row_band():
    # Eq. 1 on rows [8, 20) only needs those rows of the padded image plus an r-row halo on each side
    torch.manual_seed(0)
    image, kernels = torch.rand(1, 1, 30, 17), torch.rand(1, 25, 30, 17)
    full = local_conv2d(image, kernels)
    padded = torch.nn.functional.pad(image, [2, 2, 2, 2], mode="reflect")
    band = local_conv2d_padded(padded[:, :, 8 : 20 + 4], kernels[:, :, 8:20])
    torch.testing.assert_close(band, full[:, :, 8:20])


def test_image_too_small_for_reflect_padding():
    with pytest.raises(ValueError, match=r"\[1, 1, 10, 30\].*21 x 21"):
        local_conv2d(torch.rand(1, 1, 10, 30), torch.rand(1, 441, 10, 30))
    assert local_conv2d(torch.rand(1, 1, 11, 11), torch.rand(1, 441, 11, 11)).shape == (1, 1, 11, 11)


def test_invalid_kernels_and_modes():
    with pytest.raises(ValueError, match="odd k"):
        kernel_size_from_taps(16)  # 4 x 4
    with pytest.raises(ValueError, match="odd k"):
        local_conv2d(torch.rand(1, 1, 9, 9), torch.rand(1, 10, 9, 9))
    with pytest.raises(ValueError, match="share batch size"):
        local_conv2d(torch.rand(1, 1, 9, 9), torch.rand(1, 9, 9, 8))
    with pytest.raises(ValueError, match="padding_mode"):
        local_conv2d(torch.rand(1, 1, 9, 9), torch.rand(1, 9, 9, 9), padding_mode="mirror")


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
def test_module_validates_kernel_channels_and_is_scriptable():
    layer = LocalConv2d(kernel_size=5)
    image, kernels = torch.rand(2, 1, 9, 8), torch.rand(2, 25, 9, 8)
    torch.testing.assert_close(layer(image, kernels), local_conv2d(image, kernels))
    with pytest.raises(ValueError, match="25 kernel channels, got 9"):
        layer(image, torch.rand(2, 9, 9, 8))
    with pytest.raises(ValueError, match="odd"):
        LocalConv2d(kernel_size=4)
    scripted = torch.jit.script(layer)
    torch.testing.assert_close(scripted(image, kernels), layer(image, kernels))


@pytest.mark.parametrize("channels", [1, 3])
def test_hand_written_backward_matches_unfold_autograd(channels):
    """The custom backward (batch 2, several channels, one input without gradient) equals autograd through unfold."""
    generator = torch.Generator().manual_seed(3)
    image = torch.rand(2, channels, 20, 23, dtype=torch.float64, generator=generator)
    kernels = torch.softmax(torch.randn(2, 25, 20, 23, dtype=torch.float64, generator=generator), 1)
    weights = torch.randn(2, channels, 20, 23, dtype=torch.float64, generator=generator)
    for needs in [(True, True), (True, False), (False, True)]:
        x, k = image.clone().requires_grad_(needs[0]), kernels.clone().requires_grad_(needs[1])
        inputs = [t for t in (x, k) if t.requires_grad]
        ours = torch.autograd.grad((local_conv2d(x, k) * weights).sum(), inputs)
        reference = torch.autograd.grad((local_conv2d_unfold(x, k) * weights).sum(), inputs)
        for a, b in zip(ours, reference):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)

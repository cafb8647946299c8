"""StructKPN: Eq. 1 with its predicted kernels at any size, banded inference, TorchScript, presets, initialisation and MONAI config instantiation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser
from scipy.ndimage import uniform_filter
from torch import nn

from bundle.layers import local_conv2d_unfold
from bundle.networks import STRUCTKPN_PRESETS, StructKPN

# torch 2.13 deprecates TorchScript, but MONAI's ckpt_export still scripts the network
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def _randomised(net: StructKPN) -> StructKPN:
    """Give the zero-initialised last head convolution random weights, so kernels differ from pixel to pixel."""
    nn.init.normal_(net.head[-1].weight, std=0.5)
    return net


@pytest.fixture(scope="module")
def small_net() -> StructKPN:
    return _randomised(StructKPN(kernel_size=7, features=8, num_res_blocks=2, head_channels=8, inference_band_rows=8))


@pytest.mark.parametrize("downsample", [1, 2, 4])
def test_odd_image_shape(downsample):
    """Odd sizes (not multiples of the downsampling): one normalised kernel a pixel, applied by Eq. 1 in both paths."""
    net = _randomised(StructKPN(kernel_size=5, features=8, num_res_blocks=1, head_channels=8, downsample=downsample))
    x = torch.rand(2, 1, 37, 53)
    with torch.no_grad():
        kernels = net.predict_kernels(x)
        assert kernels.shape == (2, 25, 37, 53)
        torch.testing.assert_close(kernels.sum(dim=1), torch.ones(2, 37, 53))  # softmax: a convex combination
        expected = local_conv2d_unfold(x, kernels)
        torch.testing.assert_close(net.train()(x), expected, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(net.eval()(x), expected, rtol=1e-5, atol=1e-5)
    assert kernels.std(dim=(2, 3)).max() > 1e-3  # the kernels vary over the odd-sized image


@pytest.mark.parametrize("network, shape", [("small", (2, 1, 37, 29)), ("default", (1, 1, 40, 33))])
def test_band_path_equals_full_path(network, shape, small_net):
    # small: k = 7, bands of 8, 8, 8, 8, 5 rows; default: "lite", k = 21, bands of 16, 16, 8 rows
    net = small_net if network == "small" else _randomised(StructKPN())
    x = torch.rand(shape)
    full = net.train()(x)
    with torch.no_grad():
        banded = net.eval()(x)
    # the band path multiplies the head as matrices and normalises after filtering: float rounding only
    assert (banded - full).abs().max() < 1e-5
    assert (full - x).abs().max() > 1e-2  # the kernels really filter


def test_band_path_without_softmax_equals_full_path():
    net = _randomised(StructKPN(kernel_size=5, features=8, num_res_blocks=1, head_channels=8, kernel_norm="none"))
    net.inference_band_rows = 6
    x = torch.rand(1, 1, 23, 17)
    with torch.no_grad():
        torch.testing.assert_close(net.eval()(x), net.train()(x), rtol=0, atol=1e-5)


def test_band_path_gradients_equal_full_path_gradients(small_net):
    # gradients through eval mode (e.g. saliency maps) must not be broken by the in-place band arithmetic
    x = torch.rand(1, 1, 21, 19)
    grads = []
    for training in (True, False):
        small_net.train(training)
        small_net.zero_grad()
        image = x.clone().requires_grad_(True)
        (small_net(image) ** 2).sum().backward()
        grads.append((image.grad, small_net.head[-1].weight.grad.clone()))
    for full, banded in zip(*grads):
        torch.testing.assert_close(banded, full, rtol=1e-4, atol=1e-5)


def test_forward_is_eq1_with_the_predicted_kernels(small_net):
    x = torch.rand(1, 1, 20, 19)
    with torch.no_grad():
        kernels = small_net.eval().predict_kernels(x)
        torch.testing.assert_close(small_net(x), local_conv2d_unfold(x, kernels), rtol=1e-5, atol=1e-6)
    assert kernels.std(dim=(2, 3)).max() > 1e-3  # spatially variant kernels


def test_torchscript_matches_eager(small_net):
    scripted = torch.jit.script(small_net)
    x = torch.rand(2, 1, 21, 18)
    for training in (False, False, False, True, True):  # the profiling executor optimises after two runs
        small_net.train(training)
        scripted.train(training)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), small_net(x), rtol=0, atol=0)
    torch.testing.assert_close(scripted.predict_kernels(x), small_net.predict_kernels(x), rtol=0, atol=0)


def test_default_network_is_scriptable():
    net = StructKPN().eval()
    scripted = torch.jit.script(net)
    x = torch.rand(1, 1, 24, 23)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=0)


def test_softmax_kernels_keep_a_constant_image(small_net):
    with torch.no_grad():
        out = small_net.eval()(torch.full((2, 1, 19, 22), 0.42))
    assert (out - 0.42).abs().max() < 1e-6


def test_untrained_softmax_network_is_half_identity_half_box_mean():
    # last head conv: weight 0, bias log(k*k - 1) on the centre tap -> weights 1/2 (centre) and 1/(2 (k*k - 1))
    net = StructKPN(kernel_size=5, features=8, num_res_blocks=1, head_channels=8).eval()
    x = torch.rand(1, 1, 17, 14, dtype=torch.float64)
    box_sum = 25 * uniform_filter(x[0, 0].numpy(), size=5, mode="mirror")
    expected = 0.5 * x[0, 0].numpy() + (box_sum - x[0, 0].numpy()) / 48
    with torch.no_grad():
        out = net.double()(x)
    np.testing.assert_allclose(out[0, 0].numpy(), expected, atol=1e-10)


def test_untrained_none_network_is_identity():
    net = StructKPN(kernel_size=5, features=8, num_res_blocks=1, head_channels=8, kernel_norm="none").eval()
    x = torch.rand(1, 1, 17, 14)
    with torch.no_grad():
        torch.testing.assert_close(net(x), x)


def test_errors():
    with pytest.raises(ValueError, match="odd"):
        StructKPN(kernel_size=20)
    with pytest.raises(ValueError, match="preset"):
        StructKPN(preset="huge")
    with pytest.raises(ValueError, match="kernel_norm"):
        StructKPN(kernel_norm="sigmoid")
    net = StructKPN(features=8, num_res_blocks=1, head_channels=8)
    with pytest.raises(ValueError, match=r"\[1, 1, 8, 30\].*21 x 21.*> 10"):
        net(torch.rand(1, 1, 8, 30))


def _conv_shapes(module: nn.Module) -> list[tuple[int, int, int, int]]:
    """(in, out, kernel, groups) of every convolution, in order."""
    return [
        (m.in_channels, m.out_channels, m.kernel_size[0], m.groups)
        for m in module.modules()
        if isinstance(m, nn.Conv2d)
    ]


def test_authors_preset_channels_and_forward():
    net = StructKPN(preset="authors")
    assert STRUCTKPN_PRESETS["authors"]["features"] == 96
    convs = _conv_shapes(net)
    assert convs[:2] == [(1, 96, 3, 1), (96, 96, 3, 1)]
    assert convs[2:-2] == [(96, 96, 3, 2)] * 48  # 24 residual blocks of two grouped ("G2") 3 x 3 convolutions
    assert convs[-2:] == [(96, 441, 1, 1), (441, 441, 1, 1)]
    stem = (1 * 9 + 1) * 96 + (96 * 9 + 1) * 96
    blocks = 48 * ((48 * 9 + 1) * 96)  # a group sees 48 of the 96 input channels
    head = (96 + 1) * 441 + (441 + 1) * 441
    assert sum(p.numel() for p in net.parameters()) == stem + blocks + head == 2_316_963
    x = torch.rand(1, 1, 12, 11)
    with torch.no_grad():
        _randomised(net).eval()
        torch.testing.assert_close(net(x), local_conv2d_unfold(x, net.predict_kernels(x)), rtol=1e-5, atol=1e-5)


def test_lite_preset_channels():
    net = StructKPN()
    convs = _conv_shapes(net)
    assert convs[:2] == [(1, 32, 3, 1), (32, 32, 3, 1)]
    assert net.encode.stride == (2, 2)
    assert convs[2:-3] == [(32, 32, 3, 1)] * 16
    assert convs[-3:] == [(32, 128, 1, 1), (32, 32, 1, 1), (32, 441, 1, 1)]  # sub-pixel conv x2, then the head


def test_explicit_arguments_override_the_preset():
    net = StructKPN(preset="authors", features=16, num_res_blocks=2, kernel_size=7)
    assert (net.features, net.num_res_blocks, net.head_channels, net.block_groups, net.downsample) == (16, 2, 441, 2, 1)
    assert _conv_shapes(net)[-1] == (441, 49, 1, 1)


def test_monai_config_instantiation():
    parser = ConfigParser(
        {
            "authors": {"_target_": "bundle.networks.StructKPN", "preset": "authors"},
            "k15": {"_target_": "bundle.networks.StructKPN", "kernel_size": 15},
        }
    )
    authors = parser.get_parsed_content("authors")
    assert (authors.features, authors.num_res_blocks, authors.head_channels) == (96, 24, 441)
    k15 = parser.get_parsed_content("k15")
    assert (k15.kernel_size, k15.features) == (15, STRUCTKPN_PRESETS["lite"]["features"])
    assert k15.head[-1].out_channels == 225


def _conditioned(image: torch.Tensor, dose: float, noise: float = 0.005) -> torch.Tensor:
    """(B, 1, H, W) image -> (B, 3, H, W) with a constant noise map and dose fraction."""
    return torch.cat([image, torch.full_like(image, noise), torch.full_like(image, dose)], dim=1)


@pytest.fixture(scope="module")
def dose_aware_net() -> StructKPN:
    net = _randomised(StructKPN(kernel_size=7, features=8, num_res_blocks=2, head_channels=8, dose_aware=True))
    nn.init.normal_(net.stem[0].weight, std=0.5)  # the conditioning channels reach the kernels
    net.inference_band_rows = 8
    return net


def test_dose_aware_band_path_equals_full_path_and_kernels(dose_aware_net):
    x = _conditioned(torch.rand(2, 1, 29, 31), 0.3)
    full = dose_aware_net.train()(x)
    with torch.no_grad():
        banded = dose_aware_net.eval()(x)
        kernels = dose_aware_net.predict_kernels(x)
    assert full.shape == (2, 1, 29, 31)
    assert (banded - full).abs().max() < 1e-5
    # the identity mix is part of the applied kernels: Eq. 1 with them gives the output
    assert (local_conv2d_unfold(x[:, :1], kernels) - banded).abs().max() < 1e-5
    torch.testing.assert_close(kernels.sum(dim=1), torch.ones(2, 29, 31))


def test_dose_one_is_the_identity_and_the_mix_is_sqrt_dose(dose_aware_net):
    image = torch.rand(1, 1, 24, 24)
    with torch.no_grad():
        assert torch.equal(dose_aware_net.eval()(_conditioned(image, 1.0)), image)
        filtered = dose_aware_net(_conditioned(image, 0.0))  # w = 0: the predicted kernels alone
        kernels_only = local_conv2d_unfold(image, dose_aware_net.kernels(dose_aware_net.backbone(
            torch.cat([image, torch.full_like(image, 0.2), torch.full_like(image, 0.2)], dim=1))))
        mixed = dose_aware_net(_conditioned(image, 0.36))
        mmse = StructKPN(kernel_size=7, features=8, num_res_blocks=2, head_channels=8, dose_aware=True,
                         output_noise="mmse")
        mmse.load_state_dict(dose_aware_net.state_dict())
        mixed_mmse = mmse.eval()(_conditioned(image, 0.36))
    torch.testing.assert_close(filtered, kernels_only, atol=1e-5, rtol=0)  # noise channels: 40 * 0.005, * sqrt(1)
    # the kernel predictor also sees the dose, so compare with the kernels it predicts at that dose
    with torch.no_grad():
        at_dose = torch.cat([image, torch.full_like(image, 0.2), torch.full_like(image, 0.2 * 0.8)], dim=1)
        kernels = local_conv2d_unfold(image, dose_aware_net.kernels(dose_aware_net.backbone(at_dose)))
    torch.testing.assert_close(mixed, 0.6 * image + 0.4 * kernels, atol=1e-5, rtol=0)
    torch.testing.assert_close(mixed_mmse, 0.36 * image + 0.64 * kernels, atol=1e-5, rtol=0)


def test_dose_aware_warm_start_keeps_the_single_dose_kernels():
    from bundle.networks import dose_aware_state_dict

    single = _randomised(StructKPN(kernel_size=7, features=8, num_res_blocks=1, head_channels=8)).eval()
    nn.init.normal_(single.stem[0].weight, std=0.5)
    dose_aware = StructKPN(kernel_size=7, features=8, num_res_blocks=1, head_channels=8, dose_aware=True).eval()
    dose_aware.load_state_dict(dose_aware_state_dict(single.state_dict()))
    image = torch.rand(1, 1, 20, 22)
    with torch.no_grad():
        expected = torch.lerp(single(image), image, 0.5)  # w = sqrt(0.25)
        torch.testing.assert_close(dose_aware(_conditioned(image, 0.25, noise=0.3)), expected, atol=1e-6, rtol=0)


def test_dose_aware_input_channels_and_torchscript(dose_aware_net):
    with pytest.raises(ValueError, match="noise std and the dose fraction, got 1 channels"):
        dose_aware_net(torch.rand(1, 1, 24, 24))
    x = _conditioned(torch.rand(1, 1, 24, 26), 0.2)
    scripted = torch.jit.script(dose_aware_net.eval())
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), dose_aware_net(x))


# ----- multi-slice StructKPN (beyond the paper: kernels over adjacent slices) -----


def _reflect(index: int, size: int) -> int:
    """Reflect padding without repeating the edge pixel: -1 -> 1, size -> size - 2."""
    index = abs(index)
    return 2 * (size - 1) - index if index >= size else index


def naive_multi_slice_eq1(slices: np.ndarray, kernels: np.ndarray, kernel_size: int, neighbour_size: int) -> np.ndarray:
    """(S, H, W) slices and (T, H, W) kernels -> (H, W): a loop over pixels and taps, from the definition.

    out[m, n] = sum_s sum_{a, b = -r_s..r_s} K_s[(a + r_s) * k_s + b + r_s, m, n] * x_s[m - a, n - b], the centre
    slice's k x k kernel first in the tap order, then each neighbour's kn x kn kernel in slice order."""
    count, height, width = slices.shape
    centre = count // 2
    order = [centre] + [s for s in range(count) if s != centre]
    out = np.zeros((height, width))
    for m in range(height):
        for n in range(width):
            tap = 0
            for s in order:
                size = kernel_size if s == centre else neighbour_size
                r = size // 2
                for a in range(-r, r + 1):
                    for b in range(-r, r + 1):
                        value = slices[s, _reflect(m - a, height), _reflect(n - b, width)]
                        out[m, n] += kernels[tap + (a + r) * size + b + r, m, n] * value
                tap += size * size
    return out


def _multi_slice_net(slices: int = 3, neighbour_kernel_size: int | None = None, dose_aware: bool = False) -> StructKPN:
    net = _randomised(StructKPN(kernel_size=5, features=8, num_res_blocks=1, head_channels=8, slices=slices,
                                neighbour_kernel_size=neighbour_kernel_size, dose_aware=dose_aware,
                                inference_band_rows=4))  # fmt: skip
    nn.init.normal_(net.stem[0].weight, std=0.5)  # every slice reaches the kernels
    return net


@pytest.mark.parametrize("neighbour_kernel_size", [None, 3])
def test_multi_slice_forward_is_the_naive_multi_slice_eq1(neighbour_kernel_size):
    net = _multi_slice_net(3, neighbour_kernel_size)
    x = torch.rand(1, 3, 9, 8, dtype=torch.float64)
    net.double()
    with torch.no_grad():
        kernels = net.eval().predict_kernels(x)
        banded, full = net(x), net.train()(x)
    neighbour = neighbour_kernel_size or 5
    assert kernels.shape == (1, 25 + 2 * neighbour**2, 9, 8)
    torch.testing.assert_close(kernels.sum(dim=1), torch.ones(1, 9, 8, dtype=torch.float64))  # one softmax, all taps
    expected = naive_multi_slice_eq1(x[0].numpy(), kernels[0].numpy(), 5, neighbour)
    np.testing.assert_allclose(full[0, 0].numpy(), expected, atol=1e-12)
    np.testing.assert_allclose(banded[0, 0].numpy(), expected, atol=1e-12)
    assert kernels[0, 25:].sum(dim=0).min() > 1e-3  # the neighbours really take part
    assert kernels.std(dim=(2, 3)).max() > 1e-3


def test_multi_slice_keeps_a_constant_volume():
    net = _multi_slice_net(5, 3, dose_aware=True)
    x = torch.cat([torch.full((2, 5, 13, 11), 0.37), torch.full((2, 1, 13, 11), 0.01),
                   torch.full((2, 1, 13, 11), 0.2)], dim=1)  # fmt: skip
    with torch.no_grad():
        for training in (False, True):
            assert (net.train(training)(x) - 0.37).abs().max() < 1e-6


@pytest.mark.parametrize("neighbour_kernel_size, dose_aware", [(None, False), (3, True)])
def test_multi_slice_band_path_equals_full_path(neighbour_kernel_size, dose_aware):
    net = _multi_slice_net(3, neighbour_kernel_size, dose_aware)
    image = torch.rand(2, 3, 23, 17)
    x = torch.cat([image, torch.full_like(image[:, :2], 0.3)], dim=1) if dose_aware else image
    full = net.train()(x)
    with torch.no_grad():
        banded = net.eval()(x)
    assert full.shape == (2, 1, 23, 17)
    assert (banded - full).abs().max() < 1e-5
    assert (full - image[:, 1:2]).abs().max() > 1e-2


def test_single_slice_option_is_the_shipped_network():
    """slices=1 is the network models/model.pt was trained as: strict loading, no new setting recorded, and the
    forward pass is Eq. 1 with its predicted kernels on a small input."""
    from bundle.evaluation.denoise import load_network
    from bundle.io import network_settings

    repo = Path(__file__).resolve().parents[1]
    net = load_network(repo / "configs/inference.json")  # strict load of models/model.pt, settings checked
    assert net.slices == 1 and net.num_taps == 21 * 21
    assert "slices" not in network_settings(net) and net.stem[0].in_channels == 3
    image = torch.rand(1, 1, 40, 37)
    x = torch.cat([image, torch.full_like(image, 0.004), torch.full_like(image, 0.25)], dim=1)
    with torch.no_grad():
        expected = local_conv2d_unfold(image, net.predict_kernels(x))
        torch.testing.assert_close(net(x), expected, rtol=0, atol=1e-5)  # band path: float rounding only


@pytest.mark.parametrize("dose_aware", [False, True])
def test_widened_single_slice_weights_are_the_single_slice_network_on_agreeing_slices(dose_aware):
    from bundle.networks import NEIGHBOUR_SHARE, multi_slice_state_dict

    single = _multi_slice_net(1, dose_aware=dose_aware).eval()
    multi = StructKPN(kernel_size=5, features=8, num_res_blocks=1, head_channels=8, slices=3, dose_aware=dose_aware)
    multi.load_state_dict(multi_slice_state_dict(single.state_dict(), 3))  # strict: every name and shape
    multi.eval()
    image = torch.rand(1, 1, 19, 21)
    conditioning = [torch.full_like(image, 0.01), torch.full_like(image, 0.3)] if dose_aware else []
    with torch.no_grad():
        expected = single(torch.cat([image, *conditioning], dim=1))
        agreeing = multi(torch.cat([image, image, image, *conditioning], dim=1))
        kernels = multi.predict_kernels(torch.cat([torch.rand(1, 3, 19, 21), *conditioning], dim=1))
    torch.testing.assert_close(agreeing, expected, atol=1e-6, rtol=0)
    mix = float(np.sqrt(0.3)) if dose_aware else 0.0  # the identity mix sits on the centre slice
    torch.testing.assert_close(kernels[:, 25:].sum(dim=1), torch.full((1, 19, 21), NEIGHBOUR_SHARE * (1 - mix)))


def test_untrained_multi_slice_network_is_the_untrained_single_slice_one_on_agreeing_slices():
    single = StructKPN(kernel_size=5, features=8, num_res_blocks=1, head_channels=8).eval()
    multi = StructKPN(kernel_size=5, features=8, num_res_blocks=1, head_channels=8, slices=3).eval()
    image = torch.rand(1, 1, 17, 14)
    with torch.no_grad():
        torch.testing.assert_close(multi(image.repeat(1, 3, 1, 1)), single(image), atol=1e-6, rtol=0)
    none = StructKPN(kernel_size=5, features=8, num_res_blocks=1, head_channels=8, slices=3, kernel_norm="none")
    x = torch.rand(1, 3, 17, 14)
    with torch.no_grad():  # linear kernels: the neighbours' start at 0, the identity on the centre slice exactly
        torch.testing.assert_close(none.eval()(x), x[:, 1:2])


def test_multi_slice_torchscript_export_matches_eager():
    import io

    net = _multi_slice_net(3, 3, dose_aware=True).eval()
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(net), buffer)
    buffer.seek(0)
    scripted = torch.jit.load(buffer)
    x = torch.cat([torch.rand(1, 3, 22, 19), torch.full((1, 2, 22, 19), 0.25)], dim=1)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), net(x), rtol=0, atol=0)
        torch.testing.assert_close(scripted.predict_kernels(x), net.predict_kernels(x), rtol=0, atol=0)


def test_multi_slice_settings_and_errors():
    from bundle.io import network_settings
    from bundle.networks import multi_slice_state_dict

    net = StructKPN(features=8, num_res_blocks=1, head_channels=8, slices=3, neighbour_kernel_size=11)
    assert net.stem[0].in_channels == 3 and net.head[-1].out_channels == 441 + 2 * 121
    assert network_settings(net)["slices"] == 3 and network_settings(net)["neighbour_kernel_size"] == 11
    assert StructKPN(slices=3, neighbour_kernel_size=21).neighbour_kernel_size is None  # kn = k is the default
    with pytest.raises(ValueError, match="slices must be a positive odd"):
        StructKPN(slices=2)
    with pytest.raises(ValueError, match="needs slices > 1"):
        StructKPN(neighbour_kernel_size=11)
    with pytest.raises(ValueError, match="odd and at most kernel_size=21"):
        StructKPN(slices=3, neighbour_kernel_size=23)
    with pytest.raises(ValueError, match=r"3 slices takes 3 channels .* got 1"):
        net(torch.rand(1, 1, 30, 30))
    with pytest.raises(ValueError, match=r"3 image channel\(s\) \(3 slices\), the noise std"):
        StructKPN(features=8, num_res_blocks=1, head_channels=8, slices=3, dose_aware=True)(torch.rand(1, 3, 30, 30))
    with pytest.raises(ValueError, match="not a single-slice StructKPN"):
        multi_slice_state_dict(net.state_dict(), 3)

"""Stationary wavelet transform against PyWavelets and Parseval's identity; WavResNet residual behaviour."""

from __future__ import annotations

import numpy as np
import pytest
import pywt
import torch

from bundle.networks.wavresnet import StationaryWavelet2d, WavResNet


@pytest.mark.parametrize("wavelet", ["haar", "db2"])
def test_analysis_matches_pywavelets_swt2(wavelet):
    levels = 3
    image = np.random.default_rng(0).random((32, 48))
    coefficients = StationaryWavelet2d(wavelet, levels).double()(torch.from_numpy(image)[None, None])[0].numpy()
    reference = pywt.swt2(image, wavelet, level=levels, trim_approx=True, norm=True)
    reference_bands = [reference[0]] + [band for level in reference[1:] for band in level]
    assert coefficients.shape[0] == len(reference_bands) == 1 + 3 * levels
    for channel, band in enumerate(reference_bands):
        np.testing.assert_allclose(coefficients[channel], band, atol=1e-6)


@pytest.mark.parametrize("wavelet, levels", [("haar", 1), ("haar", 3), ("db2", 2), ("sym4", 2)])
@pytest.mark.parametrize("shape", [(33, 47), (24, 21)])
def test_inverse_reconstructs_exactly_and_frame_is_parseval(wavelet, levels, shape):
    transform = StationaryWavelet2d(wavelet, levels)
    image = torch.rand(2, 3, *shape)
    coefficients = transform(image)
    assert coefficients.shape == (2, 3 * (1 + 3 * levels), *shape)
    torch.testing.assert_close(transform.inverse(coefficients), image, rtol=0, atol=1e-5)
    energy = (coefficients.double() ** 2).sum() / (image.double() ** 2).sum()
    assert abs(energy.item() - 1.0) < 1e-5


def test_transform_rejects_non_orthogonal_wavelet_and_tiny_images():
    with pytest.raises(ValueError, match="orthogonal"):
        StationaryWavelet2d("bior2.2")
    with pytest.raises(ValueError, match="H, W >= 4"):
        StationaryWavelet2d("haar", 3)(torch.rand(1, 1, 3, 16))


def small_wavresnet() -> WavResNet:
    return WavResNet(levels=2, features=8, num_blocks=2, convs_per_block=2)


@pytest.mark.parametrize("shape", [(31, 45), (16, 17)])
def test_output_shape_for_odd_sizes(shape):
    image = torch.rand(2, 1, *shape)
    assert small_wavresnet()(image).shape == image.shape


@pytest.mark.parametrize("training", [True, False])
def test_zeroed_noise_head_is_identity(training):
    torch.manual_seed(0)
    net = small_wavresnet().train(training)
    with torch.no_grad():
        net.noise.weight.zero_()
        net.noise.bias.zero_()
    image = torch.rand(2, 1, 29, 35)
    torch.testing.assert_close(net(image), image, rtol=0, atol=1e-5)


def test_default_parameter_count():
    assert sum(p.numel() for p in WavResNet().parameters()) == 477_066


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = small_wavresnet()
    image, target = torch.rand(2, 1, 24, 26), torch.rand(2, 1, 24, 26)
    torch.nn.functional.mse_loss(net(image), target).backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_torchscript_matches_eager():
    torch.manual_seed(0)
    net = small_wavresnet().eval()
    image = torch.rand(1, 1, 27, 30)
    torch.testing.assert_close(torch.jit.script(net)(image), net(image))

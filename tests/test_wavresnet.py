"""Stationary wavelet transform against PyWavelets and Parseval's identity; WavResNet starts as the identity and
learns a wavelet-domain residual."""

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


def randomised_noise_head(net: WavResNet) -> WavResNet:
    """The network as after some training: a non-zero noise head (it starts at zero)."""
    with torch.no_grad():
        net.noise.weight.normal_(0.0, 0.1)
        net.noise.bias.normal_(0.0, 0.1)
    return net


def wavelet_residual(net: WavResNet, image: torch.Tensor) -> torch.Tensor:
    """The published output, written out: the input minus the inverse transform of the predicted coefficient noise."""
    coefficients = net.wavelet(image)
    features = [net.head(coefficients)]
    for block in net.blocks:
        features.append(block(features[-1]))
    noise = net.noise(net.fuse(torch.cat(features, dim=1))) * net.noise_scale
    return net.wavelet.inverse(coefficients - noise)


@pytest.mark.parametrize("shape", [(31, 45), (16, 17)])
def test_odd_sizes_give_the_wavelet_residual(shape):
    torch.manual_seed(0)
    net = randomised_noise_head(small_wavresnet()).eval()
    image = torch.rand(2, 1, *shape)
    with torch.no_grad():
        torch.testing.assert_close(net(image), wavelet_residual(net, image), rtol=0, atol=1e-6)
        assert (net(image) - image).abs().max() > 1e-3


@pytest.mark.parametrize("training", [True, False])
def test_untrained_network_is_exactly_the_identity(training):
    torch.manual_seed(0)
    image = torch.rand(2, 1, 29, 35)
    for net in (small_wavresnet(), WavResNet()):
        net.train(training)
        assert not net.noise.weight.any() and not net.noise.bias.any()
        with torch.no_grad():
            torch.testing.assert_close(net(image), image, rtol=0, atol=0)


def test_output_is_input_minus_the_inverse_transform_of_the_predicted_noise():
    torch.manual_seed(0)
    net = randomised_noise_head(small_wavresnet()).eval()
    image = torch.rand(1, 1, 24, 26)
    with torch.no_grad():
        expected = wavelet_residual(net, image)  # the residual in the wavelet domain
        torch.testing.assert_close(net(image), expected, rtol=0, atol=1e-6)
        assert (net(image) - image).abs().max() > 1e-3


def test_first_step_fits_the_wavelet_coefficients_of_the_error():
    """At the identity, the MSE gradient of the noise head's bias is ``noise_scale`` times the band-wise sum of the
    error's coefficients (the inverse transform's adjoint is the analysis), and one small step lowers the loss."""
    torch.manual_seed(0)
    net = small_wavresnet().double()
    clean = torch.rand(2, 1, 20, 22, dtype=torch.float64)
    noisy = clean + 0.05 * torch.randn_like(clean)
    loss = torch.nn.functional.mse_loss(net(noisy), clean)
    loss.backward()
    expected = -2.0 / clean.numel() * net.noise_scale * net.wavelet(noisy - clean).sum(dim=(0, 2, 3))
    torch.testing.assert_close(net.noise.bias.grad, expected, rtol=1e-9, atol=1e-12)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter -= 0.1 * parameter.grad
        assert torch.nn.functional.mse_loss(net(noisy), clean) < loss


def test_first_adam_step_moves_the_image_by_about_noise_scale_times_the_learning_rate():
    """Adam's first step moves each head weight by lr, so the output moves by at most
    noise_scale * lr * (sum of the head's |inputs| at a pixel) (bias included); it stays a small fraction of the
    noise when noise_scale is 0.01, while without the scale it is 100 times larger."""
    torch.manual_seed(0)
    image = 0.3 + 0.01 * torch.randn(4, 1, 32, 32)
    target = torch.full_like(image, 0.3)
    moves = {}
    for scale in (1.0, 0.01):
        torch.manual_seed(1)
        net = WavResNet(levels=2, features=16, num_blocks=2, convs_per_block=2, noise_scale=scale)
        optimiser = torch.optim.Adam(net.parameters(), lr=2e-4)
        torch.nn.functional.mse_loss(net(image), target).backward()
        optimiser.step()
        with torch.no_grad():
            moves[scale] = (net(image) - image).abs().mean().item()
    assert moves[0.01] < 0.1 * 0.01  # a tenth of the noise
    assert moves[1.0] == pytest.approx(100 * moves[0.01], rel=0.05)


def test_non_positive_noise_scale_is_rejected():
    with pytest.raises(ValueError, match="noise_scale"):
        WavResNet(noise_scale=0.0)


def test_default_parameter_count():
    assert sum(p.numel() for p in WavResNet().parameters()) == 477_066


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    net = randomised_noise_head(small_wavresnet())  # at zero, the head stops the first step's gradient to the body
    image, target = torch.rand(2, 1, 24, 26), torch.rand(2, 1, 24, 26)
    torch.nn.functional.mse_loss(net(image), target).backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


def test_torchscript_matches_eager():
    torch.manual_seed(0)
    net = randomised_noise_head(small_wavresnet()).eval()
    image = torch.rand(1, 1, 27, 30)
    torch.testing.assert_close(torch.jit.script(net)(image), net(image))

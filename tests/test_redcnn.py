"""RED-CNN against its closed-form parameter count, a naive functional reference and its receptive field."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from bundle.networks.redcnn import REDCNN


def naive_redcnn(net: REDCNN, image: torch.Tensor) -> torch.Tensor:
    """RED-CNN written out from Chen et al. (2017): shortcuts conv2 -> deconv3, conv4 -> deconv1, input -> deconv5."""
    encoder = [net.conv1, net.conv2, net.conv3, net.conv4, net.conv5]
    decoder = [net.deconv1, net.deconv2, net.deconv3, net.deconv4, net.deconv5]
    encoder_outputs = []
    out = image
    for conv in encoder:
        out = F.relu(F.conv2d(out, conv.weight, conv.bias))
        encoder_outputs.append(out)
    shortcut_into_decoder = {0: encoder_outputs[3], 2: encoder_outputs[1], 4: image}
    for index, deconv in enumerate(decoder):
        out = F.conv_transpose2d(out, deconv.weight, deconv.bias)
        if index in shortcut_into_decoder:
            out = out + shortcut_into_decoder[index]
        out = F.relu(out)
    return out


@pytest.mark.parametrize(
    "in_channels, features, kernel_size, expected",
    [(1, 96, 5, 1_848_865), (2, 8, 3, None)],
)
def test_parameter_count_matches_closed_form(in_channels, features, kernel_size, expected):
    k2 = kernel_size**2
    closed_form = (
        (in_channels * features * k2 + features)  # conv1
        + 8 * (features * features * k2 + features)  # conv2-5, deconv1-4
        + (features * in_channels * k2 + in_channels)  # deconv5
    )
    net = REDCNN(in_channels, features, kernel_size)
    assert sum(p.numel() for p in net.parameters()) == closed_form
    if expected is not None:
        assert closed_form == expected


@pytest.mark.parametrize("shape", [(21, 21), (23, 30), (37, 29)])
def test_zero_weights_give_relu_of_input(shape):
    net = REDCNN(features=4)
    with torch.no_grad():
        for parameter in net.parameters():
            parameter.zero_()
    image = torch.randn(2, 1, *shape)
    assert torch.equal(net(image), F.relu(image))


def test_matches_naive_reference_on_odd_size():
    torch.manual_seed(0)
    net = REDCNN(features=8)
    image = torch.rand(2, 1, 29, 31)
    out = net(image)
    assert out.shape == image.shape
    torch.testing.assert_close(out, naive_redcnn(net, image), rtol=1e-5, atol=1e-6)


def test_receptive_field_is_ten_layers_of_radius_two():
    torch.manual_seed(0)
    net = REDCNN(features=4)
    with torch.no_grad():  # positive weights and biases keep every ReLU active, so every tap contributes
        for parameter in net.parameters():
            parameter.uniform_(0.01, 0.1)
    image = torch.rand(1, 1, 51, 51, requires_grad=True)
    net(image)[0, 0, 25, 25].backward()
    influence = image.grad[0, 0] != 0
    expected = torch.zeros(51, 51, dtype=torch.bool)
    expected[5:46, 5:46] = True  # 10 layers x radius 2 = 20 pixels either side of the centre
    assert torch.equal(influence, expected)


def test_torchscript_matches_eager_and_returns_one_tensor():
    torch.manual_seed(0)
    net = REDCNN(features=8).eval()
    scripted = torch.jit.script(net)
    image = torch.rand(1, 1, 25, 27)
    out = scripted(image)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(out, net(image))


def test_too_small_input_raises():
    with pytest.raises(ValueError, match="H, W >= 21"):
        REDCNN(features=4)(torch.rand(1, 1, 20, 40))

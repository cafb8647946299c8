"""Residual learning from the identity: a network's last layer zeroed, for ``output = input + net(input)``.

MONAI has the residual wrapper itself (``monai.networks.layers.SkipConnection(net, mode="add")``); what it lacks is
the start: with its last layer at zero the branch outputs exactly 0, so the wrapped network is exactly the identity
before training, and training starts from the low-dose input instead of from a random image (Fixup, ReZero).

Example (``configs/networks/basicunet.json`` builds the same from the config)::

    unet = zero_initialised(BasicUNet(spatial_dims=2, in_channels=1, out_channels=1), "final_conv")
    network = SkipConnection(unet, mode="add")
"""

from __future__ import annotations

from torch import nn

__all__ = ["zero_initialised"]


def zero_initialised(module: nn.Module, layer: str) -> nn.Module:
    """Set every parameter of ``module``'s submodule ``layer`` (a dotted name, e.g. ``"final_conv"``) to zero.

    Args:
        module: the network, changed in place.
        layer: name of its last layer, as in ``module.named_modules()``.

    Returns:
        ``module`` itself.

    Raises:
        ValueError: when ``module`` has no submodule ``layer`` or it has no parameters.
    """
    try:
        target = module.get_submodule(layer)
    except AttributeError as error:
        raise ValueError(f"{type(module).__name__} has no layer {layer!r}.") from error
    parameters = list(target.parameters())
    if not parameters:
        raise ValueError(f"Layer {layer!r} of {type(module).__name__} has no parameters to zero.")
    for parameter in parameters:
        nn.init.zeros_(parameter)
    return module

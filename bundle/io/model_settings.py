"""The settings a model was trained with, stored beside its weights, so it is always loaded with its own settings.

``models/model.pt`` (a state dict) has ``models/model.json`` beside it::

    {"network": {"_target_": "bundle.networks.structkpn.StructKPN", "kernel_size": 21, "dose_aware": true, ...},
     "hu_window": [-1024.0, 3072.0]}

``network`` holds the constructor settings the network instance keeps (for StructKPN the preset resolved into
``features``, ``num_res_blocks`` ...), without the ones chosen at inference for the same weights
(:data:`RUNTIME_SETTINGS`); ``hu_window`` is the HU window mapped to [0, 1] on the way in (the structure-aware
loss's strength scale is calibrated to it). Training writes the file (the first step of ``train.json``'s ``run``,
which ``evaluate.json`` replaces); inference and evaluation check the whole config against it when they load the
weights, and building ``inference.json``'s ``network_def`` (export,
``verify_net_in_out``) checks ``hu_window``, ``kernel_size`` and ``dose_aware`` against the file beside
``ckpt_path``; a config that differs is refused, naming the file and each differing setting.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from bundle.io.atomic import atomic_output

__all__ = ["RUNTIME_SETTINGS", "ModelSettingsError", "check_model_settings", "model_settings", "network_settings", "settings_path",
           "write_model_settings"]

logger = logging.getLogger(__name__)

_JSON_SCALARS = (bool, int, float, str, type(None))
# constructor settings chosen at inference for the same weights: StructKPN's band rows and dtype (how it runs) and
# output_noise (the identity mix of the output, README "Strength")
RUNTIME_SETTINGS = frozenset({"inference_band_rows", "inference_dtype", "output_noise"})


class ModelSettingsError(ValueError):
    """A config asks for other settings than the ones a checkpoint was trained with."""


def settings_path(ckpt_path: os.PathLike | str) -> Path:
    """The settings file of the weights ``ckpt_path``: the same name with ``.json`` (``models/model.json``)."""
    return Path(ckpt_path).with_suffix(".json")


def _unwrapped(network: torch.nn.Module) -> torch.nn.Module:
    while isinstance(getattr(network, "module", None), torch.nn.Module):
        network = network.module
    return network


def _defaults_omitted(network: torch.nn.Module) -> dict[str, Any]:
    """The settings ``network``'s class records only away from their default (``SETTINGS_OMITTED_AT_DEFAULT``:
    settings added after models were shipped, whose files lack them), with those defaults."""
    cls = type(_unwrapped(network))
    parameters = inspect.signature(cls.__init__).parameters
    return {name: parameters[name].default for name in getattr(cls, "SETTINGS_OMITTED_AT_DEFAULT", ())}


def network_settings(network: torch.nn.Module, omit_defaults: bool = True) -> dict[str, Any]:
    """
    ``{"_target_": "<module>.<class>", <setting>: <value>, ...}`` of ``network``: every constructor parameter the
    instance keeps as an attribute of the same name with a JSON value (numbers, strings, booleans, lists of them),
    except :data:`RUNTIME_SETTINGS` (chosen at inference for the same weights) and, with ``omit_defaults``, the
    settings its class lists in ``SETTINGS_OMITTED_AT_DEFAULT`` while at their default (StructKPN's ``slices``: a
    single-slice model's file is the one it had before the option existed). A ``DistributedDataParallel``
    (anything with ``.module``) is unwrapped.
    """
    network = _unwrapped(network)
    cls = type(network)
    omitted = _defaults_omitted(network) if omit_defaults else {}
    settings: dict[str, Any] = {"_target_": f"{cls.__module__}.{cls.__qualname__}"}
    for name in inspect.signature(cls.__init__).parameters:
        if name == "self" or name in RUNTIME_SETTINGS or not hasattr(network, name):
            continue
        value = getattr(network, name)
        if name in omitted and value == omitted[name]:
            continue
        if isinstance(value, tuple):
            value = list(value)
        if isinstance(value, _JSON_SCALARS) or (isinstance(value, list) and all(isinstance(v, _JSON_SCALARS) for v in value)):
            settings[name] = value
    return settings


def model_settings(network: torch.nn.Module, hu_window: Sequence[float]) -> dict[str, Any]:
    """The settings file's content: ``{"network": network_settings(network), "hu_window": [lo, hi]}`` (HU)."""
    low, high = (float(v) for v in hu_window)
    return {"network": network_settings(network), "hu_window": [low, high]}


def write_model_settings(ckpt_path: os.PathLike | str, network: torch.nn.Module, hu_window: Sequence[float]) -> Path:
    """Write ``model_settings(network, hu_window)`` beside the weights ``ckpt_path`` (atomically); returns the file."""
    path = settings_path(ckpt_path)
    with atomic_output(path) as temporary:
        temporary.write_text(json.dumps(model_settings(network, hu_window), indent=4) + "\n")
    return path


def _same(saved: Any, configured: Any) -> bool:
    if isinstance(saved, (int, float)) and isinstance(configured, (int, float)) and not isinstance(saved, bool):
        return not isinstance(configured, bool) and math.isclose(float(saved), float(configured), rel_tol=1e-9)
    if isinstance(saved, list) and isinstance(configured, (list, tuple)):
        return len(saved) == len(configured) and all(_same(a, b) for a, b in zip(saved, configured))
    return saved == configured


def check_model_settings(
    ckpt_path: os.PathLike | str,
    hu_window: Sequence[float],
    network: torch.nn.Module | None = None,
    **settings: Any,
) -> str:
    """
    Check a config against the settings file beside the weights ``ckpt_path``; return ``str(ckpt_path)``.

    Compared: ``hu_window``; with ``network``, every setting of :func:`network_settings` (its class included); and
    each keyword in ``settings`` (e.g. ``kernel_size=21``) against the saved network setting of that name. Raises
    :class:`ModelSettingsError` naming the weights, the settings file and each differing setting, with the
    command-line override that loads the model as it was trained. Weights without a settings file (saved before
    this check existed, or by other tools) are loaded unchecked, with a warning.

    Example (``inference.json``)::

        "load_path": "$bundle.io.check_model_settings(bundle.io.require_checkpoint(@ckpt_path), @hu_window, @network)"
    """
    path = settings_path(ckpt_path)
    if not path.is_file():
        if Path(ckpt_path).is_file():
            logger.warning("%s: no settings file %s beside the weights; loading with the config's settings unchecked",
                           ckpt_path, path.name)
        return str(ckpt_path)
    try:
        saved = json.loads(path.read_text())
        saved_network, saved_window = dict(saved["network"]), saved["hu_window"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelSettingsError(f"{path}: unreadable model settings of {ckpt_path} ({error})") from error
    configured = dict(settings)
    if network is not None:
        configured.update(network_settings(network, omit_defaults=False))
        if saved_network.get("_target_") == configured["_target_"]:  # a file without them was saved at the default
            saved_network = {**_defaults_omitted(network), **saved_network}
    differences = []
    if not _same(saved_window, list(hu_window)):
        differences.append(f"hu_window: trained {saved_window}, config {list(hu_window)} (--hu_window \"{saved_window}\")")
    for name, value in configured.items():
        if name not in saved_network:
            continue  # a setting the file does not record (an older file, another class): the weights decide
        if not _same(saved_network[name], value):
            hint = f" (--{name} {json.dumps(saved_network[name])})" if name in settings else ""
            differences.append(f"{name}: trained {json.dumps(saved_network[name])}, config {json.dumps(value)}{hint}")
    if differences:
        raise ModelSettingsError(
            f"{ckpt_path} was trained with other settings than the config's ({path}): " + "; ".join(differences)
            + ". Load it with the settings it was trained with, or pass --ckpt_path to weights trained with these."
        )
    return str(ckpt_path)

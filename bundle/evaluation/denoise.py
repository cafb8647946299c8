"""The configured denoiser as a function of HU arrays: the network, weights and transforms of ``inference.json``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import LoadImaged, ScaleIntensityRanged

from bundle.io.model_settings import check_model_settings
from bundle.transforms import AddNeighbourSlicesd, ValidateCTImaged
from bundle.utils.config import read_bundle_config

__all__ = ["Denoiser", "configured_network", "hu_window", "load_denoiser", "load_network", "windowed"]


class Denoiser:
    """
    Denoise CT slices given in HU with a network and the window transforms around it, as inference does.

    Args:
        network: the network, in eval mode; it maps the preprocessed (B, C, H, W) slice to (B, 1, H, W).
        transforms: the preprocessing transforms that follow loading, applied to ``{"image": (1, H, W) HU}``
            (the window, and the dose conditioning of a dose-aware network, which reads ``dose_fraction``).
        inverse_window: maps the ``pred`` key from the network's units back to HU.
        device: where the network runs.

    Calling it with ``hu`` of shape (H, W) or (N, H, W) returns the denoised HU, float32, same shape, each slice
    denoised on its own (a multi-slice network then sees a slice without neighbours); :meth:`centre` gives a
    multi-slice network a slice with its neighbours.
    """

    def __init__(
        self,
        network: torch.nn.Module,
        transforms: Sequence[Callable],
        inverse_window: Callable,
        device: torch.device | str = "cpu",
    ) -> None:
        self.network = network.eval()
        self.transforms = list(transforms)
        self.inverse_window = inverse_window
        self.device = torch.device(device)

    def __call__(
        self, hu: np.ndarray, dose_fraction: float | None = None, pixel_spacing_mm: float | None = None
    ) -> np.ndarray:
        """Denoise (H, W) or (N, H, W) ``hu``; ``dose_fraction`` overrides the config's. ``pixel_spacing_mm`` is
        accepted for the denoiser protocol of :mod:`bundle.evaluation.quality_study` (the network works in pixels)."""
        slices = np.asarray(hu, dtype=np.float32)
        if slices.ndim not in (2, 3):
            raise ValueError(f"expected an (H, W) slice or (N, H, W) slices in HU, got shape {slices.shape}")
        stack = slices[None] if slices.ndim == 2 else slices
        denoised = np.empty_like(stack)
        for index, image in enumerate(stack):
            inputs = self.network_input(image, dose_fraction)
            with torch.inference_mode():
                prediction = self.network(inputs)[0].cpu()
            denoised[index] = np.asarray(self.inverse_window({"pred": prediction})["pred"])[0]
        return denoised[0] if slices.ndim == 2 else denoised

    def centre(self, hu_slices: np.ndarray, dose_fraction: float | None = None) -> np.ndarray:
        """Denoise the centre slice of (S, H, W) adjacent slices in HU, in slice order, S the network's ``slices``
        (``StructKPN(slices=S)``), as inference feeds a slice with its neighbours; returns (H, W) HU, float32."""
        with torch.inference_mode():
            prediction = self.network(self.network_input(hu_slices, dose_fraction))[0].cpu()
        return np.asarray(self.inverse_window({"pred": prediction})["pred"])[0]

    def network_input(self, hu: np.ndarray, dose_fraction: float | None = None) -> torch.Tensor:
        """The network's (1, C, H, W) input for one (H, W) slice in HU, on :attr:`device`: the transforms applied
        to ``{"image": (1, H, W)}`` (with ``dose_fraction`` when given, which overrides the config's). Given the
        (S, H, W) adjacent slices of a multi-slice network (:meth:`centre`), they are its neighbours as they are."""
        image = np.asarray(hu, dtype=np.float32)
        slices = int(getattr(self.network, "slices", 1))
        if image.ndim == 3:
            if image.shape[0] != slices:
                raise ValueError(f"expected the network's {slices} adjacent slices (S, H, W) in HU, got shape "
                                 f"{image.shape}")  # fmt: skip
        elif image.ndim == 2:
            image = image[None]
        else:
            raise ValueError(f"expected an (H, W) slice or the network's {slices} adjacent slices, got {image.shape}")
        data: dict = {"image": torch.as_tensor(image)}
        if dose_fraction is not None:
            data["dose_fraction"] = float(dose_fraction)
        neighbours_given = image.shape[0] > 1
        for transform in self.transforms:
            if not (neighbours_given and isinstance(transform, AddNeighbourSlicesd)):
                data = transform(data)
        return torch.as_tensor(data["image"])[None].to(self.device)


def _parser(config_file: os.PathLike | str | Sequence[os.PathLike | str], overrides: dict) -> ConfigParser:
    parser = read_bundle_config(config_file)  # bundle_root from the file's path: parses from any working folder
    parser.update({key.replace("__", "#"): value for key, value in overrides.items()})
    return parser


def hu_window(config_file: os.PathLike | str | Sequence[os.PathLike | str] = "configs/inference.json") -> tuple[float, float]:
    """The network's input window ``hu_window`` (HU) declared by a bundle config."""
    low, high = read_bundle_config(config_file).get_parsed_content("hu_window")
    return float(low), float(high)


def configured_network(
    config_file: os.PathLike | str | Sequence[os.PathLike | str] = "configs/inference.json", **overrides: object
) -> torch.nn.Module:
    """The config's ``network_def`` with its initial (untrained) weights; ``overrides`` as in :func:`load_denoiser`."""
    return _parser(config_file, overrides).get_parsed_content("network_def")


def load_network(
    config_file: os.PathLike | str | Sequence[os.PathLike | str] = "configs/inference.json",
    ckpt_path: os.PathLike | str | dict | None = None,
    device: torch.device | str = "cpu",
    **overrides: object,
) -> torch.nn.Module:
    """
    The config's ``network_def`` with the weights at ``ckpt_path`` (a file, or a state dict; the config's
    ``ckpt_path`` when None) strictly loaded, on ``device``, in eval mode, after the settings file beside a weights
    file is checked (:func:`bundle.io.check_model_settings`). A training checkpoint's ``"model"`` entry is taken
    when present. ``overrides`` set config keys, as in :func:`load_denoiser`.
    """
    parser = _parser(config_file, overrides)
    if ckpt_path is not None and not isinstance(ckpt_path, dict):
        parser["ckpt_path"] = str(ckpt_path)  # the file whose settings inference.json's network_def checks
    network = parser.get_parsed_content("network_def")
    source = parser.get_parsed_content("ckpt_path") if ckpt_path is None else ckpt_path
    if not isinstance(source, dict):  # the whole network and window against the settings file beside the weights
        check_model_settings(source, parser.get_parsed_content("hu_window"), network)
    state = source if isinstance(source, dict) else torch.load(source, map_location="cpu", weights_only=True)
    network.load_state_dict(state["model"] if isinstance(state.get("model"), dict) else state)
    return network.to(device).eval()


def windowed(function: Callable[[np.ndarray], np.ndarray], window_hu: tuple[float, float]) -> Callable[..., np.ndarray]:
    """
    A denoiser of (H, W) HU slices from ``function``, which denoises an image windowed to [0, 1]: the slice is
    clipped to ``window_hu`` and mapped to [0, 1], as the network's input, and ``function``'s output mapped back to
    HU. The result takes ``(hu, dose_fraction=None, pixel_spacing_mm=None)`` as :class:`Denoiser` does (classical
    methods use neither). Example: ``windowed(bm3d_denoise, hu_window())``.
    """
    low, high = window_hu

    def denoise(hu: np.ndarray, dose_fraction: float | None = None, pixel_spacing_mm: float | None = None) -> np.ndarray:
        unit = np.clip((np.asarray(hu, dtype=np.float64) - low) / (high - low), 0.0, 1.0)
        return (np.asarray(function(unit)) * (high - low) + low).astype(np.float32)

    return denoise


def load_denoiser(
    config_file: os.PathLike | str | Sequence[os.PathLike | str] = "configs/inference.json",
    ckpt_path: os.PathLike | str | dict | None = None,
    device: torch.device | str = "cpu",
    network: torch.nn.Module | None = None,
    **overrides: object,
) -> Denoiser:
    """
    Build :class:`Denoiser` from a bundle config: ``network_def`` with the weights at ``ckpt_path`` (a file or a
    state dict; the config's ``ckpt_path`` when None, see :func:`load_network`), or the given ``network`` (another
    config's, TorchScript, a wrapper; taken as it is), the ``preprocessing`` transforms after loading and
    validation, and the first ``postprocessing`` transform (the inverse window). ``overrides`` set config keys, as
    on the command line (``dose_fraction=0.5``, ``network_def#preset="authors"``, or ``network_def__preset``).

    Example::

        denoise = load_denoiser(dose_fraction=0.25)
        denoised_hu = denoise(low_dose_hu)  # (H, W) or (N, H, W), HU
    """
    parser = _parser(config_file, overrides)
    if network is None:
        network = load_network(config_file, ckpt_path, device, **overrides)
    preprocessing = parser.get_parsed_content("preprocessing").transforms
    transforms = [t for t in preprocessing if not isinstance(t, (LoadImaged, ValidateCTImaged))]
    inverse = parser.get_parsed_content("postprocessing#transforms#0")  # not the writer: no output, no checkpoint
    if not isinstance(inverse, ScaleIntensityRanged):
        raise ValueError(f"{config_file}: the first postprocessing transform is not the inverse window: {inverse}")
    return Denoiser(network.to(device).eval(), transforms, inverse, device)

"""The configured denoiser as a function of HU arrays: the network, weights and transforms of ``inference.json``."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.transforms import LoadImaged, ScaleIntensityRanged

from bundle.transforms import ValidateCTImaged

__all__ = ["Denoiser", "load_denoiser"]


class Denoiser:
    """
    Denoise CT slices given in HU with a network and the window transforms around it, as inference does.

    Args:
        network: the network, in eval mode; it maps the preprocessed (B, C, H, W) slice to (B, 1, H, W).
        transforms: the preprocessing transforms that follow loading, applied to ``{"image": (1, H, W) HU}``
            (the window, and the dose conditioning of a dose-aware network, which reads ``dose_fraction``).
        inverse_window: maps the ``pred`` key from the network's units back to HU.
        device: where the network runs.

    Calling it with ``hu`` of shape (H, W) or (N, H, W) returns the denoised HU, float32, same shape.
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
            data: dict = {"image": torch.from_numpy(image)[None]}
            if dose_fraction is not None:
                data["dose_fraction"] = float(dose_fraction)
            for transform in self.transforms:
                data = transform(data)
            with torch.inference_mode():
                prediction = self.network(torch.as_tensor(data["image"])[None].to(self.device))[0].cpu()
            denoised[index] = np.asarray(self.inverse_window({"pred": prediction})["pred"])[0]
        return denoised[0] if slices.ndim == 2 else denoised


def load_denoiser(
    config_file: os.PathLike | str | Sequence[os.PathLike | str] = "configs/inference.json",
    ckpt_path: os.PathLike | str | None = None,
    device: torch.device | str = "cpu",
    **overrides: object,
) -> Denoiser:
    """
    Build :class:`Denoiser` from a bundle config: ``network_def`` with the weights at ``ckpt_path`` (the config's
    ``ckpt_path`` when None), the ``preprocessing`` transforms after loading and validation, and the first
    ``postprocessing`` transform (the inverse window). ``overrides`` set config keys, as on the command line
    (``dose_fraction=0.5``, ``network_def#preset="authors"``).

    Example::

        denoise = load_denoiser(dose_fraction=0.25)
        denoised_hu = denoise(low_dose_hu)  # (H, W) or (N, H, W), HU
    """
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update({key.replace("__", "#"): value for key, value in overrides.items()})
    network = parser.get_parsed_content("network_def").to(device)
    weights = parser.get_parsed_content("ckpt_path") if ckpt_path is None else ckpt_path
    state = torch.load(weights, map_location=device)
    network.load_state_dict(state["model"] if "model" in state and isinstance(state["model"], dict) else state)
    preprocessing = parser.get_parsed_content("preprocessing").transforms
    transforms = [t for t in preprocessing if not isinstance(t, (LoadImaged, ValidateCTImaged)) and
                  not type(t).__name__ == "Lambdad"]  # the depth axis of a loaded volume: slices need none
    inverse = parser.get_parsed_content("postprocessing").transforms[0]
    if not isinstance(inverse, ScaleIntensityRanged):
        raise ValueError(f"{config_file}: the first postprocessing transform is not the inverse window: {inverse}")
    return Denoiser(network, transforms, inverse, device)

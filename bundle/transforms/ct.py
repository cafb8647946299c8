"""Input checks for CT images, as a MONAI dictionary transform placed right after ``LoadImaged``."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform

from bundle.io.ct_dicom import CTInputError

__all__ = ["ValidateCTImaged"]


def _source_name(img: object, key: Hashable) -> str:
    if isinstance(img, MetaTensor):
        name = img.meta.get("filename_or_obj")
        if name:
            return str(name)
    return f"<item '{key}'>"


class ValidateCTImaged(MapTransform):
    """Reject images the denoiser cannot process, with a :class:`CTInputError` naming the file.

    Checks each key's channel-first image (1, H, W) or, with ``allow_volume``, (1, H, W, D), and with
    ``add_depth`` gives a (1, H, W) slice a depth axis of size 1, so slices and volumes leave as (1, H, W, D):

    - exactly one channel and the expected number of spatial dimensions;
    - every spatial in-plane size (H, W) at least ``min_size`` pixels (the local convolution reflects
      ``kernel_size // 2`` pixels at each border, so an image must not be smaller than the kernel);
    - all values finite (a NaN or inf in a NIfTI would otherwise spread through the whole output).

    Args:
        keys: keys of the images to check.
        min_size: smallest allowed H and W in pixels, normally the network's ``kernel_size``.
        allow_volume: accept (1, H, W, D) series for slice-by-slice inference.
        add_depth: return a (1, H, W) image as (1, H, W, 1) (needs ``allow_volume``: for ``SliceInferer``).

    Example::

        ValidateCTImaged(keys=["image", "label"], min_size=21)
    """

    def __init__(
        self, keys: KeysCollection, min_size: int = 21, allow_volume: bool = False, add_depth: bool = False
    ) -> None:
        super().__init__(keys)
        if add_depth and not allow_volume:
            raise ValueError("add_depth=True gives (1, H, W, 1) volumes: it needs allow_volume=True")
        self.min_size = int(min_size)
        self.allow_volume = allow_volume
        self.add_depth = add_depth

    def __call__(self, data: Mapping[Hashable, object]) -> dict[Hashable, object]:
        d = dict(data)
        for key in self.key_iterator(d):
            self.check(d[key], key)
            if self.add_depth and d[key].ndim == 3:
                d[key] = d[key].unsqueeze(-1) if isinstance(d[key], torch.Tensor) else d[key][..., None]
        return d

    def check(self, img: torch.Tensor | np.ndarray, key: Hashable = "image") -> None:
        name = _source_name(img, key)
        shape: Sequence[int] = tuple(img.shape)
        dims = (3, 4) if self.allow_volume else (3,)
        expected = "(1, H, W) or (1, H, W, D)" if self.allow_volume else "(1, H, W)"
        if len(shape) not in dims or shape[0] != 1:
            raise CTInputError(name, f"expected a single-channel CT image {expected}, got shape {shape}")
        height, width = shape[1], shape[2]
        if min(height, width) < self.min_size:
            raise CTInputError(
                name, f"image of {height}x{width} pixels is smaller than the {self.min_size}x{self.min_size} kernel"
            )
        values = torch.as_tensor(img)
        finite = torch.isfinite(values)
        if not bool(finite.all()):
            raise CTInputError(name, f"{int((~finite).sum())} pixel values are NaN or infinite")

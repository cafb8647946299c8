"""Gradient statistics (strength, coherence) of a target image as MONAI transforms, for the structure-aware loss."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import DtypeLike, KeysCollection, NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_tensor, ensure_tuple

from bundle.losses.gradient_statistics import DEFAULT_STRENGTH_SCALE, gradient_statistics

__all__ = ["GradientStatistics", "GradientStatisticsd"]


class GradientStatistics(Transform):
    """
    Strength and coherence maps (paper Eqs. 2-3) of a channel-first (1, H, W) image, as (2, H, W).

    The maps are invariant to flips and 90-degree rotations of the image (they are rotated along with it), so they
    can be computed once on the full slice and then cropped and augmented together with the image.
    See :func:`~bundle.losses.gradient_statistics.gradient_statistics` for the definitions.

    Args:
        patch_size: side ``kr`` of the patch, in pixels.
        strength_scale: factor on the largest singular value ``s1`` of the patch gradient matrix, giving the strength.
        dtype: dtype of the converted input and of the output (the statistics are computed in float64 inside).

    Example::

        stats = GradientStatistics()(torch.rand(1, 64, 64))  # (2, 64, 64): strength, coherence
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(
        self, patch_size: int = 11, strength_scale: float = DEFAULT_STRENGTH_SCALE, dtype: DtypeLike = np.float32
    ) -> None:
        self.patch_size = patch_size
        self.strength_scale = strength_scale
        self.dtype = dtype

    def __call__(self, img: NdarrayOrTensor) -> NdarrayOrTensor:
        """
        Args:
            img: (1, H, W) image (numpy array, tensor or MetaTensor).

        Returns:
            (2, H, W) strength and coherence, of the type of ``img`` (a MetaTensor keeps the metadata of ``img``).
        """
        if img.ndim != 3 or img.shape[0] != 1:
            raise ValueError(f"img must have shape (1, H, W), got {tuple(img.shape)}.")
        image = convert_to_tensor(img, dtype=self.dtype, track_meta=False)
        with torch.no_grad():
            statistics = gradient_statistics(image[None], self.patch_size, self.strength_scale)[0]
        output, *_ = convert_to_dst_type(statistics, dst=img, dtype=self.dtype)
        return output


class GradientStatisticsd(MapTransform):
    """
    Dictionary-based wrapper of :class:`GradientStatistics`: writes the (2, H, W) statistics of each ``keys`` item
    to the matching ``output_key`` item.

    Typical training chain, so that :class:`~bundle.losses.structure_aware.StructureAwareLoss` receives the
    statistics of the full slice as target channels 1-2::

        GradientStatisticsd(keys="label", output_key="label_stats")
        ConcatItemsd(keys=["label", "label_stats"], name="label")
        RandSpatialCropSamplesd(...), RandFlipd(...), RandRotate90d(...)

    Args:
        keys: keys of the (1, H, W) images.
        output_key: key (or one key per item of ``keys``) receiving the statistics.
        patch_size: side ``kr`` of the patch, in pixels.
        strength_scale: factor on the largest singular value ``s1``, giving the strength; must match the loss's.
        dtype: dtype of the converted input and of the output (the statistics are computed in float64 inside).
        allow_missing_keys: don't raise an exception if a key is missing.
    """

    backend = GradientStatistics.backend

    def __init__(
        self,
        keys: KeysCollection = "label",
        output_key: Sequence[str] | str = "label_stats",
        patch_size: int = 11,
        strength_scale: float = DEFAULT_STRENGTH_SCALE,
        dtype: DtypeLike = np.float32,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.output_keys = ensure_tuple(output_key)
        if len(self.output_keys) != len(self.keys):
            raise ValueError(f"need one output_key per key, got {self.output_keys} for {self.keys}.")
        self.statistics = GradientStatistics(patch_size, strength_scale, dtype)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key, output_key in self.key_iterator(d, self.output_keys):
            d[output_key] = self.statistics(d[key])
        return d

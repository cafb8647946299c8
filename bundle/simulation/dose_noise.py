"""Training pairs at any dose from one simulated low-dose image per slice (the linearity of filtered back-projection)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
from monai.config import NdarrayOrTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_dst_type, convert_to_tensor

__all__ = ["RandDoseNoised", "added_noise_scale"]


def added_noise_scale(dose_fraction: float, photon_factor: float = 1.0, reference_dose_fraction: float = 0.5) -> float:
    """
    Factor that turns the added noise of a ``reference_dose_fraction`` scan into that of a ``dose_fraction`` scan
    with ``photon_factor`` times the incident counts.

    Without electronic noise the log-domain noise of Yu et al. 2012 has variance (1 - a) / a * e^p / I0, and
    filtered back-projection is linear, so the added image noise scales as ``sqrt((1 - a) / a / I0)``.

    Example::

        >>> round(added_noise_scale(0.25), 4)  # quarter dose: sqrt(3) times the noise of half dose
        1.7321
    """
    if not 0.0 < dose_fraction <= 1.0 or not 0.0 < reference_dose_fraction < 1.0 or photon_factor <= 0:
        raise ValueError(
            f"need 0 < dose_fraction <= 1, 0 < reference_dose_fraction < 1 and photon_factor > 0, got "
            f"{dose_fraction}, {reference_dose_fraction}, {photon_factor}."
        )
    odds, reference_odds = (1 - dose_fraction) / dose_fraction, (1 - reference_dose_fraction) / reference_dose_fraction
    return math.sqrt(odds / reference_odds / photon_factor)


class RandDoseNoised(Randomizable, MapTransform):
    """
    Make a low-dose training image at a random dose fraction and incident photon count from a normal-dose image
    and one simulated low-dose image of it.

    ``d[reference_key]`` is the slice simulated at ``d[dose_key]`` (a datalist entry's ``dose_fraction``; else
    ``reference_dose_fraction``) by
    :class:`~bundle.simulation.LowDoseSimulator` at its reference incident counts, in the units of the normal-dose
    image (e.g. both windowed to [0, 1]), so ``noise = reference - normal_dose`` is one realisation of the added
    noise. Each call draws a dose fraction from ``dose_range`` (log-uniformly, or uniformly with
    ``dose_distribution="uniform"``, which puts more of the draws at high dose), a photon factor log-uniformly from
    ``photon_factor_range`` and a random sign (the noise is symmetric), and writes
    ``clip(normal_dose + sign * added_noise_scale(dose, factor) * noise, *clip_range)`` to ``output_key`` and the
    dose fraction to ``dose_key``. The first C channels of ``keys`` are used, C the reference's channels (targets
    may carry statistics channels; adjacent slices as channels share one draw: one scan). Where the
    reference was clipped (air below the window), its noise is clipped too: as in a real scan's stored values.

    Args:
        keys: key of the normal-dose image (C or more channels, the first C being the image).
        reference_key: key of the (C, H, W) image simulated at ``reference_dose_fraction`` (C = 1: one slice).
        output_key: key of the (C, H, W) low-dose image (may be ``reference_key``).
        dose_range: (low, high) dose fractions.
        photon_factor_range: (low, high) factors on the reference incident counts (a decade: (0.25, 2.5)).
        reference_dose_fraction: dose fraction of the reference image when the item has no ``dose_key``.
        clip_range: values of the output are clipped to this range (the window: (0, 1)); None: no clipping.
        dose_key: key of the reference image's dose fraction on input, and of the drawn one on output.
        dose_distribution: ``"log_uniform"`` (as many draws in 0.05-0.1 as in 0.5-1) or ``"uniform"``.

    Example::

        RandDoseNoised(keys="label", reference_key="image", output_key="image", dose_range=(0.05, 0.95))
    """

    def __init__(
        self,
        keys: Hashable,
        reference_key: str = "image",
        output_key: str = "image",
        dose_range: Sequence[float] = (0.05, 0.95),
        photon_factor_range: Sequence[float] = (0.25, 2.5),
        reference_dose_fraction: float = 0.5,
        clip_range: Sequence[float] | None = (0.0, 1.0),
        dose_key: str = "dose_fraction",
        dose_distribution: str = "log_uniform",
    ) -> None:
        MapTransform.__init__(self, keys)
        if len(self.keys) != 1:
            raise ValueError(f"RandDoseNoised takes one normal-dose key, got {self.keys}.")
        low, high = (float(v) for v in dose_range)
        if not 0.0 < low <= high < 1.0:
            raise ValueError(f"dose_range must satisfy 0 < low <= high < 1, got {dose_range}.")
        factor_low, factor_high = (float(v) for v in photon_factor_range)
        if not 0.0 < factor_low <= factor_high:
            raise ValueError(f"photon_factor_range must satisfy 0 < low <= high, got {photon_factor_range}.")
        self.reference_key, self.output_key, self.dose_key = reference_key, output_key, dose_key
        self.log_dose_range = (math.log(low), math.log(high))
        self.log_factor_range = (math.log(factor_low), math.log(factor_high))
        if dose_distribution not in ("log_uniform", "uniform"):
            raise ValueError(f"dose_distribution must be 'log_uniform' or 'uniform', got {dose_distribution!r}.")
        self.dose_range, self.dose_distribution = (low, high), dose_distribution
        self.reference_dose_fraction = reference_dose_fraction
        self.clip_range = None if clip_range is None else tuple(float(v) for v in clip_range)
        self.dose_fraction, self.photon_factor, self.sign = low, 1.0, 1.0

    def randomize(self, data: object = None) -> None:
        if self.dose_distribution == "uniform":
            self.dose_fraction = float(self.R.uniform(*self.dose_range))
        else:
            self.dose_fraction = float(np.exp(self.R.uniform(*self.log_dose_range)))
        self.photon_factor = float(np.exp(self.R.uniform(*self.log_factor_range)))
        self.sign = 1.0 if self.R.rand() < 0.5 else -1.0

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        self.randomize()
        key = self.keys[0]
        target = d[key]
        reference = convert_to_tensor(d[self.reference_key], dtype=torch.float32, track_meta=False)
        image = convert_to_tensor(target, dtype=torch.float32, track_meta=False)[: reference.shape[0]]
        if reference.shape != image.shape:
            raise ValueError(
                f"{self.reference_key} {tuple(reference.shape)} and {key} {tuple(image.shape)} differ in shape."
            )
        noise = reference - image
        reference_dose = float(d.get(self.dose_key) or self.reference_dose_fraction)
        scale = self.sign * added_noise_scale(self.dose_fraction, self.photon_factor, reference_dose)
        low_dose = image + scale * noise
        if self.clip_range is not None:
            low_dose = low_dose.clamp(*self.clip_range)
        d[self.output_key] = convert_to_dst_type(low_dose, dst=d[self.reference_key])[0]
        d[self.dose_key] = self.dose_fraction
        return d

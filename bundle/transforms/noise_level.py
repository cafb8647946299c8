"""Blind local noise level of a CT slice, and the dose-conditioning channels of the dose-aware StructKPN."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import torch
import torch.nn.functional as F
from monai.config import KeysCollection, NdarrayOrTensor
from monai.data import MetaTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type, convert_to_tensor

from bundle.io.ct_dicom import SOURCE_FILES_KEY, CTInputError
from bundle.io.exposure import exposure_dose_fractions
from bundle.utils.slices import check_slices

__all__ = ["NOISE_BIAS_ON_FBP_NOISE", "AddDoseConditiond", "local_noise_std"]

# 3 x 3 Laplacian difference mask (Immerkaer 1996): zero on planes, sum of squared taps 36.
_LAPLACIAN = ((1.0, -2.0, 1.0), (-2.0, 4.0, -2.0), (1.0, -2.0, 1.0))
# median |N(0, 1)|
_MEDIAN_ABS_NORMAL = 0.6744897501960817

NOISE_BIAS_ON_FBP_NOISE: dict[str, float] = {
    "white": 1.00,
    "ram-lak": 1.08,
    "shepp-logan": 1.09,
    "cosine": 1.02,
    "hamming": 0.87,
    "hann": 0.83,
}
"""Measured ratio of :func:`local_noise_std` to the true standard deviation on flat regions, by noise texture:
white Gaussian noise, and noise reconstructed by filtered back-projection with each filter of
:data:`bundle.simulation.RECONSTRUCTION_FILTERS` (the project's simulator, 360 views, 0.65 mm pixels; checked by
``tests/test_noise_level.py``). Smoother noise reads lower: the estimator sees the noise through a band-pass."""


def local_noise_std(image: torch.Tensor, block_size: int = 16, dilation: int = 2) -> torch.Tensor:
    """
    Blind local estimate of the noise standard deviation of ``image``, per pixel, in the image's units (HU for HU).

    Immerkaer's Laplacian noise estimator made local and robust: the image is filtered with the 3 x 3 Laplacian
    difference mask dilated by ``dilation`` pixels (planes give 0, so smooth anatomy drops out), the median of the
    absolute response is taken in each ``block_size`` square block, then the median over each 3 x 3 neighbourhood
    of blocks (edges and small structures, which fill less than half a neighbourhood, are ignored), scaled so that
    white Gaussian noise of standard deviation s reads s, and interpolated bilinearly back to every pixel.
    Resolution: about ``3 * block_size`` pixels.

    Known bias on flat regions: exact for white noise; CT noise is correlated, and the estimator reads it through a
    band-pass, between 0.83 (FBP with a Hann filter, smooth) and 1.09 (ramp filter, sharp) of its true standard
    deviation (:data:`NOISE_BIAS_ON_FBP_NOISE`). It is linear in the noise: twice the noise reads twice as much.
    On structure it reads high (edges denser than half a block neighbourhood).

    Args:
        image: (H, W), (C, H, W) or (B, C, H, W) image; every channel is estimated on its own. H and W of at
            least 2 * ``dilation`` + 1.
        block_size: side of the blocks, in pixels.
        dilation: spacing of the Laplacian taps, in pixels; 2 reads CT noise, whose power lies below the Nyquist
            frequency, with a bias much closer to 1 than the classic 1.

    Returns:
        the noise standard deviation, same shape, dtype float32, same device.

    Example::

        >>> noisy = 20.0 * torch.randn(256, 256)  # white noise, 20 HU
        >>> round(float(local_noise_std(noisy).median()))
        20
    """
    if block_size < 1 or dilation < 1:
        raise ValueError(f"block_size and dilation must be positive, got {block_size} and {dilation}.")
    shape = image.shape
    if image.ndim not in (2, 3, 4):
        raise ValueError(f"image must be (H, W), (C, H, W) or (B, C, H, W), got shape {tuple(shape)}.")
    height, width = shape[-2], shape[-1]
    if min(height, width) < 2 * dilation + 1:
        raise ValueError(f"image of {height}x{width} pixels is too small for a Laplacian dilated by {dilation}.")
    x = image.reshape(-1, 1, height, width).float()
    laplacian = torch.tensor(_LAPLACIAN, dtype=x.dtype, device=x.device).view(1, 1, 3, 3)
    response = F.conv2d(F.pad(x, (dilation,) * 4, mode="replicate"), laplacian, dilation=dilation).abs_()
    rows, cols = -(-height // block_size), -(-width // block_size)
    response = F.pad(response, (0, cols * block_size - width, 0, rows * block_size - height), mode="replicate")
    blocks = response.unfold(2, block_size, block_size).unfold(3, block_size, block_size)
    block_median = blocks.flatten(-2).median(dim=-1).values  # (N, 1, rows, cols)
    neighbourhood = F.pad(block_median, (1, 1, 1, 1), mode="replicate").unfold(2, 3, 1).unfold(3, 3, 1)
    level = neighbourhood.flatten(-2).median(dim=-1).values / (_MEDIAN_ABS_NORMAL * 6.0)
    level = F.interpolate(level, size=(rows * block_size, cols * block_size), mode="bilinear", align_corners=False)
    return level[..., :height, :width].reshape(shape)


class AddDoseConditiond(MapTransform):
    """
    Append the two conditioning channels of the dose-aware StructKPN to a channel-first CT image.

    The (1, H, W) or (1, H, W, D) image (windowed, e.g. to [0, 1]) becomes (3, H, W[, D]):

    - channel 0: the image;
    - channel 1: :func:`local_noise_std` of the image, per slice (the last axis of a volume), in the image's units;
    - channel 2: the dose fraction of the scan, constant per slice: the dose of the input as a fraction of the
      dose whose noise the output should keep (0.25 = quarter dose; 1.0 asks for the input back).

    The dose fraction is ``d[dose_key]`` when the item has it (a datalist entry's ``dose_fraction``); else, when
    ``reference_exposure_mas`` is given, each slice's exposure from its DICOM header over that reference
    (:func:`bundle.io.exposure_dose_fractions`: per slice, so tube current modulation is followed); else
    ``dose_fraction``.

    Args:
        keys: keys of the images.
        dose_fraction: the dose fraction when the item has none, in (0, 1].
        dose_key: item key that may hold the dose fraction (None: always ``dose_fraction``).
        block_size: block side of :func:`local_noise_std`, in pixels.
        reference_exposure_mas: exposure (mAs) of the dose whose noise the output should keep, to read each DICOM
            slice's dose fraction from its exposure tags (None: not read).
        slices: the image holds this many adjacent slices as channels (:class:`~bundle.transforms.AddNeighbourSlicesd`,
            the input of ``StructKPN(slices=S)``): (S, H, W[, D]) -> (S + 2, H, W[, D]), the noise being that of
            the centre slice, channel S // 2.

    Example::

        AddDoseConditiond(keys="image", dose_fraction=0.25)  # after ScaleIntensityRanged, before the network
    """

    def __init__(
        self,
        keys: KeysCollection,
        dose_fraction: float = 0.25,
        dose_key: str | None = "dose_fraction",
        block_size: int = 16,
        reference_exposure_mas: float | None = None,
        allow_missing_keys: bool = False,
        slices: int = 1,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        check_slices(slices)
        self.slices = slices
        self.dose_fraction = self._checked(dose_fraction, "dose_fraction")
        self.dose_key = dose_key
        self.block_size = block_size
        self.reference_exposure_mas = reference_exposure_mas

    @staticmethod
    def _checked(value: object, name: str) -> float:
        dose = float(value)  # type: ignore[arg-type]
        if not 0.0 < dose <= 1.0:
            raise ValueError(f"{name} must be in (0, 1], got {value!r}.")
        return dose

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.condition(d[key], self._dose(d, d[key]))
        return d

    def _dose(self, d: Mapping[Hashable, object], img: NdarrayOrTensor) -> float | torch.Tensor:
        if self.dose_key is not None and d.get(self.dose_key) is not None:
            return self._checked(d[self.dose_key], self.dose_key)
        if self.reference_exposure_mas is None:
            return self.dose_fraction
        files = img.meta.get(SOURCE_FILES_KEY) if isinstance(img, MetaTensor) else None
        slices = img.shape[-1] if img.ndim == 4 else 1
        if not files or len(files) != slices:
            name = img.meta.get("filename_or_obj", "<image>") if isinstance(img, MetaTensor) else "<image>"
            raise CTInputError(
                name, f"reference_exposure_mas is set but the image has {slices} slices and "
                f"{len(files or [])} source DICOM files: per-slice exposures need one DICOM file per slice"
            )
        return torch.tensor(exposure_dose_fractions(files, self.reference_exposure_mas), dtype=torch.float32)

    def condition(self, img: NdarrayOrTensor, dose_fraction: float | torch.Tensor) -> NdarrayOrTensor:
        """(1, H, W[, D]) ``img`` -> (3, H, W[, D]): image, local noise std, dose fraction (a number, or one per
        slice of a volume), in the type of ``img``; (S, H, W[, D]) -> (S + 2, H, W[, D]) with ``slices`` = S, the
        noise of channel S // 2."""
        if img.ndim not in (3, 4) or img.shape[0] != self.slices:
            channels = "1" if self.slices == 1 else f"{self.slices} (slices)"
            raise ValueError(
                f"expected a channel-first image ({channels}, H, W) or ({channels}, H, W, D), got {tuple(img.shape)}."
            )
        image = convert_to_tensor(img, dtype=torch.float32, track_meta=False)
        centre = image[self.slices // 2 : self.slices // 2 + 1]
        # the noise estimate works on (..., H, W): move the slice axis of a volume first
        slices = centre.movedim(-1, 0) if image.ndim == 4 else centre
        noise = local_noise_std(slices, self.block_size)
        noise = noise.movedim(0, -1) if image.ndim == 4 else noise
        dose = torch.as_tensor(dose_fraction, dtype=image.dtype).expand_as(centre)  # a slice's value on its last axis
        conditioned = torch.cat([image, noise, dose], dim=0)
        if isinstance(img, MetaTensor):
            return MetaTensor(conditioned, meta=img.meta, applied_operations=img.applied_operations)
        return convert_to_dst_type(conditioned, dst=img)[0]

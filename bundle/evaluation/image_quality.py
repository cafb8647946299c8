"""Image quality as a CT physicist measures it (AAPM TG-233, ICRU Report 87), on 2D slices in HU.

- Flat regions: square ROIs auto-placed in uniform tissue of the normal-dose image (low local gradient energy,
  inside the body, per tissue class by HU range), or given; in them the HU bias and the noise (std).
- Noise power spectrum: 2D NPS of detrended noise ROIs in HU^2 mm^2, radially averaged to 1D on mm^-1, with its
  mean and peak frequency (a shift to low frequencies is the "waxy" look of some denoisers).
- Task transfer function: edge-spread function of a circular insert around its known centre, differentiated to a
  line-spread function and Fourier transformed; TTF50 and TTF10 in mm^-1 (nonlinear denoisers blur low-contrast
  edges more than high-contrast ones).
- Low-contrast detectability: the detectability index d' of a non-prewhitening matched-filter (NPW) observer.

Arrays are numpy (H, W) images or (N, h, w) stacks of ROIs in HU; pixels are square with ``pixel_spacing_mm``.
:class:`FlatRegionMetric` wraps the flat-region measures as a MONAI metric for the evaluation config.

Example::

    rois = place_flat_rois(ndct_hu)
    bias = hu_bias(denoised_hu, ndct_hu, rois)  # HU
    nps = noise_power_spectrum(extract_rois(denoised_hu, place_flat_rois(ndct_hu, roi_size=32)), 0.65)
    mean_frequency, peak_frequency = nps_frequencies(*radial_average(nps))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from monai.data import MetaTensor
from monai.metrics import CumulativeIterationMetric
from monai.metrics.utils import do_metric_reduction
from monai.utils import MetricReduction, convert_to_numpy, look_up_option
from scipy import ndimage

from bundle.evaluation.masks import body_mask

__all__ = [
    "TISSUE_CLASSES_HU",
    "FlatROI",
    "FlatRegionMetric",
    "NoisePowerSpectrum",
    "TaskTransferFunction",
    "detrend",
    "edge_spread_function",
    "extract_rois",
    "hu_bias",
    "noise_power_spectrum",
    "noise_ratio",
    "nps_frequencies",
    "npw_detectability",
    "npw_detectability_from_ensembles",
    "place_flat_rois",
    "radial_average",
    "roi_means",
    "roi_noise",
    "task_transfer_function",
    "transfer_frequency",
]

#: Tissue classes of flat ROIs by HU range (lower, upper) of the smoothed normal-dose image; lung and air (below
#: -150 HU) and bone (above 150 HU) are left out.
TISSUE_CLASSES_HU = {"fat": (-150.0, -50.0), "soft_tissue": (-50.0, 150.0)}



class FlatROI(NamedTuple):
    """A square ROI: top-left pixel (row, column), side in pixels, and its tissue class name."""

    top: int
    left: int
    size: int
    tissue: str

    @property
    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.size), slice(self.left, self.left + self.size)


def place_flat_rois(
    reference_hu: np.ndarray,
    roi_size: int = 15,
    max_rois_per_class: int = 8,
    tissue_classes: dict[str, tuple[float, float]] = TISSUE_CLASSES_HU,
    gradient_quantile: float = 0.25,
    smoothing_px: float = 1.5,
    min_separation_px: int | None = None,
) -> list[FlatROI]:
    """Square ROIs in uniform tissue of the normal-dose image ``reference_hu`` (H, W), in HU.

    The image is smoothed by a Gaussian of ``smoothing_px`` pixels (so its own noise counts little), and each
    candidate ROI of ``roi_size`` x ``roi_size`` pixels gets its gradient energy (mean squared gradient magnitude of
    the smoothed image, HU^2 / pixel^2). A candidate qualifies for a tissue class when it lies wholly inside the
    body (the largest region above -500 HU, holes filled) and all its smoothed pixels are in the class's HU range;
    per class, the candidates with energy in the lowest ``gradient_quantile`` are taken in order of increasing
    energy, up to ``max_rois_per_class``, each at least ``min_separation_px`` (default ``roi_size``: no overlap)
    from every ROI already taken along rows or columns. Returns the ROIs (possibly none), class by class.
    """
    hu = np.asarray(reference_hu, dtype=np.float64)
    if hu.ndim != 2 or min(hu.shape) < roi_size:
        raise ValueError(f"expected a 2D image of at least {roi_size} x {roi_size} pixels, got shape {hu.shape}")
    if not 0.0 < gradient_quantile <= 1.0:
        raise ValueError(f"gradient_quantile must be in (0, 1], got {gradient_quantile}")
    smoothed = ndimage.gaussian_filter(hu, smoothing_px)
    rows, columns = np.gradient(smoothed)
    energy = ndimage.uniform_filter(rows**2 + columns**2, roi_size, mode="nearest")
    body = body_mask(smoothed, opening_iterations=0).astype(np.float64)
    inside = ndimage.uniform_filter(body, roi_size, mode="constant") > 1 - 1e-6
    half = roi_size // 2
    centre_ok = np.zeros(hu.shape, dtype=bool)  # centres whose ROI fits in the image
    centre_ok[half : hu.shape[0] - (roi_size - 1 - half), half : hu.shape[1] - (roi_size - 1 - half)] = True
    separation = roi_size if min_separation_px is None else int(min_separation_px)
    if separation < 1:
        raise ValueError(f"min_separation_px must be at least 1, got {min_separation_px}")
    rois: list[FlatROI] = []
    blocked = np.zeros(hu.shape, dtype=bool)  # centres too close to a taken ROI
    for tissue, (low, high) in tissue_classes.items():
        in_class = ndimage.uniform_filter(((smoothed >= low) & (smoothed <= high)).astype(np.float64), roi_size)
        eligible = centre_ok & inside & (in_class > 1 - 1e-6)
        if not eligible.any():
            continue
        threshold = np.quantile(energy[eligible], gradient_quantile)
        candidates = np.flatnonzero(eligible & (energy <= threshold))
        found = 0
        for index in candidates[np.argsort(energy.ravel()[candidates], kind="stable")]:
            row, column = divmod(int(index), hu.shape[1])
            if blocked[row, column]:
                continue
            low_row, low_column = max(row - separation + 1, 0), max(column - separation + 1, 0)
            blocked[low_row : row + separation, low_column : column + separation] = True
            rois.append(FlatROI(row - half, column - half, roi_size, tissue))
            found += 1
            if found == max_rois_per_class:
                break
    return rois


def _select(rois: Sequence[FlatROI], tissue: str | None) -> list[FlatROI]:
    chosen = [roi for roi in rois if tissue is None or roi.tissue == tissue]
    if not chosen:
        raise ValueError(f"no flat ROIs{'' if tissue is None else f' of tissue {tissue!r}'} to measure in")
    return chosen


def extract_rois(image_hu: np.ndarray, rois: Sequence[FlatROI]) -> np.ndarray:
    """The ROIs' pixels as an (N, size, size) float64 stack (all ROIs must have the same size)."""
    if len({roi.size for roi in rois}) > 1:
        raise ValueError("extract_rois needs ROIs of one size")
    image = np.asarray(image_hu, dtype=np.float64)
    return np.stack([image[roi.slices] for roi in _select(rois, None)])


def roi_means(image_hu: np.ndarray, rois: Sequence[FlatROI]) -> np.ndarray:
    """Mean HU in each ROI, shape (N,)."""
    image = np.asarray(image_hu, dtype=np.float64)
    return np.array([image[roi.slices].mean() for roi in rois])


def hu_bias(
    image_hu: np.ndarray, reference_hu: np.ndarray, rois: Sequence[FlatROI], tissue: str | None = None
) -> float:
    """HU accuracy: mean over the ROIs (of ``tissue``, all when None) of mean(image) - mean(reference), in HU."""
    chosen = _select(rois, tissue)
    return float(np.mean(roi_means(image_hu, chosen) - roi_means(reference_hu, chosen)))


def roi_noise(image_hu: np.ndarray, rois: Sequence[FlatROI], tissue: str | None = None) -> float:
    """Noise magnitude in HU: the pooled standard deviation sqrt(mean of the ROIs' variances, ddof 1)."""
    image = np.asarray(image_hu, dtype=np.float64)
    return float(np.sqrt(np.mean([image[roi.slices].var(ddof=1) for roi in _select(rois, tissue)])))


def noise_ratio(
    image_hu: np.ndarray, reference_hu: np.ndarray, rois: Sequence[FlatROI], tissue: str | None = None
) -> float:
    """Noise of ``image_hu`` over the noise of ``reference_hu`` in the same ROIs (dimensionless)."""
    return roi_noise(image_hu, rois, tissue) / roi_noise(reference_hu, rois, tissue)


def detrend(rois: np.ndarray, order: str = "plane") -> np.ndarray:
    """Remove each ROI's mean (``order="mean"``) or least-squares plane a + b row + c column (``"plane"``).

    ``rois``: (N, h, w) or (h, w); returns float64 of the same shape.
    """
    order = look_up_option(order, ("mean", "plane"))
    stack = np.asarray(rois, dtype=np.float64)
    flat = stack.reshape(-1, stack.shape[-2] * stack.shape[-1])
    if order == "mean":
        residual = flat - flat.mean(axis=1, keepdims=True)
    else:
        rows, columns = np.mgrid[: stack.shape[-2], : stack.shape[-1]]
        design = np.stack([np.ones(rows.size), rows.ravel(), columns.ravel()], axis=1)
        coefficients, *_ = np.linalg.lstsq(design, flat.T, rcond=None)
        residual = flat - (design @ coefficients).T
    return residual.reshape(stack.shape)


class NoisePowerSpectrum(NamedTuple):
    """2D NPS in HU^2 mm^2 (h, w), zero frequency at index (h // 2, w // 2), and its axes in mm^-1 (fftshifted)."""

    nps: np.ndarray
    frequencies_row: np.ndarray
    frequencies_column: np.ndarray


def noise_power_spectrum(
    noise_rois: np.ndarray, pixel_spacing_mm: float, detrend_order: str = "plane"
) -> NoisePowerSpectrum:
    """ICRU 87 noise power spectrum of noise ROIs (N, h, w) or (h, w) in HU, averaged over the ROIs.

    ``NPS(fx, fy) = dx dy / (h w) < |DFT(roi - trend)|^2 >`` in HU^2 mm^2 (``detrend_order``: ``"mean"`` or
    ``"plane"``). By Parseval its integral over frequency (sum times df_row df_column) is the mean variance of the
    detrended ROIs; white noise of std sigma gives a flat sigma^2 dx dy.
    """
    if pixel_spacing_mm <= 0:
        raise ValueError(f"pixel_spacing_mm must be positive, got {pixel_spacing_mm}")
    stack = np.asarray(noise_rois, dtype=np.float64)
    stack = stack[None] if stack.ndim == 2 else stack
    if stack.ndim != 3 or stack.shape[0] == 0:
        raise ValueError(f"expected noise ROIs of shape (N, h, w) or (h, w), got {np.shape(noise_rois)}")
    h, w = stack.shape[1:]
    spectra = np.abs(np.fft.fft2(detrend(stack, detrend_order))) ** 2
    nps = np.fft.fftshift(spectra.mean(axis=0)) * pixel_spacing_mm**2 / (h * w)
    return NoisePowerSpectrum(
        nps,
        np.fft.fftshift(np.fft.fftfreq(h, d=pixel_spacing_mm)),
        np.fft.fftshift(np.fft.fftfreq(w, d=pixel_spacing_mm)),
    )


def radial_average(spectrum: NoisePowerSpectrum, bin_width: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged 1D NPS: (frequencies in mm^-1, NPS in HU^2 mm^2), from 0 to the Nyquist frequency.

    Bins are centred on multiples of ``bin_width`` (default: the finer frequency step of the 2D NPS); the first
    bin holds the zero frequency (near 0 after detrending). Empty bins (none for the default width) are dropped.
    """
    f_row, f_column = spectrum.frequencies_row, spectrum.frequencies_column
    step = bin_width or min(abs(f_row[1] - f_row[0]), abs(f_column[1] - f_column[0]))
    radius = np.hypot(*np.meshgrid(f_row, f_column, indexing="ij")).ravel()
    nyquist = min(np.abs(f_row).max(), np.abs(f_column).max())
    index = np.rint(radius / step).astype(int)
    keep = radius <= nyquist + 1e-9
    bins = int(index[keep].max()) + 1
    totals = np.bincount(index[keep], spectrum.nps.ravel()[keep], minlength=bins)
    counts = np.bincount(index[keep], minlength=bins)
    filled = counts > 0
    return np.arange(bins)[filled] * step, totals[filled] / counts[filled]


def nps_frequencies(frequencies: np.ndarray, nps_1d: np.ndarray) -> tuple[float, float]:
    """(mean, peak) frequency of a 1D NPS in mm^-1: sum f NPS / sum NPS, and the maximum refined by a parabola
    through the peak bin and its neighbours."""
    f, nps = np.asarray(frequencies, dtype=np.float64), np.asarray(nps_1d, dtype=np.float64)
    total = nps.sum()
    if total <= 0:
        raise ValueError("the NPS has no power")
    peak = int(np.argmax(nps))
    peak_frequency = f[peak]
    if 0 < peak < len(nps) - 1:
        left, centre, right = nps[peak - 1 : peak + 2]
        curvature = left - 2 * centre + right
        if curvature < 0:
            peak_frequency += 0.5 * (left - right) / curvature * (f[peak + 1] - f[peak])
    return float((f * nps).sum() / total), float(peak_frequency)


def edge_spread_function(
    image_hu: np.ndarray,
    centre: tuple[float, float],
    radius_mm: float,
    pixel_spacing_mm: float,
    half_width_mm: float | None = None,
    bin_width_mm: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Radial edge-spread function of a circular insert: (distance from the centre in mm, mean HU).

    Pixels at distance r in [R - half_width, R + half_width] from ``centre`` (row, column, in pixels, sub-pixel
    allowed) are binned by r into bins of ``bin_width_mm`` (default a tenth of a pixel: oversampled, as in
    TG-233); empty bins are linearly interpolated. ``half_width_mm`` defaults to the radius R (profile from the
    centre to 2R).
    """
    if radius_mm <= 0 or pixel_spacing_mm <= 0:
        raise ValueError("radius_mm and pixel_spacing_mm must be positive")
    half_width = radius_mm if half_width_mm is None else float(half_width_mm)
    step = pixel_spacing_mm / 10 if bin_width_mm is None else float(bin_width_mm)
    image = np.asarray(image_hu, dtype=np.float64)
    rows, columns = np.mgrid[: image.shape[0], : image.shape[1]]
    distance = np.hypot(rows - centre[0], columns - centre[1]) * pixel_spacing_mm
    start = max(radius_mm - half_width, 0.0)
    edges = np.arange(start, radius_mm + half_width + step / 2, step)
    inside = (distance >= edges[0]) & (distance < edges[-1])
    if (distance[inside] >= radius_mm + half_width - step).sum() == 0:
        raise ValueError(f"the profile around {centre} to {radius_mm + half_width:.1f} mm leaves the image")
    index = np.digitize(distance[inside], edges) - 1
    counts = np.bincount(index, minlength=len(edges) - 1)
    sums = np.bincount(index, image[inside], minlength=len(edges) - 1)
    centres = (edges[:-1] + edges[1:]) / 2
    filled = counts > 0
    return centres, np.interp(centres, centres[filled], sums[filled] / counts[filled])


class TaskTransferFunction(NamedTuple):
    """TTF against frequency (mm^-1, up to the image's Nyquist frequency), the insert's contrast (inside minus
    outside, HU) and the frequencies where the TTF falls to 0.5 and 0.1 (mm^-1, NaN if it never does)."""

    frequencies: np.ndarray
    ttf: np.ndarray
    contrast_hu: float
    ttf50: float
    ttf10: float


def transfer_frequency(frequencies: np.ndarray, transfer: np.ndarray, level: float) -> float:
    """First frequency where ``transfer`` falls to ``level`` (linear interpolation), NaN if it never does."""
    below = np.flatnonzero(np.asarray(transfer) <= level)
    if len(below) == 0 or below[0] == 0:
        return float("nan")
    i = below[0]
    f0, f1, t0, t1 = frequencies[i - 1], frequencies[i], transfer[i - 1], transfer[i]
    return float(f0 + (t0 - level) / (t0 - t1) * (f1 - f0))


def task_transfer_function(
    image_hu: np.ndarray,
    centre: tuple[float, float],
    radius_mm: float,
    pixel_spacing_mm: float,
    half_width_mm: float | None = None,
    bin_width_mm: float | None = None,
    lsf_half_width_mm: float | None = None,
) -> TaskTransferFunction:
    """AAPM TG-233 task transfer function of a circular insert of radius ``radius_mm`` around ``centre`` (pixels).

    The radial ESF (:func:`edge_spread_function`) is differentiated to the line-spread function, windowed around the
    edge against noise far from it (a Tukey window over R +- ``lsf_half_width_mm``, default the whole profile: flat
    over the inner half, a cosine taper over the outer; a narrower one has less noise but must hold the LSF's
    tails), and Fourier transformed (zero-padded 4x);
    TTF = |FT(LSF)| / |FT(LSF)(0)|. Give the mean over noise realisations for a noisy insert: noise left in the ESF
    raises the TTF at high frequencies. A Gaussian blur of std s mm gives TTF(f) = exp(-2 pi^2 s^2 f^2).
    """
    distance, esf = edge_spread_function(image_hu, centre, radius_mm, pixel_spacing_mm, half_width_mm, bin_width_mm)
    step = distance[1] - distance[0]
    half_window = lsf_half_width_mm or min(radius_mm - distance[0], distance[-1] - radius_mm)
    offset = np.abs(distance - radius_mm) / half_window  # Tukey window: 1 to half way, cosine taper to 0 at 1
    taper = np.where(offset <= 0.5, 1.0, 0.5 * (1 + np.cos(2 * np.pi * (np.minimum(offset, 1.0) - 0.5))))
    lsf = np.gradient(esf, step) * taper
    spectrum = np.abs(np.fft.rfft(lsf, n=4 * len(lsf)))
    frequencies = np.fft.rfftfreq(4 * len(lsf), d=step)
    if spectrum[0] == 0:
        raise ValueError(f"the insert at {centre} has no contrast")
    keep = frequencies <= 0.5 / pixel_spacing_mm + 1e-9
    ttf = spectrum[keep] / spectrum[0]
    quarter = max(len(esf) // 4, 1)
    contrast = float(esf[:quarter].mean() - esf[-quarter:].mean())
    f = frequencies[keep]
    return TaskTransferFunction(f, ttf, contrast, transfer_frequency(f, ttf, 0.5), transfer_frequency(f, ttf, 0.1))


def npw_detectability(signal_hu: np.ndarray, noise_hu: np.ndarray) -> float:
    """Detectability index d' of the non-prewhitening matched filter (template = the signal itself).

    ``signal_hu``: the mean signal (h, w) in HU (signal-present minus signal-absent mean image); ``noise_hu``:
    (N, h, w) zero-mean noise realisations (signal-absent ROIs minus their mean) in HU.
    ``d' = (s . s) / std_k(s . n_k)``; in white noise of std sigma this is ||s|| / sigma.
    """
    signal = np.asarray(signal_hu, dtype=np.float64)
    noise = np.asarray(noise_hu, dtype=np.float64)
    if noise.ndim != 3 or noise.shape[1:] != signal.shape or noise.shape[0] < 2:
        raise ValueError(f"expected noise (N >= 2, h, w) matching the signal {signal.shape}, got {noise.shape}")
    responses = noise.reshape(len(noise), -1) @ signal.ravel()
    return float(signal.ravel() @ signal.ravel() / responses.std(ddof=1))


def npw_detectability_from_ensembles(
    signal_present_hu: np.ndarray, signal_absent_hu: np.ndarray, template_hu: np.ndarray | None = None
) -> float:
    """NPW d' from signal-present (N1, h, w) and signal-absent (N0, h, w) ROI ensembles in HU.

    The observer's response is t = w . g with template w (``template_hu``, default the mean present minus mean
    absent ROI); ``d' = (mean t1 - mean t0) / sqrt((var t1 + var t0) / 2)``. A template estimated from the same
    ensembles biases d' upwards by the noise it carries: give the known signal where there is one.
    """
    present = np.asarray(signal_present_hu, dtype=np.float64)
    absent = np.asarray(signal_absent_hu, dtype=np.float64)
    if present.ndim != 3 or absent.shape[1:] != present.shape[1:] or min(len(present), len(absent)) < 2:
        raise ValueError(f"expected ensembles (N >= 2, h, w) of one ROI shape, got {present.shape}, {absent.shape}")
    template = present.mean(axis=0) - absent.mean(axis=0) if template_hu is None else np.asarray(template_hu)
    t1 = present.reshape(len(present), -1) @ template.ravel()
    t0 = absent.reshape(len(absent), -1) @ template.ravel()
    return float((t1.mean() - t0.mean()) / np.sqrt((t1.var(ddof=1) + t0.var(ddof=1)) / 2))


class FlatRegionMetric(CumulativeIterationMetric):
    """MONAI metric of flat-region image quality, per image, for ``y_pred`` (the image under test) against ``y``
    (the normal-dose reference, which also places the ROIs with :func:`place_flat_rois`), both in HU.

    Args:
        quantity: ``"hu_bias"`` (HU), ``"noise"`` (HU, of ``y_pred``), ``"noise_ratio"`` (``y_pred`` over ``y``),
            ``"nps_mean_frequency"`` or ``"nps_peak_frequency"`` (mm^-1, NPS of ``y_pred``'s detrended ROIs).
        roi_size: side of the HU-bias and noise ROIs, pixels.
        nps_roi_size: side of the NPS ROIs, pixels (up to 16 a class, overlapping by up to half).
        pixel_spacing_mm: square pixel spacing; None reads it from the MetaTensor (``pixdim``).
        reduction: MONAI reduction over the batch (NaN, for an image without flat ROIs, is left out).

    Inputs are (B, C, H, W) tensors whose channel 0 is the image (further channels, such as the dose-aware
    network's conditioning, are ignored); per image the value is NaN when no flat ROI is found.
    """

    QUANTITIES = ("hu_bias", "noise", "noise_ratio", "nps_mean_frequency", "nps_peak_frequency")

    def __init__(
        self,
        quantity: str,
        roi_size: int = 15,
        nps_roi_size: int = 32,
        pixel_spacing_mm: float | None = None,
        reduction: MetricReduction | str = MetricReduction.MEAN,
        get_not_nans: bool = False,
    ) -> None:
        super().__init__()
        self.quantity = look_up_option(quantity, self.QUANTITIES)
        self.roi_size, self.nps_roi_size = int(roi_size), int(nps_roi_size)
        self.pixel_spacing_mm = pixel_spacing_mm
        self.reduction, self.get_not_nans = reduction, get_not_nans

    def _spacing(self, image: torch.Tensor) -> float:
        if self.pixel_spacing_mm is not None:
            return float(self.pixel_spacing_mm)
        if isinstance(image, MetaTensor):
            return float(np.mean(np.asarray(image.pixdim[:2], dtype=float)))
        raise ValueError("FlatRegionMetric: no pixel spacing (not a MetaTensor); give pixel_spacing_mm")

    def _one(self, image: np.ndarray, reference: np.ndarray, spacing: float) -> float:
        if self.quantity.startswith("nps"):  # half-overlapping ROIs, as ICRU 87 allows, for more of them
            rois = place_flat_rois(reference, self.nps_roi_size, 16, min_separation_px=self.nps_roi_size // 2)
        else:
            rois = place_flat_rois(reference, self.roi_size)
        if not rois:
            return float("nan")
        if self.quantity == "hu_bias":
            return hu_bias(image, reference, rois)
        if self.quantity == "noise":
            return roi_noise(image, rois)
        if self.quantity == "noise_ratio":
            return noise_ratio(image, reference, rois)
        spectrum = noise_power_spectrum(extract_rois(image, rois), spacing)
        mean_frequency, peak_frequency = nps_frequencies(*radial_average(spectrum))
        return mean_frequency if self.quantity == "nps_mean_frequency" else peak_frequency

    def _compute_tensor(  # type: ignore[override]
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None
    ) -> torch.Tensor:
        if y is None or y_pred.ndim != 4 or y_pred.shape[::2] != y.shape[::2] or y_pred.shape[3] != y.shape[3]:
            raise ValueError(f"expected y_pred and y of shape (B, C, H, W) with one B, H, W, got {tuple(y_pred.shape)}"
                             f" and {None if y is None else tuple(y.shape)}")  # fmt: skip
        spacing = self._spacing(y_pred)
        predictions, references = convert_to_numpy(y_pred), convert_to_numpy(y)
        values = [self._one(p[0], r[0], spacing) for p, r in zip(predictions, references)]
        return torch.tensor(values, dtype=torch.float32)[:, None]

    def aggregate(
        self, reduction: MetricReduction | str | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("the data to aggregate must be a PyTorch Tensor")
        value, not_nans = do_metric_reduction(data, reduction or self.reduction)
        return (value, not_nans) if self.get_not_nans else value

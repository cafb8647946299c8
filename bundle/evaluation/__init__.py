"""Evaluation beyond PSNR/SSIM: image quality as CT physicists measure it (HU bias, noise, NPS, TTF, d')."""

from .image_quality import (
    TISSUE_CLASSES_HU,
    FlatRegionMetric,
    FlatROI,
    NoisePowerSpectrum,
    TaskTransferFunction,
    detrend,
    edge_spread_function,
    extract_rois,
    hu_bias,
    noise_power_spectrum,
    noise_ratio,
    nps_frequencies,
    npw_detectability,
    npw_detectability_from_ensembles,
    place_flat_rois,
    radial_average,
    roi_means,
    roi_noise,
    task_transfer_function,
    transfer_frequency,
)
from .quality_study import GOALS, PhantomResult, SeriesResult, measure_phantom, measure_series, verdicts, write_report

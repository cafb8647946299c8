"""Engines for running the bundle over many inputs: per-series fault isolation and readable final errors."""

from bundle.engines.errors import USER_ERRORS, report_errors_last
from bundle.engines.series_inference import (
    InferenceFailed,
    SeriesDataset,
    SeriesEvaluator,
    SeriesOutcomes,
    as_bool,
    describe_error,
)

__all__ = [
    "USER_ERRORS",
    "InferenceFailed",
    "SeriesDataset",
    "SeriesEvaluator",
    "SeriesOutcomes",
    "as_bool",
    "describe_error",
    "report_errors_last",
]

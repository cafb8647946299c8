"""Tools of the benchmark and report scripts: peak memory sampling, windowed image quality, report provenance."""

from bundle.utils.profiling import PeakMemorySampler, resident_memory_bytes
from bundle.utils.reporting import CHEST_WINDOW_HU, PAPER_WINDOW_HU, REPORT_WINDOWS, git_commit, windowed_quality

__all__ = [
    "CHEST_WINDOW_HU",
    "PAPER_WINDOW_HU",
    "REPORT_WINDOWS",
    "PeakMemorySampler",
    "git_commit",
    "resident_memory_bytes",
    "windowed_quality",
]

"""Process tools and report helpers: the bundle configs read from any folder, freed-memory retention, peak memory
sampling, windowed quality, provenance, atomic reports."""

from bundle.utils.config import read_bundle_config, shared_config
from bundle.utils.memory import retain_freed_memory
from bundle.utils.profiling import PeakMemorySampler, resident_memory_bytes
from bundle.utils.slices import check_slices
from bundle.utils.reporting import (
    CHEST_WINDOW_HU,
    PAPER_WINDOW_HU,
    REPORT_WINDOWS,
    git_commit,
    provenance,
    windowed_quality,
    write_report,
)

__all__ = [
    "CHEST_WINDOW_HU",
    "PAPER_WINDOW_HU",
    "REPORT_WINDOWS",
    "PeakMemorySampler",
    "check_slices",
    "git_commit",
    "provenance",
    "read_bundle_config",
    "resident_memory_bytes",
    "retain_freed_memory",
    "shared_config",
    "windowed_quality",
    "write_report",
]

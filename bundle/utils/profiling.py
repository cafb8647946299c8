"""Peak resident memory of a block of code, for the benchmark scripts."""

from __future__ import annotations

import os
import resource
import sys
import threading
import time
from types import TracebackType

__all__ = ["PeakMemorySampler", "resident_memory_bytes"]

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def resident_memory_bytes() -> int:
    """Current resident set size of this process in bytes (``/proc/self/statm``; peak RSS where it is missing)."""
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except OSError:  # not Linux: ru_maxrss is the best portable figure (bytes on macOS, KiB elsewhere)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


class PeakMemorySampler:
    """
    Context manager sampling the process's resident memory from a background thread.

    ``baseline`` is the resident memory on entry and ``peak`` the largest sample until exit, so ``extra`` is what
    the block added at its worst, in bytes (allocations of the block freed before exit included). Sampling every
    ``interval`` seconds can miss a peak shorter than that.

    Example::

        with PeakMemorySampler() as memory:
            denoised = network(slice_)
        print(f"{memory.extra / 2**20:.0f} MiB")
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def extra(self) -> int:
        """Peak minus baseline resident memory, in bytes."""
        return max(self.peak - self.baseline, 0)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, resident_memory_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemorySampler:
        self.baseline = self.peak = resident_memory_bytes()
        self._stop.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, resident_memory_bytes())

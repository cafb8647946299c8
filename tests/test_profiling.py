"""bundle.utils.profiling: a known allocation shows in the sampled peak, and the resident size is the kernel's."""

from __future__ import annotations

import mmap
import sys
import time

import numpy as np
import pytest

from bundle.utils import PeakMemorySampler, resident_memory_bytes

MIB = 2**20
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self/status is Linux's")


def _vm_rss_bytes() -> int:
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmRSS:"))
    return int(line.split()[1]) * 1024


def _touch(size: int) -> mmap.mmap:
    """``size`` bytes of anonymous memory, every page written (resident), independent of malloc's settings."""
    block = mmap.mmap(-1, size)
    np.frombuffer(block, np.uint8)[:] = 1
    return block


@linux_only
def test_resident_memory_is_the_kernels_figure_and_grows_with_a_touched_block():
    assert abs(resident_memory_bytes() - _vm_rss_bytes()) < 8 * MIB
    before = resident_memory_bytes()
    block = _touch(64 * MIB)
    grown = resident_memory_bytes() - before
    block.close()
    assert 60 * MIB < grown < 72 * MIB


@linux_only
def test_a_freed_allocation_shows_in_the_peak_but_not_at_the_end():
    with PeakMemorySampler(interval=0.001) as memory:
        block = _touch(96 * MIB)
        time.sleep(0.05)  # several sampling intervals while the block is resident
        block.close()  # unmapped: returned to the system before the block exits
        end = resident_memory_bytes()
    assert 90 * MIB < memory.extra < 110 * MIB
    assert memory.peak - end > 90 * MIB
    assert memory.baseline <= memory.peak


def test_no_allocation_gives_no_extra_and_extra_is_never_negative():
    with PeakMemorySampler() as memory:
        pass
    assert memory.extra < 4 * MIB
    memory.baseline, memory.peak = 100, 50
    assert memory.extra == 0

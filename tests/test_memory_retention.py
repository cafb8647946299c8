"""retain_freed_memory: freed tensors are reused without page faults (glibc), and it is switchable in the configs."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# 5 tensors of 64 MiB filled one after another, each freed before the next: 5 * 64 MiB / 4 KiB = 81,920 pages
FAULTS = """
import resource, sys, torch
from bundle.utils import retain_freed_memory
applied = retain_freed_memory() if sys.argv[1] == "retain" else False
for _ in range(2):  # first uses: faulted in either way
    torch.ones(2**24)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.ones(2**24)
print(applied, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> tuple[str, int]:
    done = subprocess.run([sys.executable, "-c", FAULTS, mode], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    applied, faults = done.stdout.split()
    return applied, int(faults)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's malloc settings only")
def test_freed_tensors_are_reused_without_page_faults():
    applied, faults = _faults("retain")
    assert applied == "True" and faults < 16_384 + 2_000  # at most one of the five blocks faulted in again
    _, default_faults = _faults("default")  # glibc maps and unmaps every 64 MiB block: all 81,920 pages again
    assert default_faults > 70_000


def test_configs_retain_freed_memory_unless_told_not_to():
    for name in ("inference", "train"):
        config = json.loads((REPO / f"configs/{name}.json").read_text())
        assert config["retain_freed_memory"] is True
        assert "$bundle.utils.retain_freed_memory() if @retain_freed_memory else False" in config["initialize"]

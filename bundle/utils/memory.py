"""Keep freed CPU memory in the process, so large tensors are not page-faulted in again on every slice or step."""

from __future__ import annotations

import ctypes
import platform
import sys

__all__ = ["retain_freed_memory"]

_M_TRIM_THRESHOLD = -1  # glibc <malloc.h>
_M_MMAP_THRESHOLD = -3


def retain_freed_memory(max_bytes: int = 2**30) -> bool:
    """
    Ask glibc's ``malloc`` to serve blocks of up to ``max_bytes`` from its heap and to keep up to ``max_bytes`` of
    freed heap for reuse, instead of mapping large blocks afresh and returning them to the system when freed.

    PyTorch allocates CPU tensors with ``malloc``. With glibc's defaults, the tens of MiB that every 512 x 512
    forward pass allocates are given back to the system when freed and faulted in again, page by page, on the next
    slice or training step: about 97,000 page faults a slice for the default StructKPN, which made it about 1.4
    times slower on the development machine (``docs/performance.md``, ``slice_lite_glibc_defaults``). Kept, the
    same memory is reused, but it is not returned until the process ends, and the heap can fragment: larger
    pipelines (RED-CNN, the authors' preset) peaked about 1.5 times higher in resident memory.

    Process-wide and permanent. Does nothing and returns ``False`` where the C library is not glibc (macOS, Windows,
    musl); returns ``True`` once both settings are applied.

    Example::

        >>> from bundle.utils import retain_freed_memory
        >>> retain_freed_memory()  # on glibc Linux
        True
    """
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, max_bytes)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, max_bytes))

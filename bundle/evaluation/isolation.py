"""Run one evaluation case in a fresh Python process, so its time and peak memory are its own."""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

__all__ = ["run_in_fresh_process"]

T = TypeVar("T")


def run_in_fresh_process(function: Callable[..., T], *args: object, **kwargs: object) -> T:
    """
    ``function(*args, **kwargs)`` in a new process started by ``multiprocessing``'s ``spawn`` method (a new
    interpreter: no memory, threads or allocator settings inherited from the caller); returns its result.

    ``function`` must be importable (a module-level function of ``bundle``), its arguments and result picklable.
    An exception in the child is raised here; a child that dies (killed for memory) raises
    ``concurrent.futures.process.BrokenProcessPool``.

    Example::

        result = run_in_fresh_process(bundle.evaluation.speed.run_case, "slice_lite", options)
    """
    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(function, *args, **kwargs).result()

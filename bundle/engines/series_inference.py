"""Inference over many series in which one bad series never stops the others.

MONAI's evaluator stops at the first exception. Here the dataset turns a series that cannot be loaded into a
marker item, the evaluator records markers and catches the failures of the network and the writer per series, and
the run ends with a summary (processed, skipped and why, failed and why) and :class:`InferenceFailed` when any
series failed, so ``python -m monai.bundle run inference`` exits non-zero. ``fail_fast`` restores stopping at the
first failure.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from monai.data import Dataset
from monai.engines import SupervisedEvaluator
from monai.transforms import apply_transform

from bundle.io.ct_dicom import CTInputError

__all__ = ["InferenceFailed", "SeriesDataset", "SeriesEvaluator", "SeriesOutcomes", "describe_error", "as_bool"]

logger = logging.getLogger(__name__)

SKIPPED_KEY, ERROR_KEY, SOURCE_KEY = "skipped", "error", "source"


class InferenceFailed(RuntimeError):
    """Some series could not be denoised; the message lists each with its file and problem."""


def as_bool(value: bool | str | int) -> bool:
    """``value`` as a bool; also the strings a command line gives (``--fail_fast true``: true/false, yes/no, 1/0)."""
    if isinstance(value, str):
        words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
        if value.strip().lower() not in words:
            raise ValueError(f"{value!r} is not a boolean: use true or false")
        return words[value.strip().lower()]
    return bool(value)


def describe_error(error: BaseException, source: str) -> str:
    """One line naming the file and the problem: the innermost CTInputError's message (it starts with the file),
    else ``source: <type>: <message>`` of the innermost cause (MONAI wraps transform errors in RuntimeError)."""
    chain = [error]
    while chain[-1].__cause__ is not None or (chain[-1].__context__ is not None and not chain[-1].__suppress_context__):
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    for e in reversed(chain):
        if isinstance(e, CTInputError):
            return str(e)
    root = chain[-1]
    return f"{source}: {type(root).__name__}: {root}"


class SeriesDataset(Dataset):
    """MONAI :class:`~monai.data.Dataset` of the items of :func:`~bundle.io.find_ct_inputs` that never raises for
    one item: an item marked ``"skipped"`` or ``"error"`` is returned as it is (without its transform), and an item
    whose transform (loading, checks) raises is returned as ``{"source": ..., "error": <file and problem>}``.
    :class:`SeriesEvaluator` records both kinds of marker."""

    def _transform(self, index: int):
        item = self.data[index]
        source = str(item.get(SOURCE_KEY) or item.get("image"))
        if SKIPPED_KEY in item or ERROR_KEY in item:
            return {SOURCE_KEY: source, **{k: item[k] for k in (SKIPPED_KEY, ERROR_KEY) if k in item}}
        try:
            return {SOURCE_KEY: source, **apply_transform(self.transform, dict(item))}
        except Exception as e:  # any failure of this item is its own; the others go on
            logger.debug("%s: loading failed", source, exc_info=True)
            return {SOURCE_KEY: source, ERROR_KEY: describe_error(e, source)}


@dataclass
class SeriesOutcomes:
    """What happened to each input of a run: (source, reason) for skipped and failed ones."""

    processed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    def summary(self) -> str:
        total = len(self.processed) + len(self.skipped) + len(self.failed)
        lines = [
            f"inference summary: {len(self.processed)} processed, {len(self.skipped)} skipped, {len(self.failed)} "
            f"failed, of {total} inputs"
        ]
        lines += [f"  processed: {source}" for source in self.processed]
        lines += [f"  skipped: {source}: {reason}" for source, reason in self.skipped]
        lines += [f"  failed: {reason}" for _, reason in self.failed]
        return "\n".join(lines)


def _first(value):
    """A collated batch of one item holds each value in a list of one."""
    return value[0] if isinstance(value, (list, tuple)) and len(value) == 1 else value


class SeriesEvaluator(SupervisedEvaluator):
    """:class:`~monai.engines.SupervisedEvaluator` for inference over series, one series a batch (batch_size 1),
    with the items of a :class:`SeriesDataset`.

    Each iteration records its series as processed, skipped (the dataset's ``"skipped"`` marker) or failed (its
    ``"error"`` marker, or an exception of the network or the postprocessing, i.e. the writer); a failed or
    skipped series gets no network call and the run goes on. After the run the summary is logged and, when any
    series failed, :class:`InferenceFailed` is raised listing them. With ``fail_fast`` (a bool, or "true"/"false"
    from the command line) the run stops at the first failure and raises it the same way.

    Other arguments are :class:`~monai.engines.SupervisedEvaluator`'s.
    """

    def __init__(self, *args, fail_fast: bool | str = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.fail_fast = as_bool(fail_fast)
        self.outcomes = SeriesOutcomes()

    def run(self, global_epoch: int = 1) -> None:  # type: ignore[override]
        self.outcomes = SeriesOutcomes()
        super().run(global_epoch)
        outcomes = self.outcomes
        logger.info(outcomes.summary())
        if outcomes.failed:
            stopped = " (fail_fast: stopped at the first failure)" if self.fail_fast else ""
            raise InferenceFailed(
                f"{len(outcomes.failed)} of {len(outcomes.processed) + len(outcomes.skipped) + len(outcomes.failed)} "
                f"inputs failed{stopped}; {len(outcomes.processed)} processed, {len(outcomes.skipped)} skipped:\n"
                + "\n".join(f"  {reason}" for _, reason in outcomes.failed)
            )

    def _iteration(self, engine: SupervisedEvaluator, batchdata: dict[str, torch.Tensor]) -> dict:
        source = str(_first(batchdata.get(SOURCE_KEY, "?")))
        if SKIPPED_KEY in batchdata:
            self.outcomes.skipped.append((source, str(_first(batchdata[SKIPPED_KEY]))))
            engine.state.output = {}
            return engine.state.output
        if ERROR_KEY in batchdata:
            return self._fail(engine, source, str(_first(batchdata[ERROR_KEY])))
        try:
            output = super()._iteration(engine, batchdata)
        except Exception as e:  # the network or the writer failed on this series
            logger.debug("%s: failed", source, exc_info=True)
            return self._fail(engine, source, describe_error(e, source))
        self.outcomes.processed.append(source)
        logger.info("processed %s", source)
        return output

    def _fail(self, engine: SupervisedEvaluator, source: str, reason: str) -> dict:
        self.outcomes.failed.append((source, reason))
        logger.error("failed: %s", reason)
        if self.fail_fast:
            engine.terminate()
        engine.state.output = {}
        return engine.state.output

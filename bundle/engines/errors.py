"""The last lines of a failed command name the file and the problem."""

from __future__ import annotations

import sys
import traceback

from bundle.engines.series_inference import InferenceFailed
from bundle.io.ct_dicom import CTInputError
from bundle.io.paths import OutputDirError

__all__ = ["USER_ERRORS", "report_errors_last"]

# Errors in the user's input or settings, whose message says all: printed without a traceback.
USER_ERRORS = (CTInputError, OutputDirError, InferenceFailed, FileNotFoundError)


def _chain(error: BaseException) -> list[BaseException]:
    chain = [error]
    while chain[-1].__cause__ is not None or (chain[-1].__context__ is not None and not chain[-1].__suppress_context__):
        chain.append(chain[-1].__cause__ or chain[-1].__context__)
    return chain


def _excepthook(kind: type[BaseException], error: BaseException, tb) -> None:
    chain = _chain(error)
    user = next((e for e in reversed(chain) if isinstance(e, USER_ERRORS)), None)
    if user is None:  # a bug, or an error of a library: the whole traceback, then its innermost cause
        traceback.print_exception(kind, error, tb)
        print(f"\nerror: {type(chain[-1]).__name__}: {chain[-1]}", file=sys.stderr)
    else:  # MONAI wraps it in RuntimeErrors ("Failed to evaluate ConfigExpression"): only its own message
        print(f"error: {user}", file=sys.stderr)


def report_errors_last() -> bool:
    """Make an uncaught exception end the process with ``error: <file>: <problem>`` as its last lines: an error of
    the input or settings (``USER_ERRORS``, found through the exceptions that wrap it) is printed without a
    traceback, any other after its traceback. For the inference config's ``initialize``; returns True."""
    sys.excepthook = _excepthook
    return True

"""Reading the bundle's configs from any working folder.

The configs take their shared values and blocks from ``configs/common.json`` through MONAI file macros
(``"%configs/common.json#hu_window"``). MONAI opens a macro's relative file path from the working folder (not from
``bundle_root``), so ``python -m monai.bundle`` resolves them when run from the bundle root, as the README's commands
are. Python callers that may run elsewhere (the MONAI Label server, :mod:`bundle.evaluation`) read configs with
:func:`read_bundle_config`.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.utils import ID_SEP_KEY, MACRO_KEY
from monai.utils import ensure_tuple

__all__ = ["read_bundle_config"]


def read_bundle_config(
    config_file: os.PathLike | str | Sequence[os.PathLike | str], bundle_root: os.PathLike | str | None = None
) -> ConfigParser:
    """
    A :class:`monai.bundle.ConfigParser` of ``config_file`` (several files merge in order, as on the command line)
    whose file macros with a relative path read that file under ``bundle_root`` instead of the working folder.

    ``bundle_root`` defaults to the folder above the first file's ``configs`` folder (the first file's own folder
    when it is not named ``configs``), as :class:`monai.bundle.ConfigWorkflow` finds the bundle root. Macros are
    still resolved when the config is parsed, so overrides set before that (``parser.update({"kernel_size": 15})``)
    reach every block that references the key.

    Example::

        read_bundle_config("/path/to/bundle/configs/inference.json").get_parsed_content("hu_window")  # [-1024, 3072]
    """
    files = [str(f) for f in ensure_tuple(config_file)]
    if bundle_root is None:
        folder = Path(files[0]).resolve().parent
        bundle_root = folder.parent if folder.name == "configs" else folder
    parser = ConfigParser()
    parser.read_config(files)
    parser.set(_rooted(parser.get(), Path(bundle_root)))
    return parser


def _rooted(config: Any, root: Path) -> Any:
    """``config`` with the relative file path of each macro (``"%configs/common.json#id"``) joined to ``root``."""
    if isinstance(config, dict):
        return {key: _rooted(value, root) for key, value in config.items()}
    if isinstance(config, list):
        return [_rooted(value, root) for value in config]
    if isinstance(config, str) and config.startswith(MACRO_KEY):
        path, ids = ConfigParser.split_path_id(config[len(MACRO_KEY) :])
        if path and not os.path.isabs(path):
            return f"{MACRO_KEY}{root / path}" + (f"{ID_SEP_KEY}{ids}" if ids else "")
    return config

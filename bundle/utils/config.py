"""The bundle's shared settings, read under the bundle root from any working folder.

``configs/common.json`` holds the values and blocks the configs share. Each config takes them with an expression,
``"hu_window": "$bundle.utils.shared_config(@bundle_root, 'hu_window')"``, that opens the file under
``bundle_root``: MONAI's own file macros (``"%configs/common.json#hu_window"``) open a relative path from the
working folder, so they fail where the Model Zoo's CI and MONAI's tutorials run a bundle, from another folder with
``--bundle_root``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from monai.bundle import ConfigParser
from monai.bundle.reference_resolver import ReferenceResolver
from monai.utils import ensure_tuple

__all__ = ["COMMON_CONFIG", "read_bundle_config", "shared_config"]

COMMON_CONFIG = Path("configs") / "common.json"  # the shared settings, relative to the bundle root
IMPORTS_KEY = "imports"  # common.json's own imports (its expressions use bundle.io), MONAI's usual key


def shared_config(bundle_root: os.PathLike | str, id: str, **values: Any) -> Any:
    """
    The parsed content of ``id`` (``"hu_window"``, ``"load_transforms"``, ``"psnr#max_val"``) in
    ``<bundle_root>/configs/common.json``: a value, or a block instantiated afresh on each call.

    A block that references other ids (``@kernel_size``, ``@hu_window``, ``@network``) reads them from ``values``
    only, the calling config's own (``kernel_size=@kernel_size``), so command-line overrides of the caller reach
    it; a reference without a value, or a value the block does not read, raises ``ValueError``.

    Raises:
        FileNotFoundError: ``<bundle_root>/configs/common.json`` does not exist (``bundle_root`` is not the
            bundle's folder).
        KeyError: common.json has no ``id``.
    """
    path = Path(bundle_root) / COMMON_CONFIG
    if not path.is_file():
        raise FileNotFoundError(
            f"{path.resolve()}: no such file; the configs read their shared settings from {COMMON_CONFIG} under bundle_root "
            f"({str(bundle_root)!r}): give --bundle_root the bundle's folder"
        )
    common = ConfigParser.load_config_file(path)
    top = ReferenceResolver.split_id(id)[0]
    if top == IMPORTS_KEY or top not in common:
        raise KeyError(f"{path} has no shared setting {top!r} (it has {sorted(set(common) - {IMPORTS_KEY})})")
    reads = {ReferenceResolver.split_id(ref)[0] for ref in ReferenceResolver.find_refs_in_config(common[top], top)}
    reads.discard(top)
    if reads != set(values):
        raise ValueError(
            f"{path}#{top} reads {sorted(reads)} from the calling config: pass exactly those "
            f"(missing {sorted(reads - set(values))}, not read {sorted(set(values) - reads)})"
        )
    parser = ConfigParser({IMPORTS_KEY: common.get(IMPORTS_KEY, []), top: common[top]})
    parser.update(values)
    return parser.get_parsed_content(id)


def read_bundle_config(
    config_file: os.PathLike | str | Sequence[os.PathLike | str], bundle_root: os.PathLike | str | None = None
) -> ConfigParser:
    """
    A :class:`monai.bundle.ConfigParser` of ``config_file`` (several files merge in order, as on the command line)
    with ``bundle_root`` set, so it parses from any working folder (the configs' default ``bundle_root`` is ``"."``).

    ``bundle_root`` defaults to the folder above the first file's ``configs`` folder (the first file's own folder
    when it is not named ``configs``), as :class:`monai.bundle.ConfigWorkflow` finds the bundle root.

    Example::

        read_bundle_config("/path/to/bundle/configs/inference.json").get_parsed_content("hu_window")  # [-1024, 3072]
    """
    files = [str(f) for f in ensure_tuple(config_file)]
    if bundle_root is None:
        folder = Path(files[0]).resolve().parent
        bundle_root = folder.parent if folder.name == "configs" else folder
    parser = ConfigParser()
    parser.read_config(files)
    parser["bundle_root"] = str(bundle_root)
    return parser

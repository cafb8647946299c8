"""MONAI Label infer task: denoise a low-dose CT volume with the StructKPN bundle; returns the volume in HU (NIfTI).

Everything model-specific comes from the bundle itself, so the task and ``python -m monai.bundle run inference``
cannot drift apart:

- ``configs/inference.json`` (a :class:`monai.bundle.ConfigParser` from :func:`bundle.utils.read_bundle_config`,
  with the values and blocks it shares from ``configs/common.json``) gives the network (``network_def``),
  the weights (``ckpt_path``), the preprocessing (``LoadImaged`` with :class:`bundle.io.CTDicomReader`, the CT
  checks, the window ``hu_window`` = [-1024, 3072] HU scaled to [0, 1], and for the dose-aware network the
  conditioning channels of :class:`bundle.transforms.AddDoseConditiond` at ``dose_fraction``), the slice-by-slice
  inferer (``SliceInferer``), the inverse window (``postprocessing#transforms#0``) and ``retain_freed_memory``;
- the NIfTI file is written by :class:`bundle.io.AtomicNibabelWriter` with the input's affine and shape.

The bundle's DICOM series writer is not used: MONAI Label returns one file per request, so a DICOM input gives a
NIfTI volume too (the same as ``--output_format nifti`` in the bundle).
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Dict, Sequence, Tuple

import numpy as np
import torch
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.inferers import Inferer

from bundle.io import AtomicNibabelWriter
from bundle.utils import read_bundle_config, retain_freed_memory
from monailabel.interfaces.exception import MONAILabelError, MONAILabelException
from monailabel.interfaces.tasks.infer_v2 import InferType
from monailabel.tasks.infer.basic_infer import BasicInferTask

logger = logging.getLogger(__name__)

DEFAULT_MODEL_NAME = "structkpn_denoise"
#: the bundle root: this file is <bundle>/monailabel_app/lib/infers/denoise.py
DEFAULT_BUNDLE_ROOT = str(Path(__file__).resolve().parents[3])


class StructKPNDenoise(BasicInferTask):
    """Denoise a CT DICOM series (folder or list of files) or a NIfTI volume in HU; returns a NIfTI file in HU.

    Args:
        bundle_root: folder holding ``configs/`` and ``models/`` of the StructKPN bundle.
        config_file: bundle config, relative to ``bundle_root`` unless absolute.
        ckpt_path: state dict to load; default: the config's ``ckpt_path`` (``models/model.pt``).
        overrides: config overrides, e.g. ``{"kernel_size": 15}`` for weights trained with another kernel size.
    """

    def __init__(
        self,
        bundle_root: str = DEFAULT_BUNDLE_ROOT,
        config_file: str = "configs/inference.json",
        ckpt_path: str | None = None,
        overrides: Dict[str, Any] | None = None,
        description: str = "StructKPN low-dose CT denoising (returns the denoised volume in HU; research use only)",
        **kwargs,
    ) -> None:
        self.bundle_root = str(bundle_root)
        self.config_file = str(Path(self.bundle_root, config_file))
        self.overrides = dict(overrides or {})
        parser = self._parser()
        self.hu_window = [float(v) for v in parser.get_parsed_content("hu_window")]
        if parser.get_parsed_content("retain_freed_memory"):  # as the bundle's "initialize" does
            retain_freed_memory()
        network = parser.get_parsed_content("network_def", lazy=False)
        path = ckpt_path or parser.get_parsed_content("ckpt_path")
        super().__init__(
            path=path,
            network=network,
            type=InferType.OTHERS,
            labels=None,
            dimension=3,
            description=description,
            load_strict=True,
            config={"hu_window": self.hu_window},
            **kwargs,
        )

    def _parser(self) -> ConfigParser:
        """A fresh parse of the bundle config (transforms hold per-call state, e.g. the DICOM reader), with
        ``bundle_root`` set, so ``configs/common.json`` is read from it whatever the server's working folder."""
        parser = read_bundle_config(self.config_file, self.bundle_root)
        parser.update(self.overrides)
        return parser

    def __call__(self, request, callbacks=None):
        # an unknown datastore id arrives as "": without this check the reader would load the working folder
        image = request.get("image")
        if isinstance(image, (str, os.PathLike)) and not (str(image) and os.path.exists(image)):
            raise MONAILabelException(
                MONAILabelError.INVALID_INPUT,
                f"image not found: {str(image)!r} (give a datastore image id, a path on the server to a NIfTI file or "
                "a DICOM series folder, or upload a file)",
            )
        return super().__call__(request, callbacks)

    def pre_transforms(self, data=None) -> Sequence[Callable]:
        # LoadImaged(CTDicomReader) -> ValidateCTImaged -> add a slice axis to 2D input -> window to [0, 1]
        # -> the dose conditioning channels (dose-aware network)
        return list(self._parser().get_parsed_content("preprocessing", lazy=False).transforms)

    def inferer(self, data=None) -> Inferer:
        # SliceInferer: the 2D network runs on each (whole) slice along the volume's last axis
        inferer = self._parser().get_parsed_content("inferer", lazy=False)
        inferer.progress = False
        return inferer

    def inverse_transforms(self, data=None):
        return None  # nothing spatial to invert: the volume keeps its grid

    def post_transforms(self, data=None) -> Sequence[Callable]:
        # ScaleIntensityRanged on "pred": [0, 1] back to hu_window in HU
        return [self._parser().get_parsed_content("postprocessing#transforms#0", lazy=False)]

    def writer(self, data: Dict[str, Any], extension=None, dtype=None) -> Tuple[Any, Any]:
        """Write ``pred`` (1, X, Y, D) in HU as a float32 NIfTI file with the input's shape and affine."""
        image, pred = data[self.input_key], data[self.output_label_key]
        meta = image.meta if isinstance(image, MetaTensor) else {}
        hu = pred.detach().cpu().numpy() if isinstance(pred, torch.Tensor) else np.asarray(pred)
        spatial_shape = tuple(int(s) for s in np.asarray(meta.get("spatial_shape", hu.shape[1:])).ravel())
        hu = hu[0].reshape(spatial_shape).astype(np.float32)  # drops the slice axis added to a 2D input
        affine = image.affine if isinstance(image, MetaTensor) else np.eye(4)

        handle, output_file = tempfile.mkstemp(suffix=".nii.gz", prefix="structkpn_")
        os.close(handle)
        writer = AtomicNibabelWriter(output_dtype=np.float32)
        writer.set_data_array(hu, channel_dim=None)
        writer.set_metadata({"affine": affine, "original_affine": meta.get("original_affine")}, resample=False)
        writer.write(output_file)

        result = dict(data.get(self.output_json_key, {}))
        result.update(
            {
                "output": "denoised CT in HU (float32 NIfTI), same grid and affine as the input",
                "hu_window": self.hu_window,
                "shape": list(hu.shape),
                "hu_min": float(hu.min()),
                "hu_max": float(hu.max()),
                "model_path": self.get_path(validate=False),
            }
        )
        logger.info(f"Denoised volume {hu.shape} written to {output_file}")
        return output_file, result

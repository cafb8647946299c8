"""MONAI Label app serving the StructKPN low-dose CT denoising bundle as one infer task.

Start it (in an environment that has monailabel, see docs/monailabel.md)::

    monailabel start_server --app monailabel_app --studies /path/to/studies --conf bundle_root /path/to/bundle

``--conf`` keys (all optional): ``bundle_root`` (default: the folder above this app), ``config_file``
(default ``configs/inference.json``), ``ckpt_path`` (default: the config's ``models/model.pt``).
"""

from __future__ import annotations

import logging
from typing import Dict

from lib.infers import DEFAULT_MODEL_NAME, StructKPNDenoise

from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask
from monailabel.interfaces.tasks.train import TrainTask

logger = logging.getLogger(__name__)


class StructKPNApp(MONAILabelApp):
    def __init__(self, app_dir, studies, conf):
        conf = conf or {}
        self.denoise_task = StructKPNDenoise(
            **{k: conf[k] for k in ("bundle_root", "config_file", "ckpt_path") if conf.get(k)}
        )
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="StructKPN low-dose CT denoising",
            description="Denoises low-dose CT (DICOM series or NIfTI, in HU) slice by slice; research use only",
            version="0.1.0",
        )

    def init_infers(self) -> Dict[str, InferTask]:
        return {DEFAULT_MODEL_NAME: self.denoise_task}

    def init_trainers(self) -> Dict[str, TrainTask]:
        return {}  # training stays in the bundle: python -m monai.bundle run training ...

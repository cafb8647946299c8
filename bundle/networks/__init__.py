"""Denoising networks: StructKPN and the learned baselines."""

from .redcnn import REDCNN
from .residual import zero_initialised
from .structkpn import STRUCTKPN_PRESETS, StructKPN, dose_aware_state_dict
from .wavresnet import StationaryWavelet2d, WavResNet

__all__ = [
    "REDCNN",
    "STRUCTKPN_PRESETS",
    "StationaryWavelet2d",
    "StructKPN",
    "WavResNet",
    "dose_aware_state_dict",
    "zero_initialised",
]

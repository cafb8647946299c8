"""Denoising networks: StructKPN and the learned baselines."""

from .redcnn import REDCNN
from .residual import zero_initialised
from .structkpn import NEIGHBOUR_SHARE, STRUCTKPN_PRESETS, StructKPN, dose_aware_state_dict, multi_slice_state_dict
from .wavresnet import StationaryWavelet2d, WavResNet

__all__ = [
    "NEIGHBOUR_SHARE",
    "REDCNN",
    "STRUCTKPN_PRESETS",
    "StationaryWavelet2d",
    "StructKPN",
    "WavResNet",
    "dose_aware_state_dict",
    "multi_slice_state_dict",
    "zero_initialised",
]

"""Denoising networks: StructKPN and the learned baselines."""

from .redcnn import REDCNN
from .residual import zero_initialised
from .structkpn import STRUCTKPN_PRESETS, StructKPN
from .wavresnet import StationaryWavelet2d, WavResNet

__all__ = ["REDCNN", "STRUCTKPN_PRESETS", "StationaryWavelet2d", "StructKPN", "WavResNet", "zero_initialised"]

"""StructKPN: structure-preserving kernel prediction network for low-dose CT denoising, as a MONAI bundle.

Subpackages, following the data path DICOM -> HU -> window -> network -> HU -> DICOM:

- ``bundle.layers``: the per-pixel local convolution (paper Eq. 1).
- ``bundle.networks``: StructKPN and the learned baselines (RED-CNN, WavResNet).
- ``bundle.losses``: gradient statistics (Eqs. 2-3) and the structure-aware loss (Eqs. 4-6).
- ``bundle.transforms``: CT-specific MONAI transforms (HU checks, padding masks, statistics).
- ``bundle.simulation``: projection-domain low-dose simulation.
- ``bundle.io``: dataset layouts, datalists and the DICOM series writer.
- ``bundle.baselines``: classical denoisers (BM3D, K-SVD).
"""

__version__ = "0.1.0"

"""Which term of the structure-aware loss dominates each pixel of a normal-dose slice (paper Fig. 2(e))."""

from __future__ import annotations

import os

import numpy as np
import torch

from bundle.evaluation.masks import tissue_masks
from bundle.losses.structure_aware import StructureAwareLoss

__all__ = ["COMPONENTS", "dominant_components", "loss_component_figure"]

COMPONENTS = ("L2", "L1", "SSIM")
"""Channel order of :meth:`~bundle.losses.structure_aware.StructureAwareLoss.component_weights`."""
COLORS = ("red", "gray", "orange")


def dominant_components(
    hu: np.ndarray, window_hu: tuple[float, float], loss: StructureAwareLoss | None = None
) -> tuple[np.ndarray, dict[str, dict[str, float]], dict[str, int]]:
    """
    The index into :data:`COMPONENTS` of the largest per-pixel weight (Eq. 6) of ``loss`` (default settings when
    None) on the (H, W) slice ``hu`` windowed from ``window_hu`` to [0, 1] (as the training data), and the fraction
    of each region's pixels (:func:`~bundle.evaluation.masks.tissue_masks`) each term dominates, and each region's
    pixel count.
    """
    low, high = window_hu
    image = torch.from_numpy(np.clip((np.asarray(hu, dtype=np.float32) - low) / (high - low), 0.0, 1.0))
    loss = loss or StructureAwareLoss()
    dominant = loss.component_weights(image[None, None])[0].argmax(dim=0).numpy()
    fractions, pixels = {}, {}
    for region, mask in tissue_masks(hu).items():
        counts = np.bincount(dominant[mask], minlength=len(COMPONENTS))
        fractions[region] = {name: float(count / max(mask.sum(), 1)) for name, count in zip(COMPONENTS, counts)}
        pixels[region] = int(mask.sum())
    return dominant, fractions, pixels


def loss_component_figure(hu: np.ndarray, dominant: np.ndarray, path: os.PathLike | str, title: str) -> None:
    """Save the slice (window [-1000, 400] HU) beside the map of :func:`dominant_components` as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt
    from matplotlib.colors import ListedColormap
    from matplotlib.patches import Patch

    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 5.6), layout="constrained")
    left.imshow(hu, cmap="gray", vmin=-1000, vmax=400)
    left.set_title("normal-dose CT, window [-1000, 400] HU")
    right.imshow(dominant, cmap=ListedColormap(COLORS), vmin=0, vmax=len(COMPONENTS) - 1, interpolation="nearest")
    right.set_title("largest loss weight (Eq. 6)")
    right.legend(handles=[Patch(color=color, label=name) for name, color in zip(COMPONENTS, COLORS)],
                 loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=len(COMPONENTS), fontsize=9)  # fmt: skip
    for axis in (left, right):
        axis.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.savefig(path, dpi=80, bbox_inches="tight")
    plt.close(figure)

"""Masks of a CT slice from HU thresholds and distances in pixels: the body, and tissue classes within it."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["BODY_THRESHOLD_HU", "body_mask", "tissue_masks"]

BODY_THRESHOLD_HU = -500.0
"""Pixels above this HU belong to the body (air and lungs below it; the lungs are filled in as holes)."""


def body_mask(hu: np.ndarray, threshold_hu: float = BODY_THRESHOLD_HU, opening_iterations: int = 2) -> np.ndarray:
    """
    The patient's body, lungs included, of an (H, W) slice in HU: the largest connected region above
    ``threshold_hu`` after a binary opening of ``opening_iterations`` (which cuts the table off; 0 for none), with
    its holes filled. (H, W) boolean; all False when no pixel is above the threshold.
    """
    above = np.asarray(hu) > threshold_hu
    if opening_iterations:
        above = ndimage.binary_opening(above, iterations=opening_iterations)
    labels, count = ndimage.label(above)
    if count == 0:
        return np.zeros(above.shape, dtype=bool)
    largest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
    return ndimage.binary_fill_holes(labels == largest)


def tissue_masks(hu: np.ndarray) -> dict[str, np.ndarray]:
    """(H, W) boolean masks of a chest or abdomen slice in HU, from thresholds and distances in pixels:

    - ``body``: :func:`body_mask`; ``overall``: every pixel.
    - ``body outline``: the 3-pixel band inside the skin/air boundary (an edge).
    - ``lung vessels``: pixels above -500 HU inside the lungs, at least 6 pixels from the lung boundary.
    - ``bone``: pixels above 250 HU in the body.
    - ``flat soft tissue``: -60 to 140 HU, at least 6 pixels from any other tissue.
    - ``lung parenchyma``: lung pixels at least 6 pixels from anything above -600 HU.
    """
    body = body_mask(hu)
    interior = ndimage.binary_erosion(body, iterations=15)
    lungs = ndimage.binary_fill_holes(ndimage.binary_closing(interior & (hu < -500), iterations=5)) & interior
    lungs = ndimage.binary_erosion(ndimage.binary_opening(lungs, iterations=3), iterations=6)
    soft_tissue = body & (np.abs(hu - 40) < 100)
    return {
        "body": body,
        "overall": np.ones(hu.shape, dtype=bool),
        "body outline": body & ~ndimage.binary_erosion(body, iterations=3),
        "lung vessels": lungs & (hu > -500),
        "bone": body & (hu > 250),
        "flat soft tissue": ndimage.binary_erosion(soft_tissue, iterations=6),
        "lung parenchyma": lungs & ~ndimage.binary_dilation(hu > -600, iterations=6),
    }

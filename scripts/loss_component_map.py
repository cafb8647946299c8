"""Map which term of the structure-aware loss dominates each pixel of a normal-dose CT slice (paper Fig. 2(e)).

    python scripts/loss_component_map.py --dicom slice.dcm --output loss_components.png [--strength-scale 2.0]

Reads the slice as HU, windows HU [-1024, 3072] to [0, 1] (as the training data), computes the per-pixel weights of
the L2, L1 and SSIM terms (paper Eq. 6) with :class:`~bundle.losses.structure_aware.StructureAwareLoss`, saves the
slice next to the map of the largest weight (red L2, gray L1, orange SSIM) and prints the fraction of pixels each
term dominates inside the body, overall, and in tissue classes found by HU thresholds (:func:`tissue_masks`): the
numbers used to calibrate the strength scale.

Needs the ``bundle`` package importable (``pip install -e .`` or ``PYTHONPATH=.`` from the repository root).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from monai.transforms import ScaleIntensityRange
from monai.utils import convert_to_tensor
from scipy import ndimage
from skimage.measure import label

from bundle.io.ct_dicom import read_ct_slice
from bundle.losses.gradient_statistics import DEFAULT_STRENGTH_SCALE
from bundle.losses.structure_aware import StructureAwareLoss

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402 (after choosing the non-interactive backend)
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402

COMPONENTS = ("L2", "L1", "SSIM")  # channel order of StructureAwareLoss.component_weights
COLORS = ("red", "gray", "orange")


def body_mask(hu: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """The patient's body, lungs included: the largest region above ``threshold_hu`` after an opening that cuts the
    table off, with its holes filled. (H, W) boolean."""
    regions = label(ndimage.binary_opening(hu > threshold_hu, iterations=2))
    if regions.max() == 0:
        return np.zeros(hu.shape, dtype=bool)
    largest = np.argmax(np.bincount(regions.ravel())[1:]) + 1
    return ndimage.binary_fill_holes(regions == largest)


def tissue_masks(hu: np.ndarray) -> dict[str, np.ndarray]:
    """(H, W) boolean masks of a chest or abdomen slice, from HU thresholds and distances in pixels:

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


def render(hu: np.ndarray, dominant: np.ndarray, output: str, title: str) -> None:
    """Save the slice (window [-1000, 400] HU) beside the dominant-component map as a PNG."""
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 5.6), layout="constrained")
    left.imshow(hu, cmap="gray", vmin=-1000, vmax=400)
    left.set_title("normal-dose CT, window [-1000, 400] HU")
    right.imshow(dominant, cmap=ListedColormap(COLORS), vmin=0, vmax=len(COMPONENTS) - 1, interpolation="nearest")
    right.set_title("largest loss weight (Eq. 6)")
    right.legend(
        handles=[Patch(color=color, label=name) for name, color in zip(COMPONENTS, COLORS)],
        loc="upper center",
        bbox_to_anchor=(0.5, 0.0),
        ncol=len(COMPONENTS),
        fontsize=9,
    )
    for axis in (left, right):
        axis.axis("off")
    figure.suptitle(title, fontsize=10)
    figure.savefig(output, dpi=80, bbox_inches="tight")
    plt.close(figure)


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Parse ``argv``, write the PNG, print and return ``{region: {component: fraction of the region's pixels}}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dicom", required=True, help="one normal-dose CT DICOM slice")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--strength-scale", type=float, default=DEFAULT_STRENGTH_SCALE)
    parser.add_argument("--sigma-l2", type=float, default=1.8)
    parser.add_argument("--sigma-l1", type=float, default=0.35)
    parser.add_argument("--patch-size", type=int, default=11)
    parser.add_argument("--window", type=float, nargs=2, default=(-1024.0, 3072.0), metavar=("MIN_HU", "MAX_HU"))
    args = parser.parse_args(argv)

    hu = read_ct_slice(args.dicom).hu
    window = ScaleIntensityRange(args.window[0], args.window[1], 0.0, 1.0, clip=True)
    image = convert_to_tensor(window(hu[None]), track_meta=False)  # (1, H, W) in [0, 1]
    loss = StructureAwareLoss(
        sigma_l2=args.sigma_l2, sigma_l1=args.sigma_l1, strength_scale=args.strength_scale, patch_size=args.patch_size
    )
    dominant = loss.component_weights(image[None])[0].argmax(dim=0).numpy()

    print(
        f"{args.dicom}: strength scale {args.strength_scale:g}, sigma_l2 {args.sigma_l2:g}, "
        f"sigma_l1 {args.sigma_l1:g}, patch {args.patch_size}"
    )
    print(f"{'region':<18}{'pixels':>8}" + "".join(f"{name:>7}" for name in COMPONENTS))
    fractions = {}
    for region, mask in tissue_masks(hu).items():
        counts = np.bincount(dominant[mask], minlength=len(COMPONENTS))
        fractions[region] = {name: float(count / max(mask.sum(), 1)) for name, count in zip(COMPONENTS, counts)}
        print(f"{region:<18}{mask.sum():>8}" + "".join(f"{fractions[region][name]:>7.1%}" for name in COMPONENTS))
    render(
        hu,
        dominant,
        args.output,
        f"{Path(args.dicom).parent.name}/{Path(args.dicom).name}: strength scale {args.strength_scale:g}",
    )
    return fractions


if __name__ == "__main__":
    main()

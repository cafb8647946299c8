"""Map which term of the structure-aware loss dominates each pixel of a normal-dose CT slice (paper Fig. 2(e)).

    python scripts/loss_component_map.py --dicom slice.dcm --output loss_components.png [--strength_scale 2.0]

Reads the slice as HU, windows it with the bundle's ``hu_window`` (``configs/train.json``) to [0, 1] as the training
data, computes the per-pixel weights of the L2, L1 and SSIM terms (paper Eq. 6) with
:class:`~bundle.losses.structure_aware.StructureAwareLoss`, saves the slice next to the map of the largest weight
(red L2, gray L1, orange SSIM) and prints the fraction of pixels each term dominates inside the body, overall, and in
tissue classes found by HU thresholds (:func:`bundle.evaluation.masks.tissue_masks`): the numbers used to calibrate
the strength scale (:func:`bundle.evaluation.loss_map.dominant_components`).

Needs the ``bundle`` package importable (``pip install -e .``); runs from the repository root.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from bundle.evaluation.denoise import hu_window
from bundle.evaluation.loss_map import COMPONENTS, dominant_components, loss_component_figure
from bundle.io.ct_dicom import read_ct_slice
from bundle.losses.gradient_statistics import DEFAULT_STRENGTH_SCALE
from bundle.losses.structure_aware import StructureAwareLoss

REPO = Path(__file__).resolve().parents[1]


def main(argv: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """Parse ``argv``, write the PNG, print and return ``{region: {component: fraction of the region's pixels}}``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dicom", required=True, help="one normal-dose CT DICOM slice")
    parser.add_argument("--output", required=True, help="PNG file to write")
    parser.add_argument("--strength_scale", type=float, default=DEFAULT_STRENGTH_SCALE)
    parser.add_argument("--sigma_l2", type=float, default=1.8)
    parser.add_argument("--sigma_l1", type=float, default=0.35)
    parser.add_argument("--patch_size", type=int, default=11)
    args = parser.parse_args(argv)

    hu = read_ct_slice(args.dicom).hu
    loss = StructureAwareLoss(sigma_l2=args.sigma_l2, sigma_l1=args.sigma_l1, strength_scale=args.strength_scale,
                              patch_size=args.patch_size)  # fmt: skip
    dominant, fractions, pixels = dominant_components(hu, hu_window(REPO / "configs/train.json"), loss)
    print(f"{args.dicom}: strength scale {args.strength_scale:g}, sigma_l2 {args.sigma_l2:g}, "
          f"sigma_l1 {args.sigma_l1:g}, patch {args.patch_size}")  # fmt: skip
    print(f"{'region':<18}{'pixels':>8}" + "".join(f"{name:>7}" for name in COMPONENTS))
    for region, shares in fractions.items():
        print(f"{region:<18}{pixels[region]:>8}" + "".join(f"{shares[name]:>7.1%}" for name in COMPONENTS))
    title = f"{Path(args.dicom).parent.name}/{Path(args.dicom).name}: strength scale {args.strength_scale:g}"
    loss_component_figure(hu, dominant, args.output, title)
    return fractions


if __name__ == "__main__":
    main()

"""Image quality of the dose-aware denoiser as a CT physicist measures it: write ``docs/image_quality.md``.

    python scripts/image_quality_report.py --data_dir ../shared/data --report docs/image_quality.md

Per held-out block of ``--blocks`` (chest, abdomen, the ATCM phantom) and per ``--dose``: HU bias, noise ratio,
NPS mean and peak frequency; on the synthetic phantom also TTF50 / TTF10 per insert contrast and d' per
low-contrast disc; figures of the 1D NPS and TTF curves in ``docs/image_quality/``; a verdict against the goals
of issue 16. The denoiser is ``bundle.evaluation.denoise.load_denoiser(--config_file)``; ``--stand_in_sigma_mm``
replaces it by a Gaussian filter (to try the report without a model). All measuring is in ``bundle.evaluation``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from scipy import ndimage

from bundle.evaluation import measure_phantom, measure_series, write_report
from bundle.io import read_ct_slice
from bundle.simulation import LowDoseSimulator, image_quality_phantom, simulate_phantom_scans
from bundle.utils import provenance

REPO = Path(__file__).resolve().parents[1]


def gaussian_stand_in(sigma_mm: float):
    """A stand-in denoiser: a Gaussian filter of ``sigma_mm`` in-plane (ignores the dose)."""

    def denoise(hu: np.ndarray, dose_fraction: float, pixel_spacing_mm: float) -> np.ndarray:
        sigma = sigma_mm / pixel_spacing_mm
        return ndimage.gaussian_filter(np.asarray(hu, dtype=np.float32), (0,) * (np.ndim(hu) - 2) + (sigma, sigma))

    return denoise


def held_out_blocks(blocks_file: Path, data_dir: Path, names: Sequence[str], per_block: int) -> list[dict]:
    """The test blocks of ``blocks_file`` (all, or those named), ``per_block`` evenly spaced slices each."""
    from bundle.simulation.blocks import block_slices

    blocks = []
    for series in json.loads(blocks_file.read_text())["series"]:
        if (names and series["block"] not in names) or series["test"][1] <= series["test"][0]:
            continue
        files = block_slices(data_dir / series["path"], *series["test"])
        chosen = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(per_block, len(files))).round()]
        slices = [read_ct_slice(path) for path in chosen]
        blocks.append({
            "name": f"{series['anatomy']}: {series['block']}",
            "slices": [s.hu for s in slices],
            "paddings": [s.padding for s in slices],
            "spacing": float(slices[0].dataset.PixelSpacing[0]),
            "filter": "ram-lak" if series["kernel"] == "sharp" else "hann",
            "uniform": series["anatomy"] == "phantom",
        })  # fmt: skip
    return blocks


def main(argv: Sequence[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--blocks", type=Path, default=REPO / "configs" / "data" / "shipped_model_blocks.json")
    parser.add_argument("--block", action="append", default=[], help="block names to report (default: all)")
    parser.add_argument("--slices_per_block", type=int, default=8)
    parser.add_argument("--dose", type=float, action="append", help="dose fractions (default 0.1 0.25 0.5)")
    parser.add_argument("--realisations", type=int, default=24, help="noise realisations of the synthetic phantom")
    parser.add_argument("--config_file", default="configs/inference.json", help="the denoiser's bundle config")
    parser.add_argument("--stand_in_sigma_mm", type=float, help="use a Gaussian filter instead of the model")
    parser.add_argument("--report", type=Path, default=REPO / "docs" / "image_quality.md")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    doses = args.dose or [0.1, 0.25, 0.5]
    if args.stand_in_sigma_mm is not None:
        denoise = gaussian_stand_in(args.stand_in_sigma_mm)
        denoiser = f"a Gaussian filter of {args.stand_in_sigma_mm} mm"
    else:
        from bundle.evaluation.denoise import load_denoiser

        denoise, denoiser = load_denoiser(config_file=args.config_file), f"the model of `{args.config_file}`"

    series = []
    for block in held_out_blocks(args.blocks, args.data_dir, args.block, args.slices_per_block):
        simulator = LowDoseSimulator(filter_name=block["filter"])
        series += measure_series(denoise, block["name"], block["slices"], block["spacing"], doses, simulator,
                                 block["paddings"], args.seed, block["uniform"])  # fmt: skip
        print(f"{block['name']}: {len(block['slices'])} slices measured", flush=True)
    phantom = image_quality_phantom()
    scans = simulate_phantom_scans(phantom, doses, args.realisations, seed=args.seed)
    phantom_results = measure_phantom(denoise, phantom, scans)

    blocks = args.blocks.relative_to(REPO) if args.blocks.is_relative_to(REPO) else args.blocks
    command = ["python", "scripts/image_quality_report.py", *(sys.argv[1:] if argv is None else argv)]
    header = (f"# Image quality (HU accuracy, noise, NPS, TTF, d')\n\nDenoiser: {denoiser}. {provenance(command, REPO)} "
              f"Doses {', '.join(f'{d:g}' for d in doses)}; held-out blocks of `{blocks}`, {args.slices_per_block} "
              f"slices each; synthetic phantom with {args.realisations} noise realisations.")
    notes = ("ref = normal dose, in = simulated low-dose input, out = denoised input. TTF and d' come from the "
             "synthetic phantom only; the tables above hold every block of real CT and the phantom's flat water.")
    path = write_report(args.report, series, phantom_results, header, notes)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()

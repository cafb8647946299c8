"""How the shipped model does on data unlike its training set: other doses, other anatomy, another kernel.

    python scripts/evaluate_generalisation.py --report docs/generalisation.md \\
        [--series /data/A0002-siemens-B40f --series /data/A0002-siemens-B70f]

The shipped ``models/model.pt`` was trained on simulated 10 to 50 % dose of smooth-kernel chest CT. This
script simulates low dose (the bundle's projection-domain simulator, the same settings as the training data) on

- two synthetic phantoms it has never seen: scikit-image's Shepp-Logan head phantom mapped to HU
  (:func:`shepp_logan_hu`) and a chest-like phantom of ellipses and discs with low-contrast inserts
  (:func:`chest_phantom_hu`), 512 x 512 at 0.7 mm;
- ``--slices`` evenly spaced slices of each ``--series`` (normal-dose DICOM), e.g. the held-out patient and a
  sharp-kernel series (a reconstruction kernel the model never saw);

at every ``--dose`` (default 0.05, 0.1, 0.25, 0.5, 0.75: 0.05 and 0.75 are outside the training range), and
reports for the input and the output against the normal-dose image: PSNR and SSIM in the paper's window
([-160, 240] HU) and the chest window (centre -600, width 1500), the noise (std, HU) in a uniform region and
the mean HU shift in it (phantoms only).
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import resize

from bundle.io.ct_dicom import read_ct_slice
from bundle.networks import StructKPN
from bundle.simulation import LowDoseSimulator
from bundle.utils import git_commit, windowed_quality

REPO = Path(__file__).resolve().parents[1]
HU_WINDOW = (-1024.0, 3072.0)
PIXEL_MM = 0.7


def shepp_logan_hu(size: int = 512) -> np.ndarray:
    """scikit-image's modified Shepp-Logan phantom, intensities v mapped to HU as 1000 (v - 0.2) / 0.2, so
    0 is air (-1000 HU), 0.2 brain (0 HU), 1.0 skull (clipped to 1500 HU); the small ellipses differ by 50 HU."""
    values = resize(shepp_logan_phantom(), (size, size), order=1, anti_aliasing=False)
    return np.clip(1000.0 * (values - 0.2) / 0.2, -1000.0, 1500.0).astype(np.float32)


def _ellipse(shape: tuple[int, int], centre: tuple[float, float], axes: tuple[float, float]) -> np.ndarray:
    rows, columns = np.mgrid[: shape[0], : shape[1]]
    return ((rows - centre[0]) / axes[0]) ** 2 + ((columns - centre[1]) / axes[1]) ** 2 <= 1.0


def chest_phantom_hu(size: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """A chest-like phantom in HU and its uniform region (a mask in the soft tissue, away from edges).

    Body ellipse of soft tissue (40 HU) in air; two lungs (-850 HU) holding vessels (discs of 1 to 3 pixels,
    40 HU); a spine (700 HU) and sternum (1000 HU); low-contrast inserts of +10, +20 and +40 HU (radius 5 mm)
    in the mediastinum.
    """
    shape = (size, size)
    s = size / 512
    hu = np.full(shape, -1000.0, dtype=np.float32)
    hu[_ellipse(shape, (256 * s, 256 * s), (170 * s, 230 * s))] = 40.0
    rng = np.random.default_rng(0)
    for centre_column in (150 * s, 362 * s):
        lung = _ellipse(shape, (240 * s, centre_column), (120 * s, 75 * s))
        hu[lung] = -850.0
        for _ in range(60):  # vessels
            row, column = rng.normal(240 * s, 60 * s), rng.normal(centre_column, 35 * s)
            vessel = _ellipse(shape, (row, column), (rng.uniform(1, 3) * s,) * 2) & lung
            hu[vessel] = 40.0
    hu[_ellipse(shape, (380 * s, 256 * s), (28 * s, 28 * s))] = 700.0
    hu[_ellipse(shape, (110 * s, 256 * s), (10 * s, 18 * s))] = 1000.0
    radius = 5.0 / PIXEL_MM * s
    for column, contrast in zip((226 * s, 256 * s, 286 * s), (10.0, 20.0, 40.0)):
        hu[_ellipse(shape, (300 * s, column), (radius, radius))] = 40.0 + contrast
    uniform = _ellipse(shape, (200 * s, 256 * s), (12 * s, 12 * s))
    return hu, uniform


def denoise(network: StructKPN, hu: np.ndarray) -> np.ndarray:
    """The bundle's path: HU -> window [-1024, 3072] to [0, 1] -> network -> HU."""
    low, high = HU_WINDOW
    image = torch.from_numpy(np.clip((hu - low) / (high - low), 0, 1).astype(np.float32))[None, None]
    with torch.inference_mode():
        return network(image)[0, 0].numpy() * (high - low) + low


def evaluate_case(network, simulator, name, reference, dose, uniform, spacing, seed) -> dict:
    low_dose = simulator(reference, dose, spacing, rng=seed)
    output = denoise(network, low_dose)
    row = {"case": name, "dose": dose}
    for label, image in (("input", low_dose), ("output", output)):
        for key, value in windowed_quality(image, reference).items():
            row[f"{label}_{key}"] = value
        if uniform is not None:
            row[f"{label}_noise_hu"] = float(image[uniform].std())
            row[f"{label}_bias_hu"] = float(image[uniform].mean() - reference[uniform].mean())
    return row


def markdown(rows: list[dict]) -> str:
    lines = [
        "| case | dose | PSNR paper in -> out (dB) | SSIM paper in -> out | PSNR chest in -> out (dB) "
        "| SSIM chest in -> out | noise in -> out (HU) | mean shift out (HU) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    cases = list(dict.fromkeys(r["case"] for r in rows))
    for case in cases:
        for dose in sorted({r["dose"] for r in rows if r["case"] == case}):
            group = [r for r in rows if r["case"] == case and r["dose"] == dose]
            mean = {key: float(np.mean([r[key] for r in group])) for key in group[0] if key not in ("case", "dose")}
            noise = (
                f"{mean['input_noise_hu']:.1f} -> {mean['output_noise_hu']:.1f}" if "input_noise_hu" in mean else "-"
            )
            shift = f"{mean['output_bias_hu']:+.1f}" if "output_bias_hu" in mean else "-"
            cells = [
                f"{mean['input_psnr_paper']:.2f} -> {mean['output_psnr_paper']:.2f}",
                f"{mean['input_ssim_paper']:.3f} -> {mean['output_ssim_paper']:.3f}",
                f"{mean['input_psnr_chest']:.2f} -> {mean['output_psnr_chest']:.2f}",
                f"{mean['input_ssim_chest']:.3f} -> {mean['output_ssim_chest']:.3f}",
                noise,
                shift,
            ]
            lines.append(f"| {case} ({len(group)} slice{'s' if len(group) > 1 else ''}) | {dose:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", type=Path, default=REPO / "models/model.pt")
    parser.add_argument("--series", type=Path, action="append", default=[], help="normal-dose DICOM series folder")
    parser.add_argument("--slices", type=int, default=4, help="evenly spaced slices per series")
    parser.add_argument("--dose", type=float, action="append", help="dose fractions (default 0.05 0.1 0.25 0.5 0.75)")
    parser.add_argument("--report", type=Path, help="also write the table to this Markdown file")
    args = parser.parse_args(argv)
    doses = args.dose or [0.05, 0.1, 0.25, 0.5, 0.75]
    network = StructKPN()
    network.load_state_dict(torch.load(args.weights, map_location="cpu", weights_only=True))
    network.eval()
    simulator = LowDoseSimulator()
    rows = []
    phantom, uniform = chest_phantom_hu()
    shepp = shepp_logan_hu()
    shepp_uniform = np.zeros_like(shepp, dtype=bool)
    shepp_uniform[360:390, 300:330] = True  # uniform brain-like region (0 HU)
    for index, dose in enumerate(doses):
        rows.append(evaluate_case(network, simulator, "chest phantom", phantom, dose, uniform, PIXEL_MM, index))
        rows.append(evaluate_case(network, simulator, "Shepp-Logan", shepp, dose, shepp_uniform, PIXEL_MM, index))
        print(rows[-2], rows[-1], sep="\n", flush=True)
    for series in args.series:
        files = sorted(p for p in series.iterdir() if p.is_file())
        chosen = [files[int(i)] for i in np.linspace(0, len(files) - 1, min(args.slices, len(files))).round()]
        for path in chosen:
            ct = read_ct_slice(path)
            spacing = float(ct.dataset.PixelSpacing[0])
            for index, dose in enumerate(doses):
                rows.append(evaluate_case(network, simulator, series.name, ct.hu, dose, None, spacing, index))
                print(rows[-1], flush=True)
    table = markdown(rows)
    print(table)
    if args.report:
        command = shlex.join(["python", "scripts/evaluate_generalisation.py", *(sys.argv[1:] if argv is None else argv)])
        header = f"Output of `{command}` at commit `{git_commit(REPO)}` on {datetime.date.today()}.\n\n"
        temporary = args.report.with_suffix(".tmp")
        temporary.write_text(header + table)
        temporary.replace(args.report)
    return rows


if __name__ == "__main__":
    main()

"""Make the embedded sample: real normal-dose chest CT slices and their simulated quarter-dose pairs.

    python scripts/make_sample.py --source /path/to/data/lung-pet-ct-dx --output sample_data

Copies the selected slices of Lung-PET-CT-Dx (TCIA, CC BY 4.0; see docs/data_license.txt) to a temporary folder and
simulates them with ``bundle.simulation.paired.prepare_simulated_pairs`` (dose fraction 0.25, seed 0), so ``output``
is laid out exactly as ``scripts/prepare_dataset.py`` writes a dataset: ``ndct/<series>/``, ``ldct-0.25/<series>/``
and ``datalist.json``, whose training split is patient Lung_Dx-A0001 and whose validation and test splits are both
patient Lung_Dx-A0002 (two patients only: a demo, not an evaluation). Rerunning keeps the files already there (they
would be identical).

Needs the ``bundle`` package importable (``pip install -e .`` or ``PYTHONPATH=.`` from the repository root).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from bundle.io.datalist import build_datalist, write_datalist
from bundle.simulation.paired import prepare_simulated_pairs

SAMPLE_DOSE_FRACTION = 0.25
SAMPLE_SEED = 0
#: Four slices per patient over the chest: shoulders (bone), upper mediastinum, heart and lungs, lung bases and liver.
SAMPLE_SLICES = {
    "A0001-philips-kernel-B": ("1-08.dcm", "1-20.dcm", "1-36.dcm", "1-52.dcm"),
    "A0002-siemens-B40f": ("1-04.dcm", "1-10.dcm", "1-17.dcm", "1-24.dcm"),
}
TRAINING_SERIES = "A0001-philips-kernel-B"


def make_sample(source_dir: Path, output_dir: Path) -> Path:
    """Write the sample dataset into ``output_dir``; returns the datalist's path."""
    with tempfile.TemporaryDirectory() as staging:
        for series, names in SAMPLE_SLICES.items():
            (Path(staging) / series).mkdir()
            for name in names:
                shutil.copyfile(source_dir / series / name, Path(staging) / series / name)
        entries = prepare_simulated_pairs(staging, output_dir, (SAMPLE_DOSE_FRACTION,), SAMPLE_SEED)
    training = {e["patient"] for e in entries if Path(e["label"]).parent.name == TRAINING_SERIES}
    held_out = sorted({e["patient"] for e in entries} - training)
    splits = {"training": sorted(training), "validation": held_out, "test": held_out}
    return write_datalist(build_datalist(entries, splits, output_dir), output_dir / "datalist.json")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", required=True, type=Path, help="the Lung-PET-CT-Dx folder")
    parser.add_argument("--output", required=True, type=Path, help="the sample folder, e.g. sample_data")
    args = parser.parse_args(argv)
    print(f"wrote {make_sample(args.source, args.output)}")


if __name__ == "__main__":
    main()

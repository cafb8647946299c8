"""Simulate the shipped model's training and validation pairs from ../shared/data (blocks in a JSON file).

    python scripts/prepare_shipped_model_data.py --data_dir ../shared/data --output_dir /path/to/work/pairs \\
        --blocks configs/data/shipped_model_blocks.json

Writes ``output_dir/ndct/...``, ``output_dir/ldct-<dose>/...`` and ``output_dir/datalist.json``; resumes.
``--neighbours 1`` also lists the slices around each entry (and simulates those of the training slices), for the
multi-slice StructKPN (``--slices 3``); the other entries and files are those of ``--neighbours 0``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bundle.simulation.blocks import prepare_block_datalist


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, type=Path, help="folder holding the series of the blocks file")
    parser.add_argument("--output_dir", required=True, type=Path, help="output folder (datalist.json goes here)")
    parser.add_argument("--blocks", type=Path, default=Path("configs/data/shipped_model_blocks.json"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--neighbours", type=int, default=0,
                        help="slices listed on each side of every entry, for training with --slices up to 2 N + 1")
    args = parser.parse_args()
    print(prepare_block_datalist(args.blocks, args.data_dir, args.output_dir, args.seed, args.neighbours))


if __name__ == "__main__":
    main()

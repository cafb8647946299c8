"""Benchmark StructKPN against RED-CNN, WavResNet, BM3D and K-SVD on a datalist's test split (paper Tables 1-3).

    python scripts/benchmark.py --datalist /path/to/pairs/datalist.json --output_dir /path/to/benchmark \\
        --report /path/to/benchmark/benchmark.md --dose 0.25 --epochs 6 --ablations loss kernel_size preset

1. Trains every learned method with the bundle's own ``configs/train.json`` and the same budget (epochs, batch,
   patches, learning rate), swapping only the network and loss override configs (``configs/networks``,
   ``configs/losses``): ``python -m monai.bundle run training --config_file "['configs/train.json', ...]"``.
   Each run goes to ``output_dir/runs/<method>`` and resumes from its last epoch checkpoint when rerun.
2. Evaluates every method, each in its own fresh process (clean peak memory), on the test slices at ``--dose``, and
   at every other dose of the split for ``--dose_methods``: PSNR and SSIM per slice in the paper's window
   ([-160, 240] HU) and the chest window (centre -600, width 1500 HU), both mapped to [0, 1]; seconds per slice
   (HU to HU: ``configs/inference.json``'s window and, for a dose-aware network, its conditioning at each slice's
   ``dose_fraction``); peak resident memory beyond the loaded model and data. Results go to
   ``output_dir/results/<method>.json``; finished methods are skipped when rerun.
3. Writes ``--report`` (Markdown), a CSV and PNG figures beside it (in ``<report stem>/``): the comparison grid
   with a zoomed region, the structure-aware loss map, predicted kernels at a flat region, an edge and fine
   structure, and PSNR against dose; ``--notes`` is linked from it.

Methods and ablations: :data:`bundle.evaluation.benchmark.METHODS` and ``ABLATIONS``. ``--pretrained NAME=PATH``
adds already trained StructKPN weights (e.g. the shipped ``models/model.pt``), reported with their own budget.
On a GPU the same command runs unchanged (train.json picks the device); raise ``--epochs`` there.
Needs the ``bundle`` package importable and runs from the repository root.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from bundle.evaluation.benchmark import ABLATIONS, METHODS, BenchmarkSettings, run_benchmark

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> BenchmarkSettings:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", type=Path, required=True, help="datalist with training and test splits")
    parser.add_argument("--dataset_dir", type=Path, help="root of the datalist's paths (default: its folder)")
    parser.add_argument("--output_dir", type=Path, required=True, help="training runs and per-method results")
    parser.add_argument("--report", type=Path, help="Markdown report file (default: output_dir/benchmark.md)")
    parser.add_argument("--methods", nargs="+", default=["ldct", "bm3d", "ksvd", "redcnn", "wavresnet", "structkpn"])
    parser.add_argument("--ablations", nargs="*", default=[], choices=sorted(ABLATIONS))
    parser.add_argument("--pretrained", nargs="*", default=[], metavar="NAME=PATH", help="extra StructKPN weights")
    parser.add_argument("--dose", type=float, default=0.25, help="dose fraction of the main table")
    parser.add_argument("--dose_methods", nargs="*", default=["ldct", "bm3d", "redcnn", "structkpn"])
    parser.add_argument("--train_split", default="training")
    parser.add_argument("--test_split", default="test")
    parser.add_argument("--max_test_slices", type=int, default=0, help="evenly spaced subset (0: all)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--patches_per_slice", type=int, default=8)
    parser.add_argument("--patch_size", type=int, nargs=2, default=(64, 64))
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--notes", type=Path, help="Markdown notes the report links to (what was tried, caveats)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args(argv)
    unknown = [m for m in args.methods if m not in METHODS]
    if unknown:
        parser.error(f"unknown methods {unknown}; known: {sorted(METHODS)}")
    datalist, output_dir = args.datalist.resolve(), args.output_dir.resolve()
    return BenchmarkSettings(
        repo=REPO, datalist=datalist, dataset_dir=(args.dataset_dir or datalist.parent).resolve(),
        output_dir=output_dir, report=(args.report or output_dir / "benchmark.md").resolve(),
        command=["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)],
        methods=args.methods, ablations=args.ablations, pretrained=dict(s.split("=", 1) for s in args.pretrained),
        dose=args.dose, dose_methods=args.dose_methods, train_split=args.train_split, test_split=args.test_split,
        max_test_slices=args.max_test_slices, epochs=args.epochs, batch_size=args.batch_size,
        patches_per_slice=args.patches_per_slice, patch_size=tuple(args.patch_size),
        learning_rate=args.learning_rate, notes=args.notes, threads=args.threads,
    )  # fmt: skip


if __name__ == "__main__":
    run_benchmark(parse_args(None))

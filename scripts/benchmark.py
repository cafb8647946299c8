"""Benchmark StructKPN against BM3D, K-SVD, RED-CNN, a MONAI BasicUNet and WavResNet on the held-out blocks of
every anatomy and kernel (paper Tables 1-3), each method at its best.

    python scripts/benchmark.py --datalist WORK/pairs/datalist.json --output_dir WORK/benchmark \\
        --report docs/benchmark.md --pretrained structkpn_shipped=models/model.pt --ablations loss kernel_size

The datalist is a block datalist (``scripts/prepare_shipped_model_data.py``: training, validation and test blocks).
Test slices are made low-dose at ``--doses`` as docs/generalisation.md's are; every learned method is
``configs/train.json`` with its network and loss configs, trained on the training split with the same budget at the
learning rate its pilot runs score best on the validation split; each method is evaluated in its own process.
Methods and ablations: :data:`bundle.evaluation.benchmark.METHODS`, ``MAIN_METHODS`` and ``ABLATIONS``;
``--pretrained NAME=PATH`` adds trained StructKPN weights, reported with their own budget.

Resumable: rerun the same command after a kill; finished stages are skipped and training resumes from its last
epoch. The report is rewritten after each method and names what is still to run. On a GPU the command runs
unchanged (train.json picks the device). Run from the repository root.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

from bundle.evaluation.benchmark import ABLATIONS, MAIN_METHODS, METHODS, BenchmarkSettings, run_benchmark

REPO = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> BenchmarkSettings:
    defaults = BenchmarkSettings(REPO, Path(), Path(), Path(), [])
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", type=Path, required=True, help="block datalist: training, validation, test")
    parser.add_argument("--output_dir", type=Path, required=True, help="pilots, training runs, per-method results")
    parser.add_argument("--report", type=Path, help="Markdown report file (default: output_dir/benchmark.md)")
    parser.add_argument("--cache_dir", type=Path, help="simulated low-dose test slices (default: output_dir/low_dose)")
    parser.add_argument("--methods", nargs="+", default=list(MAIN_METHODS), choices=sorted(METHODS))
    parser.add_argument("--ablations", nargs="*", default=[], choices=sorted(ABLATIONS))
    parser.add_argument("--pretrained", nargs="*", default=[], metavar="NAME=PATH", help="trained StructKPN weights")
    parser.add_argument("--doses", type=float, nargs="+", default=list(defaults.doses))
    parser.add_argument("--dose", type=float, default=defaults.dose, help="dose fraction of the main tables")
    parser.add_argument("--slice_step", type=int, default=defaults.slice_step, help="every n-th slice of each block")
    parser.add_argument("--epochs", type=int, default=defaults.epochs, help="training budget of the main methods")
    parser.add_argument("--ablation_epochs", type=int, default=defaults.ablation_epochs)
    parser.add_argument("--pilot_epochs", type=int, default=defaults.pilot_epochs)
    parser.add_argument("--learning_rates", type=float, nargs="+", default=list(defaults.learning_rates))
    parser.add_argument("--validation_step", type=int, default=defaults.validation_step)
    parser.add_argument("--noise_strengths", type=float, nargs="+", default=list(defaults.noise_strengths),
                        help="shares of their noise estimate the classical methods may remove (chosen on validation)")
    parser.add_argument("--batch_size", type=int, default=defaults.batch_size)
    parser.add_argument("--patches_per_slice", type=int, default=defaults.patches_per_slice)
    parser.add_argument("--patch_size", type=int, nargs=2, default=list(defaults.patch_size))
    parser.add_argument("--notes", type=Path, help="Markdown notes the report links to (what was tried, caveats)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--report_only", action="store_true", help="only write the report from the results there are")
    args = parser.parse_args(argv)
    output_dir = args.output_dir.resolve()
    return BenchmarkSettings(
        repo=REPO, datalist=args.datalist.resolve(), output_dir=output_dir,
        report=(args.report or output_dir / "benchmark.md").resolve(),
        command=["python", "scripts/benchmark.py", *(sys.argv[1:] if argv is None else argv)],
        methods=args.methods, ablations=args.ablations, pretrained=dict(s.split("=", 1) for s in args.pretrained),
        doses=tuple(args.doses), dose=args.dose, slice_step=args.slice_step,
        cache_dir=args.cache_dir.resolve() if args.cache_dir else None, epochs=args.epochs,
        ablation_epochs=args.ablation_epochs, pilot_epochs=args.pilot_epochs, learning_rates=tuple(args.learning_rates),
        validation_step=args.validation_step, noise_strengths=tuple(args.noise_strengths),
        batch_size=args.batch_size, patches_per_slice=args.patches_per_slice,
        patch_size=tuple(args.patch_size), notes=args.notes, threads=args.threads, report_only=args.report_only,
    )  # fmt: skip


if __name__ == "__main__":
    run_benchmark(parse_args(None))

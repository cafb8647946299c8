"""The configured (dose-aware) model on every held-out block at every dose: ``docs/generalisation.md``.

    python scripts/evaluate_generalisation.py --datalist /path/to/work/pairs/datalist.json \\
        --results /path/to/work/generalisation.csv --report docs/generalisation.md --figures docs/generalisation

The datalist is the one ``scripts/prepare_shipped_model_data.py`` writes (its ``test`` split holds the held-out
normal-dose slices of ``configs/data/shipped_model_blocks.json``). Each evaluated slice is simulated at every
``--dose_fractions`` with the simulator's defaults and the noise filter of its kernel, and denoised with
``dose_fraction`` set to the true dose (:mod:`bundle.evaluation.generalisation`). ``--stress_results`` adds a
stress test: the sharp-kernel blocks again with Hann-filtered noise (less noise than the dose implies, of another
texture). Results go to the CSVs as they come: a rerun resumes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from bundle.evaluation.denoise import load_denoiser
from bundle.evaluation.generalisation import (
    DOSE_FRACTIONS,
    comparison_figure,
    evaluate_blocks,
    held_out_slices,
    read_rows,
    report_markdown,
    summarise,
)
from bundle.utils.reporting import provenance, write_report

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datalist", required=True, type=Path, help="block datalist with a 'test' split")
    parser.add_argument("--results", required=True, type=Path, help="CSV of per-slice results (resumed)")
    parser.add_argument("--report", type=Path, help="Markdown report to write")
    parser.add_argument("--figures", type=Path, help="folder for one comparison figure per anatomy")
    parser.add_argument("--config_file", default="configs/inference.json")
    parser.add_argument("--ckpt_path", default=None, help="weights (default: the config's ckpt_path)")
    parser.add_argument("--output_noise", choices=("normal_dose", "mmse"), help="the network's identity mix "
                        "(default: the config's; mmse mixes by the dose fraction instead of its square root)")
    parser.add_argument("--dose_fractions", type=float, nargs="+", default=list(DOSE_FRACTIONS))
    parser.add_argument("--split", default="test", choices=("test", "validation"), help="blocks to score: the "
                        "held-out test blocks, or the validation blocks (to choose between models)")
    parser.add_argument("--slice_step", type=int, default=4, help="every n-th slice of each block")
    parser.add_argument("--bm3d_slice_step", type=int, default=2, help="BM3D on every n-th evaluated slice")
    parser.add_argument("--cache_dir", type=Path, help="keep the simulated low-dose slices here (reused on reruns)")
    parser.add_argument("--simulate_only", action="store_true", help="only fill --cache_dir")
    parser.add_argument("--stress_results", type=Path, help="CSV of the stress test (Hann noise on sharp kernels)")
    parser.add_argument("--report_only", action="store_true", help="report the rows of the CSVs, measure nothing")
    args = parser.parse_args()

    overrides = {"network_def#output_noise": args.output_noise} if args.output_noise else {}
    denoise = None if args.simulate_only else load_denoiser(args.config_file, args.ckpt_path, **overrides)
    stress_rows: list[dict] = []
    if args.report_only:
        rows = read_rows(args.results)
        stress_rows = read_rows(args.stress_results) if args.stress_results else []
    else:
        rows = evaluate_blocks(denoise, args.datalist, args.results, args.dose_fractions, args.slice_step,
                               bm3d_slice_step=args.bm3d_slice_step, cache_dir=args.cache_dir, split=args.split)
        if args.stress_results:
            stress_rows = evaluate_blocks(denoise, args.datalist, args.stress_results, args.dose_fractions,
                                          args.slice_step, bm3d_dose_fractions=(), noise_filter="hann",
                                          kernels=("sharp",), cache_dir=args.cache_dir, split=args.split)
    if denoise is None:
        return
    text = report_markdown(summarise(rows))
    if stress_rows:
        text += ("\n# Stress test: Hann-filtered noise on the sharp kernels\n\nThe sharp-kernel blocks again, with the "
                 "added noise reconstructed by the smooth Hann filter: at a given dose, far less noise than the "
                 "scan's own (sharp) noise implies, and of another texture; `--dose_fraction` is still the "
                 "simulated dose.\n\n" + report_markdown(summarise(stress_rows)).replace("## ", "### "))
    print(text)
    if args.figures:
        first = {}
        for entry in held_out_slices(args.datalist, split=args.split):
            first.setdefault(entry["anatomy"], entry)
        figures = [comparison_figure(denoise, entry, 0.25, args.figures / f"{anatomy}.png", cache_dir=args.cache_dir)
                   for anatomy, entry in first.items()]
        text += "\n## Figures (dose 0.25)\n\n" + "\n".join(
            f"![{path.stem}]({path.relative_to(args.report.parent) if args.report else path})" for path in figures
        ) + "\n"
    if args.report:
        command = ["python", Path(sys.argv[0]).as_posix(), *sys.argv[1:]]
        option = f" (`--output_noise {args.output_noise}`)" if args.output_noise else ""
        blocks = "held-out blocks" if args.split == "test" else "validation blocks"
        model = "The shipped model" if args.ckpt_path is None else f"`{args.ckpt_path}`"
        write_report(args.report, f"# {model}{option} on {blocks} at every dose\n\n"
                     f"{provenance(command, REPO)} Blocks: `configs/data/shipped_model_blocks.json`; method: "
                     f"`bundle/evaluation/generalisation.py`.\n\n{text}")

if __name__ == "__main__":
    main()

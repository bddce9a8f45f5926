"""The RoCoFT study's README tables (5, 6, selection ablation, status) and figures, from its results folder alone.

    python figures/rocoft_study.py [RESULTS_DIR]                 (default results/rocoft-smollm2)
    python figures/rocoft_study.py [RESULTS_DIR] --seeds TASK K  (print one task's numbers seed by seed)

Same as ``ntk-peft study rocoft --report``; the tables between the README's GENERATED markers are
rewritten, the text around them is kept, and figures/ gets each task's heatmaps and spectra. With
``--seeds`` nothing is written: it prints the per-seed table the task's Reading quotes.
"""

import argparse
import sys
from pathlib import Path

from ntk_peft.errors import UserError
from ntk_peft.experiments.rocoft_report import load_study, seed_table, write_report
from ntk_peft.tasks import get_task

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", nargs="?", type=Path, default=Path("results/rocoft-smollm2"))
    parser.add_argument("--seeds", nargs=2, metavar=("TASK", "K"), help="print TASK at K seed by seed")
    args = parser.parse_args()
    if args.seeds is None:
        print(f"report: {write_report(args.results)}")
    else:
        try:
            if not args.seeds[1].isdigit():
                raise UserError(f"K is a shot count such as 16 or 64, got {args.seeds[1]!r}")
            task, k = get_task(args.seeds[0]).name, int(args.seeds[1])
            print("\n".join(seed_table(load_study(args.results), task, k)))
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            sys.exit(2)

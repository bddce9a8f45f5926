"""NTK vs SignGD kernels vs Adam fine-tuning (LM-Kernel-FT's question) from one ntk-compare folder and train runs.

    python figures/kernel_types_table.py RESULTS_DIR --train-run RUN_DIR [--train-run RUN_DIR ...] [--out FILE.md]

RESULTS_DIR: an ``ntk-compare --kernel ntk --kernel signgd --kernel asymmetric_signgd`` folder;
RUN_DIR: ``ntk-peft train`` folders (config.json, metrics.json) of adapters named like the subsets.
"""

import argparse
import json
from pathlib import Path

from ntk_peft.experiments.kernel_types_table import kernel_types_table

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="ntk-compare results folder (with results.json)")
    parser.add_argument("--train-run", type=Path, action="append", default=[], help="ntk-peft train run folder")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    runs = [{"config": json.loads((run / "config.json").read_text()),
             "metrics": json.loads((run / "metrics.json").read_text())} for run in args.train_run]
    table = kernel_types_table(json.loads((args.results / "results.json").read_text()), runs)
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")

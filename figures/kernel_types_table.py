"""NTK vs SignGD kernels vs Adam fine-tuning (LM-Kernel-FT's question) from one ntk-compare folder and train runs.

    python figures/kernel_types_table.py RESULTS --train-run RUN_DIR [--train-run RUN_DIR ...]
        [--save-runs RUNS.json] [--out FILE.md]
    python figures/kernel_types_table.py RESULTS --runs RUNS.json [--out FILE.md]

RESULTS: an ``ntk-compare --kernel ntk --kernel signgd --kernel asymmetric_signgd`` folder or its
results.json; RUN_DIR: ``ntk-peft train`` folders (config.json, metrics.json) of adapters named like the
subsets. ``--save-runs`` keeps what the table reads of them (configuration, eval accuracy, best dev,
steps) in one small JSON file, from which ``--runs`` regenerates the table.
"""

import argparse
import json
from pathlib import Path

from ntk_peft.experiments.kernel_types_table import kernel_types_table

CONFIG_KEYS = ("task", "adapter", "model", "k", "seed", "lr", "epochs", "steps", "batch_size", "schedule")
METRIC_KEYS = ("eval_accuracy", "n_eval", "best_dev", "best_step", "final_step", "train_seconds")


def read_run(folder: Path) -> dict:
    config = json.loads((folder / "config.json").read_text())
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"folder": folder.name, "config": {k: config.get(k) for k in CONFIG_KEYS},
            "metrics": {k: metrics.get(k) for k in METRIC_KEYS}}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="ntk-compare results folder or its results.json")
    parser.add_argument("--train-run", type=Path, action="append", default=[], help="ntk-peft train run folder")
    parser.add_argument("--runs", type=Path, default=None, help="fine-tuning runs saved by --save-runs")
    parser.add_argument("--save-runs", type=Path, default=None, help="write the runs' summary here")
    parser.add_argument("--out", type=Path, default=None, help="also write the table here")
    args = parser.parse_args()
    runs = [read_run(folder) for folder in args.train_run]
    if args.runs is not None:
        runs += json.loads(args.runs.read_text())
    if args.save_runs is not None:
        args.save_runs.write_text(json.dumps(runs, indent=1) + "\n")
    path = args.results / "results.json" if args.results.is_dir() else args.results
    table = kernel_types_table(json.loads(path.read_text()), runs)
    print(table)
    if args.out is not None:
        args.out.write_text(table + "\n")

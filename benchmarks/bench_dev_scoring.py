"""λ selection's dev predictions: dev×train kernels against projections onto one direction per λ.

The dev split is only used to pick λ: for each of the grid's G values, dev predictions f0 + K_dev·W_λ.
Two exact ways to get them, measured on SmolLM2 with prompt blocks of 16 (SST-2, C = 2; SST-5, C = 5)
for the RoCoFT table's subsets (full, row1, col1, lora1):

- ``kernels``: the dev×train kernel blocks (``pair``, per product of the two blocks' padded tokens,
  with the dev block's ``capture``; the train side's captures are shared with the train kernel);
- ``projections``: one `capture` per train and per dev block, the G directions of each subset from the
  train captures (`recorded_directions`, per train token), projected on the dev captures (per dev
  token).

Both are projected onto each RoCoFT study job's real workload (seed 13's blocks, `bench_rocoft_study.workload`)
and printed as seconds per seed with their ratio.

Usage::

    python benchmarks/bench_dev_scoring.py [--tasks sst-5,trec,...] [--ks 16,64] [--repeats 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_rocoft_study import at_classes, padded, workload  # noqa: E402
from timing import cost_measure, floor_label, median_seconds  # noqa: E402


def unit_costs(repeats: int, grid: int, measure=median_seconds) -> dict:
    """Seconds per padded token (per token product for ``pair``), by class count (2 and 5); ``measure(function,
    repeats)``: seconds of a call (`timing.cost_measure`: timed here, or FLOPs at a rate)."""
    from ntk_peft import load_model
    from ntk_peft.experiments.rocoft_study import TABLE_SUBSETS
    from ntk_peft.ntk import capture, parse_subsets, subset_params
    from ntk_peft.ntk.directions import project_directions, recorded_directions
    from ntk_peft.ntk.fast import fast_kernel
    from ntk_peft.tasks import get_task, load_split, make_batch, to_device

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model("smollm2-135m")
    model = model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    costs: dict[str, dict[str, float]] = {}
    for task in ("sst2", "sst-5"):
        spec = get_task(task)
        classes = len(spec.labels)
        split = load_split(spec, 16, 13)
        train = to_device(make_batch(tok, spec, split.train[:16]), model)
        dev = to_device(make_batch(tok, spec, split.dev[:16]), model)
        subs = {str(s): subset_params(model, s, seed=0) for s in parse_subsets(list(TABLE_SUBSETS))}
        costs.setdefault("capture", {})[str(classes)] = measure(lambda: capture(model, dev), repeats) / padded(dev)
        cap_t, cap_d = capture(model, train), capture(model, dev)
        with torch.no_grad():
            pair = measure(lambda: [fast_kernel(model, s, cap_d, cap_t) for s in subs.values()], repeats)
        costs.setdefault("pair", {})[str(classes)] = pair / (padded(train) * padded(dev))
        weights = {n: torch.randn(16, classes, grid, generator=torch.Generator().manual_seed(0)) for n in subs}
        directions = recorded_directions(model, subs, [train], weights, record=lambda batch: cap_t)
        costs.setdefault("directions", {})[str(classes)] = measure(
            lambda: recorded_directions(model, subs, [train], weights, record=lambda batch: cap_t), repeats) \
            / padded(train)
        with torch.no_grad():
            costs.setdefault("projection", {})[str(classes)] = measure(
                lambda: [project_directions(model, s, cap_d, directions[n]) for n, s in subs.items()], repeats) \
                / padded(dev)
        cap_t = cap_d = directions = None  # SST-2's records go before SST-5's are made: half the peak memory
    return {"device": str(device), "threads": torch.get_num_threads(), "grid": grid, "by_classes": costs}


def per_seed(work: dict, costs: dict) -> dict:
    """Seconds per seed of each way to the dev predictions of one study job."""
    rates = {name: at_classes(m, work["classes"], 2 if name == "pair" else 1) for name, m in costs.items()}
    train, dev = sum(work["train"]), sum(work["dev"])
    kernels = rates["pair"] * sum(d * t for d in work["dev"] for t in work["train"]) + rates["capture"] * dev
    projections = (rates["capture"] * (train + dev) + rates["directions"] * train + rates["projection"] * dev)
    return {"kernels_s": kernels, "projections_s": projections, "kernels_over_projections": kernels / projections}


def main() -> None:
    from ntk_peft import load_model
    from ntk_peft.solvers import LAMBDA_GRID

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="SST-2,sst-5,mr,subj,trec,MNLI,RTE")
    parser.add_argument("--ks", default="16,64")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None)
    parser.add_argument("--flops-at", type=float, default=None, metavar="FLOP/S",
                        help="count each unit's FLOPs instead of timing it, taken at this rate (a device's floor)")
    args = parser.parse_args()
    costs = {**unit_costs(args.repeats, len(LAMBDA_GRID), cost_measure(args.flops_at)), **floor_label(args.flops_at)}
    print(json.dumps(costs), flush=True)
    _, tok = load_model("smollm2-135m")
    rows = []
    for k in (int(x) for x in args.ks.split(",")):
        for task in args.tasks.split(","):
            row = {"task": task, "k": k, **per_seed(workload(tok, task, k), costs["by_classes"])}
            rows.append(row)
            print(f"{task:>6} k={k:<3} dev by kernels {row['kernels_s']:7.0f} s/seed, by projections "
                  f"{row['projections_s']:7.0f} s/seed: kernels/projections {row['kernels_over_projections']:.2f}",
                  flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({**costs, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()

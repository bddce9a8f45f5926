"""Scoring one evaluation block: projections onto fitted directions against eval×train kernels.

For a task, one block of 16 evaluation prompts on SmolLM2, the kernels
``full, row1, col1, lora1`` and 5 seeds' training sets (k = 16 per class):

- ``projections`` (what ``ntk-compare`` does): record the block once, project
  it onto 5 directions per kernel (`project_directions`); the directions
  themselves (one backward pass over a seed's training prompts per kernel,
  `subset_directions`) are timed separately, as they are paid once per run;
- ``kernels`` (``--eval-kernels``): record the block once, contract it with
  every training block of every seed (`fast_kernel` for the four kernels).
  The contraction of one (train block, eval block) pair is timed and
  multiplied by the number of pairs (5 seeds x training blocks).

Both start from the same recorded block; the ratio is per evaluation block.

Usage::

    python benchmarks/bench_eval_scoring.py [--tasks sst2,sst-5]
"""

from __future__ import annotations

import argparse
import time

import torch

NAMES = ["full", "row1", "col1", "lora1"]
SEEDS = 5


def measure(task: str) -> dict:
    from ntk_peft import load_model
    from ntk_peft.adapters import parse_spec
    from ntk_peft.ntk import capture, subset_params
    from ntk_peft.ntk.directions import project_directions, subset_directions
    from ntk_peft.ntk.fast import fast_kernel
    from ntk_peft.tasks import get_task, load_split, make_batch

    model, tok = load_model("smollm2-135m")
    spec = get_task(task)
    split = load_split(spec, 16, 42)
    train = [make_batch(tok, spec, split.train[i : i + 16]) for i in range(0, len(split.train), 16)]
    block = make_batch(tok, spec, split.eval[:16])
    subsets = {n: subset_params(model, parse_spec(n)) for n in NAMES}
    capture(model, make_batch(tok, spec, split.eval[100:102]))  # warm-up
    start = time.perf_counter()
    recorded = capture(model, block)
    capture_s = time.perf_counter() - start
    classes = recorded.logits.shape[1]
    weights = torch.randn(len(split.train), classes, 1, generator=torch.Generator().manual_seed(0))
    directions, direction_s = {}, 0.0
    for name in NAMES:
        start = time.perf_counter()
        one = subset_directions(subsets[name], train, weights)
        direction_s += time.perf_counter() - start
        directions[name] = {k: v.repeat(SEEDS, *([1] * (v.dim() - 1))) for k, v in one.items()}  # 5 seeds' worth
    with torch.no_grad():
        start = time.perf_counter()
        for name in NAMES:
            project_directions(model, subsets[name], recorded, directions[name])
        project_s = time.perf_counter() - start
        left = capture(model, train[0])
        start = time.perf_counter()
        for name in NAMES:
            fast_kernel(model, subsets[name], left, recorded)
        pair_s = time.perf_counter() - start
    pairs = SEEDS * len(train)
    return {"task": spec.name, "classes": classes, "train_blocks": len(train), "capture_s": capture_s,
            "project_s": project_s, "directions_per_seed_s": direction_s, "pair_s": pair_s, "pairs": pairs,
            "projections_block_s": capture_s + project_s, "kernels_block_s": capture_s + pairs * pair_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sst2,sst-5")
    args = parser.parse_args()
    print(f"{'task':<7}{'C':>3}{'capture s':>11}{'project s':>11}{'pair s':>9}{'pairs':>7}"
          f"{'projections s/block':>21}{'kernels s/block':>17}{'ratio':>8}{'directions s/seed':>19}")
    for task in args.tasks.split(","):
        r = measure(task)
        print(f"{r['task']:<7}{r['classes']:>3}{r['capture_s']:>11.1f}{r['project_s']:>11.1f}{r['pair_s']:>9.1f}"
              f"{r['pairs']:>7}{r['projections_block_s']:>21.1f}{r['kernels_block_s']:>17.1f}"
              f"{r['kernels_block_s'] / r['projections_block_s']:>8.1f}{r['directions_per_seed_s']:>19.1f}",
              flush=True)


if __name__ == "__main__":
    main()

"""Recording passes of a blocked train kernel: panels of held left blocks against one kept set.

A block's capture (one forward, C backward passes over 16 prompts) costs about as much as a block
pair's kernels and takes 2.0-2.4 GB for SST-5 prompts at k = 64 on SmolLM2, so a 4 GiB budget keeps
one or two. The symmetric train kernel of B blocks has B(B+1)/2 pairs:

- baseline (what `run_kernel_jobs` did before): one group per right block, the first captures that fit
  the budget kept for the whole run, one more left and one right block held in slots; every other left
  block is recorded again for each pair;
- panels (`ntk_peft.ntk.blocked.panel_width`): 1 + budget // capture left blocks held while every right
  block past them is recorded once; the same memory bound (the budget plus two captures).

Both compute the study's table subsets (full, row1, col1, lora1) on the first ``--blocks`` train blocks
of a task at k = 64 (seed 13, grouped by class as ``ntk-compare`` blocks them) in the same run, into
memory stores. Printed (and written with ``--json``): captures recorded, wall seconds, and the ratio;
the kernels of the two must be bitwise equal.

Usage::

    python benchmarks/bench_panels.py [--model smollm2-135m] [--task sst-5] [--blocks 6] [--budget-gib 4]
        [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from ntk_peft import load_model
from ntk_peft.experiments.rocoft_study import TABLE_SUBSETS
from ntk_peft.ntk import KernelJob, MemoryStore, blocked, run_blocks, run_kernel_jobs
from ntk_peft.ntk.schedule import Block
from ntk_peft.tasks import get_task, load_split, make_batch


def baseline(job: KernelJob, budget: int) -> dict[str, torch.Tensor]:
    """The job's train kernel as grouped and cached before panels: groups by right block."""
    cache = blocked.CaptureCache(budget, share_slots=False)

    def features(index: int, slot: str):
        batch = job.left[index]
        return cache.record(id(batch), lambda: job.record(batch), slot)

    todo = [Block(job.store, job.name, i, j, blocked.tokens(job.left[i]) * blocked.tokens(job.left[j]), group=j,
                  keys=job.kernels.keys) for j in range(len(job.left)) for i in range(j + 1)]
    run_blocks(todo, lambda b: job.kernels.compute(features(b.i, "left"), features(b.j, "right")), progress=False)
    return job.result()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--task", default="sst-5")
    parser.add_argument("--blocks", type=int, default=6)
    parser.add_argument("--budget-gib", type=float, default=4.0)
    parser.add_argument("--json")
    args = parser.parse_args()
    model, tok = load_model(args.model)
    for p in model.parameters():
        p.requires_grad_(False)
    spec = get_task(args.task)
    train = sorted(load_split(spec, 64, 13).train, key=lambda e: e.label)
    blocks = [make_batch(tok, spec, train[i:i + 16]) for i in range(0, 16 * args.blocks, 16)]
    budget = int(args.budget_gib * (1 << 30))
    recorded = []
    original = blocked.capture
    blocked.capture = lambda m, batch, **kw: recorded.append(batch) or original(m, batch, **kw)
    rows = {}
    kernels = {}
    for way in ("baseline", "panels"):
        recorded.clear()
        job = KernelJob(model, blocks, None, TABLE_SUBSETS, store=MemoryStore(), name="train")
        start = time.perf_counter()
        with torch.no_grad():
            if way == "baseline":
                kernels[way] = baseline(job, budget)
            else:
                run_kernel_jobs([job], progress=False, cache_bytes=budget)
                kernels[way] = job.result()
        rows[way] = {"seconds": time.perf_counter() - start, "captures": len(recorded),
                     "prompt_captures": sum(blocked.batch_size(b) == 1 for b in recorded)}
        if way == "panels":
            rows[way]["width"] = job.width
        print(way, rows[way], flush=True)
    equal = all(torch.equal(kernels["baseline"][k], kernels["panels"][k]) for k in kernels["baseline"])
    out = {"task": spec.name, "blocks": args.blocks, "pairs": args.blocks * (args.blocks + 1) // 2,
           "budget_gib": args.budget_gib, "threads": torch.get_num_threads(), **rows,
           "panels_over_baseline_seconds": rows["panels"]["seconds"] / rows["baseline"]["seconds"],
           "bitwise_equal": equal}
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()

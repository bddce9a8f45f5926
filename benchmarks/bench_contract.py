"""Linear-weight contractions of the full eNTK on SmolLM2: ``gram`` against ``reduced``, by class count.

One block pair (16 train prompts x 16 eval prompts) per task, recorded once;
`full_kernel` with each Linear method is timed after a warm-up call (median of
``--repeats``), and the two kernels are compared. The tasks span C = 2 (SST-2),
3 (MNLI), 5 (SST-5) and 6 (TREC). ``REDUCED_SLOWDOWN`` in
``ntk_peft/ntk/contract.py`` (the ``auto`` rule) rests on these numbers.

Usage::

    python benchmarks/bench_contract.py [--tasks sst2,mnli,sst-5,trec] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def time_methods(task: str, methods: list[str], repeats: int) -> dict:
    from ntk_peft import load_model
    from ntk_peft.ntk.capture import capture
    from ntk_peft.ntk.contract import choose_linear_method
    from ntk_peft.ntk.fast import full_kernel
    from ntk_peft.tasks import get_task, load_split, make_batch

    model, tok = load_model("smollm2-135m")
    for p in model.parameters():
        p.requires_grad_(False)
    spec = get_task(task)
    split = load_split(spec, 16, 42)
    left = capture(model, make_batch(tok, spec, split.train[:16]))
    right = capture(model, make_batch(tok, spec, split.eval[:16]))
    name = next(n for n, r in left.records.items() if isinstance(r.module, torch.nn.Linear))
    row = {"task": spec.name, "classes": left.logits.shape[1],
           "tokens": (left.records[name].example.numel(), right.records[name].example.numel()),
           "auto": choose_linear_method(left.records[name], right.records[name])}
    kernels = {}
    with torch.no_grad():
        for method in methods:
            full_kernel(model, left, right, method)  # warm-up
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                kernels[method] = full_kernel(model, left, right, method)
                times.append(time.perf_counter() - start)
            row[method] = statistics.median(times)
    first = kernels[methods[0]]
    row["max_rel_diff"] = max(float((k - first).norm() / first.norm()) for k in kernels.values())
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sst2,mnli,sst-5,trec")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    methods = ["gram", "reduced"]
    print(f"{'task':<8}{'C':>3}{'tokens':>12}{'gram s':>10}{'reduced s':>11}{'gram/reduced':>14}{'auto':>9}"
          f"{'rel diff':>10}")
    for task in args.tasks.split(","):
        row = time_methods(task, methods, args.repeats)
        print(f"{row['task']:<8}{row['classes']:>3}{str(row['tokens']):>12}{row['gram']:>10.2f}"
              f"{row['reduced']:>11.2f}{row['gram'] / row['reduced']:>14.2f}{row['auto']:>9}"
              f"{row['max_rel_diff']:>10.1e}", flush=True)


if __name__ == "__main__":
    main()

"""Kernel-block throughput over torch.distributed ranks, and the scheduler's own cost per block.

1. Throughput: SmolLM2-135M, SST-2 (k = 16, seed 42), kernels ``full`` and
   ``row1``, blocks of 16 prompts: the symmetric train kernel (3 block pairs)
   and the train×eval kernel against the first ``--eval-blocks`` evaluation
   blocks (2 per eval block), in one scheduler pass (`run_kernel_jobs`, as
   ``ntk-compare`` runs every seed's train and dev kernels) into a fresh store.
   Run once as 1 process × 2 threads (the baseline) and once as 2 processes ×
   1 thread (``torchrun --nproc-per-node 2``, gloo); each configuration is
   timed from a barrier after the model is loaded to the end of the last
   kernel, so start-up is not counted. Reports blocks/s, the ratio, and the
   largest relative difference between the two runs' kernels (thread counts
   differ, so the sums may round differently).
2. Scheduler overhead: `run_blocks` over ``--blocks`` blocks whose compute
   returns ready-made tensors of a 16×16 block's size (two kernels, C = 2), into
   a `KernelStore` on disk: listing, validating, ordering, writing and the
   final checks, per block, against the time of one real 16×16 block from
   part 1 (target < 2 %). The per-call identity check (`kernel_identity`:
   subset fingerprints and the model hash, remembered after the first call) is
   timed separately.

3. The RoCoFT study's time (13 tasks, 5 seeds, k = 16 and 64) on 1 and 4
   ranks from the measured time per block (`plan_study`: block counts from the
   splits, cost scaled by prompt tokens and classes), or on 1, 4 and 8 ranks
   from a given time per block (``--plan BLOCK_S``, e.g. one measured on a GPU).

Usage::

    python benchmarks/bench_distributed.py [--eval-blocks 6] [--blocks 200] [--plan BLOCK_S]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SUBSETS = ("full", "row1")


def _batches(tok, eval_blocks: int):
    from ntk_peft.tasks import load_split, make_batch

    split = load_split("sst2", 16, 42)
    train = sorted(split.train, key=lambda e: e.label)
    left = [make_batch(tok, "sst2", train[i : i + 16]) for i in range(0, len(train), 16)]
    right = [make_batch(tok, "sst2", split.eval[i : i + 16]) for i in range(0, 16 * eval_blocks, 16)]
    return left, right


def worker(out: Path, eval_blocks: int) -> None:
    """One rank of a throughput run (launched by torchrun)."""
    from ntk_peft import load_model
    from ntk_peft.ntk import KernelJob, KernelStore, distributed, run_kernel_jobs

    distributed.init_from_env()
    model, tok = load_model("smollm2-135m")
    left, right = _batches(tok, eval_blocks)
    store = KernelStore(out / "store", {"model": "smollm2-135m"})
    distributed.barrier()
    started = time.perf_counter()
    jobs = [KernelJob(model, left, None, SUBSETS, store=store, name="train"),
            KernelJob(model, left, right, SUBSETS, store=store, name="eval")]
    run_kernel_jobs(jobs, progress=False)  # one scheduler pass, as ntk-compare runs train and dev
    train, cross = (job.result() for job in jobs)
    seconds = time.perf_counter() - started
    if distributed.is_main():
        from ntk_peft.io import save_tensors, write_json

        blocks = len(left) * (len(left) + 1) // 2 + len(left) * len(right)
        save_tensors(out / "kernels.safetensors", {**{f"train/{k}": v for k, v in train.items()},
                                                    **{f"eval/{k}": v for k, v in cross.items()}})
        write_json(out / "timing.json", {"seconds": seconds, "blocks": blocks,
                                         "threads": torch.get_num_threads(), "ranks": distributed.world_size()})
    distributed.shutdown()


def throughput(eval_blocks: int) -> dict:
    from safetensors.torch import load_file

    runs = {}
    for ranks, threads in ((1, 2), (2, 1)):
        out = Path(tempfile.mkdtemp(prefix=f"bench-dist-{ranks}x{threads}-"))
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1", "NTK_PEFT_BACKEND": "gloo"}
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
                   __file__, "--worker", str(out), "--eval-blocks", str(eval_blocks)]
        subprocess.run(command, env=env, check=True)
        runs[f"{ranks}x{threads}"] = {**json.loads((out / "timing.json").read_text()),
                                      "kernels": load_file(str(out / "kernels.safetensors"))}
    base, split = runs["1x2"], runs["2x1"]
    difference = max(float((split["kernels"][k] - base["kernels"][k]).abs().max() / base["kernels"][k].abs().max())
                     for k in base["kernels"])
    return {"blocks": base["blocks"], "block_s_1x2": base["seconds"] / base["blocks"],
            "blocks_per_s_1x2": base["blocks"] / base["seconds"], "blocks_per_s_2x1": split["blocks"] / split["seconds"],
            "speedup_2x1": base["seconds"] / split["seconds"], "max_relative_difference": difference}


def overhead(blocks: int) -> dict:
    from ntk_peft import load_model
    from ntk_peft.ntk import Block, KernelStore, kernel_identity, parse_subsets, run_blocks, subset_params
    from ntk_peft.ntk.implementations import NtkImplementation

    tensors = {name: torch.randn(16, 16, 2, 2, dtype=torch.float64) for name in SUBSETS}
    with tempfile.TemporaryDirectory() as folder:
        store = KernelStore(folder, {"model": "none"})
        todo = [Block(store, "k", i, j, cost=float(i + j), group=j, keys=SUBSETS)
                for j in range(blocks // 10) for i in range(10)]
        report = run_blocks(todo, lambda block: tensors, progress=False)
        fresh = report.overhead_seconds / len(todo)
        started = time.perf_counter()
        again = run_blocks(todo, lambda block: tensors, progress=False)  # every block found and validated
        found = (time.perf_counter() - started) / len(todo)
        assert again.computed == []
    model, tok = load_model("smollm2-135m")
    left, _ = _batches(tok, 0)
    resolved = [subset_params(model, s) for s in parse_subsets(SUBSETS)]
    timings = []
    for _ in range(2):
        started = time.perf_counter()
        kernel_identity(model, resolved, left, None, NtkImplementation.FAST, "all", 0)
        timings.append(time.perf_counter() - started)
    return {"per_computed_block_s": fresh, "per_found_block_s": found, "identity_first_call_s": timings[0],
            "identity_later_call_s": timings[1]}


# The RoCoFT study (tables 5 and 6): tasks, classes C and mean prompt tokens of SmolLM2's prompts (train, eval),
# measured with make_batch on the k = 16 splits (seed 13; eval: first 256 prompts).
STUDY = {"sst2": (2, 30, 28, 872), "sst5": (5, 26, 29, 2210), "mr": (2, 31, 31, 2000), "cr": (2, 25, 29, 2000),
         "mpqa": (2, 10, 10, 2000), "subj": (2, 45, 44, 2000), "trec": (6, 22, 18, 500), "mnli": (3, 48, 48, 1000),
         "snli": (3, 36, 37, 1000), "qnli": (2, 70, 67, 5463), "rte": (2, 77, 79, 277), "mrpc": (2, 78, 76, 408),
         "qqp": (2, 50, 47, 1000)}


def plan_study(block_s: float, ranks: int, k: int, seeds: int = 5, block: int = 16) -> float:
    """Seconds for every task's kernels and projections at ``k`` over ``ranks`` ranks (a model, not a run).

    A 16×16 kernel block costs ``block_s`` at 30×30 tokens and C = 2, scaled by tokens_left·tokens_right/30²
    and by C/2 (C backward passes, C² contractions reduced to ~C); a projection block costs ``block_s``·
    tokens/30·C/2 (recording dominates). Each task runs two passes (every seed's train and dev blocks;
    the evaluation projections), each sharded over the ranks: a pass takes max(total / ranks, one block).
    TREC has no k = 64 split (a class has 75 examples) and is left out there.
    """
    total = 0.0
    for C, train_tokens, eval_tokens, n_eval in STUDY.values():
        if k == 64 and C == 6:
            continue
        blocks = -(-k * C // block)
        kernel = block_s * (train_tokens / 30) ** 2 * C / 2
        pairs = seeds * (blocks * (blocks + 1) // 2 + blocks * blocks)
        projection = block_s * eval_tokens / 30 * C / 2
        eval_blocks = -(-n_eval // block)
        total += max(pairs * kernel / ranks, kernel) + max(eval_blocks * projection / ranks, projection)
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-blocks", type=int, default=6)
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--plan", type=float, default=None, metavar="BLOCK_S",
                        help="only print the study plan for this time per 16x16 block on one rank")
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.eval_blocks)
        return
    if args.plan is not None:
        for ranks in (1, 4, 8):
            hours = [plan_study(args.plan, ranks, k) / 3600 for k in (16, 64)]
            print(f"RoCoFT study, {ranks} rank(s) at {args.plan:.2f} s per block: k=16 {hours[0]:.2f} h, "
                  f"k=64 {hours[1]:.2f} h")
        return
    measured = throughput(args.eval_blocks)
    cost = overhead(args.blocks)
    block_s = measured["block_s_1x2"]
    print(f"SmolLM2 SST-2, kernels {', '.join(SUBSETS)}, {measured['blocks']} blocks of 16x16 prompts")
    print(f"  1 process x 2 threads : {measured['blocks_per_s_1x2']:.4f} blocks/s ({block_s:.2f} s per block)")
    print(f"  2 processes x 1 thread: {measured['blocks_per_s_2x1']:.4f} blocks/s "
          f"(x{measured['speedup_2x1']:.2f} the baseline)")
    print(f"  kernels differ by at most {measured['max_relative_difference']:.2e} (relative to the largest entry)")
    print(f"scheduler overhead per block: computed {cost['per_computed_block_s'] * 1e3:.2f} ms "
          f"({100 * cost['per_computed_block_s'] / block_s:.3f} % of a 16x16 block), found and validated "
          f"{cost['per_found_block_s'] * 1e3:.2f} ms")
    print(f"identity check per kernel_blocks call: first {cost['identity_first_call_s']:.2f} s (model hash), "
          f"later {cost['identity_later_call_s']:.3f} s")
    for ranks in (1, 4):
        hours = [plan_study(block_s, ranks, k) / 3600 for k in (16, 64)]
        print(f"RoCoFT study plan (`plan_study`), {ranks} rank(s) of 1 process x 2 threads: k=16 {hours[0]:.1f} h, "
              f"k=64 {hours[1]:.2f} h")


if __name__ == "__main__":
    main()

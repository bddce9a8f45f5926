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

Usage::

    python benchmarks/bench_distributed.py [--eval-blocks 6] [--blocks 200]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eval-blocks", type=int, default=6)
    parser.add_argument("--blocks", type=int, default=200)
    parser.add_argument("--worker", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker, args.eval_blocks)
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


if __name__ == "__main__":
    main()

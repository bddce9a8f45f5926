"""A worker for the distributed tests, launched by torchrun (or plainly, for the race test).

    python distributed_worker.py OUT [--kill-after N] [--store DIR]

Joins the process group torchrun describes (gloo), computes tiny-llama kernels
with the Python API (a symmetric and a cross kernel into a `KernelStore`, and
a cross kernel with no store, exchanged between ranks), and writes what this
rank got back to ``OUT/rank-<r>.safetensors``. With ``--kill-after N`` rank 1
(rank 0 when alone) kills itself with SIGKILL right after writing its N-th block.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)  # the same arithmetic in every process, so kernels compare bitwise

from ntk_peft import load_model  # noqa: E402
from ntk_peft.io import save_tensors  # noqa: E402
from ntk_peft.ntk import KernelStore, distributed, kernel_blocks  # noqa: E402
from ntk_peft.tasks import load_split, make_batch  # noqa: E402

SUBSETS = ("full", "row1", "lora1")


def blocks():
    """Four train blocks of 3 and three eval blocks of 2 (of different lengths)."""
    _, tok = load_model("tiny-llama", dtype=torch.float64, seed=4)
    train = load_split("sst2").train
    left = [make_batch(tok, "sst2", train[i : i + 3]) for i in range(0, 12, 3)]
    right = [make_batch(tok, "sst2", train[i : i + 2]) for i in range(20, 26, 2)]
    return left, right


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("out", type=Path)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--kill-after", type=int, default=None)
    args = parser.parse_args()
    distributed.init_from_env()
    model, _ = load_model("tiny-llama", dtype=torch.float64, seed=4)
    left, right = blocks()
    victim = 1 if distributed.world_size() > 1 else 0
    if args.kill_after is not None and distributed.rank() == victim:
        saved = {"n": 0}
        original = KernelStore.save

        def save_then_die(self, *a, **k):
            original(self, *a, **k)
            saved["n"] += 1
            if saved["n"] >= args.kill_after:
                os.kill(os.getpid(), signal.SIGKILL)

        KernelStore.save = save_then_die
    store = KernelStore(args.store or args.out / "store", {"model": "tiny-llama", "block_size": 3})
    sym = kernel_blocks(model, left, None, SUBSETS, store=store, name="train", progress=False)
    cross = kernel_blocks(model, left, right, SUBSETS, store=store, name="eval", progress=False)
    in_memory = kernel_blocks(model, left, right, SUBSETS, progress=False)
    tensors = {**{f"train/{k}": v for k, v in sym.items()}, **{f"eval/{k}": v for k, v in cross.items()},
               **{f"memory/{k}": v for k, v in in_memory.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    save_tensors(args.out / f"rank-{distributed.rank()}.safetensors", tensors)
    distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())

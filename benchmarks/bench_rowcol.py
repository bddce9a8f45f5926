"""Row/column adapter forward+backward against the frozen layer alone: is a fused kernel worth writing?

RoCoFT's adapters compute ``W0·x + b`` and add an r-row (or r-column)
correction (`RowAdapter`, `ColAdapter`), never a concatenated weight. A fused
kernel could at best hide the correction, so the gap between the adapted layer
and the frozen layer alone (the same ``W0·x`` with the gradient for x that a
training step needs) bounds what it can save. Also timed: the naive route,
materialising ``W0 + ΔW`` and one ``F.linear`` (what a merged-weight forward
would cost during training).

For each layer shape and ``--tokens`` rows: median forward+backward time
(torch.utils.benchmark) of ``frozen``, ``row<r>``, ``col<r>``, ``merged-row<r>``,
and each one's ratio to ``frozen`` measured in the same run.

Usage::

    python benchmarks/bench_rowcol.py [--tokens 512] [--ranks 1,8] [--dtype float32]
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils import benchmark

SHAPES = {"roberta-base attn": (768, 768), "smollm2 mlp up": (1536, 576), "7B attn": (4096, 4096)}


def _cases(d_out: int, d_in: int, tokens: int, rank: int, dtype, device) -> dict:
    """name -> zero-argument forward+backward closure."""
    from ntk_peft.adapters import ColAdapter, RowAdapter

    torch.manual_seed(0)
    base = nn.Linear(d_in, d_out).to(device, dtype).requires_grad_(False)
    x = torch.randn(tokens, d_in, device=device, dtype=dtype, requires_grad=True)
    grad_out = torch.randn(tokens, d_out, device=device, dtype=dtype)
    row = RowAdapter(base, torch.arange(rank)).to(device)
    col = ColAdapter(base, torch.arange(rank)).to(device)
    for adapter in (row, col):
        nn.init.normal_(adapter.delta, std=0.01)

    def step(forward):
        def run():
            out = forward()
            out.backward(grad_out)
        return run

    return {
        "frozen": step(lambda: base(x)),
        f"row{rank}": step(lambda: row(x)),
        f"col{rank}": step(lambda: col(x)),
        f"merged-row{rank}": step(lambda: F.linear(x, base.weight + row.compute_delta_weight(), base.bias)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=512)
    parser.add_argument("--ranks", default="1,8")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = getattr(torch, args.dtype)
    print(f"device {device}, {torch.get_num_threads()} threads, {args.tokens} tokens, {args.dtype}")
    print("| shape | r | frozen (ms) | row (ms, ×frozen) | col (ms, ×frozen) | merged row (ms, ×frozen) |")
    print("|---|---|---|---|---|---|")
    for label, (d_out, d_in) in SHAPES.items():
        for rank in (int(r) for r in args.ranks.split(",")):
            times = {}
            for name, run in _cases(d_out, d_in, args.tokens, rank, dtype, device).items():
                run()  # warm-up
                timer = benchmark.Timer(stmt="run()", globals={"run": run})
                times[name] = timer.blocked_autorange(min_run_time=1.0).median * 1e3
            base = times["frozen"]
            cells = [f"{t:.2f} ({t / base:.2f})" for name, t in times.items() if name != "frozen"]
            print(f"| {label} {d_out}x{d_in} | {rank} | {base:.2f} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()

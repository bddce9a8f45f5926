"""Monarch product speed and memory: fused Triton kernels vs the torch reference vs LoRA.

For each layer shape (RoBERTa-base to 7B-model widths) and ``--tokens`` rows,
times forward+backward (gradients for x, and for the adapter's two factors)
of:

- ``triton``: `ntk_peft.kernels.monarch_matmul` on the Triton path (CUDA only:
  interpreted kernels on a CPU say nothing about speed);
- ``reference``: `ntk_peft.kernels.monarch_matmul_reference` (bmm + permutations);
- ``lora``: ``(x·Aᵀ)·Bᵀ`` at rank r, the same parameter count as MoRe's
  N blocks of rank r (r·(n + m) either way);

alone (``adapter``) and inside a training step of the layer (``layer``: the
frozen ``W0·x`` plus the adapter), which is what MoRe-vs-LoRA step time means.
Reports the median time (torch.utils.benchmark, which synchronises CUDA), the
peak CUDA memory above the inputs (GPU only), and ratios against the reference
and against LoRA measured in the same run. Writes ``results.json`` and
``table.md`` to ``--out``.

Usage::

    python benchmarks/bench_monarch.py                        # all shapes, bf16 on a GPU, fp32 on a CPU
    python benchmarks/bench_monarch.py --blocks 4 --rank 8 --tokens 4096 --dtype float16
    python benchmarks/bench_monarch.py --shapes 4096x4096     # one shape (d_out x d_in)
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils import benchmark

SHAPES = {  # d_out x d_in
    "roberta-base attn": (768, 768),
    "roberta-base ffn up": (3072, 768),
    "roberta-base ffn down": (768, 3072),
    "7B attn": (4096, 4096),
    "7B mlp up": (11008, 4096),
    "7B mlp down": (4096, 11008),
}


def _monarch(path: str):
    from ntk_peft.kernels import monarch_matmul, monarch_matmul_reference

    if path == "triton":
        os.environ["NTK_PEFT_TRITON"] = "1"
        return monarch_matmul
    return monarch_matmul_reference


def _case(method: str, path: str, d_out: int, d_in: int, tokens: int, blocks: int, rank: int, dtype, device):
    """A zero-argument forward+backward closure and its input tensors."""
    g = torch.Generator(device="cpu").manual_seed(0)
    make = lambda *s, grad=True: torch.randn(*s, generator=g).to(device, dtype).requires_grad_(grad)  # noqa: E731
    x = make(tokens, d_in)
    base = make(d_out, d_in, grad=False) if path == "layer" else None
    if method == "lora":
        a, b = make(rank, d_in), make(d_out, rank)
        adapter, params = (lambda inp: F.linear(F.linear(inp, a), b)), [x, a, b]
    else:
        if d_in % blocks or d_out % blocks:
            raise SystemExit(f"{blocks} blocks do not divide {d_out}x{d_in}")
        w1, w2 = make(blocks, rank, d_in // blocks), make(blocks, d_out // blocks, rank)
        product = _monarch(method)
        adapter, params = (lambda inp: product(inp, w1, w2)), [x, w1, w2]
    dy = make(tokens, d_out, grad=False)

    def step():
        y = adapter(x) if base is None else F.linear(x, base) + adapter(x)
        torch.autograd.grad(y, params, dy)

    return step


def _measure(step, device, min_run_time: float) -> tuple[float, float | None]:
    step()  # warm-up (Triton compiles here)
    peak = None
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step()
        torch.cuda.synchronize()
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    timer = benchmark.Timer(stmt="step()", globals={"step": step})
    return timer.blocked_autorange(min_run_time=min_run_time).median, peak


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--blocks", type=int, default=4, help="MoRe's N (default 4)")
    parser.add_argument("--rank", type=int, default=8, help="MoRe's block rank r = LoRA's rank (default 8)")
    parser.add_argument("--tokens", type=int, default=None, help="rows of x (default 4096 on a GPU, 512 on a CPU)")
    parser.add_argument("--dtype", default=None, help="float32, float16, bfloat16 (default bf16 GPU, fp32 CPU)")
    parser.add_argument("--shapes", default=None, help="comma list of d_outxd_in (default: all of SHAPES)")
    parser.add_argument("--min-run-time", type=float, default=1.0, help="seconds per timing (default 1)")
    parser.add_argument("--out", default="runs/bench-monarch")
    args = parser.parse_args(argv)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    tokens = args.tokens or (4096 if device.type == "cuda" else 512)
    shapes = SHAPES if args.shapes is None else {
        s: tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")}
    methods = ["triton", "reference", "lora"] if device.type == "cuda" else ["reference", "lora"]
    if "triton" in methods and args.blocks * args.rank > 1024:  # wider products always take the reference
        raise SystemExit(f"N·r = {args.blocks * args.rank} is above the fused kernels' width 1024: "
                         f"the 'triton' rows would time the reference")
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device {name}, {dtype}, {tokens} tokens, N={args.blocks}, r={args.rank}")
    if device.type != "cuda":
        print("no GPU: the Triton kernels are not timed (interpreted kernels say nothing about speed)")

    rows = []
    for label, (d_out, d_in) in shapes.items():
        for path in ("adapter", "layer"):
            times = {}
            for method in methods:
                step = _case(method, path, d_out, d_in, tokens, args.blocks, args.rank, dtype, device)
                seconds, peak = _measure(step, device, args.min_run_time)
                times[method] = seconds
                rows.append({"shape": label, "d_out": d_out, "d_in": d_in, "path": path, "method": method,
                             "ms": seconds * 1e3, "peak_mib": peak})
            for row in rows[-len(methods):]:
                row["x_reference"] = row["ms"] / (times["reference"] * 1e3)
                row["x_lora"] = row["ms"] / (times["lora"] * 1e3)
                print(f"{label:22s} {path:7s} {row['method']:9s} {row['ms']:9.3f} ms  x ref {row['x_reference']:.2f}"
                      f"  x lora {row['x_lora']:.2f}" + ("" if row["peak_mib"] is None else
                                                          f"  peak {row['peak_mib']:.1f} MiB"))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"device": name, "dtype": str(dtype), "tokens": tokens, "blocks": args.blocks, "rank": args.rank}
    (out / "results.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"{name}, {dtype}, {tokens} tokens, N = {args.blocks}, r = {args.rank}; forward+backward, median", "",
             "| shape | d_out x d_in | path | method | ms | x reference | x lora | peak MiB |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        peak = "-" if r["peak_mib"] is None else f"{r['peak_mib']:.1f}"
        lines.append(f"| {r['shape']} | {r['d_out']}x{r['d_in']} | {r['path']} | {r['method']} | {r['ms']:.3f} | "
                     f"{r['x_reference']:.2f} | {r['x_lora']:.2f} | {peak} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out / 'table.md'}")


if __name__ == "__main__":
    main()

"""eNTK speed and memory on SmolLM2 with SST-2 prompts (C = 2).

Each case runs in its own process so that its peak resident memory is its
own, and is timed after one untimed warm-up call on two other examples in
that process (steady state; ``--cold`` times the first call instead); the
median of ``--repeats`` timed calls is reported (5 for the cheap n = 8
cases: timings on a shared 2-core machine vary by ±20 % from run to run). Cases:

- ``floor``: one forward and C backward passes to the embedding output (no
  weight gradient): the least any exact method must do;
- ``fast`` / ``reference`` for the subsets ``full``, ``row1`` and
  ``full,row1,col1,lora1`` together;
- ``sst2-16shot``: the whole SST-2 16-shot kernel set, 32 train x 872 eval,
  ``full`` and ``row1`` (fast), against the per-pass time LM-Kernel-FT's
  forward-mode scheme would need (n_train·C JVP passes over the eval set).

Usage::

    python benchmarks/bench_ntk.py              # n = 8 (all) and n = 64 (fast)
    python benchmarks/bench_ntk.py --cold       # the same, first call in each process
    python benchmarks/bench_ntk.py --sst2       # also the 32 x 872 kernel set (long)
    python benchmarks/bench_ntk.py --case fast --subsets full --n 8   # one case
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch


def _examples(n: int, split: str = "train"):
    from ntk_peft.tasks import load_split

    data = load_split("sst2", k=16 if n <= 32 else 64, seed=42)
    pool = data.train + data.dev if split == "train" else data.eval
    return pool[:n]


def _floor(model, batch) -> None:
    from ntk_peft.models import readout_logits

    embed = model.get_input_embeddings()
    with torch.enable_grad():
        hidden_in = embed(batch["input_ids"]).detach().requires_grad_()
        from ntk_peft.models.prompt import position_ids

        out = model.base_model(inputs_embeds=hidden_in, attention_mask=batch["attention_mask"],
                               position_ids=position_ids(model, batch["attention_mask"]), use_cache=False)
        rows = torch.arange(hidden_in.shape[0])
        logits = readout_logits(model, out.last_hidden_state[rows, batch["readout_positions"]],
                                batch["label_token_ids"])
        for c in range(logits.shape[1]):
            torch.autograd.grad(logits[:, c].sum(), hidden_in, retain_graph=c < logits.shape[1] - 1)


def run_case(case: str, subsets: list[str], n: int, warmup: bool = True, repeats: int = 1) -> dict:
    from ntk_peft import load_model
    from ntk_peft.tasks import make_batch

    model, tok = load_model("smollm2-135m")
    for p in model.parameters():
        p.requires_grad_(False)
    batch = make_batch(tok, "sst2", _examples(n))
    if warmup:  # steady state: one untimed call on two other examples first, the same for every case
        _run(case, model, make_batch(tok, "sst2", _examples(2, "eval")), subsets)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _run(case, model, batch, subsets)
        times.append(time.perf_counter() - start)
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    return {"case": case, "subsets": ",".join(subsets), "n": n, "seconds": statistics.median(times),
            "all_seconds": times, "peak_gb": peak_gb, "warm": warmup}


def _run(case: str, model, batch, subsets: list[str]) -> None:
    from ntk_peft.ntk import empirical_ntk

    if case == "floor":
        _floor(model, batch)
    elif case == "jvp-pass":  # one forward-mode pass over the batch (LM-Kernel-FT's unit of work)
        from torch.func import jvp

        model.config._attn_implementation = "eager"  # forward-mode AD through eager attention
        params = {k: v.detach() for k, v in model.named_parameters()}
        tangents = {k: torch.randn_like(v) for k, v in params.items()}
        jvp(lambda p: _call(model, p, batch), (params,), (tangents,))
    else:
        empirical_ntk(model, batch, subsets=subsets, implementation=case)


def _call(model, params, batch):
    from torch.func import functional_call

    from ntk_peft.models import label_logits

    class _F(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, b):
            return label_logits(self.model, b)

    return functional_call(_F(), {f"model.{k}": v for k, v in params.items()}, (batch,))


def sst2_kernel_set() -> dict:
    """Train (32) x eval (872) kernels, full and row1, blocked; plus one JVP pass for comparison."""
    from ntk_peft import load_model
    from ntk_peft.ntk import kernel_blocks
    from ntk_peft.tasks import load_split, make_batch

    model, tok = load_model("smollm2-135m")
    split = load_split("sst2", 16, 42)
    train = [make_batch(tok, "sst2", split.train[i : i + 16]) for i in range(0, 32, 16)]
    evals = [make_batch(tok, "sst2", split.eval[i : i + 16]) for i in range(0, len(split.eval), 16)]
    start = time.perf_counter()
    kernel_blocks(model, train, None, ("full", "row1"))
    kernel_blocks(model, train, evals, ("full", "row1"))
    seconds = time.perf_counter() - start
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 ** 2
    return {"case": "sst2-16shot fast", "seconds": seconds, "peak_gb": peak_gb}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default=None)
    parser.add_argument("--subsets", default="full")
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--sst2", action="store_true")
    parser.add_argument("--cold", action="store_true", help="time the first call in each process (no warm-up)")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed calls per case, median reported (default 5 for n = 8 except reference, else 1)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--out", default=None, help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.case == "sst2":
        print(json.dumps(sst2_kernel_set()))
        return
    if args.case:
        print(json.dumps(run_case(args.case, args.subsets.split(","), args.n, warmup=not args.cold,
                                  repeats=args.repeats or 1)))
        return
    plan = [("floor", "full", 8), ("jvp-pass", "full", 8)]
    for subsets in ("full", "row1", "full,row1,col1,lora1"):
        plan.append(("fast", subsets, 8))
        if not args.skip_reference:
            plan.append(("reference", subsets, 8))
    plan += [("floor", "full", 64), ("fast", "full,row1,col1,lora1", 64)]
    rows = []
    for case, subsets, n in plan:
        repeats = args.repeats or (5 if n <= 8 and case != "reference" else 1)
        cmd = [sys.executable, __file__, "--case", case, "--subsets", subsets, "--n", str(n),
               "--repeats", str(repeats)] + (["--cold"] if args.cold else [])
        proc = subprocess.run(cmd, capture_output=True, text=True)
        line = proc.stdout.strip().splitlines()[-1] if proc.returncode == 0 and proc.stdout.strip() else None
        row = json.loads(line) if line else {"case": case, "subsets": subsets, "n": n, "seconds": float("nan"),
                                               "peak_gb": float("nan"), "error": proc.stderr.strip()[-200:]}
        rows.append(row)
        print(f"{row['case']:<10} {row['subsets']:<22} n={row['n']:<4} {row['seconds']:8.2f} s "
              f"{row['peak_gb']:6.2f} GB {row.get('error', '')}", flush=True)
    floors = {r["n"]: r["seconds"] for r in rows if r["case"] == "floor"}
    print("\nratios to the floor (same n):")
    for r in rows:
        if r["case"] != "floor":
            print(f"  {r['case']:<10} {r['subsets']:<22} n={r['n']:<4} {r['seconds'] / floors[r['n']]:6.2f}x")
    jvp = next((r["seconds"] for r in rows if r["case"] == "jvp-pass"), float("nan"))
    print(f"\nLM-Kernel-FT's scheme for 32 train x 872 eval: 32·C = 64 JVP passes over 872 examples "
          f"~ {64 * jvp * 872 / 8:.0f} s at {jvp:.2f} s per JVP pass over 8 examples")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(rows, handle, indent=2)
    if args.sst2:
        proc = subprocess.run([sys.executable, __file__, "--case", "sst2"], capture_output=True, text=True)
        print(proc.stdout.strip() or proc.stderr.strip()[-500:])


if __name__ == "__main__":
    main()

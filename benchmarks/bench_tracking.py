"""ΔW tracking's cost per measurement: factored and zero spectra against a dense SVD per layer.

`DeltaWTracker.measure` takes ΔW's spectrum from the adapter's low-rank factors (`delta_factors`: two
thin QRs) where it has them and skips the SVD where ΔW = 0 (every adapter at initialisation, full
fine-tuning at step 0). The baseline, measured in the same run on the same ΔW, is what it did before: a
dense float64 SVD of every adapted layer's ΔW. Each adapter's parameters are perturbed first (N(0, 0.01²)
added), so its ΔW is a trained-looking nonzero update; ``full@0`` is full fine-tuning's measurement at
step 0. Printed (and written with ``--json``): seconds per measurement, median of ``--repeats``, both
ways, and the ratio, with the largest relative difference of the singular values (float64 products of
the float32 factors against the SVD of the float32 ΔW: float32 rounding, ~1e-7).

Usage::

    python benchmarks/bench_tracking.py [--model smollm2-135m] [--adapters lora1,row1,col1,lora8,full@0]
        [--repeats 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
from timing import median_seconds

from ntk_peft.adapters import apply_adapter
from ntk_peft.analysis import singular_values, spectrum_metrics, working_eps
from ntk_peft.models import load_model
from ntk_peft.train.tracking import DeltaWTracker


def dense_measure(handle) -> dict[str, np.ndarray]:
    """The baseline: one dense SVD per layer, and the same metrics as `DeltaWTracker.measure`."""
    out = {}
    for name, delta in handle.delta_weights().items():
        sigma = singular_values(delta)
        spectrum_metrics(sigma, tuple(delta.shape), working_eps(delta))
        out[name] = sigma
    return out


def measure_adapter(model_name: str, name: str, repeats: int) -> dict:
    spec, _, at = name.partition("@")
    model, _ = load_model(model_name, seed=0)
    handle = apply_adapter(model, spec, seed=0)
    if at != "0":
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in handle.parameters():
                p.add_(0.01 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    tracker = DeltaWTracker(handle, None)
    dense_s = median_seconds(lambda: dense_measure(handle), repeats, warmup=False)
    tracked_s = median_seconds(lambda: tracker.measure(0), repeats, warmup=False)
    dense = dense_measure(handle)
    worst = max(float(np.max(np.abs(np.asarray(tracker.last_sigma[n]) - s)) / s[0]) if s[0] > 0 else 0.0
                for n, s in dense.items())
    return {"adapter": name, "layers": len(dense), "dense_s": dense_s, "tracked_s": tracked_s,
            "speedup": dense_s / tracked_s, "max_relative_sigma_difference": worst}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapters", default="lora1,row1,col1,lora8,full@0")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    print(f"threads {torch.get_num_threads()}, model {args.model}, median of {args.repeats}")
    print(f"{'adapter':10s} {'layers':>6s} {'dense s':>9s} {'tracked s':>10s} {'speedup':>8s} {'max |Δσ|/σ1':>12s}")
    rows = []
    for name in args.adapters.split(","):
        r = measure_adapter(args.model, name, args.repeats)
        rows.append(r)
        print(f"{r['adapter']:10s} {r['layers']:6d} {r['dense_s']:9.3f} {r['tracked_s']:10.4f} {r['speedup']:8.1f} "
              f"{r['max_relative_sigma_difference']:12.2e}", flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"threads": torch.get_num_threads(), "model": args.model, "repeats": args.repeats,
                       "rows": rows}, handle, indent=1)


if __name__ == "__main__":
    main()

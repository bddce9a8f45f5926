"""Every adapter on the same budget: accuracy, step time, memory and ΔW rank (issue 6's table).

Each method is trained by ``ntk-peft train`` in its own process (so its peak
memory is its own) on one k-shot split with the same number of steps, batch
size, schedule and ΔW tracking; learning rates follow each method's usual
range (full fine-tuning far lower) and are printed in the table. A finished
method is read back, an interrupted one resumes from its checkpoint.
Reported per method: trainable parameters, best dev and final eval accuracy,
seconds per optimizer step (forward, backward, step only) and the training
process's peak resident memory, both also as ratios to ``lora8`` measured in
the same run, and the median over adapted layers of ΔW's numerical rank
(machine tolerance max(m,n)·eps·σ_max and relative 1e-3·σ_max) and effective
rank at the end (for LoRMA also of the inflated matrix I(BA)). A second
table compares each method's ΔW with full fine-tuning's on one layer (LoRMA
table 9's metrics: Frobenius distance, cosine, top-8 singular value and
eigenvalue squared differences, largest principal angle).

Usage::

    python benchmarks/bench_train.py                      # SmolLM2, SST-2, k = 16, seed 42
    python benchmarks/bench_train.py --methods lora8,row1 --steps 20
    python benchmarks/bench_train.py --model tiny-llama --steps 4 --max-eval 16   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

METHODS = ("full", "row1", "col1", "lora8", "more4x8", "cp16", "lorma+8", "lormapi8", "bias", "ia3")
LEARNING_RATES = {"full": 2e-5, "ia3": 3e-3}  # every other method: 1e-3
BASELINE = "lora8"


def train_method(method: str, args, out: Path) -> dict:
    folder = out / method
    if not (folder / "metrics.json").is_file():
        command = [sys.executable, "-m", "ntk_peft.cli.peft", "train", "--task", args.task, "--adapter", method,
                   "--model", args.model, "--k", str(args.k), "--seed", str(args.seed), "--steps", str(args.steps),
                   "--lr", str(LEARNING_RATES.get(method, 1e-3)), "--batch-size", str(args.batch_size),
                   "--eval-every", str(args.eval_every), "--track-every", str(args.track_every),
                   "--out", str(folder)]
        if args.max_eval:
            command += ["--max-eval", str(args.max_eval)]
        subprocess.run(command, check=True)
    metrics = json.loads((folder / "metrics.json").read_text())
    summary = json.loads((folder / "delta_w_summary.json").read_text())
    row = {"method": method, "lr": LEARNING_RATES.get(method, 1e-3), "trainable": metrics["num_trainable"],
           "best_dev": metrics["best_dev"], "eval_accuracy": metrics["eval_accuracy"],
           "seconds_per_step": metrics["step_seconds"] / metrics["final_step"],
           "peak_rss_mb": metrics["peak_rss_mb"],
           "training_rss_mb": metrics["peak_rss_mb"] - metrics["peak_rss_before_training_mb"]}
    for metric in ("rank_machine", "rank_relative", "effective_rank", "inflated_rank_machine"):
        values = [layer[metric] for layer in summary["layers"].values() if metric in layer]
        row[f"median_{metric}"] = float(np.median(values)) if values else None
    return row


def format_rows(rows: list[dict]) -> str:
    base = next((r for r in rows if r["method"] == BASELINE), None)
    header = ("| method | lr | trainable | best dev | eval | s/step | x lora8 | peak RSS MB | x lora8 | "
              "+RSS in training MB | median rank (machine) | median rank (1e-3) | median eff. rank | I(BA) rank |")
    lines = [header, "|" + "---|" * (header.count("|") - 1)]
    for r in rows:
        ratio = (lambda key: f"{r[key] / base[key]:.2f}") if base else (lambda key: "-")
        fmt = lambda v, f="{:.0f}": "-" if v is None else f.format(v)  # noqa: E731
        lines.append(f"| {r['method']} | {r['lr']:g} | {r['trainable']:,} | {r['best_dev']:.3f} | "
                     f"{r['eval_accuracy']:.3f} | {r['seconds_per_step']:.2f} | {ratio('seconds_per_step')} | "
                     f"{r['peak_rss_mb']:.0f} | {ratio('peak_rss_mb')} | {r['training_rss_mb']:.0f} | "
                     f"{fmt(r['median_rank_machine'])} | {fmt(r['median_rank_relative'])} | "
                     f"{fmt(r['median_effective_rank'], '{:.1f}')} | {fmt(r['median_inflated_rank_machine'])} |")
    return "\n".join(lines)


def pairwise_table(out: Path, methods: list[str], layer: str, reference: str = "full") -> str:
    """LoRMA table 9's metrics between each method's final ΔW and ``reference``'s on ``layer``."""
    from ntk_peft.analysis import compare_delta_w
    from ntk_peft.experiments.bounds_study import run_matrices

    deltas = {}
    for method in [reference, *methods]:
        found = {name.split(":", 1)[1]: delta for name, delta in run_matrices(out / method).items()}
        if layer in found:
            deltas[method] = found[layer]
    lines = [f"ΔW on {layer} compared with {reference} fine-tuning (‖ΔW_{reference}‖_F = "
             f"{float(deltas[reference].norm()):.4g})",
             "| method | ‖ΔW‖_F | Frobenius distance | cosine | top-8 σ sq. diff | top-8 λ sq. diff | max principal angle |",
             "|---|---|---|---|---|---|---|"]
    for method in methods:
        if method == reference or method not in deltas:
            continue
        if float(deltas[method].norm()) == 0:
            lines.append(f"| {method} | 0 | - | - | - | - | - |")
            continue
        c = compare_delta_w(deltas[method], deltas[reference], 8)
        eigen = "-" if c["eigen_sq_diff"] is None else f"{c['eigen_sq_diff']:.3g}"
        lines.append(f"| {method} | {float(deltas[method].norm()):.4g} | {c['frobenius_distance']:.4g} | "
                     f"{c['cosine']:.3f} | {c['singular_sq_diff']:.3g} | {eigen} | {c['max_principal_angle']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--k", type=int, default=16)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--track-every", type=int, default=20)
    parser.add_argument("--max-eval", type=int, default=None)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default="runs/bench-train")
    parser.add_argument("--compare-layer", default="model.layers.15.self_attn.q_proj",
                        help="layer of the pairwise ΔW table (default: layer 15's q_proj)")
    args = parser.parse_args()
    out = Path(args.out)
    rows = [train_method(m, args, out) for m in args.methods.split(",")]
    table = format_rows(rows)
    methods = args.methods.split(",")
    if "full" in methods:
        table += "\n\n" + pairwise_table(out, methods, args.compare_layer)
    (out / "table.json").write_text(json.dumps(rows, indent=2) + "\n")
    (out / "table.md").write_text(table + "\n")
    print(table)


if __name__ == "__main__":
    main()

"""Which kernel predicts Adam fine-tuning? NTK and SignGD kernels beside `ntk-peft train` runs (LM-Kernel-FT's question).

`kernel_types_table(results, train_runs)` is Markdown: accuracy mean (std) over
seeds of each kernel type on each subset (one ``ntk-compare --kernel ...``
results.json), beside the accuracy of Adam fine-tuning of the adapter of the
same spec (``ntk-peft train`` run folders: config.json + metrics.json); then,
for every subset that was fine-tuned, the gap |kernel − fine-tuning| averaged
over the seeds both have (a per-seed gap: the same k-shot split on both
sides); then the kernels' compute time by type (train and dev blocks, all
subsets of a type computed together) as a ratio to the NTK's. Pure
formatting: everything comes in as parsed JSON.
"""

from __future__ import annotations

import numpy as np

TYPE_LABELS = {"ntk": "NTK", "signgd": "SignGD", "asymmetric_signgd": "Asym. SignGD"}


def _key(kernel: str, subset: str) -> str:
    return subset if kernel == "ntk" else f"{kernel}:{subset}"


def _mean_std(values) -> str:
    values = np.asarray(values, dtype=np.float64)
    return f"{values.mean():.3f} ({values.std(ddof=0):.3f})" if values.size else "-"


def fine_tuning_accuracy(train_runs: list[dict]) -> dict[str, dict[int, float]]:
    """adapter spec -> seed -> eval accuracy, from ``{"config": ..., "metrics": ...}`` per run."""
    out: dict[str, dict[int, float]] = {}
    for run in train_runs:
        out.setdefault(run["config"]["adapter"], {})[int(run["config"]["seed"])] = float(run["metrics"]["eval_accuracy"])
    return out


def kernel_types_table(results: dict, train_runs: list[dict]) -> str:
    """The Markdown tables (see the module docstring)."""
    types = list(results["kernel_types"])
    subsets = results.get("kernel_subsets") or [n for n in results["subsets"] if ":" not in n]  # older files
    per_seed = {r["seed"]: r["accuracy"] for r in results["per_seed"]}
    tuned = fine_tuning_accuracy(train_runs)
    lines = [f"{results['task']}, {results['model']}, k = {results['k']}, seeds {results['seeds']}; kernel models "
             + ", ".join(f"{TYPE_LABELS[t]}: {v['solver']} on the {v['output']} output"
                         for t, v in results["kernel_types"].items()), "",
             "| subset | " + " | ".join(TYPE_LABELS[t] for t in types) + " | Adam fine-tuning |",
             "|---" * (len(types) + 2) + "|"]
    for subset in subsets:
        cells = [_mean_std([per_seed[s][_key(t, subset)] for s in per_seed]) for t in types]
        runs = tuned.get(subset, {})
        cells.append(f"{_mean_std(list(runs.values()))} ({len(runs)} runs)" if runs else "-")
        lines.append(f"| {subset} | " + " | ".join(cells) + " |")
    lines.append("| zero-shot | " + _mean_std([per_seed[s]["zeroshot"] for s in per_seed])
                 + " |" * (len(types) + 1))
    gaps = [subset for subset in subsets if subset in tuned]
    if gaps:
        lines += ["", "Gap to Adam fine-tuning of the same adapter, |kernel − fine-tuned| accuracy, mean (std) "
                  "over the seeds both have:", "",
                  "| subset | seeds | " + " | ".join(TYPE_LABELS[t] for t in types) + " |",
                  "|---" * (len(types) + 2) + "|"]
        for subset in gaps:
            seeds = sorted(set(tuned[subset]) & set(per_seed))
            cells = [_mean_std([abs(per_seed[s][_key(t, subset)] - tuned[subset][s]) for s in seeds]) for t in types]
            lines.append(f"| {subset} | {len(seeds)} | " + " | ".join(cells) + " |")
    by_type = results.get("timing_s", {}).get("train_dev_kernels_by_type")
    if by_type and by_type.get("ntk"):
        lines += ["", "Compute time of the train and dev kernel blocks (every subset of a type together, all "
                  "seeds), as recorded in the blocks:", "",
                  "| kernel | seconds | ratio to NTK |", "|---|---|---|"]
        for t in types:
            lines.append(f"| {TYPE_LABELS[t]} | {by_type[t]:.0f} | {by_type[t] / by_type['ntk']:.2f} |")
    return "\n".join(lines)

"""The RoCoFT study's time on this device, projected from measured unit costs and the study's real workload.

Measured on SmolLM2 (cuda if available, else the CPU) with prompt blocks of 16 of SST-2 (C = 2 classes)
and SST-5 (C = 5):

- ``capture``: recording one block (one forward, C backward passes), per padded token; a seed's train
  kernel records each train block once, and again for each panel of held left blocks before it
  (`ntk_peft.ntk.blocked.panel_width` at the default budget, sized from one prompt's capture);
- ``pair``: one block pair's kernels, per product of the two blocks' padded tokens;
- ``directions``: the subsets' parameter directions over a seed's training prompts, per padded token;
- ``projection``: an evaluation block projected onto each subset's 5 seeds of directions, per padded token;

the last three for the table's subsets (full, row1, col1, lora1) and the ablation's (random and Wanda
rows and columns, run at k = 16 only) apart. These four grow with the classes, each partly: a capture's
forward pass is shared by its C backward passes, a pair's input-side products by its C x C outputs. So
each is measured at C = 2 and 5 and taken at a task's C on the line through the two (in C; in C² for
``pair``);
- ``step``: one fine-tuning step (batch 8, AdamW) of ``full``, ``lora1``, ``row1``, per padded token;
- ``forward``: evaluation forward passes, per padded token.

The workload is the study's own (`ntk_peft.experiments.rocoft_study`): every task's seed-13 train and
dev blocks (train grouped by class, like ``ntk-compare``) and its evaluation subset (at most 1,000,
blocked by length), 5 seeds, 10 epochs. Projected hours per task and k are printed (and written with
``--json``), with the kernel part's cost as task jobs (``--kernel-jobs task``, and about that with ``split``:
one evaluation pass per task) and as per-seed jobs (``--kernel-jobs seed``); the kernel part is
checked against what a finished study job recorded (``--check
results/rocoft-smollm2``: recorded compute seconds / projected, as task and as per-seed jobs; only for
tasks whose λ was picked the projected way, dev kernels or dev projections). On a GPU this gives the projected GPU
time of the whole study.

Usage::

    python benchmarks/bench_rocoft_study.py [--ks 16,64] [--repeats 2] [--check DIR] [--json FILE] [--costs FILE]
        [--dev-costs FILE] [--capture-gib 4]

With ``--dev-costs`` (``bench_dev_scoring.py --json`` output) λ's dev predictions are projected as the
study now makes them, by projections onto one direction per grid λ, instead of dev×train kernels (and
the evaluation reuses the chosen λ's direction).

``--left DIR`` adds what is left of the study in the results folder ``DIR``, job by job as
``ntk-peft study rocoft --kernel-jobs split`` would run it (`rocoft_study.job_done`): a fitting job not done
costs one seed's share of the kernels, an evaluation job not done one evaluation capture and its seeds'
projections, a fine-tuning run not recorded its run; summed over the whole study and over the tables'
required cells (k = 16 everywhere, k = 64 for the single-sentence tasks).
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np
import torch
from timing import cost_measure, floor_label, median_seconds

SEEDS = 5


def padded(batch: dict) -> int:
    return int(batch["attention_mask"].numel())


def unit_costs(repeats: int, measure=median_seconds) -> dict:
    """Seconds per padded token (per token product for ``pair``): ``by_classes`` (rate -> C -> seconds) for
    the costs that grow with the classes, measured on an SST-2 and an SST-5 block; ``rates`` for the rest
    (forward passes, fine-tuning steps), averaged over the two. ``measure(function, repeats)``: seconds of a
    call (`timing.cost_measure`: timed here, or FLOPs at a rate)."""
    from ntk_peft import load_model
    from ntk_peft.experiments.compare import wanda_calibration
    from ntk_peft.experiments.rocoft_study import ABLATION_SUBSETS, TABLE_SUBSETS
    from ntk_peft.models import label_logits
    from ntk_peft.ntk import capture, parse_subsets, subset_params
    from ntk_peft.ntk.directions import project_directions, subset_directions
    from ntk_peft.ntk.fast import fast_kernel
    from ntk_peft.tasks import get_task, load_split, make_batch, to_device

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, tok = load_model("smollm2-135m")
    model = model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    names = [*TABLE_SUBSETS, *ABLATION_SUBSETS]
    rates: dict[str, list[float]] = {}
    by_classes: dict[str, dict[str, float]] = {}
    for task in ("sst2", "sst-5"):
        spec = get_task(task)
        classes = str(len(spec.labels))
        split = load_split(spec, 16, 13)
        calibration = [to_device(b, model) for b in wanda_calibration(tok, spec, names, 16, 13)]
        groups = {"table": TABLE_SUBSETS, "ablation": ABLATION_SUBSETS}
        left = to_device(make_batch(tok, spec, split.train[:16]), model)
        right = to_device(make_batch(tok, spec, split.eval[:16]), model)
        by_classes.setdefault("capture", {})[classes] = measure(lambda: capture(model, right), repeats) / padded(right)
        cap_l, cap_r = capture(model, left), capture(model, right)
        train = [to_device(make_batch(tok, spec, split.train[i:i + 16]), model) for i in range(0, len(split.train), 16)]
        weights = torch.randn(len(split.train), len(spec.labels), 1, generator=torch.Generator().manual_seed(0))
        weights = weights.to(device)
        for group, group_names in groups.items():
            subsets = [subset_params(model, s, seed=0, calibration=calibration) for s in parse_subsets(group_names)]
            with torch.no_grad():
                pair_s = measure(lambda: [fast_kernel(model, s, cap_l, cap_r) for s in subsets], repeats)
            by_classes.setdefault(f"pair_{group}", {})[classes] = pair_s / (padded(left) * padded(right))
            directions = [subset_directions(s, train, weights) for s in subsets]
            rates.setdefault(f"directions_{group}", []).append(
                measure(lambda: [subset_directions(s, train, weights) for s in subsets], 1)
                / sum(padded(b) for b in train))
            seeds = [{k: v.repeat(SEEDS, *([1] * (v.dim() - 1))) for k, v in d.items()} for d in directions]
            with torch.no_grad():
                by_classes.setdefault(f"projection_{group}", {})[classes] = measure(
                    lambda: [project_directions(model, s, cap_r, d) for s, d in zip(subsets, seeds)], repeats) \
                    / padded(right)
        with torch.no_grad():
            rates.setdefault("forward", []).append(measure(lambda: label_logits(model, right), repeats) / padded(right))
        batch = to_device(make_batch(tok, spec, split.train[:8]), model)
        for adapter in ("full", "lora1", "row1"):
            rates.setdefault(f"step_{adapter}", []).append(_step_seconds(adapter, batch, device, repeats, measure)
                                                           / padded(batch))
        cap_l = cap_r = directions = seeds = None  # SST-2's records go before SST-5's are made
    return {"device": str(device), "threads": torch.get_num_threads(), "by_classes": by_classes,
            "rates": {k: float(np.mean(v)) for k, v in rates.items()}}


def _step_seconds(adapter: str, batch: dict, device: torch.device, repeats: int, measure=median_seconds) -> float:
    """One AdamW fine-tuning step (forward, backward, update) of ``adapter`` on a fresh SmolLM2."""
    from ntk_peft import load_model
    from ntk_peft.adapters import apply_adapter
    from ntk_peft.models import label_logits

    model, _ = load_model("smollm2-135m")
    model = model.to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    params = apply_adapter(model, adapter, seed=0).parameters()
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=1e-6)

    def step():
        loss = torch.nn.functional.cross_entropy(label_logits(model, batch).float(), batch["labels"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return measure(step, repeats)


def workload(tok, task: str, k: int, max_eval: int | None = 1000, model=None) -> dict:
    """The blocks one study job runs: padded tokens of every train, dev and evaluation block (seed 13).

    With ``model``, also what sizes the train kernel's panels (`ntk_peft.ntk.blocked.panel_width`): the
    capture bytes per real token (one prompt recorded, as `run_kernel_jobs` does) and the real tokens of
    the largest train block."""
    from ntk_peft.experiments.compare import length_order
    from ntk_peft.ntk import blocked
    from ntk_peft.tasks import get_task, load_split, make_batch

    def blocks(examples: list, size: int = 16) -> list[dict]:
        return [make_batch(tok, spec, examples[i:i + size]) for i in range(0, len(examples), size)]

    spec = get_task(task)
    split = load_split(spec, k, 13)
    evaluation = split.eval
    if max_eval is not None and max_eval < len(evaluation):
        keep = np.sort(np.random.default_rng(0).permutation(len(evaluation))[:max_eval])
        evaluation = [evaluation[i] for i in keep]
    order = length_order(tok, spec, evaluation, {})
    train = blocks(sorted(split.train, key=lambda e: e.label))
    dev = blocks(split.dev)
    evals = blocks([evaluation[i] for i in order])
    batches = blocks(split.train, 8)
    sizing = {}
    if model is not None:
        with torch.no_grad():
            per_token = blocked.record_bytes_per_unit(lambda batch: blocked.capture(model, batch), train[0])
        sizing = {"capture_bytes_per_token": per_token, "largest_train_tokens": max(blocked.tokens(b) for b in train)}
    return {**sizing, "train": [padded(b) for b in train], "dev": [padded(b) for b in dev], "eval": [padded(b) for b in evals],
            "n_train": len(split.train), "n_dev": len(split.dev), "n_eval": len(evaluation), "classes": len(spec.labels),
            "batch_tokens": float(np.mean([padded(b) for b in batches])),
            "eval_tokens_per_example": sum(padded(b) for b in evals) / len(evaluation),
            "dev_tokens_per_example": sum(padded(b) for b in dev) / len(split.dev)}


def at_classes(measured: dict[str, float], classes: int, power: int) -> float:
    """A rate measured at two class counts (``{"2": r2, "5": r5}``), on the line through them in C**power."""
    (c1, r1), (c2, r2) = sorted((int(c), r) for c, r in measured.items())
    slope = (r2 - r1) / (c2**power - c1**power)
    return r1 + slope * (classes**power - c1**power)


def captured_tokens(work: dict, budget: int) -> tuple[float, int, int]:
    """Padded tokens recorded for a seed's train kernel, the panel width and the blocks recorded: every
    train block once, and per panel each train block past it again (`run_kernel_jobs` with a ``budget``;
    without the workload's capture sizes, each block once)."""
    from ntk_peft.ntk.blocked import panel_width

    train = work["train"]
    if "capture_bytes_per_token" not in work:
        return float(sum(train)), len(train), len(train)
    width = panel_width(len(train), work["capture_bytes_per_token"] * work["largest_train_tokens"], budget)
    starts = range(0, len(train), width)
    again = sum(sum(train[start + width:]) for start in starts)
    count = len(train) + sum(len(train[start + width:]) for start in starts)
    return float(sum(train) + again), width, count


def project(work: dict, costs: dict, ablation: bool, epochs: int = 10, dev_costs: dict | None = None,
            capture_budget: int | None = None) -> dict:
    """Projected seconds of one task's kernel job (with the selection ablation's subsets or not) and of
    each fine-tuning run at the unit ``costs`` (`unit_costs`) and the task's number of classes.

    ``dev_costs``: `bench_dev_scoring` unit costs (``by_classes``): λ's dev predictions by projections
    (the study's default) instead of dev×train kernels. ``capture_budget``: the study's ``--capture-gib`` in
    bytes (default 4 GiB), which sets the train kernel's panels."""
    train, dev, evals = work["train"], work["dev"], work["eval"]
    groups = ("table", "ablation") if ablation else ("table",)
    rates = {**costs["rates"], **{name: at_classes(measured, work["classes"], 2 if name.startswith("pair") else 1)
                                  for name, measured in costs["by_classes"].items()}}
    rates = {**rates, **{name: sum(rates[f"{name}_{g}"] for g in groups) for name in ("pair", "directions",
                                                                                         "projection")}}
    from ntk_peft.ntk.blocked import DEFAULT_CACHE_BYTES

    recorded, width, count = captured_tokens(work, DEFAULT_CACHE_BYTES if capture_budget is None else capture_budget)
    panels = math.ceil(len(train) / width)
    pairs = sum(train[i] * train[j] for i in range(len(train)) for j in range(i, len(train)))
    pairs += sum(d * t for d in dev for t in train)
    if dev_costs is not None:  # no dev kernels: a capture of every train and dev block, G directions, projections
        dev_rates = {name: at_classes(measured, work["classes"], 1) for name, measured in dev_costs.items()
                     if name != "pair"}
        pairs -= sum(d * t for d in dev for t in train)
        # measured for the table's four subsets; the ablation's four one-row/column subsets are left out
        # (their directions are a row or column per matrix, small beside full's). The evaluation projects
        # onto the chosen λ's direction kept from these, so it has no directions of its own to compute.
        per_seed = (rates["capture"] * recorded + rates["pair"] * pairs
                    + dev_rates["capture"] * (sum(train) + sum(dev))
                    + dev_rates["directions"] * sum(train) + dev_rates["projection"] * sum(dev))
    else:
        per_seed = (rates["capture"] * (recorded + panels * sum(dev)) + rates["pair"] * pairs
                    + rates["directions"] * sum(train))
    evaluation = {"capture": sum(evals) * rates["capture"], "projection": sum(evals) * rates["projection"]}
    kernels = SEEDS * per_seed + evaluation["capture"] + evaluation["projection"]
    # --kernel-jobs seed: every seed captures the evaluation blocks again (the projections are split, not repeated)
    kernels_seed_jobs = kernels + (SEEDS - 1) * sum(evals) * rates["capture"]
    steps = epochs * math.ceil(work["n_train"] / 8)
    evaluations = rates["forward"] * (work["n_eval"] * work["eval_tokens_per_example"]
                                      + (steps // 50 + 1) * work["n_dev"] * work["dev_tokens_per_example"])
    tuning = {a: steps * rates[f"step_{a}"] * work["batch_tokens"] + evaluations for a in ("full", "lora1", "row1")}
    return {"kernels_s": kernels, "kernels_seed_jobs_s": kernels_seed_jobs, "fine_tuning_run_s": tuning,
            "panel_width": width, "train_blocks_recorded": count,
            "task_s": kernels + SEEDS * sum(tuning.values()), "kernels_per_seed_s": per_seed,
            "evaluation_s": evaluation}


def left_in_study(row: dict, folder: Path) -> dict:
    """Projected seconds left of the row's task and k in the study results ``folder``, job by job as
    ``--kernel-jobs split`` runs them (`study_clock.projected_seconds`, the time limit's own estimate):
    ``{"kernels": ..., "fine_tuning": ...}``."""
    from ntk_peft.experiments.rocoft_study import StudyConfig, job_done, recorded_seeds, study_jobs
    from ntk_peft.experiments.study_clock import projected_seconds

    config = StudyConfig(tasks=[row["task"]], ks=[row["k"]], results=folder, kernel_jobs="split")
    pending = [job for job in study_jobs(config) if not job_done(job, config)]
    unscored = SEEDS - len(recorded_seeds(config, row["task"], row["k"]))  # seeds the evaluation job still scores
    seconds = {"kernels": 0.0, "fine_tuning": 0.0}
    for job in pending:
        seconds["fine_tuning" if job.kind == "train" else "kernels"] += projected_seconds(job, row, SEEDS, unscored)
    return seconds


def main() -> None:
    from ntk_peft import load_model
    from ntk_peft.experiments.rocoft_paper import PAIR_TASKS, SINGLE_TASKS
    from ntk_peft.experiments.rocoft_study import ABLATION_K

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ks", default="16,64")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--check", type=Path, default=None, help="a study results folder to compare against")
    parser.add_argument("--json", default=None, help="also write the results here")
    parser.add_argument("--costs", type=Path, default=None,
                        help="take the unit costs from this earlier --json output instead of measuring them")
    parser.add_argument("--left", type=Path, default=None,
                        help="a study results folder: add the projected time of the jobs it has not done")
    parser.add_argument("--capture-gib", type=float, default=4.0,
                        help="the study's --capture-gib: the memory that sets the train kernels' panels")
    parser.add_argument("--dev-costs", type=Path, default=None,
                        help="bench_dev_scoring.py --json output: project λ's dev predictions by projections (the "
                             "study's default) instead of dev x train kernels")
    parser.add_argument("--flops-at", type=float, default=None, metavar="FLOP/S",
                        help="count each unit's FLOPs instead of timing it, taken at this rate: the floor of a device "
                             "that sustains it (e.g. 6.7e13, an H100 SXM's FP32 peak)")
    args = parser.parse_args()
    if args.costs is not None:
        saved = json.loads(args.costs.read_text())
        if "by_classes" not in saved:
            raise SystemExit(f"{args.costs}: unit costs of an older benchmark (not by classes); measure them again")
        costs = {key: saved[key] for key in ("device", "threads", "by_classes", "rates", "flops_at") if key in saved}
    else:
        costs = {**unit_costs(args.repeats, cost_measure(args.flops_at)), **floor_label(args.flops_at)}
    print(json.dumps(costs), flush=True)
    dev_costs = json.loads(args.dev_costs.read_text())["by_classes"] if args.dev_costs is not None else None
    mode = "projections" if dev_costs else "kernels"  # how λ's dev predictions are projected
    model, tok = load_model("smollm2-135m")
    rows, total = [], 0.0
    for k in (int(x) for x in args.ks.split(",")):
        for task in (*SINGLE_TASKS, *PAIR_TASKS):
            try:
                work = workload(tok, task, k, model=model)
            except Exception as error:  # a split the data cannot give
                print(f"{task} k={k}: {error}")
                continue
            projected = project(work, costs, ablation=k == ABLATION_K, dev_costs=dev_costs,
                                capture_budget=int(args.capture_gib * (1 << 30)))
            row = {"task": task, "k": k, **projected}
            if args.check is not None and (args.check / f"{task}-k{k}" / "results.json").is_file():
                recorded = json.loads((args.check / f"{task}-k{k}" / "results.json").read_text())
                timing = recorded["timing_s"]
                row["recorded_kernels_s"] = timing["kernels_recorded"] + timing["projections_recorded"]
                # older records predate the field: they picked λ from dev kernels; "per seed": a mix
                row["recorded_dev_predictions"] = recorded.get("dev_predictions", "kernels")
                if row["recorded_dev_predictions"] == mode:  # checked only against the same way of working
                    row["recorded_over_projected"] = row["recorded_kernels_s"] / projected["kernels_s"]
                    row["recorded_over_projected_seed_jobs"] = (row["recorded_kernels_s"]
                                                                / projected["kernels_seed_jobs_s"])
            if args.left is not None:
                row["left_s"] = left_in_study(row, args.left)
            total += projected["task_s"]
            rows.append(row)
            print(f"{task:>6} k={k:<3} kernels {projected['kernels_s'] / 3600:6.2f} h, fine-tuning "
                  + ", ".join(f"{a} {s / 60:5.1f} min" for a, s in projected["fine_tuning_run_s"].items())
                  + f" per run, task {projected['task_s'] / 3600:6.2f} h; per-seed kernel jobs "
                  + f"{projected['kernels_seed_jobs_s'] / projected['kernels_s']:.2f}x the kernels"
                  + (f"  (recorded/projected kernels {row['recorded_over_projected']:.2f}, as per-seed jobs "
                     f"{row['recorded_over_projected_seed_jobs']:.2f})" if "recorded_over_projected" in row else "")
                  + (f"  (recorded with dev predictions by {row['recorded_dev_predictions']}: not compared)"
                     if "recorded_kernels_s" in row and "recorded_over_projected" not in row else ""), flush=True)
    print(f"whole study on {costs['device']}: {total / 3600:.2f} h"
          + (f" ({total * costs['flops_at']:.3g} FLOPs counted)" if "flops_at" in costs else ""))
    left = {}
    if args.left is not None:
        required = [r for r in rows if r["k"] == 16 or r["task"] in SINGLE_TASKS]  # the done-when cells
        for name, part in (("whole study", rows), ("tables' required cells", required)):
            kernels, tuning = (sum(r["left_s"][key] for r in part) / 3600 for key in ("kernels", "fine_tuning"))
            left[name] = {"kernels_h": kernels, "fine_tuning_h": tuning, "total_h": kernels + tuning}
            print(f"left in {args.left} ({name}): {kernels + tuning:.1f} h (kernels {kernels:.1f}, "
                  f"fine-tuning {tuning:.1f})")
    if args.json:
        Path(args.json).write_text(json.dumps({**costs, "dev_predictions": mode, "capture_gib": args.capture_gib,
                                               "rows": rows,
                                               "total_h": total / 3600, **({"left_h": left} if left else {})},
                                              indent=2) + "\n")


if __name__ == "__main__":
    main()

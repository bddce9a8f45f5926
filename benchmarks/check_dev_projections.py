"""Dev projections against dev kernels at full scale: one study seed whose store holds both.

A seed run with dev kernels (``--dev-predictions kernels``) and then again with projections keeps the
dev×train kernel blocks and the dev projections in one store. This reads both and reports, per kernel
subset, the largest difference between the projections and K_dev·W (relative to the sum's scale,
Σ|K_dev|·|W|) over every grid λ, and whether both pick the same λ with the same dev accuracies.

Usage::

    python benchmarks/check_dev_projections.py --task subj --k 16 --seed 100 \\
        --run runs/rocoft/kernels/subj-k16/seed-100-job [--json FILE]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file


def main() -> None:
    from ntk_peft import load_model
    from ntk_peft.experiments.compare import plan_seed, wanda_calibration
    from ntk_peft.experiments.dev_projections import dev_projections, grid_fits, pick_from_projections, stacked_weights
    from ntk_peft.experiments.rocoft_study import StudyConfig
    from ntk_peft.ntk import kernel_blocks
    from ntk_peft.ntk.kernel_types import KernelType
    from ntk_peft.solvers import select_lambda
    from ntk_peft.tasks import get_task

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", required=True)
    parser.add_argument("--k", type=int, required=True)
    parser.add_argument("--seed", type=int, required=True)
    parser.add_argument("--run", type=Path, required=True, help="the seed job's run folder (holds seed-<seed>/)")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    config = StudyConfig()
    spec = get_task(args.task)
    names = ["full", *[s for s in config.subsets(args.k) if s != "full"]]
    model, tok = load_model(config.model)
    calibration = wanda_calibration(tok, spec, names, args.k, config.seeds[0])
    plan = plan_seed(model, tok, config.model, spec.name, names, args.k, args.seed, args.run,
                     max_eval=config.max_eval, calibration=calibration)
    dev = kernel_blocks(model, plan.batches["train"], plan.batches["dev"], names, store=plan.store,
                        name="dev", kernel=KernelType.NTK, output="labels", calibration=calibration,
                        progress=False)  # stored: read back
    train = load_file(str(plan.folder / "train_kernels.safetensors"))
    f0 = load_file(str(plan.folder / "f0.safetensors"))
    y_train = np.array([e.label for e in plan.train])
    y_dev = np.array([e.label for e in plan.dev])
    f0_train, f0_dev = f0["train"].numpy(), f0["dev"].numpy()
    fits = {n: grid_fits("klr", train[f"K/{n}"].numpy(), y_train, f0_train) for n in names}
    stacked = {n: stacked_weights(models) for n, (_, models) in fits.items()}
    # the study's own weights, so its stored projections are read back (the same hash), not recomputed
    projections = dev_projections(model, plan, {n: w for n, (w, _) in stacked.items()}, calibration=calibration,
                                  progress=False)
    rows = {}
    for name in names:
        kt, kd = train[f"K/{name}"].numpy(), dev[name].permute(1, 0, 3, 2).numpy()
        (lambdas, models), (weights, counts) = fits[name], stacked[name]
        expected = np.einsum("jidc,ics->jds", kd, weights.numpy())
        terms = np.einsum("jidc,ics->jds", np.abs(kd), np.abs(weights.numpy()))
        index, accuracies = pick_from_projections(lambdas, models, counts, projections[name], y_dev, f0_dev)
        chosen, by_kernels = select_lambda("klr", kt, y_train, kd, y_dev, f0_train, f0_dev)
        rows[name] = {"max_relative_difference": float(np.max(np.abs(projections[name] - expected) / terms)),
                      "same_lambda": bool(lambdas[index] == chosen), "same_dev_accuracies": accuracies == by_kernels}
        print(name, rows[name], flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"task": spec.name, "k": args.k, "seed": args.seed,
                                               "dtype": str(next(model.parameters()).dtype), "subsets": rows},
                                              indent=2) + "\n")


if __name__ == "__main__":
    torch.set_grad_enabled(True)
    main()

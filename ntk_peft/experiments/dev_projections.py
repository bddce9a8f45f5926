"""λ selection without dev×train kernels: dev predictions from projections onto one direction per λ.

The dev split only picks λ: for each grid value the fitted model predicts
f0 + K_dev·W_λ, and K_dev·W_λ = ⟨∂f(x)/∂θ_S, v_λ⟩ with v_λ = Σ W_λ·∂f(x_i)/∂θ_S
over the seed's training prompts (`ntk_peft.ntk.directions`). So the G grid
values need G directions per subset, formed from one capture of each training
block (`recorded_directions`, a GEMM per Linear weight and direction), and one
capture and projection per dev block, in place of the n_dev × n_train kernel
blocks (whose cost grows with the product of the two splits' tokens and the
square of the classes). Exact: the same predictions, so the same λ, up to
float rounding (`benchmarks/bench_dev_scoring.py` measures which way is
cheaper per task).

The directions and the dev projections are blocks of the seed's own store,
under names carrying a hash of the grid fits' weights: an interrupted run
resumes, another fit never reads stale projections, and their compute seconds
count with the seed's kernels. The directions (model-sized for ``full``) are
deleted once every projection is stored; a small block keeps their compute
time, and the chosen λ's columns are kept under `kept_direction_name`, where
the evaluation's projections (`ntk_peft.experiments.projections`) find the
direction of the very model they score instead of computing it again.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open

from ntk_peft.ntk import batches_hash, capture, distributed, parse_subsets, subset_params
from ntk_peft.ntk.blocked import tokens
from ntk_peft.ntk.directions import project_directions, recorded_directions
from ntk_peft.ntk.schedule import Block, run_blocks
from ntk_peft.ntk.store import tensor_hash
from ntk_peft.solvers import LAMBDA_GRID, best_lambda, lambda_grid, make_solver
from ntk_peft.tasks import to_device

DEV_PREDICTIONS = ("kernels", "projections")  # how λ selection gets its dev predictions


def grid_fits(solver: str, kernel_train: np.ndarray, y_train: np.ndarray, f0_train: np.ndarray | None,
              grid=LAMBDA_GRID) -> tuple[list[float], list]:
    """``(lambdas, models)``: one model fitted at each λ of `lambda_grid`."""
    lambdas = lambda_grid(kernel_train, grid)
    return lambdas, [make_solver(solver, lam).fit(kernel_train, y_train, f0_train) for lam in lambdas]


def stacked_weights(models: list) -> tuple[torch.Tensor, list[int]]:
    """Every model's direction weights side by side, ``[n_train, O, S_total]`` float64, and each model's S."""
    weights = [np.ascontiguousarray(m.direction_weights()) for m in models]
    return torch.from_numpy(np.concatenate(weights, axis=2)), [w.shape[2] for w in weights]


def pick_from_projections(lambdas: list[float], models: list, counts: list[int], projections: np.ndarray,
                          y_dev: np.ndarray, f0_dev: np.ndarray | None) -> tuple[int, list[float]]:
    """``(index of the chosen λ, dev accuracies)`` from the dev projections ``[n_dev, O, S_total]`` onto the
    stacked directions (`stacked_weights`), with `select_lambda`'s rule (ties: the larger λ)."""
    accuracies, first = [], 0
    for model, count in zip(models, counts):
        predicted = model.predict_from_projections(projections[:, :, first : first + count], f0_dev)
        accuracies.append(float(np.mean(predicted == np.asarray(y_dev))))
        first += count
    chosen = best_lambda(lambdas, accuracies)
    return lambdas.index(chosen), accuracies


def kept_direction_name(subset: str, weights: torch.Tensor, targets="all", seed: int = 0,
                        calibration=None) -> str:
    """The block of a seed's store that keeps the direction of ``weights`` ``[n_train, O, S]`` (float64) over
    one subset, resolved with ``targets``, ``seed`` and ``calibration`` (as `subset_params`): a hash of all
    of them, so only the very same fit over the same parameters finds it."""
    parts = [subset, repr(targets), str(seed), "" if calibration is None else batches_hash(calibration),
             tensor_hash([weights])]
    return "direction-of-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def dev_projections(model, plan, weights: dict[str, torch.Tensor], *, calibration=None, progress: bool = True,
                    keep: Callable[[dict[str, np.ndarray]], dict[str, slice]] | None = None) -> dict[str, np.ndarray]:
    """Subset -> ``[n_dev, O, S]`` float64: each dev prompt's gradient projected on the directions of the
    weights ``[n_train, O, S]`` over the seed's training prompts (every rank computes its share of the
    blocks and gets the result).

    Args:
        plan: the seed's `SeedPlan` (its store, train and dev blocks).
        weights: subset spec (as in the kernels) -> direction weights; the NTK of the label logits.
        calibration: Wanda's calibration blocks (as given to the kernels).
        keep: the projections -> subset -> the columns of its directions to keep (the chosen λ's), each
            saved under `kept_direction_name` of those columns' weights; read on rank 0 only.
    """
    names = list(weights)
    digest = tensor_hash([weights[n] for n in names])[:16]
    store, dev_batches = plan.store, plan.batches["dev"]
    directions_name, projections_name = f"dev-directions-{digest}", f"dev-projections-{digest}"
    store.claim(projections_name, {"kernel": "projection", "subsets": names, "weights_hash": digest})
    keys = tuple(f"P/{n}" for n in names)
    todo = [Block(store, projections_name, 0, j, tokens(b), keys=keys) for j, b in enumerate(dev_batches)]
    needed = distributed.broadcast(distributed.is_main() and any(not store.readable(*b.key, keys=keys)
                                                                 for b in todo))
    state: dict = {}

    def subsets():
        if "subsets" not in state:
            state["subsets"] = {str(s): subset_params(model, s, "all", 0, calibration) for s in parse_subsets(names)}
        return state["subsets"]

    def compute_directions(block: Block) -> dict[str, torch.Tensor]:
        batches = [to_device(b, model) for b in plan.batches["train"]]
        directions = recorded_directions(model, subsets(), batches, weights)
        return {f"V/{n}/{key}": value for n, part in directions.items() for key, value in part.items()}

    def directions(name: str) -> dict[str, torch.Tensor]:
        if "V" not in state:
            device = next(model.parameters()).device
            state["V"] = {key: value.to(device) for key, value in store.load(directions_name, 0, 0).items()}
        prefix = f"V/{name}/"
        return {key[len(prefix):]: value for key, value in state["V"].items() if key.startswith(prefix)}

    def compute_projections(block: Block) -> dict[str, torch.Tensor]:
        cap = capture(model, to_device(dev_batches[block.j], model))
        return {f"P/{n}": project_directions(model, sub, cap, directions(n)) for n, sub in subsets().items()}

    if needed:
        train_tokens = float(sum(tokens(b) for b in plan.batches["train"]))
        run_blocks([Block(store, directions_name, 0, 0, train_tokens)], compute_directions, progress=progress,
                   desc="dev directions")
        run_blocks(todo, compute_projections, progress=progress, desc="dev projections")
        state.clear()
    blocks = [store.load(projections_name, 0, j) for j in range(len(dev_batches))]
    projections = {n: torch.cat([b[f"P/{n}"] for b in blocks]).numpy() for n in names}
    if distributed.is_main() and store.readable(directions_name, 0, 0):  # every projection is stored (this run or
        # one cut short after them): keep the directions' time and the chosen columns, not the whole tensors
        kept = keep(projections) if keep is not None else {}
        with safe_open(str(store.block_path(directions_name, 0, 0)), framework="pt") as handle:
            for n, columns in kept.items():
                prefix = f"V/{n}/"
                part = {key[len(prefix):]: handle.get_slice(key)[columns].contiguous()
                        for key in handle.keys() if key.startswith(prefix)}
                name = kept_direction_name(n, weights[n][:, :, columns], calibration=calibration)
                store.save(name, 0, 0, part, seconds=0.0)  # its time is counted with the directions'
        seconds = store.compute_seconds(directions_name)
        store.save(f"{directions_name}-seconds", 0, 0, {"seconds": torch.tensor([seconds], dtype=torch.float64)},
                   seconds=seconds)
        store.block_path(directions_name, 0, 0).unlink(missing_ok=True)
    distributed.barrier()
    return projections

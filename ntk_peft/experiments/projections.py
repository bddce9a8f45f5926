"""Scoring the evaluation set of every seed by projections, without eval×train kernels.

Each fitted kernel model predicts through K_eval·W (`direction_weights`), and
K_eval·W = ⟨∂f(x)/∂θ_S, v⟩ with v = Σ W·∂f(x_i)/∂θ_S over the seed's training
prompts (`ntk_peft.ntk.directions`). The seeds share the evaluation set, so
each evaluation block is recorded once and projected onto every seed's
direction of every kernel at once. Blocks go through `run_blocks` (sharded over
torch.distributed ranks) into a `KernelStore` under a folder named by a hash of
the directions' weights and the inputs, so an interrupted run resumes, and
different fits or evaluation sets never share stale projections. A model whose
λ was picked from dev projections has its direction already, kept in its
seed's store (`kept_direction_name`): it is read, not computed again.

Sign kernels (``kernel`` not ``ntk``) project the same way with the transforms
of `direction_plan`: a SignGD model's direction is Σ W·sign(∂f(x_i)/∂θ_S)
(from per-example gradients, `gradient_directions`) and is projected on
sign(∂f(x)/∂θ_S); the asymmetric LS-SVM has one direction per side.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

import ntk_peft
from ntk_peft.experiments.dev_projections import kept_direction_name
from ntk_peft.experiments.scoring import score_predictions
from ntk_peft.ntk import KernelStore, batches_hash, capture, distributed, model_hash, parse_subsets, subset_params
from ntk_peft.ntk.blocked import tokens
from ntk_peft.ntk.directions import gradient_directions, project_directions, reference_projection, subset_directions
from ntk_peft.ntk.kernel_types import KernelType, direction_plan, output_map
from ntk_peft.ntk.schedule import Block, run_blocks
from ntk_peft.ntk.store import tensor_hash
from ntk_peft.tasks import to_device


def _weights(fits, names: list[str], keys: dict[str, str]) -> dict[str, list[torch.Tensor]]:
    """Subset -> per seed W ``[n_train, O, S]`` (float64) of the model fitted on its kernel (``keys[subset]``)."""
    return {n: [torch.from_numpy(np.ascontiguousarray(f.models[keys[n]].direction_weights())) for f in fits]
            for n in names}


def _store(folder: Path, model, model_name: str, fits, names: list[str], weights, eval_batches) -> KernelStore:
    """The projections' store, in a folder named by everything they depend on (fits, train and eval inputs):
    another fit or another evaluation set gets a folder of its own, and a rerun finds its blocks."""
    train_hashes = [batches_hash(f.plan.batches["train"]) for f in fits]
    eval_hash = batches_hash(eval_batches)
    digest = hashlib.sha256((tensor_hash([w for n in names for w in weights[n]]) + "".join(train_hashes) + eval_hash)
                            .encode()).hexdigest()
    meta = {"model": model_name, "model_hash": model_hash(model), "subsets": names,
            "seeds": [f.plan.seed for f in fits], "inputs_hash": eval_hash,
            "train_inputs_hashes": train_hashes, "directions_hash": digest,
            "block_size": fits[0].plan.block_size,
            "versions": {"ntk_peft": ntk_peft.__version__, "torch": torch.__version__}}
    return KernelStore(folder / digest[:16], meta)


def score_with_projections(model, fits, names: list[str], folder: Path, *, model_name: str,
                           implementation: str = "fast", targets="all", seed: int = 0,
                           progress: bool = True, kernel: str = "ntk", output: str = "labels",
                           keys: dict[str, str] | None = None, calibration=None) -> tuple[list[dict[str, float]], float]:
    """Eval accuracy per seed and kernel from projections; returns (accuracies, compute seconds recorded).

    The directions (one backward pass over a seed's training prompts per seed and kernel) are
    computed as blocks of the same store, so an interrupted run keeps them, and removed once every
    projection is stored. Under torch.distributed the directions and evaluation blocks are shared out
    over the ranks (every rank needs the same fitted models); rank 0 returns the accuracies, the
    others empty dicts.

    Args:
        fits: `SeedFit` per seed (same evaluation set and blocks).
        names: kernel names (subset specs), as fitted.
        folder: where the projection blocks are kept.
        targets, seed, calibration: as in `kernel_blocks` (the same subsets the kernels were of).
        kernel, output: the kernel type and output the models were fitted on.
        keys: subset -> the fitted model's name in ``fit.models`` (default: the subset).
        Accuracies are keyed like ``keys``' values.
    """
    plan = fits[0].plan
    eval_batches = plan.batches["eval"]
    kernel = KernelType.parse(kernel)
    keys = keys or {n: n for n in names}
    weights = _weights(fits, names, keys)
    store = _store(folder, model, model_name, fits, names, weights, eval_batches)
    extra = {} if kernel is KernelType.NTK else {"kernel_type": kernel.value, "output": output}
    store.claim("eval", {**extra, "kernel": "projection", "subsets": names, "targets": targets
                         if isinstance(targets, str) else list(targets), "seed": seed,
                         "implementation": implementation, "dtype": str(_dtype(model)).replace("torch.", "")})
    counts = {n: [w.shape[2] for w in weights[n]] for n in names}  # directions per seed
    plans = {n: [pair for c in counts[n] for pair in direction_plan(kernel, c)] for n in names}  # per stacked column
    block_keys = tuple(f"P/{n}" for n in names)
    todo = [Block(store, "eval", 0, j, tokens(batch), keys=block_keys) for j, batch in enumerate(eval_batches)]
    needed = distributed.broadcast(distributed.is_main() and any(not store.readable(*b.key, keys=block_keys)
                                                                 for b in todo))

    def recorded(batch: dict):
        """The capture of a block's outputs (the label logits, or their difference)."""
        cap = capture(model, batch)
        return cap.with_outputs(output_map(output, cap.logits.shape[1]))
    state: dict = {}

    def subsets():
        if "subsets" not in state:
            state["subsets"] = {str(s): subset_params(model, s, targets, seed, calibration)
                                  for s in parse_subsets(names)}
        return state["subsets"]

    def compute_direction(block: Block) -> dict[str, torch.Tensor]:
        """One seed's directions of one kernel (block ``direction-<seed index>-<kernel index>``)."""
        name, fit = names[block.j], fits[block.i]
        if kernel is KernelType.NTK:
            kept = kept_direction_name(name, weights[name][block.i], targets, seed, calibration)
            if fit.plan.store.readable(kept, 0, 0):  # formed with the dev projections of the chosen λ
                return {key: v.to(_dtype(model)) for key, v in fit.plan.store.load(kept, 0, 0).items()}
            # one backward pass over the prompts (the sum over examples first)
            weight = weights[name][block.i].to(device=_device(model), dtype=_dtype(model))
            batches = [to_device(b, model) for b in fit.plan.batches["train"]]
            return subset_directions(subsets()[name], batches, weight)
        batches = [to_device(b, model) for b in fit.plan.batches["train"]]
        weight = weights[name][block.i]  # sign kernels: per-example gradients, transformed, then summed
        captures = [recorded(b) for b in batches]
        columns = [gradient_directions(model, subsets()[name], captures, weight[..., s : s + 1], transform)
                   for s, (transform, _) in enumerate(direction_plan(kernel, weight.shape[2]))]
        return {key: torch.cat([c[key] for c in columns]).to(_dtype(model)) for key in columns[0]}

    if needed:  # directions (one backward pass per seed and kernel) as blocks: shared over ranks, resumable
        cost = [float(sum(tokens(b) for b in f.plan.batches["train"])) for f in fits]
        run_blocks([Block(store, "direction", k, m, cost[k]) for m in range(len(names)) for k in range(len(fits))],
                   compute_direction, progress=progress, desc="eval directions")

    def directions(name: str) -> dict[str, torch.Tensor]:
        """Every seed's directions of one kernel side by side (read once per rank; a `full` one is model-sized)."""
        if name not in state:
            stacked, first = None, 0
            for k in range(len(fits)):
                one = store.load("direction", k, names.index(name))
                if stacked is None:
                    stacked = {key: v.new_empty(sum(counts[name]), *v.shape[1:]) for key, v in one.items()}
                for key, v in one.items():
                    stacked[key][first : first + v.shape[0]] = v
                first += counts[name][k]
                del one
            state[name] = {key: v.to(_device(model)) for key, v in stacked.items()}
        return state[name]

    def grouped(name: str, columns: list[int]) -> dict[str, torch.Tensor]:
        """The directions of one projection transform's columns, gathered once (not per block: for ``full`` a
        copy is model-sized per column)."""
        key = (name, tuple(columns))
        if key not in state:
            stacked = directions(name)
            if len(columns) == len(plans[name]):
                state[key] = stacked
            else:  # split every group at once, then drop the stacked copy (memory stays one copy)
                for transform_ in dict.fromkeys(t for _, t in plans[name]):
                    group = tuple(s for s, (_, t) in enumerate(plans[name]) if t is transform_)
                    state[(name, group)] = {k: v[list(group)] for k, v in stacked.items()}
                del state[name], stacked
        return state[key]

    def project(name: str, batch: dict, cap) -> torch.Tensor:
        """``[n, O, S_total]``: each stacked column projected with its transform (columns grouped by it)."""
        out = None
        for transform in dict.fromkeys(t for _, t in plans[name]):
            columns = [s for s, (_, t) in enumerate(plans[name]) if t is transform]
            part = grouped(name, columns)
            if cap is not None:
                values = project_directions(model, subsets()[name], cap, part, transform)
            else:
                values = reference_projection(subsets()[name], batch, part, transform,
                                              output_map(output, batch["label_token_ids"].numel()))
            if out is None:
                out = values.new_zeros(*values.shape[:2], len(plans[name]))
            out[..., columns] = values
        return out

    def compute(block: Block) -> dict[str, torch.Tensor]:
        batch = to_device(eval_batches[block.j], model)
        cap = recorded(batch) if implementation == "fast" else None
        return {f"P/{n}": project(n, batch, cap) for n in names}

    run_blocks(todo, compute, progress=progress, desc="eval projections")
    if needed and distributed.is_main():  # every projection is stored: the directions are not needed again
        seconds = store.compute_seconds("direction")  # kept (in a small block) for the compute time recorded
        store.save("directions", 0, 0, {"seconds": torch.tensor([seconds], dtype=torch.float64)}, seconds=seconds)
        for path in (store.folder / "blocks").glob("direction-*.safetensors"):
            path.unlink(missing_ok=True)
    if distributed.is_main():  # and the seeds' kept directions (`kept_direction_name`) are not needed either
        for fit in fits:
            for path in (fit.plan.store.folder / "blocks").glob("direction-of-*.safetensors"):
                path.unlink(missing_ok=True)
    state.clear()
    if not distributed.is_main():  # rank 0 scores (it alone holds f0)
        return [{} for _ in fits], 0.0
    blocks = [store.load("eval", 0, j) for j in range(len(eval_batches))]
    restore = torch.from_numpy(np.argsort(plan.eval_order))
    accuracies: list[dict[str, float]] = [{} for _ in fits]
    for n in names:
        projections = torch.cat([b[f"P/{n}"] for b in blocks])[restore].numpy()  # [n_eval, C, S_total], data order
        first = 0
        for k, fit in enumerate(fits):
            part = projections[:, :, first : first + counts[n][k]]
            first += counts[n][k]
            offsets = fit.f0["eval"].numpy() if fit.offset else None
            accuracies[k][keys[n]] = score_predictions(fit, keys[n],
                                                       fit.models[keys[n]].predict_from_projections(part, offsets))
    return accuracies, store.compute_seconds("eval") + store.compute_seconds("directions")


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype

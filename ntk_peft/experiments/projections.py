"""Scoring the evaluation set of every seed by projections, without eval×train kernels.

Each fitted kernel model predicts through K_eval·W (`direction_weights`), and
K_eval·W = ⟨∂f(x)/∂θ_S, v⟩ with v = Σ W·∂f(x_i)/∂θ_S over the seed's training
prompts (`ntk_peft.ntk.directions`). The seeds share the evaluation set, so
each evaluation block is recorded once and projected onto every seed's
direction of every kernel at once. Blocks go through `run_blocks` (sharded over
torch.distributed ranks) into a `KernelStore` under a folder named by a hash of
the directions' weights and the inputs, so an interrupted run resumes, and
different fits or evaluation sets never share stale projections.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

import ntk_peft
from ntk_peft.ntk import KernelStore, batches_hash, capture, distributed, model_hash, parse_subsets, subset_params
from ntk_peft.ntk.blocked import to_device, tokens
from ntk_peft.ntk.directions import project_directions, reference_projection, subset_directions
from ntk_peft.ntk.schedule import Block, run_blocks
from ntk_peft.ntk.store import tensor_hash


def _weights(fits, names: list[str]) -> dict[str, list[torch.Tensor]]:
    """Kernel name -> per seed W ``[n_train, C, S]`` (float64)."""
    return {n: [torch.from_numpy(np.ascontiguousarray(f.models[n].direction_weights())) for f in fits] for n in names}


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
                           progress: bool = True) -> tuple[list[dict[str, float]], float]:
    """Eval accuracy per seed and kernel from projections; returns (accuracies, compute seconds recorded).

    Under torch.distributed the evaluation blocks are shared out over the ranks (every rank needs
    the same fitted models); rank 0 returns the accuracies, the others empty dicts.

    Args:
        fits: `SeedFit` per seed (same evaluation set and blocks).
        names: kernel names (subset specs), as fitted.
        folder: where the projection blocks are kept.
        targets, seed: as in `kernel_blocks` (the same subsets the kernels were of).
    """
    plan = fits[0].plan
    eval_batches = plan.batches["eval"]
    weights = _weights(fits, names)
    store = _store(folder, model, model_name, fits, names, weights, eval_batches)
    store.claim("eval", {"kernel": "projection", "subsets": names, "targets": targets if isinstance(targets, str)
                         else list(targets), "seed": seed, "implementation": implementation,
                         "dtype": str(_dtype(model)).replace("torch.", "")})
    counts = {n: [w.shape[2] for w in weights[n]] for n in names}  # directions per seed
    state: dict = {}

    def directions():
        """Subsets and every seed's directions, built on a rank's first missing block only."""
        if not state:
            subsets = {str(s): subset_params(model, s, targets, seed) for s in parse_subsets(names)}
            state["subsets"], state["directions"] = subsets, {}
            for n in names:  # every seed's directions side by side, written in place (a `full` one is model-sized)
                stacked, first = None, 0
                for f, w in zip(fits, weights[n]):
                    one = subset_directions(subsets[n], [to_device(b, model) for b in f.plan.batches["train"]],
                                            w.to(device=_device(model), dtype=_dtype(model)))
                    if stacked is None:
                        stacked = {k: v.new_empty(sum(counts[n]), *v.shape[1:]) for k, v in one.items()}
                    for k, v in one.items():
                        stacked[k][first : first + v.shape[0]] = v
                    first += w.shape[2]
                    del one
                state["directions"][n] = stacked
        return state["subsets"], state["directions"]

    def compute(block: Block) -> dict[str, torch.Tensor]:
        subsets, vectors = directions()
        batch = to_device(eval_batches[block.j], model)
        if implementation == "fast":
            recorded = capture(model, batch)
            return {f"P/{n}": project_directions(model, subsets[n], recorded, vectors[n]) for n in names}
        return {f"P/{n}": reference_projection(subsets[n], batch, vectors[n]) for n in names}

    keys = tuple(f"P/{n}" for n in names)
    todo = [Block(store, "eval", 0, j, tokens(batch), keys=keys) for j, batch in enumerate(eval_batches)]
    run_blocks(todo, compute, progress=progress, desc="eval projections")
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
            labels = np.array([e.label for e in fit.plan.evaluation])
            accuracies[k][n] = float(np.mean(fit.models[n].predict_from_projections(part, offsets) == labels))
    return accuracies, store.compute_seconds("eval")


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype

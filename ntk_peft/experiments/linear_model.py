"""Adapting the last layer of a frozen deep linear model (Zeng & Lee; MoRe theorems A.3/A.4).

The frozen model is W = W_1 ⋯ W_L (random, full rank), the target W̄ (random).
With prefix P = W_1 ⋯ W_{L−1}, the adapted model is Ŵ = P (W_L + Δ) and the
regularised error Ẽ = P⁻¹ (W̄ − W). For each adapter class Δ is found by

(a) the closed-form projection of Ẽ onto the class (what the theorems analyse), and
(b) L-BFGS on the adapter's own parameters, from its initialisation, on ‖W̄ − Ŵ‖_F²;

and the achieved ‖W̄ − Ŵ‖_F² is reported beside the theorems' right-hand side
‖P‖_F²·‖Ẽ − P_M(Ẽ)‖_F² (and the tighter ‖P‖_2² form).
"""

from __future__ import annotations

import math

import torch

from ntk_peft.adapters import parse_spec
from ntk_peft.analysis import cols_project, lowrank_project, monarch_params, monarch_project, rows_project
from ntk_peft.errors import UserError
from ntk_peft.kernels import monarch_matmul_reference


def monarch_dense(w1: torch.Tensor, w2: torch.Tensor, m: int, n: int) -> torch.Tensor:
    """ΔW ``[m, n]`` of ``more{N}x{r}`` factors (the adapter's zero-padded input, truncated output)."""
    eye = torch.eye(n, w1.shape[0] * w1.shape[2], dtype=w1.dtype)
    return monarch_matmul_reference(eye, w1, w2)[:, :m].T


def random_linear_model(d: int, depth: int, seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Frozen layers ``[depth × (d, d)]`` (entries N(0, 1/d) plus the identity, well conditioned) and a
    target ``(d, d)`` with N(0, 1/d) entries, in float64."""
    g = torch.Generator().manual_seed(seed)
    layers = [torch.eye(d, dtype=torch.float64) + torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)
              for _ in range(depth)]
    return layers, torch.randn(d, d, generator=g, dtype=torch.float64) / math.sqrt(d)


def _product(matrices: list[torch.Tensor], d: int) -> torch.Tensor:
    out = torch.eye(d, dtype=torch.float64)
    for matrix in matrices:
        out = out @ matrix
    return out


def _parametrisation(kind: str, config: tuple, d: int, e_tilde: torch.Tensor, g: torch.Generator):
    """(initial parameters, function params -> Δ, parameter count) of one adapter class."""
    if kind == "monarch":
        blocks, rank = config
        b = math.ceil(d / blocks)
        w1 = (torch.rand(blocks, rank, b, generator=g, dtype=torch.float64) * 2 - 1) / math.sqrt(b)
        w2 = torch.zeros(blocks, b, rank, dtype=torch.float64)
        return [w1, w2], (lambda p: monarch_dense(p[0], p[1], d, d)), monarch_params(d, d, blocks, rank)
    if kind == "lowrank":
        (rank,) = config
        a = torch.randn(rank, d, generator=g, dtype=torch.float64) / math.sqrt(d)
        return [torch.zeros(d, rank, dtype=torch.float64), a], (lambda p: p[0] @ p[1]), 2 * d * rank
    if kind in ("rows", "cols"):
        (count,) = config
        chosen = (rows_project if kind == "rows" else cols_project)(e_tilde, count).indices
        dim = 0 if kind == "rows" else 1
        values = torch.zeros((count, d) if dim == 0 else (d, count), dtype=torch.float64)
        return [values], (lambda p: torch.zeros(d, d, dtype=torch.float64).index_copy(dim, chosen, p[0])), count * d
    raise ValueError(f"unknown adapter class {kind!r}")


def _project(kind: str, config: tuple, e_tilde: torch.Tensor) -> tuple[torch.Tensor, float]:
    """(Δ, ‖Ẽ − Δ‖_F) of the closed-form projection."""
    if kind == "monarch":
        result = monarch_project(e_tilde, *config)
    elif kind == "lowrank":
        result = lowrank_project(e_tilde, *config)
    else:
        result = (rows_project if kind == "rows" else cols_project)(e_tilde, *config)
    return result.matrix, result.error


# The adapter families the experiment knows, by spec kind: (its class name here, the spec's numbers).
CLASS_OF_KIND = {"more": "monarch", "lora": "lowrank", "row": "rows", "col": "cols"}
DEFAULT_CLASSES = ("more4x4", "more4x8", "more2x2", "lora4", "lora8", "row4")


def adapter_class(text) -> tuple[str, tuple, str]:
    """``(class, numbers, spec)`` of an adapter spec the experiment knows: ``more{N}x{r}``, ``lora{r}``,
    ``row{r}``, ``col{r}`` (the spec grammar of everything else)."""
    spec = parse_spec(text)
    if spec.kind not in CLASS_OF_KIND:
        raise UserError(f"the linear-model experiment compares {', '.join(CLASS_OF_KIND)} adapters; got {spec}")
    numbers = (spec.blocks, spec.rank) if spec.kind == "more" else (spec.rank,)
    return CLASS_OF_KIND[spec.kind], numbers, str(spec)


def linear_model_experiment(d: int = 32, depth: int = 3, classes=DEFAULT_CLASSES, seed: int = 0,
                            iterations: int = 4) -> list[dict]:
    """One row per adapter spec in ``classes``: ``{"class", "config" (the spec), "params", "projection_error",
    "descent_error", "bound_frobenius", "bound_spectral"}`` (all squared Frobenius errors ‖W̄ − Ŵ‖_F²)."""
    classes = [adapter_class(c) for c in classes]
    layers, target = random_linear_model(d, depth, seed)
    prefix, last = _product(layers[:-1], d), layers[-1]
    e_tilde = torch.linalg.solve(prefix, target - prefix @ last)
    prefix_f2 = float(prefix.norm() ** 2)
    prefix_22 = float(torch.linalg.matrix_norm(prefix, 2) ** 2)
    g = torch.Generator().manual_seed(seed + 1)
    rows = []
    for kind, config, spec in classes:
        delta, residual = _project(kind, config, e_tilde)
        achieved = float((target - prefix @ (last + delta)).norm() ** 2)
        params, to_delta, count = _parametrisation(kind, config, d, e_tilde, g)
        params = [p.requires_grad_() for p in params]
        optimizer = torch.optim.LBFGS(params, max_iter=1000, tolerance_grad=1e-12, tolerance_change=1e-15,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = ((target - prefix @ (last + to_delta(params))) ** 2).sum()
            loss.backward()
            return loss

        for _ in range(iterations):
            optimizer.step(closure)
        descent = float(closure().detach())
        rows.append({"class": kind, "config": spec, "params": count,
                     "projection_error": achieved, "descent_error": descent,
                     "bound_frobenius": prefix_f2 * residual ** 2, "bound_spectral": prefix_22 * residual ** 2,
                     "initial_error": float((target - prefix @ last).norm() ** 2)})
    return rows

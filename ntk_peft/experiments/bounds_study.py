"""Which adapter class approximates real matrices best at equal parameter budgets (``ntk-peft bounds``).

Matrices come from a model's pretrained weights, from ΔW of trained adapters
(``ntk-peft train`` run folders) or from random matrices of a chosen spectrum.
For each matrix and each budget (given as LoRA-rank equivalents R: P = R·(m+n)),
`equal_budget_errors` gives the best relative error of low rank, rows, columns
and Monarch; matrices of one type across layers are also fitted jointly by CP
at the summed budget (LoRTA's sharing), beside the per-matrix classes pooled
over the same stack.
"""

from __future__ import annotations

import csv
import math
import os
from pathlib import Path

import numpy as np
import torch

from ntk_peft.analysis import cp_params, cp_project
from ntk_peft.analysis.bounds import equal_budget_table
from ntk_peft.errors import UserError

LLAMA_TYPES = {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
               "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"}
TIE = 1e-6  # relative errors closer than this count as a tie (float32 ΔW carries ~1e-7 noise)
FIELDS = ("matrix", "shape", "budget_rank", "budget", "class", "config", "params", "relative_error")


def model_matrices(model_name: str, layers: list[int], types: list[str]) -> dict[str, torch.Tensor]:
    """``layers.<i>.<type>`` -> pretrained weight (float64) of a Llama-style model."""
    from ntk_peft.models import load_model

    unknown = [t for t in types if t not in LLAMA_TYPES]
    if unknown:
        raise UserError(f"unknown matrix type {unknown[0]!r}; valid: {', '.join(LLAMA_TYPES)}")
    model, _ = load_model(model_name)
    modules = dict(model.named_modules())
    out = {}
    for layer in layers:
        for kind in types:
            name = next((n for n in modules if n.endswith(f"layers.{layer}.{LLAMA_TYPES[kind]}")), None)
            if name is None:
                raise UserError(f"{model_name} has no layer {layer} {kind} matrix")
            out[f"layers.{layer}.{kind}"] = modules[name].weight.detach().double()
    return out


def run_matrices(run: str | Path, layers: list[int] | None = None) -> dict[str, torch.Tensor]:
    """``<adapter>:<layer>`` -> ΔW (float64) of a training run folder's final adapter (only the
    transformer layers ``layers`` when given)."""
    import json

    from ntk_peft.adapters import load_adapter
    from ntk_peft.models import load_model

    run = Path(run)
    if not (run / "config.json").is_file() or not (run / "adapter" / "adapter.json").is_file():
        raise UserError(f"{run} is not a finished training run (config.json and adapter/ expected)")
    config = json.loads((run / "config.json").read_text())
    model, _ = load_model(config["model"], seed=config.get("seed", 0))
    handle = load_adapter(model, run / "adapter")
    keep = None if layers is None else tuple(f"layers.{i}." for i in layers)
    return {f"{config['adapter']}:{name}": delta.detach().double() for name, delta in handle.delta_weights().items()
            if keep is None or any(k in name for k in keep)}


def random_matrices(shape: tuple[int, int], spectrum: str, count: int = 1, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random orthogonal factors around a chosen spectrum: ``flat``, ``power:a`` (σ_i = i^-a) or ``exp:a``
    (σ_i = e^(-a·i))."""
    m, n = shape
    k = min(m, n)
    index = np.arange(1, k + 1, dtype=np.float64)
    kind, _, value = spectrum.partition(":")
    try:
        if kind == "flat":
            sigma = np.ones(k)
        elif kind == "power":
            sigma = index ** -float(value)
        elif kind == "exp":
            sigma = np.exp(-float(value) * (index - 1))
        else:
            raise ValueError
    except ValueError:
        raise UserError(f"bad spectrum {spectrum!r}; use flat, power:A or exp:A") from None
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(count):
        u, _ = torch.linalg.qr(torch.randn(m, k, generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(n, k, generator=g, dtype=torch.float64))
        out[f"random{m}x{n}-{spectrum}-{i}"] = (u * torch.from_numpy(sigma)) @ v.T
    return out


def _stacks(names: list[str], matrices: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    """Same-shape matrices of one type across layers (``layers.<i>.<type>``): ``<type> stack`` -> names."""
    groups: dict[str, list[str]] = {}
    for name in names:
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "layers":
            groups.setdefault(f"{parts[2]} stack", []).append(name)
    return {k: v for k, v in groups.items()
            if len(v) > 1 and len({tuple(matrices[n].shape) for n in v}) == 1}


def bounds_study(matrices: dict[str, torch.Tensor], budget_ranks=(1, 2, 4, 8, 16, 32), cp: bool = True,
                 out: str | Path | None = None, progress: bool = True, cp_iterations: int = 100) -> list[dict]:
    """Rows of `FIELDS` for every matrix × budget × class (and CP on stacks); appended to
    ``out/bounds.csv`` as they come, and read back on a rerun (nothing is computed twice).
    CP errors come from ``cp_iterations`` ALS sweeps: upper bounds on the best CP error."""
    from tqdm.auto import tqdm

    path = Path(out) / "bounds.csv" if out is not None else None
    done: list[dict] = []
    if path is not None and path.is_file():
        with path.open(newline="") as handle:
            done = list(csv.DictReader(handle))
    finished = {(r["matrix"], int(r["budget_rank"])) for r in done}
    rows = [dict(r, budget_rank=int(r["budget_rank"]), budget=int(r["budget"]), params=int(r["params"]),
                 relative_error=float(r["relative_error"])) for r in done]
    for name, matrix in matrices.items():
        if not torch.isfinite(matrix).all():
            raise UserError(f"matrix {name} contains NaN or Inf")
    jobs = [(name, rank) for name in matrices for rank in budget_ranks]
    stacks = _stacks(list(matrices), matrices) if cp else {}
    jobs += [(stack, rank) for stack in stacks for rank in budget_ranks]
    tables: dict[str, dict[int, list[dict]]] = {}
    for name, rank in tqdm(jobs, desc="bounds", unit="fit", disable=not progress):
        if (name, rank) in finished:
            continue
        if name in matrices:
            matrix = matrices[name]
            m, n = matrix.shape
            if float(matrix.norm()) == 0:
                continue  # e.g. a BitFit run: no weight update
            if name not in tables:  # every budget of a matrix from one set of SVDs
                tables = {name: equal_budget_table(matrix, [r * (m + n) for r in budget_ranks])}
            new = [dict(r, matrix=name, shape=f"{m}x{n}", budget_rank=rank, budget=rank * (m + n))
                   for r in tables[name][rank * (m + n)]]
        else:
            members = stacks[name]
            tensor = torch.stack([matrices[n] for n in members])
            m, n = tensor.shape[1:]
            budget = len(members) * rank * (m + n)
            cp_rank = budget // cp_params(tuple(tensor.shape), 1)
            norm = float(tensor.norm())
            fit = cp_project(tensor, cp_rank, n_iter_max=cp_iterations, tol=1e-8)
            new = [{"matrix": name, "shape": "x".join(map(str, tensor.shape)), "budget_rank": rank, "budget": budget,
                    "class": "cp", "config": f"cp{cp_rank}", "params": cp_params(tuple(tensor.shape), cp_rank),
                    "relative_error": fit.error / norm}]
            pooled: dict[str, list[float]] = {}
            for r in rows:
                if r["matrix"] in members and r["budget_rank"] == rank:
                    pooled.setdefault(r["class"], []).append(r["relative_error"] * float(matrices[r["matrix"]].norm()))
            for kind, errors in pooled.items():
                if len(errors) == len(members):
                    new.append({"matrix": name, "shape": "x".join(map(str, tensor.shape)), "budget_rank": rank,
                                "budget": budget, "class": kind, "config": "per matrix",
                                "params": sum(r["params"] for r in rows if r["matrix"] in members
                                              and r["budget_rank"] == rank and r["class"] == kind),
                                "relative_error": math.sqrt(sum(e * e for e in errors)) / norm})
        rows.extend(new)
        if path is not None:
            _append(path, new)
    return rows


def _append(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.is_file()
    with path.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        if new:
            writer.writeheader()
        writer.writerows({k: r[k] for k in FIELDS} for r in rows)
        handle.flush()
        os.fsync(handle.fileno())


def summary_table(rows: list[dict]) -> str:
    """Median relative error per class and budget over single matrices, and how often low rank beats
    Monarch by more than `TIE`; then the stacks (CP against the per-matrix classes pooled)."""
    singles = [r for r in rows if "stack" not in r["matrix"]]
    classes = [c for c in ("lowrank", "monarch", "rows", "cols") if any(r["class"] == c for r in singles)]
    lines = ["| budget (LoRA rank) | matrices | " + " | ".join(f"median {c}" for c in classes)
             + " | low rank beats Monarch |", "|---" * (len(classes) + 3) + "|"]
    for rank in sorted({r["budget_rank"] for r in singles}):
        at = [r for r in singles if r["budget_rank"] == rank]
        by = {(r["matrix"], r["class"]): r["relative_error"] for r in at}
        names = sorted({r["matrix"] for r in at})
        medians = [np.median([by[(n, c)] for n in names if (n, c) in by]) if any((n, c) in by for n in names)
                   else float("nan") for c in classes]
        both = [n for n in names if (n, "lowrank") in by and (n, "monarch") in by]
        wins = sum(by[(n, "lowrank")] < by[(n, "monarch")] - TIE for n in both)
        ties = sum(abs(by[(n, "lowrank")] - by[(n, "monarch")]) <= TIE for n in both)
        lines.append(f"| {rank} | {len(names)} | " + " | ".join(f"{v:.4f}" for v in medians)
                     + f" | {wins}/{len(both)}" + (f" ({ties} ties)" if ties else "") + " |")
    stacks = [r for r in rows if "stack" in r["matrix"]]
    if stacks:
        lines += ["", "| stack | budget (LoRA rank) | CP | " + " | ".join(f"{c} (per matrix)" for c in classes) + " |",
                  "|---" * (len(classes) + 3) + "|"]
        for name in sorted({r["matrix"] for r in stacks}):
            for rank in sorted({r["budget_rank"] for r in stacks if r["matrix"] == name}):
                by = {r["class"]: r for r in stacks if r["matrix"] == name and r["budget_rank"] == rank}
                cells = [f"{by[c]['relative_error']:.4f}" if c in by else "-" for c in ("cp", *classes)]
                lines.append(f"| {name} | {rank} | " + " | ".join(cells) + " |")
    return "\n".join(lines)

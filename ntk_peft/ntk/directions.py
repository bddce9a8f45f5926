"""Kernel predictions without the kernel: projections of gradients onto parameter directions.

A kernel model's prediction is linear in the kernel row of the new example:
Σ_{i,c} K(x, x_i)[d, c]·W[i, c] = ⟨∂f_d(x)/∂θ_S, v⟩ with the direction
v = Σ_{i,c} W[i, c]·∂f_c(x_i)/∂θ_S. So the predictions on an evaluation set
need one projection per direction (the cost of about one forward pass per
direction over the recorded data), not the n_train·C kernel columns:

- `subset_directions`: v_s for weights ``W [n, C, S]`` over training prompts,
  by reverse-mode autograd over the subset's parameters;
- `project_directions`: ``P[j, d, s] = ⟨∂f_d(x_j)/∂θ_S, v_s⟩`` from one
  `capture` of the evaluation block (the fast path; Linear weights as
  Σ_t g_t·(V a_t), embeddings by the looked-up rows, norms and adapters
  through the same per-example Jacobians as `fast_kernel`);
- `reference_projection`: ``reference_jacobian`` times the flattened
  directions, the test oracle.

Exact, not an approximation: in exact arithmetic P = Σ_{i,c} K_eval[j, i, d, c]·W[i, c, s].
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.func import functional_call, vjp

from ntk_peft.errors import UserError
from ntk_peft.models import split_lm_head
from ntk_peft.ntk.capture import Capture
from ntk_peft.ntk.contract import embedding_rows, module_jacobian
from ntk_peft.ntk.fast import _AdapterCall, _flat, _module_params_jacobian, closed_form_jacobian
from ntk_peft.ntk.reference import _PromptFunction, reference_jacobian
from ntk_peft.ntk.subsets import SubsetParams
from ntk_peft.tasks.batch import slice_batch

Directions = dict[str, torch.Tensor]  # parameter name (as in SubsetParams.params) -> [S, *shape]


def _prompt_function(sub: SubsetParams):
    """``(function, names)``: f as a module and the functional names of the subset's parameters."""
    shared = sub.handle.shared if sub.handle is not None else nn.ModuleDict()
    function = _PromptFunction(sub.model, shared)
    names = [n if n.startswith("shared.") else f"model.{n}" for n in sub.params]
    return function, names


# Prompts per backward pass of `subset_directions`: the pass keeps every activation of its prompts (for an
# adapter subset on SmolLM2-135M about 0.35 GB per prompt of 60 tokens), so a block of 16 is cut in four.
DIRECTION_CHUNK = 4


def subset_directions(sub: SubsetParams, batches: list[dict], weights: torch.Tensor,
                      chunk: int = DIRECTION_CHUNK) -> Directions:
    """v_s = Σ_{i,c} W[i, c, s]·∂f_c(x_i)/∂θ_S over the prompts of ``batches``.

    Args:
        sub: from `subset_params`.
        batches: prompt blocks whose examples, in order, are the rows of ``weights``.
        weights: ``[n, C, S]``.
        chunk: prompts per backward pass (bounds the memory of the pass).

    Returns:
        parameter name -> ``[S, *shape]`` in the parameters' dtype (summed over blocks).
    """
    function, names = _prompt_function(sub)
    primals = {name: p.detach() for name, p in zip(names, sub.params.values())}
    sizes = [b["input_ids"].shape[0] for b in batches]
    if weights.dim() != 3 or weights.shape[0] != sum(sizes):
        raise UserError(f"direction weights must be [n, C, S] over the {sum(sizes)} prompts, got "
                        f"{tuple(weights.shape)}")
    total = {name: p.new_zeros(weights.shape[2], *p.shape) for name, p in zip(sub.params, primals.values())}
    pieces = [(slice_batch(batch, list(range(first, min(first + chunk, size)))), start + first)
              for start, batch, size in zip(itertools.accumulate([0, *sizes]), batches, sizes)
              for first in range(0, size, chunk)]
    for piece, offset in pieces:
        block = weights[offset : offset + piece["input_ids"].shape[0]]
        logits, pullback = vjp(lambda p, b=piece: functional_call(function, p, (b,)), primals)
        for s in range(weights.shape[2]):
            grads = pullback(block[..., s].to(logits.dtype))[0]
            for name, key in zip(sub.params, names):
                total[name][s] += grads[key].detach()
        del logits, pullback
    return total


def reference_projection(sub: SubsetParams, batch: dict, directions: Directions) -> torch.Tensor:
    """``[n, C, S]`` float64: the reference Jacobian times the flattened directions (the oracle)."""
    jac = reference_jacobian(sub, batch).double()  # [n, C, P]
    flat = torch.cat([directions[name].reshape(directions[name].shape[0], -1) for name in sub.params], dim=1)
    return jac @ flat.double().T


def project_directions(model: nn.Module, sub: SubsetParams, cap: Capture, directions: Directions) -> torch.Tensor:
    """``P[j, d, s] = ⟨∂f_d(x_j)/∂θ_S, v_s⟩`` for the examples of one capture: ``[n, C, S]`` float64."""
    if sub.spec.kind == "full":
        return _full_projection(model, cap, directions, dict(model.named_parameters()))
    if sub.spec.kind == "linear":
        total = _zeros(cap, directions)
        for name in sub.params:
            rec = cap.records[name[: -len(".weight")]]
            total += _linear_weight_projection(rec, directions[name])
        return total
    return _adapter_projection(sub, cap, directions)


def _zeros(cap: Capture, directions: Directions) -> torch.Tensor:
    count = next(iter(directions.values())).shape[0]
    return torch.zeros(cap.size, cap.logits.shape[1], count, dtype=torch.float64)


def _per_example(rec, per_token: torch.Tensor) -> torch.Tensor:
    """Sum ``[N, C, S]`` token values to ``[n, C, S]`` float64 with the record's membership."""
    tokens, classes, count = per_token.shape
    return (rec.membership @ per_token.double().reshape(tokens, -1)).view(rec.size, classes, count)


def _linear_weight_projection(rec, weight_directions: torch.Tensor) -> torch.Tensor:
    """Σ_{t∈j} g_t[d]·(V_s a_t) for V ``[S, d_out, d_in]``: ``[n, C, S]``."""
    count, d_out, d_in = weight_directions.shape
    dtype = rec.packed_inputs.dtype
    moved = rec.packed_inputs @ weight_directions.to(dtype).reshape(count * d_out, d_in).T  # [N, S·d_out]
    per_token = torch.einsum("ctk,tsk->tcs", rec.packed_grads, moved.view(-1, count, d_out))
    return _per_example(rec, per_token)


def _jacobian_projection(jac: torch.Tensor, flat_directions: torch.Tensor) -> torch.Tensor:
    """Per-example Jacobians ``[n, C, P]`` times directions ``[S, P]``: ``[n, C, S]`` float64."""
    return jac.double() @ flat_directions.double().T


def _full_projection(model: nn.Module, cap: Capture, directions: Directions, named: dict) -> torch.Tensor:
    """Every parameter of the model, the tied output matrix once (mirrors `full_kernel`)."""
    names_by_id = {id(p): n for n, p in named.items()}
    split = split_lm_head(model)
    total = _zeros(cap, directions)
    covered: set[int] = set()
    head_tied = False
    for rec in cap.records.values():
        module = rec.module
        if isinstance(module, nn.Linear):
            total += _linear_weight_projection(rec, directions[names_by_id[id(module.weight)]])
            covered.add(id(module.weight))
            if module.bias is not None:
                bias = directions[names_by_id[id(module.bias)]]  # [S, d_out]
                per_token = torch.einsum("ctk,sk->tcs", rec.packed_grads, bias.to(rec.packed_grads.dtype))
                total += _per_example(rec, per_token)
                covered.add(id(module.bias))
        elif isinstance(module, nn.Embedding):
            tied = module.weight is split.weight
            head_tied |= tied
            extra = (cap.words, cap.features) if tied else (None, None)
            total += _rows_projection(embedding_rows(rec, module.padding_idx, *extra),
                                      directions[names_by_id[id(module.weight)]], cap.size)
            covered.add(id(module.weight))
        else:
            own = list(module.named_parameters(recurse=False))
            flat = torch.cat([directions[names_by_id[id(p)]].reshape(-1, p.numel()) for _, p in own], dim=1)
            total += _jacobian_projection(_module_params_jacobian(module, rec), flat)
            covered.update(id(p) for _, p in own)
    if not head_tied:  # an untied output matrix: only the label words' rows move
        total += _rows_projection(embedding_rows(None, None, cap.words, cap.features),
                                  directions[names_by_id[id(split.weight)]], cap.size)
    covered.add(id(split.weight))
    if split.bias is not None:  # ∂f_c/∂b[w_c] = 1
        bias = directions[names_by_id[id(split.bias)]][:, cap.words].double()  # [S, C]
        total += bias.T.expand(cap.size, -1, -1)
        covered.add(id(split.bias))
    missing = [n for n, p in named.items() if id(p) not in covered]
    if missing:
        raise UserError(f"the fast projection cannot place parameters {missing[:4]} of {type(model).__name__}; "
                        f"use implementation='reference'")
    return total


def _rows_projection(rows, matrix_directions: torch.Tensor, size: int) -> torch.Tensor:
    """Σ over rows (example, token id, vector ``[C, d]``) of vector·V_s[id]: ``[n, C, S]``."""
    examples, ids, vectors = rows
    picked = matrix_directions[:, ids].double()  # [S, R, d]
    per_row = torch.einsum("rcd,srd->rcs", vectors, picked)
    out = torch.zeros(size, vectors.shape[1], matrix_directions.shape[0], dtype=torch.float64)
    return out.index_add_(0, examples, per_row)


def _adapter_projection(sub: SubsetParams, cap: Capture, directions: Directions) -> torch.Tensor:
    """An adapter's parameters through each layer's own forward (mirrors `adapter_kernel`)."""
    handle = sub.handle
    total = _zeros(cap, directions)
    shared_names = [n for n, _ in handle.shared.named_parameters()]
    shared_jac: dict[str, torch.Tensor] = {}
    for name, layer in handle.layers.items():
        if name not in cap.records:
            raise UserError(f"layer {name} of subset {sub.spec} was not recorded")
        rec = cap.records[name]
        own = [k for k, _ in layer.named_parameters() if not k.startswith("base.")]
        flat = (torch.cat([directions[f"{name}.{k}"].reshape(directions[f"{name}.{k}"].shape[0], -1) for k in own],
                          dim=1) if own else None)
        closed = closed_form_jacobian(layer, rec)
        if closed is not None:  # rows, columns, LoRA
            total += _jacobian_projection(closed, flat)
            continue
        call = _AdapterCall(layer, handle.shared)
        params = {**{f"layer.{k}": v.detach() for k, v in layer.named_parameters() if not k.startswith("base.")},
                  **{f"shared.{k}": v.detach() for k, v in handle.shared.named_parameters()}}
        grads = module_jacobian(call, rec, params, lambda m, x: m.layer.adapter_forward(x))
        if own:
            total += _jacobian_projection(_flat({k: grads[f"layer.{k}"] for k in own}), flat)
        for k in shared_names:
            shared_jac[k] = shared_jac.get(k, 0) + grads[f"shared.{k}"]
    if shared_names:
        flat = torch.cat([directions[f"shared.{k}"].reshape(directions[f"shared.{k}"].shape[0], -1)
                          for k in shared_names], dim=1)
        total += _jacobian_projection(_flat(shared_jac), flat)
    return total

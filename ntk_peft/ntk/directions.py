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
- `gradient_directions`: v_s = Σ W[i, o, s]·T(∂f_o(x_i)/∂θ_S) from per-example
  gradients, kind by kind, for sign kernels (T = sign acts per example, so
  the backward pass above, which sums over examples first, cannot give it);
- `recorded_directions`: the directions of several subsets at once from one
  `capture` per training block (T the identity), each kind in closed form
  (Linear weights as one GEMM Σ_t g̃_t a_tᵀ): the cheap way to many
  directions (S of them cost S GEMMs, not S backward passes);
- `reference_projection`: ``reference_jacobian`` times the flattened
  directions, the test oracle.

`project_directions` and `reference_projection` take the same transform T for
the evaluation side: ⟨T(∂f(x)/∂θ_S), v⟩ (see `kernel_types.direction_plan`).

Exact, not an approximation: in exact arithmetic P = Σ_{i,c} K_eval[j, i, d, c]·W[i, c, s].
"""

from __future__ import annotations

import itertools

import torch
from torch import nn
from torch.func import functional_call, vjp

from ntk_peft.errors import UserError
from ntk_peft.ntk.capture import Capture
from ntk_peft.ntk.kernel_types import Transform, apply_transform
from ntk_peft.ntk.kinds import Directions, subset_kinds
from ntk_peft.ntk.outputs import OutputFunction, batch_size
from ntk_peft.ntk.reference import PromptFunction, reference_jacobian
from ntk_peft.ntk.subsets import SubsetParams
from ntk_peft.tasks.batch import slice_batch


def _prompt_function(sub: SubsetParams, outputs: OutputFunction | None = None):
    """``(function, names)``: f as a module and the functional names of the subset's parameters."""
    shared = sub.handle.shared if sub.handle is not None else nn.ModuleDict()
    function = PromptFunction(sub.model, shared, outputs)
    names = [n if n.startswith("shared.") else f"model.{n}" for n in sub.params]
    return function, names


# Prompts per backward pass of `subset_directions`: the pass keeps every activation of its prompts (for an
# adapter subset on SmolLM2-135M about 0.35 GB per prompt of 60 tokens), so a block of 16 is cut in four.
DIRECTION_CHUNK = 4


def subset_directions(sub: SubsetParams, batches: list[dict], weights: torch.Tensor,
                      chunk: int = DIRECTION_CHUNK, outputs: OutputFunction | None = None) -> Directions:
    """v_s = Σ_{i,c} W[i, c, s]·∂f_c(x_i)/∂θ_S over the prompts of ``batches``.

    Args:
        sub: from `subset_params`.
        batches: prompt blocks whose examples, in order, are the rows of ``weights``.
        weights: ``[n, C, S]``.
        chunk: prompts per backward pass (bounds the memory of the pass).
        outputs: the output function (default: the label-word logits).

    Returns:
        parameter name -> ``[S, *shape]`` in the parameters' dtype (summed over blocks).
    """
    function, names = _prompt_function(sub, outputs)
    primals = {name: p.detach() for name, p in zip(names, sub.params.values())}
    sizes = [batch_size(b) for b in batches]
    if weights.dim() != 3 or weights.shape[0] != sum(sizes):
        raise UserError(f"direction weights must be [n, C, S] over the {sum(sizes)} prompts, got "
                        f"{tuple(weights.shape)}")
    total = {name: p.new_zeros(weights.shape[2], *p.shape) for name, p in zip(sub.params, primals.values())}
    pieces = [(slice_batch(batch, list(range(first, min(first + chunk, size)))), start + first)
              for start, batch, size in zip(itertools.accumulate([0, *sizes]), batches, sizes)
              for first in range(0, size, chunk)]
    for piece, offset in pieces:
        block = weights[offset : offset + batch_size(piece)]
        logits, pullback = vjp(lambda p, b=piece: functional_call(function, p, (b,)), primals)
        for s in range(weights.shape[2]):
            grads = pullback(block[..., s].to(logits.dtype))[0]
            for name, key in zip(sub.params, names):
                total[name][s] += grads[key].detach()
        del logits, pullback
    return total


def reference_projection(sub: SubsetParams, batch: dict, directions: Directions, transform: Transform = None,
                         head_map: torch.Tensor | None = None, outputs: OutputFunction | None = None) -> torch.Tensor:
    """``[n, O, S]`` float64: the reference Jacobian (outputs mixed by ``head_map``, transformed) times the
    flattened directions (the oracle)."""
    jac = reference_jacobian(sub, batch, outputs=outputs).double()  # [n, C, P]
    if head_map is not None:
        jac = torch.einsum("oc,ncp->nop", head_map.double(), jac)
    flat = torch.cat([directions[name].reshape(directions[name].shape[0], -1) for name in sub.params], dim=1)
    return apply_transform(transform, jac) @ flat.double().T


def project_directions(model: nn.Module, sub: SubsetParams, cap: Capture, directions: Directions,
                       transform: Transform = None) -> torch.Tensor:
    """``P[j, d, s] = ⟨T(∂f_d(x_j)/∂θ_S), v_s⟩`` for the examples of one capture: ``[n, O, S]`` float64.

    ``transform`` T (None: the identity; ``torch.sign`` for sign kernels) acts on each example's
    gradient entry by entry. Each parameter kind projects its own gradients (`kinds`).
    """
    count = next(iter(directions.values())).shape[0]
    total = torch.zeros(cap.size, cap.outputs, count, dtype=torch.float64)
    for kind in subset_kinds(model, sub, cap):
        total += kind.project(cap, directions, transform)
    return total


def recorded_directions(model: nn.Module, subs: dict[str, SubsetParams], batches: list[dict],
                        weights: dict[str, torch.Tensor], record=None) -> dict[str, Directions]:
    """v_s = Σ_{i,o} W[i, o, s]·∂f_o(x_i)/∂θ_S for several subsets, from one capture per block of ``batches``.

    Args:
        subs: name -> resolved subset (`subset_params`).
        batches: prompt blocks whose examples, in order, are the rows of every weight.
        weights: name -> ``[n, O, S]``.
        record: batch -> `Capture` (default: `capture` of the label logits).

    Returns:
        name -> parameter name -> ``[S, *shape]`` in the parameters' dtype (each block's part in the
        recorded dtype, as `project_directions` projects).
    """
    from ntk_peft.ntk.capture import capture

    record = record or (lambda batch: capture(model, batch))
    device = next(model.parameters()).device
    sizes = [batch_size(b) for b in batches]
    for name, weight in weights.items():
        if weight.dim() != 3 or weight.shape[0] != sum(sizes):
            raise UserError(f"direction weights of {name} must be [n, O, S] over the {sum(sizes)} prompts, got "
                            f"{tuple(weight.shape)}")
    totals: dict[str, Directions] = {name: {} for name in subs}
    first = 0
    for batch, size in zip(batches, sizes):
        cap = record(batch)
        for name, sub in subs.items():
            block = weights[name][first : first + size].to(device)
            for kind in subset_kinds(model, sub, cap):
                for key, value in kind.direction(cap, block).items():
                    value = value.to(sub.params[key].dtype)
                    if key in totals[name]:
                        totals[name][key] += value
                    else:
                        totals[name][key] = value
        first += size
        del cap
    return {name: {key: totals[name][key] for key in sub.params} for name, sub in subs.items()}


def gradient_directions(model: nn.Module, sub: SubsetParams, captures: list[Capture], weights: torch.Tensor,
                        transform: Transform = None) -> Directions:
    """v_s = Σ_{i,o} W[i, o, s]·T(∂f_o(x_i)/∂θ_S) from per-example gradients, kind by kind.

    The directions of sign kernels (T = sign acts on each example's gradient, so the backward pass of
    `subset_directions`, which sums over examples first, cannot give them).

    Args:
        captures: recorded blocks whose examples, in order, are the rows of ``weights``.
        weights: ``[n, O, S]``.

    Returns:
        parameter name -> ``[S, *shape]`` float64.
    """
    sizes = [cap.size for cap in captures]
    if weights.dim() != 3 or weights.shape[0] != sum(sizes):
        raise UserError(f"direction weights must be [n, O, S] over the {sum(sizes)} prompts, got "
                        f"{tuple(weights.shape)}")
    total: Directions = {}
    first = 0
    for cap, size in zip(captures, sizes):
        block = weights[first : first + size]
        first += size
        for kind in subset_kinds(model, sub, cap):
            for name, value in kind.direction(cap, block, transform).items():
                total[name] = value if name not in total else total[name] + value
    return {name: total[name] for name in sub.params}

"""Fast eNTK contractions of one subset between two captures (see `NtkImplementation`)."""

from __future__ import annotations

import torch
from torch import nn

from ntk_peft.adapters import ColAdapter, LoRAAdapter, RowAdapter
from ntk_peft.errors import UserError
from ntk_peft.models import split_lm_head
from ntk_peft.ntk.capture import Capture
from ntk_peft.ntk.contract import (
    LinearKernelSum,
    bias_jacobian,
    dense_kernel,
    elementwise_affine_jacobian,
    embedding_rows,
    module_jacobian,
    rows_kernel,
)
from ntk_peft.ntk.subsets import SubsetParams


def fast_kernel(model: nn.Module, sub: SubsetParams, cap1: Capture, cap2: Capture, linear_method: str = "auto"):
    """The fast kernel of one resolved subset between two captures: ``[n1, n2, C, C]``."""
    if sub.spec.kind == "full":
        return full_kernel(model, cap1, cap2, linear_method)
    if sub.spec.kind == "linear":
        weights = LinearKernelSum(linear_method)
        for name in sub.params:
            layer = name[: -len(".weight")]
            weights.add(cap1.records[layer], cap2.records[layer])
        return weights.result(cap1.size, cap2.size, cap1.logits.shape[1], cap2.logits.shape[1])
    return adapter_kernel(sub, cap1, cap2)


def full_kernel(model: nn.Module, cap1: Capture, cap2: Capture, linear_method: str = "auto") -> torch.Tensor:
    """Kernel over every parameter of the model (tied matrices counted once)."""
    split = split_lm_head(model)
    n1, n2, classes = cap1.size, cap2.size, cap1.logits.shape[1]
    total = torch.zeros(n1, n2, classes, classes, dtype=torch.float64)
    covered: set[int] = set()
    head_tied = False
    weights = LinearKernelSum(linear_method)
    for name, rec1 in cap1.records.items():
        rec2 = cap2.records[name]
        module = rec1.module
        if isinstance(module, nn.Linear):
            weights.add(rec1, rec2)
            covered.add(id(module.weight))
            if module.bias is not None:
                jac1 = bias_jacobian(rec1)
                total += dense_kernel(jac1, jac1 if rec2 is rec1 else bias_jacobian(rec2))
                covered.add(id(module.bias))
        elif isinstance(module, nn.Embedding):
            tied = module.weight is split.weight
            head_tied |= tied
            extra1 = (cap1.words, cap1.features) if tied else (None, None)
            extra2 = (cap2.words, cap2.features) if tied else (None, None)
            rows1 = embedding_rows(rec1, module.padding_idx, *extra1)
            rows2 = rows1 if cap2 is cap1 else embedding_rows(rec2, module.padding_idx, *extra2)
            total += rows_kernel(rows1, rows2, n1, n2)
            covered.add(id(module.weight))
        else:
            jac1 = _module_params_jacobian(module, rec1)
            jac2 = jac1 if rec2 is rec1 else _module_params_jacobian(module, rec2)
            total += dense_kernel(jac1, jac2)
            covered.update(id(p) for p in module.parameters(recurse=False))
    total += weights.result(n1, n2, classes, cap2.logits.shape[1])
    if not head_tied:  # an untied output matrix: only the label words' rows move
        rows1 = embedding_rows(None, None, cap1.words, cap1.features)
        rows2 = rows1 if cap2 is cap1 else embedding_rows(None, None, cap2.words, cap2.features)
        total += rows_kernel(rows1, rows2, n1, n2)
    covered.add(id(split.weight))
    if split.bias is not None:  # ∂f_c/∂b[w_c] = 1
        total += torch.eye(classes, dtype=torch.float64).expand(n1, n2, classes, classes)
        covered.add(id(split.bias))
    missing = [n for n, p in model.named_parameters() if id(p) not in covered]
    if missing:
        raise UserError(f"the fast eNTK cannot place parameters {missing[:4]} of {type(model).__name__}; "
                        f"use implementation='reference'")
    return total


def _module_params_jacobian(module: nn.Module, rec) -> torch.Tensor:
    """``[n, C, P]`` over a module's own parameters: closed form for norms, else through its forward."""
    closed = elementwise_affine_jacobian(module, rec)
    return closed if closed is not None else _flat(module_jacobian(module, rec))


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(g.shape[0], g.shape[1], -1).double() for g in grads.values()], dim=-1)


class _AdapterCall(nn.Module):
    """Registers one adapted layer and the shared factors so torch.func can swap both."""

    def __init__(self, layer: nn.Module, shared: nn.Module):
        super().__init__()
        self.layer, self.shared = layer, shared


def closed_form_jacobian(layer: nn.Module, rec) -> torch.Tensor | None:
    """Per-example gradients ``[n, C, P]`` of rows, columns and LoRA adapters, else None.

    rows R: Σ_t g_t[R] a_tᵀ; columns S: Σ_t g_t a_t[S]ᵀ; LoRA: ∂f/∂A = s·Σ_t (Bᵀg_t) a_tᵀ
    and ∂f/∂B = s·Σ_t g_t (A a_t)ᵀ (parameter order as ``named_parameters``).
    Each is one GEMM over the packed tokens in the recorded dtype, weighted by
    the token-to-example membership E ``[n, N]``.
    """
    if isinstance(layer, RowAdapter):
        return _weighted_inputs(rec, rec.packed_grads[..., layer.rows])
    if isinstance(layer, ColAdapter):
        return _weighted_grads(rec, rec.packed_inputs[:, layer.cols])
    if isinstance(layer, LoRAAdapter) and isinstance(layer.dropout, nn.Identity):
        dtype = rec.packed_inputs.dtype
        a_mat, b_mat = layer.A.detach().to(dtype), layer.B.detach().to(dtype)
        grad_a = _weighted_inputs(rec, rec.packed_grads @ b_mat)
        grad_b = _weighted_grads(rec, rec.packed_inputs @ a_mat.T)
        return layer.scale * torch.cat([grad_a, grad_b], dim=-1)
    return None


def _weighted_inputs(rec, weights: torch.Tensor) -> torch.Tensor:
    """Σ_t w[c, t, k] a_t per example: ``[n, C, K·d_in]`` from ``weights [C, N, K]``."""
    classes, tokens, width = weights.shape
    member = rec.membership.to(weights.dtype)  # [n, N]
    mixed = (member[None, None] * weights.permute(0, 2, 1)[:, :, None, :]).reshape(-1, tokens)
    out = (mixed @ rec.packed_inputs).view(classes, width, rec.size, -1)
    return out.permute(2, 0, 1, 3).reshape(rec.size, classes, -1)


def _weighted_grads(rec, weights: torch.Tensor) -> torch.Tensor:
    """Σ_t g_t w[t, k] per example: ``[n, C, d_out·K]`` from ``weights [N, K]``."""
    classes, tokens, d_out = rec.packed_grads.shape
    member = rec.membership.to(weights.dtype)
    mixed = (member[None] * weights.T[:, None, :]).reshape(-1, tokens)  # [K·n, N]
    out = torch.matmul(mixed, rec.packed_grads).view(classes, weights.shape[1], rec.size, d_out)  # one GEMM per class
    return out.permute(2, 0, 3, 1).reshape(rec.size, classes, -1)


def adapter_kernel(sub: SubsetParams, cap1: Capture, cap2: Capture) -> torch.Tensor:
    """Kernel over an adapter's parameters, through each layer's own forward.

    Per-layer parameters are contracted layer by layer; parameters shared
    across layers (LoRTA's factors) are summed over layers first.
    """
    handle = sub.handle
    n1, n2, classes = cap1.size, cap2.size, cap1.logits.shape[1]
    total = torch.zeros(n1, n2, classes, classes, dtype=torch.float64)
    shared_names = [n for n, _ in handle.shared.named_parameters()]
    shared1: dict[str, torch.Tensor] = {}
    shared2: dict[str, torch.Tensor] = {}
    for name, layer in handle.layers.items():
        if name not in cap1.records:
            raise UserError(f"layer {name} of subset {sub.spec} was not recorded")
        closed = closed_form_jacobian(layer, cap1.records[name])
        if closed is not None:  # rows, columns, LoRA: the chain rule written out
            other = closed if cap2 is cap1 else closed_form_jacobian(layer, cap2.records[name])
            total += dense_kernel(closed, other)
            continue
        call = _AdapterCall(layer, handle.shared)
        own = {f"layer.{k}": v.detach() for k, v in layer.named_parameters() if not k.startswith("base.")}
        params = {**own, **{f"shared.{k}": v.detach() for k, v in handle.shared.named_parameters()}}
        forward = lambda m, x: m.layer.adapter_forward(x)  # noqa: E731
        grads1 = module_jacobian(call, cap1.records[name], params, forward)
        grads2 = grads1 if cap2 is cap1 else module_jacobian(call, cap2.records[name], params, forward)
        if own:
            jac1 = _flat({k: grads1[k] for k in own})
            jac2 = jac1 if cap2 is cap1 else _flat({k: grads2[k] for k in own})
            total += dense_kernel(jac1, jac2)
        for k in shared_names:
            shared1[k] = shared1.get(k, 0) + grads1[f"shared.{k}"]
            shared2[k] = shared2.get(k, 0) + grads2[f"shared.{k}"]
    if shared_names:
        total += dense_kernel(_flat(shared1), _flat(shared2))
    return total

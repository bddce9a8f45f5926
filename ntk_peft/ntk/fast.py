"""Fast eNTK contractions of one subset between two captures (see `NtkImplementation`)."""

from __future__ import annotations

import torch
from torch import nn

from ntk_peft.adapters import ColAdapter, LoRAAdapter, RowAdapter
from ntk_peft.errors import UserError
from ntk_peft.models import split_lm_head
from ntk_peft.ntk.capture import Capture
from ntk_peft.ntk.contract import (
    bias_jacobian,
    dense_kernel,
    embedding_rows,
    linear_weight_kernel,
    module_jacobian,
    rows_kernel,
)
from ntk_peft.ntk.subsets import SubsetParams


def fast_kernel(model: nn.Module, sub: SubsetParams, cap1: Capture, cap2: Capture, linear_method: str = "auto"):
    """The fast kernel of one resolved subset between two captures: ``[n1, n2, C, C]``."""
    if sub.spec.kind == "full":
        return full_kernel(model, cap1, cap2, linear_method)
    if sub.spec.kind == "linear":
        total = 0
        for name in sub.params:
            layer = name[: -len(".weight")]
            total = total + linear_weight_kernel(cap1.records[layer], cap2.records[layer], linear_method)
        return total
    return adapter_kernel(sub, cap1, cap2)


def full_kernel(model: nn.Module, cap1: Capture, cap2: Capture, linear_method: str = "auto") -> torch.Tensor:
    """Kernel over every parameter of the model (tied matrices counted once)."""
    split = split_lm_head(model)
    n1, n2, classes = cap1.size, cap2.size, cap1.logits.shape[1]
    total = torch.zeros(n1, n2, classes, classes, dtype=torch.float64)
    covered: set[int] = set()
    head_tied = False
    for name, rec1 in cap1.records.items():
        rec2 = cap2.records[name]
        module = rec1.module
        if isinstance(module, nn.Linear):
            total += linear_weight_kernel(rec1, rec2, linear_method)
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
            jac1 = _flat(module_jacobian(module, rec1))
            jac2 = jac1 if rec2 is rec1 else _flat(module_jacobian(module, rec2))
            total += dense_kernel(jac1, jac2)
            covered.update(id(p) for p in module.parameters(recurse=False))
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


def _flat(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([g.reshape(g.shape[0], g.shape[1], -1).double() for g in grads.values()], dim=-1)


class _AdapterCall(nn.Module):
    """Registers one adapted layer and the shared factors so torch.func can swap both."""

    def __init__(self, layer: nn.Module, shared: nn.Module):
        super().__init__()
        self.layer, self.shared = layer, shared


def closed_form_jacobian(layer: nn.Module, rec) -> torch.Tensor | None:
    """Per-example gradients ``[n, C, P]`` of rows, columns and LoRA adapters, else None.

    rows R: Σ_t g_t[R] a_tᵀ; columns S: Σ_t g_t a_t[S]ᵀ; LoRA: ∂f/∂A = s·Bᵀ Σ_t g_t a_tᵀ
    and ∂f/∂B = s·Σ_t g_t (A a_t)ᵀ (parameter order as ``named_parameters``).
    """
    inputs, grads = rec.inputs.double(), rec.grads.double()  # [n, T, d_in], [C, n, T, d_out]
    n, classes = inputs.shape[0], grads.shape[0]

    def outer(g, a):  # Σ_t g_t a_tᵀ per example and class -> [n, C, rows·cols]
        return torch.einsum("cntl,ntk->nclk", g, a).reshape(n, classes, -1)

    if isinstance(layer, RowAdapter):
        return outer(grads[..., layer.rows], inputs)
    if isinstance(layer, ColAdapter):
        return outer(grads, inputs[..., layer.cols])
    if isinstance(layer, LoRAAdapter) and isinstance(layer.dropout, nn.Identity):
        a_mat, b_mat = layer.A.detach().double(), layer.B.detach().double()
        grad_a = layer.scale * outer(torch.einsum("cntl,lr->cntr", grads, b_mat), inputs)
        grad_b = layer.scale * outer(grads, inputs @ a_mat.T)
        return torch.cat([grad_a, grad_b], dim=-1)
    return None


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

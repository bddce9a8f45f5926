"""Kernel contributions from recorded data (pure functions, float64).

Each function returns a ``[n1, n2, C, C]`` contribution between two captures
(or takes per-example gradients ``[n, C, P]``). See ../shared/DESIGN.md,
"Kernel math the fast path rests on".
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from ntk_peft.ntk.capture import Record


def dense_kernel(jac1: torch.Tensor, jac2: torch.Tensor) -> torch.Tensor:
    """⟨J1[i, c], J2[j, c']⟩ for per-example gradients ``[n, C, P]``."""
    return torch.einsum("icp,jdp->ijcd", jac1.double(), jac2.double())


def linear_weight_kernel(rec1: Record, rec2: Record, method: str = "auto") -> torch.Tensor:
    """Kernel of a Linear weight: Σ_{t,s} (g_t·g'_s)(a_t·a'_s) for every class pair.

    ``method``: ``gram`` contracts token Gram matrices (cost ~ n1·T1·n2·T2·(d_in + C²·d_out)),
    ``materialise`` forms each example's ∂f_c/∂W (cost ~ C·(n1·T1 + n2·T2)·d_in·d_out +
    n1·n2·C²·d_in·d_out); ``auto`` picks the cheaper.
    """
    a1, g1, a2, g2 = rec1.inputs.double(), rec1.grads.double(), rec2.inputs.double(), rec2.grads.double()
    classes, n1, t1, d_out = g1.shape
    n2, t2, d_in = a2.shape
    if method == "auto":
        gram = n1 * t1 * n2 * t2 * (d_in + classes * classes * d_out)
        materialise = classes * (n1 * t1 + n2 * t2) * d_in * d_out + n1 * n2 * classes * classes * d_in * d_out
        method = "gram" if gram < materialise else "materialise"
    if method == "materialise":
        m1 = torch.einsum("citl,itk->iclk", g1, a1).reshape(n1, classes, -1)
        m2 = m1 if rec2 is rec1 else torch.einsum("citl,itk->iclk", g2, a2).reshape(n2, classes, -1)
        return dense_kernel(m1, m2)
    inputs = torch.einsum("itk,jsk->ijts", a1, a2)
    return torch.einsum("ijts,citl,djsl->ijcd", inputs, g1, g2)


def bias_jacobian(rec: Record) -> torch.Tensor:
    """∂f_c/∂b = Σ_t g_t: ``[n, C, d_out]``."""
    return rec.grads.double().sum(dim=2).transpose(0, 1)


def embedding_rows(rec: Record | None, padding_idx: int | None, head_words: torch.Tensor | None = None,
                   head_features: torch.Tensor | None = None, classes: int | None = None):
    """Per-example gradient rows of an embedding matrix: ``(example, token id, [C, d] vector)``.

    Rows come from the tokens looked up (∂f_c/∂E[k_t] gets e_t; the padding
    row gets nothing, as in autograd) and, for a tied output matrix, from the
    read-out: row w_c gets the head features h_i for class c only.
    """
    examples, ids, vectors = [], [], []
    if rec is not None:
        n, length = rec.inputs.shape[:2]
        grads = rec.grads.double().permute(1, 2, 0, 3).reshape(n * length, rec.grads.shape[0], -1)
        token_ids = rec.inputs.reshape(-1)
        keep = rec.mask.reshape(-1) > 0
        if padding_idx is not None:
            keep &= token_ids != padding_idx
        examples.append(torch.arange(n).repeat_interleave(length)[keep])
        ids.append(token_ids[keep])
        vectors.append(grads[keep])
    if head_words is not None:
        n, width = head_features.shape
        classes = head_words.numel()
        for c in range(classes):
            vec = head_features.new_zeros(n, classes, width, dtype=torch.float64)
            vec[:, c] = head_features.double()
            examples.append(torch.arange(n))
            ids.append(head_words[c].expand(n))
            vectors.append(vec)
    return torch.cat(examples), torch.cat(ids).to(torch.long), torch.cat(vectors)


def rows_kernel(rows1, rows2, n1: int, n2: int) -> torch.Tensor:
    """Σ over shared token ids of the per-example row vectors' inner products."""
    ex1, ids1, vec1 = rows1
    ex2, ids2, vec2 = rows2
    common = torch.from_numpy(np.intersect1d(ids1.cpu().numpy(), ids2.cpu().numpy()))
    classes, width = vec1.shape[1], vec1.shape[2]
    if common.numel() == 0:
        return vec1.new_zeros(n1, n2, classes, classes)

    def dense(ex, ids, vec, n):
        slot = torch.searchsorted(common, ids)
        hit = (slot < common.numel()) & (common[slot.clamp(max=common.numel() - 1)] == ids)
        table = vec.new_zeros(n, common.numel(), classes, width)
        table.index_put_((ex[hit], slot[hit]), vec[hit], accumulate=True)
        return table

    table1 = dense(ex1, ids1, vec1, n1)
    table2 = table1 if rows2 is rows1 else dense(ex2, ids2, vec2, n2)
    return torch.einsum("iucd,jued->ijce", table1, table2)


def module_jacobian(module: nn.Module, rec: Record, params: dict[str, torch.Tensor] | None = None,
                    call=None) -> dict[str, torch.Tensor]:
    """Per-example gradients of a module's own parameters through its forward.

    Args:
        module: the module (its children's parameters stay as they are).
        rec: recorded inputs ``[n, L, d_in]`` and output-gradients ``[C, n, L, d_out]``.
        params: name -> tensor to differentiate (default: the module's direct parameters).
        call: ``call(module, x)`` computing the output to pair with the gradient
            (default ``module(x)``).

    Returns:
        name -> ``[n, C, *shape]``.
    """
    if params is None:
        params = {k: v.detach() for k, v in module.named_parameters(recurse=False)}
    call = call or (lambda m, x: m(x))

    def paired(p, x, g):
        return (_call_with(module, p, call, x) * g).sum()

    per_class = vmap(grad(paired), in_dims=(None, None, 0))
    per_example = vmap(per_class, in_dims=(None, 0, 1))
    return per_example(params, rec.inputs, rec.grads)


def _call_with(module: nn.Module, params: dict, call, x):
    """Run ``call(module, x)`` with ``params`` swapped in (torch.func)."""

    class _Call(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            return call(self.inner, x)

    return functional_call(_Call(module), {f"inner.{k}": v for k, v in params.items()}, (x,))

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


def dense_kernel(jac1: torch.Tensor, jac2: torch.Tensor, chunk: int = 1 << 22) -> torch.Tensor:
    """⟨J1[i, c], J2[j, c']⟩ for per-example gradients ``[n, C, P]``, in float64.

    Works through P in slices of ``chunk`` so that a float32 Jacobian is never
    copied whole to float64.
    """
    total = None
    for start in range(0, jac1.shape[-1], chunk):
        a = jac1[..., start : start + chunk].double()
        b = a if jac2 is jac1 else jac2[..., start : start + chunk].double()
        part = torch.einsum("icp,jdp->ijcd", a, b)
        total = part if total is None else total + part
    if total is None:
        return jac1.new_zeros(jac1.shape[0], jac2.shape[0], jac1.shape[1], jac2.shape[1], dtype=torch.float64)
    return total


def linear_weight_kernel(rec1: Record, rec2: Record, method: str = "auto") -> torch.Tensor:
    """Kernel of a Linear weight: Σ_{t,s} (g_t·g'_s)(a_t·a'_s) for every class pair.

    On packed real tokens (N1, N2 of them), ``method``:

    - ``gram``: token Gram matrices, K_cc' = E1·[(A1·A2ᵀ) ⊙ (G1c·G2c'ᵀ)]·E2ᵀ with
      E the token-to-example membership; cost ~ N1·N2·(d_in + C²·d_out);
    - ``materialise``: each example's ∂f_c/∂W = Σ_t g_t a_tᵀ, then inner
      products; cost ~ C·(N1 + N2)·d_in·d_out + n1·n2·C²·d_in·d_out;
    - ``auto``: the cheaper of the two.
    """
    a1, g1, e1 = (t.double() if t.is_floating_point() else t for t in rec1.packed())
    a2, g2, e2 = (a1, g1, e1) if rec2 is rec1 else (t.double() if t.is_floating_point() else t
                                                   for t in rec2.packed())
    n1, n2 = rec1.size, rec2.size
    classes, d_in, d_out = g1.shape[0], a1.shape[1], g1.shape[2]
    tokens1, tokens2 = a1.shape[0], a2.shape[0]
    if method == "auto":
        gram = tokens1 * tokens2 * (d_in + classes * classes * d_out)
        materialise = classes * (tokens1 + tokens2) * d_in * d_out + n1 * n2 * classes * classes * d_in * d_out
        method = "gram" if gram < materialise else "materialise"
    if method == "materialise":
        m1 = per_example_weight_grads(rec1)
        m2 = m1 if rec2 is rec1 else per_example_weight_grads(rec2)
        return dense_kernel(m1, m2)
    member1 = torch.zeros(n1, tokens1, dtype=torch.float64).index_put_((e1, torch.arange(tokens1)), torch.ones((), dtype=torch.float64))
    member2 = member1 if rec2 is rec1 else torch.zeros(n2, tokens2, dtype=torch.float64).index_put_(
        (e2, torch.arange(tokens2)), torch.ones((), dtype=torch.float64))
    inputs = a1 @ a2.T
    out = torch.empty(n1, n2, classes, classes, dtype=torch.float64)
    for c in range(classes):
        for d in range(classes):
            out[:, :, c, d] = member1 @ (inputs * (g1[c] @ g2[d].T)) @ member2.T
    return out


def per_example_weight_grads(rec: Record) -> torch.Tensor:
    """Σ_t g_t a_tᵀ per example and class (pads are zero): ``[n, C, d_out·d_in]``, one bmm per class."""
    inputs, grads = rec.inputs.double(), rec.grads.double()
    n, classes = inputs.shape[0], grads.shape[0]
    return torch.stack([torch.bmm(grads[c].transpose(1, 2), inputs) for c in range(classes)], dim=1).reshape(
        n, classes, -1)


def bias_jacobian(rec: Record) -> torch.Tensor:
    """∂f_c/∂b = Σ_t g_t: ``[n, C, d_out]``."""
    _, grads, example = rec.packed()
    out = torch.zeros(rec.size, grads.shape[0], grads.shape[2], dtype=torch.float64)
    return out.index_add_(0, example, grads.transpose(0, 1).double())


def embedding_rows(rec: Record | None, padding_idx: int | None, head_words: torch.Tensor | None = None,
                   head_features: torch.Tensor | None = None):
    """Per-example gradient rows of an embedding matrix: ``(example, token id, [C, d] vector)``.

    Rows come from the tokens looked up (∂f_c/∂E[k_t] gets e_t; the padding
    row gets nothing, as in autograd) and, for a tied output matrix, from the
    read-out: row w_c gets the head features h_i for class c only.
    """
    examples, ids, vectors = [], [], []
    if rec is not None:
        token_ids, grads, example = rec.packed()
        keep = torch.ones_like(token_ids, dtype=torch.bool)
        if padding_idx is not None:
            keep &= token_ids != padding_idx
        examples.append(example[keep])
        ids.append(token_ids[keep])
        vectors.append(grads.transpose(0, 1)[keep].double())
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
    wrapper = _Call(module, call or (lambda m, x: m(x)))
    named = {f"inner.{k}": v for k, v in params.items()}

    def paired(p, x, g):
        return (functional_call(wrapper, p, (x,)) * g).sum()

    per_class = vmap(grad(paired), in_dims=(None, None, 0))
    per_example = vmap(per_class, in_dims=(None, 0, 1))
    grads = per_example(named, rec.inputs, rec.grads)
    return {k[len("inner."):]: v for k, v in grads.items()}


class _Call(nn.Module):
    """``call(inner, x)`` as a module, so torch.func can swap ``inner``'s tensors."""

    def __init__(self, inner: nn.Module, call):
        super().__init__()
        self.inner, self._call = inner, call

    def forward(self, x):
        return self._call(self.inner, x)

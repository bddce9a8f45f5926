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


def dense_kernel(jac1: torch.Tensor, jac2: torch.Tensor, chunk: int = 1 << 22, *,
                 input_precision: bool = False) -> torch.Tensor:
    """⟨J1[i, c], J2[j, c']⟩ for per-example gradients ``[n, C, P]``, as float64 ``[n1, n2, C, C]``.

    Works through P in slices of ``chunk``. By default each slice is converted
    to float64 first (exact products, and a float32 Jacobian is never copied
    whole); with ``input_precision`` each slice's products run in the
    Jacobians' own dtype and only the slice sums are accumulated in float64.
    """
    total = jac1.new_zeros(jac1.shape[0], jac2.shape[0], jac1.shape[1], jac2.shape[1], dtype=torch.float64)
    for start in range(0, jac1.shape[-1], chunk):
        a = jac1[..., start : start + chunk]
        b = a if jac2 is jac1 else jac2[..., start : start + chunk]
        if not input_precision:
            a, b = a.double(), (a.double() if b is a else b.double())
        total += torch.einsum("icp,jdp->ijcd", a, b)
    return total


# Measured on 2 CPU cores (benchmarks/bench_contract.py): the per-example GEMMs of ``reduced``
# (inner dimension = one example's tokens) run at about 40% of the token Gram's speed.
REDUCED_SLOWDOWN = 2.5
LINEAR_METHODS = ("auto", "gram", "reduced", "materialise")


def choose_linear_method(rec1: Record, rec2: Record, method: str = "auto") -> str:
    """``gram``, ``reduced`` or ``materialise`` for one Linear layer, by operation count when ``auto``.

    On packed real tokens (N1, N2 of them; n1, n2 examples; C1, C2 classes):
    ``gram`` costs ~ N1·N2·(d_in + C1·C2·d_out), ``reduced`` ~ N1·N2·(d_in + C2·d_out)
    + C1·C2·N1·n2·d_out at lower speed (weighted by `REDUCED_SLOWDOWN`; it wins from
    C = 3 on), ``materialise`` ~ C·(N1 + N2)·d_in·d_out + n1·n2·C1·C2·d_in·d_out.
    """
    if method != "auto":
        return method
    classes1, tokens1, d_out = rec1.packed_grads.shape
    classes2 = rec2.packed_grads.shape[0]
    tokens2, d_in = rec2.packed_inputs.shape[0], rec1.packed_inputs.shape[1]
    small, large = sorted((rec1.size * tokens2, rec2.size * tokens1))
    costs = {
        "gram": tokens1 * tokens2 * (d_in + classes1 * classes2 * d_out),
        "reduced": tokens1 * tokens2 * d_in + REDUCED_SLOWDOWN * d_out * (
            tokens1 * tokens2 * max(classes1, classes2) + classes1 * classes2 * small),
        "materialise": (classes1 * tokens1 + classes2 * tokens2) * d_in * d_out
        + rec1.size * rec2.size * classes1 * classes2 * d_in * d_out,
    }
    return min(costs, key=costs.get)


def reduced_linear_kernel(inputs: torch.Tensor, grads1: torch.Tensor, grads2: torch.Tensor,
                          starts2: list[int], chunk_bytes: int = 4 << 20) -> torch.Tensor:
    """Σ_{t, t'∈j} S[t, t'] (g1[c, t] · g2[d, t']) per token t of side 1 and example j of side 2.

    The input Gram is applied to side 2's gradients example by example first,
    H_j = S[:, j]·G2_j (``[N1, C2·D]``), so the class pairs meet only in a
    per-token C1×C2 reduction: ~ C2·N1·N2·D + C1·C2·N1·n2·D operations instead of
    the token Gram's C1·C2·N1·N2·D. Side-1 tokens go in chunks whose H fits in cache.

    Args:
        inputs: S ``[N1, N2]``, the input Gram A1·A2ᵀ.
        grads1: ``[C1, N1, D]``; grads2: ``[C2, N2, D]``.
        starts2: n2 + 1 token offsets: example j of side 2 owns tokens starts2[j]:starts2[j+1].

    Returns:
        ``[N1, C1, n2, C2]`` in the inputs' dtype (sum over side 1's tokens per example to finish).
    """
    classes1, tokens1, width = grads1.shape
    classes2 = grads2.shape[0]
    examples2 = len(starts2) - 1
    per_token = grads1.permute(1, 0, 2).contiguous()  # [N1, C1, D]
    stacked2 = grads2.permute(1, 0, 2).reshape(grads2.shape[1], classes2 * width)  # [N2, C2·D]
    out = inputs.new_empty(tokens1, classes1, examples2, classes2)
    chunk = max(16, chunk_bytes // (classes2 * width * inputs.element_size()))
    for first in range(0, tokens1, chunk):
        last = min(tokens1, first + chunk)
        for j in range(examples2):
            a, b = starts2[j], starts2[j + 1]
            projected = inputs[first:last, a:b] @ stacked2[a:b]  # [chunk, C2·D]
            out[first:last, :, j, :] = torch.bmm(per_token[first:last],
                                                 projected.view(last - first, classes2, width).transpose(1, 2))
    return out


class LinearKernelSum:
    """The kernel of many Linear weights, summed: ``add`` each layer, then ``result``.

    ``gram`` layers: K_cc' = E1·[(A1·A2ᵀ) ⊙ (G1c·G2c'ᵀ)]·E2ᵀ with E the
    token-to-example membership. The token-level products of all layers are
    summed first and reduced to examples once; the input Gram A1·A2ᵀ is
    computed once for layers reading the same tensor (q, k, v; gate, up); the
    C² output Grams are one GEMM of the class-stacked gradients.
    ``reduced`` layers (many classes): layers reading the same tensor are
    stacked along d_out and contracted by `reduced_linear_kernel`, whose
    per-token C×C results are summed over layers, then over side 1's tokens.
    ``materialise`` layers form each example's ∂f_c/∂W = Σ_t g_t a_tᵀ.

    Precision: the Grams (and materialised gradients) run in the recorded
    dtype (float32 for a float32 model, whose recorded activations carry
    ~1e-7 relative error already); per-layer results are accumulated and
    reduced in float64.
    """

    def __init__(self, method: str = "auto"):
        if method not in LINEAR_METHODS:
            raise ValueError(f"unknown Linear contraction method {method!r}; valid: {', '.join(LINEAR_METHODS)}")
        self.method = method
        self._input_grams: dict[tuple[int, int], torch.Tensor] = {}
        self._tokens: dict[tuple[int, int], tuple[Record, Record, torch.Tensor]] = {}
        self._reduced: dict[tuple[int, int], list[tuple[Record, Record]]] = {}
        self._dense: torch.Tensor | None = None

    def add(self, rec1: Record, rec2: Record) -> None:
        method = choose_linear_method(rec1, rec2, self.method)
        if method == "materialise":
            m1 = per_example_weight_grads(rec1)
            part = dense_kernel(m1, m1 if rec2 is rec1 else per_example_weight_grads(rec2), input_precision=True)
            self._dense = part if self._dense is None else self._dense + part
            return
        a1, g1 = rec1.packed_inputs, rec1.packed_grads
        a2, g2 = rec2.packed_inputs, rec2.packed_grads
        key = (id(a1), id(a2))
        if method == "reduced":  # deferred: layers reading the same tensors are stacked in `result`
            self._reduced.setdefault(key, []).append((rec1, rec2))
            return
        inputs = self._input_gram(a1, a2)  # [N1, N2]
        classes1, tokens1, _ = g1.shape
        classes2, tokens2, _ = g2.shape
        flat1 = g1.reshape(classes1 * tokens1, -1)
        flat2 = flat1 if g2 is g1 else g2.reshape(classes2 * tokens2, -1)
        product = (flat1 @ flat2.T).view(classes1, tokens1, classes2, tokens2) * inputs[None, :, None, :]
        layout = (id(rec1.example), id(rec2.example))
        if layout not in self._tokens:
            self._tokens[layout] = (rec1, rec2, torch.zeros(product.shape, dtype=torch.float64,
                                                            device=product.device))
        self._tokens[layout][2].add_(product)

    def _input_gram(self, a1: torch.Tensor, a2: torch.Tensor) -> torch.Tensor:
        key = (id(a1), id(a2))
        if key not in self._input_grams:
            self._input_grams[key] = a1 @ a2.T
        return self._input_grams[key]

    def result(self, n1: int, n2: int, classes1: int, classes2: int) -> torch.Tensor:
        """``[n1, n2, C, C]`` float64."""
        total = torch.zeros(n1, n2, classes1, classes2, dtype=torch.float64)
        for rec1, rec2, tokens in self._tokens.values():
            total += torch.einsum("it,ctds,js->ijcd", rec1.membership, tokens, rec2.membership)
        per_token: dict[tuple[int, int], tuple[Record, Record, torch.Tensor]] = {}
        for pairs in self._reduced.values():
            rec1, rec2 = pairs[0]
            inputs = self._input_gram(rec1.packed_inputs, rec2.packed_inputs)
            grads1 = torch.cat([r1.packed_grads for r1, _ in pairs], dim=-1) if len(pairs) > 1 else rec1.packed_grads
            grads2 = torch.cat([r2.packed_grads for _, r2 in pairs], dim=-1) if len(pairs) > 1 else rec2.packed_grads
            if rec2.size * grads1.shape[1] <= rec1.size * grads2.shape[1]:  # reduce per example of side 2
                part, side, other = reduced_linear_kernel(inputs, grads1, grads2, rec2.starts), rec1, rec2
                layout = (id(rec1.example), id(rec2.example), 1)
            else:  # cheaper the other way round: per example of side 1, mirrored at the end
                part, side, other = reduced_linear_kernel(inputs.T, grads2, grads1, rec1.starts), rec2, rec1
                layout = (id(rec1.example), id(rec2.example), 2)
            if layout not in per_token:
                per_token[layout] = (side, other, torch.zeros(part.shape, dtype=torch.float64))
            per_token[layout][2].add_(part)
        for layout, (side, _, tokens) in per_token.items():
            reduced = torch.einsum("it,tcjd->ijcd", side.membership, tokens)  # [n_side, n_other, C_side, C_other]
            total += reduced if layout[2] == 1 else reduced.permute(1, 0, 3, 2)
        if self._dense is not None:
            total += self._dense
        return total


def per_example_weight_grads(rec: Record) -> torch.Tensor:
    """Σ_t g_t a_tᵀ per example and class (pads are zero): ``[n, C, d_out·d_in]`` in the recorded dtype.

    One batched GEMM per example, ``[C, d_out, L] @ [L, d_in]``, written in place (no transposed copy).
    """
    inputs, grads = rec.inputs, rec.grads  # [n, L, d_in], [C, n, L, d_out]
    n, classes = inputs.shape[0], grads.shape[0]
    out = torch.matmul(grads.permute(1, 0, 3, 2), inputs.unsqueeze(1))  # [n, C, d_out, d_in]
    return out.view(n, classes, -1)


def bias_jacobian(rec: Record) -> torch.Tensor:
    """∂f_c/∂b = Σ_t g_t: ``[n, C, d_out]``."""
    _, grads, example = rec.packed()
    out = torch.zeros(rec.size, grads.shape[0], grads.shape[2], dtype=torch.float64)
    return out.index_add_(0, example, grads.transpose(0, 1).double())


def embedding_rows(rec: Record | None, padding_idx: int | None, head_words: torch.Tensor | None = None,
                   head_features: torch.Tensor | None = None, head_map: torch.Tensor | None = None):
    """Per-example gradient rows of an embedding matrix: ``(example, token id, [O, d] vector)``.

    Rows come from the tokens looked up (∂f_o/∂E[k_t] gets e_t; the padding
    row gets nothing, as in autograd) and, for a tied output matrix, from the
    read-out: row w_c gets the head features h_i times M[o, c] for output o
    (``head_map`` M ``[O, C]``; the identity when None: class c only). An
    example may hold several rows of one token id (see `sum_rows`).
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
        mixing = torch.eye(classes, dtype=torch.float64) if head_map is None else head_map.double()
        for c in range(classes):
            vec = mixing[:, c][None, :, None] * head_features.double()[:, None, :]  # [n, O, d]
            examples.append(torch.arange(n))
            ids.append(head_words[c].expand(n))
            vectors.append(vec)
    return torch.cat(examples), torch.cat(ids).to(torch.long), torch.cat(vectors)


def sum_rows(rows):
    """Rows summed per (example, token id): each example's gradient row of each id appears once, as
    elementwise transforms (sign) of the per-example gradient need."""
    examples, ids, vectors = rows
    if examples.numel() == 0:
        return rows
    width = int(ids.max()) + 1
    keys, slot = torch.unique(examples * width + ids, return_inverse=True)
    summed = vectors.new_zeros(keys.numel(), *vectors.shape[1:]).index_add_(0, slot, vectors)
    return keys // width, keys % width, summed


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


def elementwise_affine_jacobian(module: nn.Module, rec: Record) -> torch.Tensor | None:
    """Per-example gradients ``[n, C, P]`` of a module computing y = h(x) ⊙ w (+ b), else None.

    Norm layers (LayerNorm, RMSNorm) are of this form: ∂f_c/∂w = Σ_t g_t ⊙ h(x_t)
    and ∂f_c/∂b = Σ_t g_t. h is the module's own forward with w = 1, b = 0;
    the form is checked on the recorded inputs (y(w, b) = h ⊙ w + b), so a
    module that is not affine in its weight this way (e.g. y = h ⊙ (1 + w))
    returns None and goes through `module_jacobian`.
    """
    params = dict(module.named_parameters(recurse=False))
    weight, bias = params.get("weight"), params.get("bias")
    if weight is None or set(params) - {"weight", "bias"} or weight.dim() != 1 or (
            bias is not None and bias.shape != weight.shape):
        return None
    inputs = rec.inputs
    unit = {"weight": torch.ones_like(weight)}
    if bias is not None:
        unit["bias"] = torch.zeros_like(bias)
    with torch.no_grad():
        normed = functional_call(module, unit, (inputs,))
        if normed.shape[-1] != weight.shape[0] or normed.shape[:-1] != inputs.shape[:-1]:
            return None
        expected = normed * weight + (0 if bias is None else bias)
        actual = module(inputs)
    tolerance = 64 * torch.finfo(actual.dtype).eps * max(actual.abs().max().item(), 1.0)
    if actual.shape != expected.shape or (actual - expected).abs().max().item() > tolerance:
        return None
    grads = rec.packed_grads  # [C, N, d]
    normed = normed[rec.example, rec.position]  # [N, d] at the real positions
    member = rec.membership.to(grads.dtype)
    parts = [torch.einsum("it,ctd->icd", member, grads * normed)]
    if bias is not None:
        parts.append(torch.einsum("it,ctd->icd", member, grads))
    return torch.cat(parts, dim=-1).double()


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

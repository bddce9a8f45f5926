"""Parameter kinds: one class per kind of parameter, owning its per-example gradients and closed forms.

A subset's parameters fall into kinds (`subset_kinds`), each read from one
recorded module (or from the read-out): Linear weights and biases, embedding
tables (with the tied output matrix), the output matrix's label-word rows and
bias, other modules' own parameters (norms in closed form, anything else
through the module's forward with ``vmap(grad)``), and adapter parameters
(rows, columns, LoRA factors in closed form; any other adapter through its
own forward; LoRTA's factors shared by all layers, summed over layers).

Every kind provides, from a `Capture` of n examples with O outputs:

- ``gradients(cap)``: per-example gradients ``[n, O, P]`` (flattened in the
  order of ``names``), the definition everything else defaults from;
- ``add_kernels(acc, cap1, cap2)``: its contribution ⟨T₁(g(x)), T₂(g(x'))⟩ for
  each transform pair of the accumulator (`KernelSum`); kinds with a closed
  form (Linear weights' token Grams, embedding rows) use it where the
  transforms allow;
- ``project(cap, directions, transform)``: ⟨T(g(x)), v_s⟩ ``[n, O, S]``;
- ``direction(cap, weights, transform)``: Σ_{i,o} W[i, o, s]·T(g(x_i)) per
  parameter name, ``[S, *shape]``.

`fast.py` (kernels) and `directions.py` (projections) walk these kinds; the
walkers know nothing about parameter kinds.
"""

from __future__ import annotations

import torch
from torch import nn

from ntk_peft.adapters import ColAdapter, LoRAAdapter, RowAdapter
from ntk_peft.errors import UserError
from ntk_peft.models import split_lm_head
from ntk_peft.ntk.capture import Capture, Record
from ntk_peft.ntk.contract import (
    LinearKernelSum,
    bias_jacobian,
    dense_kernel,
    elementwise_affine_jacobian,
    embedding_rows,
    module_jacobian,
    per_example_weight_grads,
    rows_kernel,
    sum_rows,
)
from ntk_peft.ntk.kernel_types import Transform, TransformPair, apply_transform
from ntk_peft.ntk.subsets import SubsetParams

Directions = dict[str, torch.Tensor]  # parameter name (as in SubsetParams.params) -> [S, *shape]


class KernelSum:
    """Kernel contributions of many kinds between two captures, one total per transform pair.

    ``linear`` gathers the plain (NTK) Linear-weight contributions, which are
    summed over layers at token level before one reduction (`LinearKernelSum`).
    """

    def __init__(self, cap1: Capture, cap2: Capture, pairs: list[TransformPair], linear_method: str = "auto"):
        self.cap1, self.cap2, self.pairs = cap1, cap2, pairs
        shape = (cap1.size, cap2.size, cap1.outputs, cap2.outputs)
        self.totals = [torch.zeros(shape, dtype=torch.float64) for _ in pairs]
        self.linear = LinearKernelSum(linear_method)
        self._linear_pairs: list[int] = []

    @property
    def same(self) -> bool:
        return self.cap1 is self.cap2

    def add_dense(self, jac1: torch.Tensor, jac2: torch.Tensor | None = None) -> None:
        """Add ⟨T₁(J1), T₂(J2)⟩ for per-example gradients ``[n, O, P]`` (J2 = J1 for one capture).

        NTK products run in float64. Pairs with a sign transform run in the gradients' own dtype, sums of
        slices of up to 2²² entries accumulated in float64 (`dense_kernel`): a float32 sum of ±1 products
        is exact below 2²⁴ terms, and ⟨g, sign g'⟩ in float32 has the precision of the NTK's float32
        token Grams; converting every layer's gradients to float64 would cost more than the products.
        """
        for total, (t1, t2) in zip(self.totals, self.pairs):
            a = apply_transform(t1, jac1)
            other = jac1 if jac2 is None else jac2
            b = a if (jac2 is None and t1 is t2) else apply_transform(t2, other)
            total += dense_kernel(a, b, input_precision=t1 is not None or t2 is not None)

    def plain_pairs(self) -> list[int]:
        return [k for k, (t1, t2) in enumerate(self.pairs) if t1 is None and t2 is None]

    def result(self) -> list[torch.Tensor]:
        """One ``[n1, n2, O, O]`` float64 kernel per transform pair."""
        plain = self.plain_pairs()
        if plain and (self.linear._tokens or self.linear._reduced or self.linear._dense is not None):
            linear = self.linear.result(self.cap1.size, self.cap2.size, self.cap1.outputs, self.cap2.outputs)
            for k in plain:
                self.totals[k] += linear
        return self.totals


class ParamKind:
    """Parameters whose per-example gradients come from one recorded module (see the module docstring).

    Attributes:
        names: parameter names (keys of ``SubsetParams.params`` and of directions), in flattening order.
        shapes: their shapes.
    """

    names: list[str]
    shapes: list[torch.Size]

    def gradients(self, cap: Capture) -> torch.Tensor:
        raise NotImplementedError

    def add_kernels(self, acc: KernelSum, cap1: Capture, cap2: Capture) -> None:
        jac1 = self.gradients(cap1)
        acc.add_dense(jac1, None if acc.same else self.gradients(cap2))

    def _flat_directions(self, directions: Directions) -> torch.Tensor:
        return torch.cat([directions[n].reshape(directions[n].shape[0], -1) for n in self.names], dim=1)

    def project(self, cap: Capture, directions: Directions, transform: Transform = None) -> torch.Tensor:
        jac = apply_transform(transform, self.gradients(cap))
        return jacobian_projection(jac, self._flat_directions(directions))

    def direction(self, cap: Capture, weights: torch.Tensor, transform: Transform = None) -> Directions:
        jac = apply_transform(transform, self.gradients(cap))
        flat = torch.einsum("nop,nos->sp", jac.double(), weights.double())
        out, first = {}, 0
        for name, shape in zip(self.names, self.shapes):
            size = shape.numel()
            out[name] = flat[:, first : first + size].reshape(-1, *shape)
            first += size
        return out


def jacobian_projection(jac: torch.Tensor, flat_directions: torch.Tensor) -> torch.Tensor:
    """``[n, O, P]`` gradients times ``[S, P]`` directions: ``[n, O, S]`` float64."""
    return torch.einsum("icp,sp->ics", jac.double(), flat_directions.double())


def _per_example(rec: Record, per_token: torch.Tensor) -> torch.Tensor:
    """Sum ``[N, O, S]`` token values to ``[n, O, S]`` float64 with the record's membership."""
    tokens, outputs, count = per_token.shape
    return (rec.membership @ per_token.double().reshape(tokens, -1)).view(rec.size, outputs, count)


class LinearWeight(ParamKind):
    """W of y_t = W a_t + b: ∂f/∂W = Σ_t g_t a_tᵀ. NTK by token Grams (`LinearKernelSum`), projections
    as Σ_t g_t·(V a_t), directions as Σ_t g̃_t a_tᵀ; sign kernels from the materialised per-example
    gradients."""

    def __init__(self, layer: str, name: str, module: nn.Linear):
        self.layer, self.names, self.shapes = layer, [name], [module.weight.shape]

    def gradients(self, cap: Capture) -> torch.Tensor:
        return per_example_weight_grads(cap.records[self.layer])

    def add_kernels(self, acc: KernelSum, cap1: Capture, cap2: Capture) -> None:
        rec1, rec2 = cap1.records[self.layer], cap2.records[self.layer]
        if acc.plain_pairs():
            acc.linear.add(rec1, rec2)
        if len(acc.plain_pairs()) == len(acc.pairs):
            return
        others = KernelSum(cap1, cap2, [p for p in acc.pairs if p != (None, None)])
        others.add_dense(self.gradients(cap1), None if acc.same else self.gradients(cap2))
        rest = iter(others.totals)
        for k, pair in enumerate(acc.pairs):
            if pair != (None, None):
                acc.totals[k] += next(rest)

    def project(self, cap: Capture, directions: Directions, transform: Transform = None) -> torch.Tensor:
        if transform is not None:
            return super().project(cap, directions, transform)
        rec, weight_directions = cap.records[self.layer], directions[self.names[0]]
        count, d_out, d_in = weight_directions.shape
        dtype = rec.packed_inputs.dtype
        moved = rec.packed_inputs @ weight_directions.to(dtype).reshape(count * d_out, d_in).T  # [N, S·d_out]
        per_token = torch.einsum("ctk,tsk->tcs", rec.packed_grads, moved.view(-1, count, d_out))
        return _per_example(rec, per_token)

    def direction(self, cap: Capture, weights: torch.Tensor, transform: Transform = None) -> Directions:
        """Σ_t g̃_t a_tᵀ with g̃_t = Σ_o W[i(t), o, s]·g_t^o: one GEMM over the packed tokens, in the
        recorded dtype (returned float64, like every kind's)."""
        if transform is not None:
            return super().direction(cap, weights, transform)
        rec = cap.records[self.layer]
        dtype = rec.packed_inputs.dtype
        _, tokens, d_out = rec.packed_grads.shape
        count = weights.shape[2]
        per_token = weights.to(dtype)[rec.example]  # [N, O, S]
        mixed = torch.einsum("otk,tos->tsk", rec.packed_grads, per_token)  # [N, S, d_out]
        flat = mixed.reshape(tokens, count * d_out).T @ rec.packed_inputs  # [S·d_out, d_in]
        return {self.names[0]: flat.view(count, d_out, -1).double()}


class LinearBias(ParamKind):
    """b of a Linear layer: ∂f/∂b = Σ_t g_t."""

    def __init__(self, layer: str, name: str, module: nn.Linear):
        self.layer, self.names, self.shapes = layer, [name], [module.bias.shape]

    def gradients(self, cap: Capture) -> torch.Tensor:
        return bias_jacobian(cap.records[self.layer])


class EmbeddingRows(ParamKind):
    """An embedding table E (``layer``), the output matrix tied to it (``tied``), or, with ``layer``
    None, an untied output matrix (only the label words' rows move). Gradients are kept as rows
    (example, token id, ``[O, d]``), summed per example and id, never as a vocabulary-sized matrix."""

    def __init__(self, layer: str | None, name: str, weight: torch.Tensor, padding_idx: int | None, tied: bool):
        self.layer, self.names, self.shapes = layer, [name], [weight.shape]
        self.padding_idx, self.tied = padding_idx, tied

    def rows(self, cap: Capture):
        rec = None if self.layer is None else cap.records[self.layer]
        head = (cap.words, cap.features, cap.head_map) if self.tied or self.layer is None else (None, None, None)
        return sum_rows(embedding_rows(rec, self.padding_idx, *head))

    def gradients(self, cap: Capture) -> torch.Tensor:
        examples, ids, vectors = self.rows(cap)
        vocab, width = self.shapes[0]
        out = torch.zeros(cap.size, cap.outputs, vocab, width, dtype=torch.float64)
        out[examples, :, ids] = vectors
        return out.reshape(cap.size, cap.outputs, -1)

    @staticmethod
    def _transformed(rows, transform: Transform):
        examples, ids, vectors = rows
        return examples, ids, apply_transform(transform, vectors)

    def add_kernels(self, acc: KernelSum, cap1: Capture, cap2: Capture) -> None:
        rows1 = self.rows(cap1)
        rows2 = rows1 if acc.same else self.rows(cap2)
        for total, (t1, t2) in zip(acc.totals, acc.pairs):
            left = self._transformed(rows1, t1)
            right = left if (rows2 is rows1 and t1 is t2) else self._transformed(rows2, t2)
            total += rows_kernel(left, right, cap1.size, cap2.size)

    def project(self, cap: Capture, directions: Directions, transform: Transform = None) -> torch.Tensor:
        examples, ids, vectors = self._transformed(self.rows(cap), transform)
        matrix_directions = directions[self.names[0]]
        picked = matrix_directions[:, ids].double()  # [S, R, d]
        per_row = torch.einsum("rcd,srd->rcs", vectors, picked)
        out = torch.zeros(cap.size, vectors.shape[1], matrix_directions.shape[0], dtype=torch.float64)
        return out.index_add_(0, examples, per_row)

    def direction(self, cap: Capture, weights: torch.Tensor, transform: Transform = None) -> Directions:
        examples, ids, vectors = self._transformed(self.rows(cap), transform)
        per_row = torch.einsum("rod,ros->srd", vectors, weights.double()[examples])  # [S, R, d]
        out = torch.zeros(weights.shape[2], *self.shapes[0], dtype=torch.float64)
        return {self.names[0]: out.index_add_(1, ids, per_row)}


class HeadBias(ParamKind):
    """The output bias b (logit_c = E[w_c]·h + b[w_c]): ∂f_o/∂b[w_c] = M[o, c], the same for every example.
    Gradients are given over the label words' entries only (the rest are zero)."""

    def __init__(self, name: str, bias: torch.Tensor):
        self.names, self.shapes = [name], [bias.shape]

    def gradients(self, cap: Capture) -> torch.Tensor:
        classes = cap.words.numel()
        mixing = torch.eye(classes, dtype=torch.float64) if cap.head_map is None else cap.head_map.double()
        return mixing.expand(cap.size, -1, -1)  # [n, O, C]

    def _flat_directions(self, directions: Directions) -> torch.Tensor:
        raise NotImplementedError  # directions are read at the label words, below

    def project(self, cap: Capture, directions: Directions, transform: Transform = None) -> torch.Tensor:
        picked = directions[self.names[0]][:, cap.words]  # [S, C]
        return jacobian_projection(apply_transform(transform, self.gradients(cap)), picked)

    def direction(self, cap: Capture, weights: torch.Tensor, transform: Transform = None) -> Directions:
        jac = apply_transform(transform, self.gradients(cap))
        out = torch.zeros(weights.shape[2], *self.shapes[0], dtype=torch.float64)
        out[:, cap.words] = torch.einsum("noc,nos->sc", jac, weights.double())
        return {self.names[0]: out}


class ModuleParams(ParamKind):
    """Any other module's own parameters: norms (y = h(x) ⊙ w + b) in closed form, else through the
    module's forward (``vmap(grad)``)."""

    def __init__(self, layer: str, module: nn.Module, names: list[str]):
        self.layer, self.module, self.names = layer, module, names
        self.shapes = [p.shape for _, p in module.named_parameters(recurse=False)]

    def gradients(self, cap: Capture) -> torch.Tensor:
        rec = cap.records[self.layer]
        closed = elementwise_affine_jacobian(self.module, rec)
        return closed if closed is not None else flatten_grads(module_jacobian(self.module, rec))


def flatten_grads(grads: dict[str, torch.Tensor]) -> torch.Tensor:
    """name -> ``[n, O, *shape]`` gradients as one ``[n, O, P]`` float64 tensor."""
    return torch.cat([g.reshape(g.shape[0], g.shape[1], -1).double() for g in grads.values()], dim=-1)


def _weighted_inputs(rec: Record, weights: torch.Tensor) -> torch.Tensor:
    """Σ_t w[o, t, k] a_t per example: ``[n, O, K·d_in]`` from ``weights [O, N, K]``."""
    outputs, tokens, width = weights.shape
    member = rec.membership.to(weights.dtype)  # [n, N]
    mixed = (member[None, None] * weights.permute(0, 2, 1)[:, :, None, :]).reshape(-1, tokens)
    out = (mixed @ rec.packed_inputs).view(outputs, width, rec.size, -1)
    return out.permute(2, 0, 1, 3).reshape(rec.size, outputs, -1)


def _weighted_grads(rec: Record, weights: torch.Tensor) -> torch.Tensor:
    """Σ_t g_t w[t, k] per example: ``[n, O, d_out·K]`` from ``weights [N, K]``."""
    outputs, tokens, d_out = rec.packed_grads.shape
    member = rec.membership.to(weights.dtype)
    mixed = (member[None] * weights.T[:, None, :]).reshape(-1, tokens)  # [K·n, N]
    out = torch.matmul(mixed, rec.packed_grads).view(outputs, weights.shape[1], rec.size, d_out)
    return out.permute(2, 0, 3, 1).reshape(rec.size, outputs, -1)


class AdapterKind(ParamKind):
    """One adapted layer's own parameters (names ``<layer>.<param>``)."""

    def __init__(self, layer: str, module: nn.Module):
        own = [(k, p) for k, p in module.named_parameters() if not k.startswith("base.")]
        self.layer, self.module = layer, module
        self.names = [f"{layer}.{k}" for k, _ in own]
        self.shapes = [p.shape for _, p in own]

    def gradients(self, cap: Capture) -> torch.Tensor:
        return self.record_gradients(cap.records[self.layer])

    def record_gradients(self, rec: Record) -> torch.Tensor:
        """``[n, O, P]`` from the layer's record."""
        raise NotImplementedError


class RowSlice(AdapterKind):
    """Rows R of ΔW (`RowAdapter`): Σ_t g_t[R] a_tᵀ, one GEMM over the packed tokens."""

    def record_gradients(self, rec: Record) -> torch.Tensor:
        return _weighted_inputs(rec, rec.packed_grads[..., self.module.rows])


class ColumnSlice(AdapterKind):
    """Columns S of ΔW (`ColAdapter`): Σ_t g_t a_t[S]ᵀ."""

    def record_gradients(self, rec: Record) -> torch.Tensor:
        return _weighted_grads(rec, rec.packed_inputs[:, self.module.cols])


class LoRAFactors(AdapterKind):
    """LoRA (no dropout): ∂f/∂A = s·Σ_t (Bᵀg_t) a_tᵀ and ∂f/∂B = s·Σ_t g_t (A a_t)ᵀ."""

    def record_gradients(self, rec: Record) -> torch.Tensor:
        layer = self.module
        dtype = rec.packed_inputs.dtype
        a_mat, b_mat = layer.A.detach().to(dtype), layer.B.detach().to(dtype)
        grad_a = _weighted_inputs(rec, rec.packed_grads @ b_mat)
        grad_b = _weighted_grads(rec, rec.packed_inputs @ a_mat.T)
        return layer.scale * torch.cat([grad_a, grad_b], dim=-1)


class _AdapterCall(nn.Module):
    """Registers one adapted layer and the shared factors so torch.func can swap both."""

    def __init__(self, layer: nn.Module, shared: nn.Module):
        super().__init__()
        self.layer, self.shared = layer, shared


def _adapter_forward(call: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return call.layer.adapter_forward(x)


class AdapterForward(AdapterKind):
    """Any other adapter's own parameters, through its ``adapter_forward`` (``vmap(grad)``)."""

    def __init__(self, layer: str, module: nn.Module, shared: nn.Module):
        super().__init__(layer, module)
        self.call = _AdapterCall(module, shared)

    def record_gradients(self, rec: Record) -> torch.Tensor:
        params = {f"layer.{k}": v.detach() for k, v in self.module.named_parameters() if not k.startswith("base.")}
        grads = module_jacobian(self.call, rec, params, _adapter_forward)
        return flatten_grads(grads)


class SharedFactors(ParamKind):
    """Factors shared by every adapted layer (LoRTA's CP factors): gradients summed over the layers."""

    def __init__(self, layers: dict[str, nn.Module], shared: nn.Module):
        self.layers, self.shared = layers, shared
        named = list(shared.named_parameters())
        self.names = [f"shared.{k}" for k, _ in named]
        self.shapes = [p.shape for _, p in named]

    def gradients(self, cap: Capture) -> torch.Tensor:
        params = {f"shared.{k}": v.detach() for k, v in self.shared.named_parameters()}
        total = None
        for layer, module in self.layers.items():
            grads = module_jacobian(_AdapterCall(module, self.shared), cap.records[layer], params, _adapter_forward)
            flat = flatten_grads(grads)
            total = flat if total is None else total + flat
        return total


def adapter_kind(layer: str, module: nn.Module, shared: nn.Module) -> AdapterKind:
    """The kind of one adapted layer's own parameters: a closed form where one is written out."""
    if isinstance(module, RowAdapter):
        return RowSlice(layer, module)
    if isinstance(module, ColAdapter):
        return ColumnSlice(layer, module)
    if isinstance(module, LoRAAdapter) and isinstance(module.dropout, nn.Identity):
        return LoRAFactors(layer, module)
    return AdapterForward(layer, module, shared)


def subset_kinds(model: nn.Module, sub: SubsetParams, cap: Capture) -> list[ParamKind]:
    """The parameter kinds of one resolved subset, for captures recorded like ``cap``.

    Raises:
        UserError: a layer of the subset was not recorded, or (``full``) a parameter has no kind.
    """
    if sub.spec.kind == "full":
        return _full_kinds(model, cap)
    if sub.spec.kind == "linear":
        named = dict(model.named_modules())
        return [LinearWeight(name[: -len(".weight")], name, named[name[: -len(".weight")]]) for name in sub.params]
    handle = sub.handle
    kinds: list[ParamKind] = []
    for name, layer in handle.layers.items():
        if name not in cap.records:
            raise UserError(f"layer {name} of subset {sub.spec} was not recorded")
        kind = adapter_kind(name, layer, handle.shared)
        if kind.names:
            kinds.append(kind)
    if next(handle.shared.parameters(), None) is not None:
        kinds.append(SharedFactors(dict(handle.layers), handle.shared))
    return kinds


def _full_kinds(model: nn.Module, cap: Capture) -> list[ParamKind]:
    """Every parameter of the model by kind; a tied output matrix is counted once, with its embedding.

    For a capture of an output function (``cap.words`` None) every parameter must belong to a recorded module;
    the label-word read-out adds the output matrix's rows (and bias) of an LM head.
    """
    split = split_lm_head(model) if cap.words is not None else None
    names_by_id = {id(p): n for n, p in model.named_parameters()}
    kinds: list[ParamKind] = []
    covered: set[int] = set()
    head_tied = False
    for layer, rec in cap.records.items():
        module = rec.module
        if isinstance(module, nn.Linear):
            kinds.append(LinearWeight(layer, names_by_id[id(module.weight)], module))
            covered.add(id(module.weight))
            if module.bias is not None:
                kinds.append(LinearBias(layer, names_by_id[id(module.bias)], module))
                covered.add(id(module.bias))
        elif isinstance(module, nn.Embedding):
            tied = split is not None and module.weight is split.weight
            head_tied |= tied
            kinds.append(EmbeddingRows(layer, names_by_id[id(module.weight)], module.weight, module.padding_idx,
                                       tied))
            covered.add(id(module.weight))
        else:
            own = list(module.parameters(recurse=False))
            kinds.append(ModuleParams(layer, module, [names_by_id[id(p)] for p in own]))
            covered.update(id(p) for p in own)
    if split is not None:
        if not head_tied:  # an untied output matrix: only the label words' rows move
            kinds.append(EmbeddingRows(None, names_by_id[id(split.weight)], split.weight, None, True))
        covered.add(id(split.weight))
        if split.bias is not None:
            kinds.append(HeadBias(names_by_id[id(split.bias)], split.bias))
            covered.add(id(split.bias))
    missing = [n for n, p in model.named_parameters() if id(p) not in covered]
    if missing:
        raise UserError(f"the fast eNTK cannot place parameters {missing[:4]} of {type(model).__name__} (their "
                        f"modules did not run in the forward, or use them outside it); use implementation='reference'")
    return kinds

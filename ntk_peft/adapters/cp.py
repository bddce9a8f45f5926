"""LoRTA (Hounie et al.): one rank-r CP tensor holds the updates of every targeted layer.

All updates form a 5th-order tensor ΔW ∈ R^{d_in × head_dim × H × L × M} (input,
output-within-head, head, layer, matrix type) with a CP model (LoRTA §3.2):

    ΔW = s·⟦A, B, C_head, C_layer, C_matrix⟧,
    ΔW[c, o, k, l, m] = s · Σ_j A[c, j]·B[o, j]·C_head[k, j]·C_layer[l, j]·C_matrix[m, j],

A ``[d_in, r]``, B ``[head_dim, r]``, C_head ``[H, r]``, C_layer ``[L, r]``,
C_matrix ``[M, r]``: (d_in + head_dim + H + L + M)·r parameters in all
(LoRTA table 1), shared by every adapted layer. Layer l's matrix m is the slice
``[:, :, :, l, m]`` read head-major, the layout of Hugging Face's
``view(..., heads, head_dim)``:

    ΔW_{l,m}[k·head_dim + o, c] = ΔW[c, o, k, l, m].

``transpose`` (spec ``cp{r}:transpose``) takes the other convention, that of
the authors' released code, which builds the transpose: heads along the
input columns and A along the output rows,

    ΔW_{l,m}[c, k·head_dim + o] = ΔW[c, o, k, l, m]   (c now over d_out),

so A has the largest d_out rows and H is the most d_in / head_dim.

Non-square and grouped-query layers use leading rows: a k/v projection
576 → 192 with head_dim 64 uses heads 0..2 (C_head[:3]); a layer whose d_in is
smaller than A's uses A[:d_in]. d_out must be a multiple of head_dim.

Initialisation follows the authors' released peft code (the paper does not
state it): B = 0, so ΔW = 0 and the adapted model equals the pretrained one;
A, C_head, C_layer, C_matrix are ``kaiming_uniform_(a=√5)`` on ``[n, r]``
tensors (fan-in r), i.e. U(−1/√r, 1/√r) (their C factors use
``a=√5·init_scale``; we take init_scale = 1, which makes all four the same
LoRA-style draw).

Scale s = α/r (the LoRA convention of LoRTA eq. 6, kept by the authors'
peft-based code) with α = r by default (s = 1), as the other adapters here;
the paper's GLUE, instruction-tuning and DPO runs use α = 16 (LoRTA tables 5,
8, 9), so pass ``alpha=16`` to reproduce them.

Forward: ΔW·x is computed without building ΔW:
u = x·(A[:d_in]·diag(coef)) with coef = s·C_layer[l] ⊙ C_matrix[m] ``[r]``,
then y = u·Kᵀ with K[k·head_dim + o, j] = C_head[k, j]·B[o, j] ``[d_out, r]``
(a Khatri-Rao product): O((d_in + d_out)·r) per token, LoRA's cost.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ntk_peft.adapters.base import AdaptedLinear
from ntk_peft.errors import UserError


class CPFactors(nn.Module):
    """The five shared CP factor matrices of LoRTA and the scale.

    Args:
        in_features: d_in, the largest input size of an adapted layer.
        head_dim: rows of one head in an output.
        num_heads: H, the largest d_out / head_dim of an adapted layer.
        num_layers: L.
        num_matrices: M, matrix types (e.g. 4 for q, k, v, o).
        rank: r.
        alpha: α, s = α/r; default r (s = 1).
        generator: draws A and the C factors.
        dtype, device: of the factors.

    Attributes:
        A: ``[d_in, r]`` input factor, U(±1/√r).
        B: ``[head_dim, r]`` output factor, zero.
        C_head: ``[H, r]``, U(±1/√r).
        C_layer: ``[L, r]``, U(±1/√r).
        C_matrix: ``[M, r]``, U(±1/√r).
        scale: s.
    """

    def __init__(self, in_features: int, head_dim: int, num_heads: int, num_layers: int, num_matrices: int,
                 rank: int, alpha: float | None = None, generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None):
        super().__init__()
        sizes = dict(in_features=in_features, head_dim=head_dim, num_heads=num_heads, num_layers=num_layers,
                     num_matrices=num_matrices, rank=rank)
        for name, value in sizes.items():
            if value < 1:
                raise UserError(f"CP factors: {name} must be at least 1, got {value}")
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scale = self.alpha / rank
        bound = 1.0 / math.sqrt(rank)  # kaiming_uniform_(a=sqrt(5)) with fan-in r

        def draw(rows: int) -> nn.Parameter:
            values = torch.rand((rows, rank), generator=generator, dtype=dtype) * 2 * bound - bound
            return nn.Parameter(values.to(device))

        self.A = draw(in_features)
        self.B = nn.Parameter(torch.zeros(head_dim, rank, dtype=dtype, device=device))
        self.C_head = draw(num_heads)
        self.C_layer = draw(num_layers)
        self.C_matrix = draw(num_matrices)

    @property
    def in_features(self) -> int:
        return self.A.shape[0]

    @property
    def head_dim(self) -> int:
        return self.B.shape[0]

    @property
    def num_heads(self) -> int:
        return self.C_head.shape[0]

    @property
    def num_layers(self) -> int:
        return self.C_layer.shape[0]

    @property
    def num_matrices(self) -> int:
        return self.C_matrix.shape[0]

    def num_params(self) -> int:
        """(d_in + head_dim + H + L + M)·r (LoRTA table 1)."""
        return (self.in_features + self.head_dim + self.num_heads + self.num_layers + self.num_matrices) * self.rank

    def coefficients(self, layer: int, matrix: int) -> torch.Tensor:
        """s·C_layer[layer] ⊙ C_matrix[matrix], ``[r]``."""
        return self.scale * (self.C_layer[layer] * self.C_matrix[matrix])

    def extra_repr(self) -> str:
        return (f"in={self.in_features}, head_dim={self.head_dim}, heads={self.num_heads}, "
                f"layers={self.num_layers}, matrices={self.num_matrices}, rank={self.rank}, scale={self.scale:g}")


class CPAdapter(AdaptedLinear):
    """One layer's slice of a shared LoRTA tensor.

    The factors are *not* a registered submodule: the adapter keeps a plain
    reference, so ``model.parameters()`` does not list them once per layer.
    Whoever builds the adapted model (the handle) owns ``factors``: it must
    register the one `CPFactors` once (e.g. as a submodule of the handle) so
    that its parameters are trained, saved and moved with ``.to()``.

    Args:
        base: the frozen ``nn.Linear`` (W0 ``[d_out, d_in]``).
        factors: the shared `CPFactors`.
        layer: index into C_layer.
        matrix: index into C_matrix.
        head_dim: rows per head of this layer's output; must equal the factors'.

    Raises:
        UserError: d_out not a multiple of head_dim, or a size or index beyond
            the factors'.
    """

    def __init__(self, base: nn.Linear, factors: CPFactors, layer: int, matrix: int, head_dim: int,
                 transpose: bool = False):
        super().__init__(base)
        self.transpose = transpose
        d_in, d_out = base.in_features, base.out_features
        head_side, a_side = "output", "input"
        if transpose:  # heads along the input, A along the output: the checks below with the roles swapped
            d_in, d_out, head_side, a_side = d_out, d_in, "input", "output"
        if head_dim != factors.head_dim:
            raise UserError(f"CP adapter: head_dim {head_dim} differs from the factors' {factors.head_dim}")
        if d_out % head_dim:
            raise UserError(f"CP adapter: {head_side} size {d_out} is not a multiple of head_dim {head_dim}")
        if d_out // head_dim > factors.num_heads:
            raise UserError(f"CP adapter: {head_side} size {d_out} needs {d_out // head_dim} heads, "
                            f"the factors have {factors.num_heads}")
        if d_in > factors.in_features:
            raise UserError(f"CP adapter: {a_side} size {d_in} exceeds the factors' {factors.in_features}")
        if not 0 <= layer < factors.num_layers:
            raise UserError(f"CP adapter: layer {layer} not in 0..{factors.num_layers - 1}")
        if not 0 <= matrix < factors.num_matrices:
            raise UserError(f"CP adapter: matrix {matrix} not in 0..{factors.num_matrices - 1}")
        self._factors = (factors,)  # a tuple: not registered as a submodule
        self.layer, self.matrix, self.head_dim = layer, matrix, head_dim
        self.num_heads = d_out // head_dim
        self._a_rows, self._head_rows = d_in, d_out  # rows of A used, and of the head-major factor

    @property
    def factors(self) -> CPFactors:
        return self._factors[0]

    def _a_factor(self) -> torch.Tensor:
        """A[:rows]·diag(coef), ``[rows, r]`` (rows = d_in, or d_out when transposed)."""
        f = self.factors
        return f.A[: self._a_rows] * f.coefficients(self.layer, self.matrix)

    def _head_factor(self) -> torch.Tensor:
        """K[k·head_dim + o, j] = C_head[k, j]·B[o, j], ``[rows, r]`` (rows = d_out, or d_in when transposed)."""
        f = self.factors
        return (f.C_head[: self.num_heads, None, :] * f.B[None, :, :]).reshape(self._head_rows, f.rank)

    def _input_factor(self) -> torch.Tensor:
        """``[d_in, r]``: ΔW = output factor · input factorᵀ."""
        return self._head_factor() if self.transpose else self._a_factor()

    def _output_factor(self) -> torch.Tensor:
        """``[d_out, r]``."""
        return self._a_factor() if self.transpose else self._head_factor()

    def compute_delta_weight(self) -> torch.Tensor:
        return self._output_factor() @ self._input_factor().T

    def delta_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._output_factor(), self._input_factor().T

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """ΔW·x = K_out·(K_inᵀ·x), never building ΔW."""
        return F.linear(x @ self._input_factor(), self._output_factor())

    def num_params(self) -> int:
        """0: the shared factors are counted once, by `CPFactors.num_params`."""
        return 0

    def extra_repr(self) -> str:
        return (f"{super().extra_repr()}, layer={self.layer}, matrix={self.matrix}, heads={self.num_heads}"
                + (", transpose" if self.transpose else ""))

"""LoRMA (Bihany, Patel, Modi): low-rank *multiplicative* adaptation, W = I(BA)·W0.

A plain product B·A (B ``[n, r]``, A ``[r, n]``) has rank ≤ r and cannot be the
identity at initialisation, so LoRMA "inflates" it to an ``[n, n]`` matrix
I(BA) of (nearly) full rank that starts at the identity (section 3.2):

- **LoRMA₊** (additive inflation, eq. 8): I₊(BA) = I + s·B·A, so
  W = W0 + s·B·(A·W0) and ΔW = s·B·A·W0 has rank ≤ r. B = 0 and A random
  (Kaiming-uniform, as LoRA/peft: U(±1/√n) for A ``[r, n]``), so ΔW = 0 at
  initialisation ("setting B = 0 and randomly initializing A", §3.2.2; the
  released GLUE code does ``zeros_(lora_B)``, ``kaiming_uniform_(lora_A, a=√5)``).
- **LoRMA_π** (permutation inflation, eq. 7): I_π(BA) = s·π(BA) with
  π(M)[i, j] = M[i, (j − i) mod n] ("the i-th row is rotated by i", §3.2.1),
  so W = s·π(BA)·W0 and ΔW = (s·π(BA) − I)·W0, generically of full rank.
  Initialisation (§3.2.1: "The first column of B is set to ones, while the
  rest of the elements are randomly initialized. A[0,0] is set to one, while
  the rest of the elements in A are set to zero"), with the scale folded in as
  the released code does: B Kaiming-uniform (U(±1/√r) for ``[n, r]``),
  B[:, 0] = 1, A = 0, A[0, 0] = 1, then A and B both divided by √s. Then
  BA = (1/s)·1·e₀ᵀ, π(BA) = I/s and s·π(BA) = I (exactly for s = 1, e.g. the
  default, to rounding otherwise).

Orientation: *pre* (the paper's default, Table 17 "Order: pre-multiplication")
multiplies on the left, n = d_out: W = I(BA)·W0. *Post* (§5.3) multiplies on
the right, n = d_in: W = W0·I(BA). Either way the adapter has 2·n·r
parameters (appendix D.5: more than LoRA's r·(d_in + d_out) when n is the
larger side).

Scale s = α/r with α = r by default (s = 1): the paper's ablations use
"scaling factor α = r" (§5.4, Table 10); its GLUE/E2E runs tune α per task
(Tables 14, 16), so pass ``alpha`` to reproduce those.

Computation order (appendix A): the d_out×d_in adapted weight is never built.

- LoRMA₊ pre: h = W0·x from the base layer's single product (recovered as
  base(x) − b, so that at B = 0 the output is bitwise base(x)), then
  y = base(x) + s·B(A·h): O(d_out·d_in + 2·d_out·r) per token.
- LoRMA₊ post: y = W0·(x + s·B(A·x)) + b, one W0 product.
- LoRMA_π pre: h = W0·x, y = s·π(BA)·h + b; post: y = W0·(s·π(BA)·x) + b. The
  n×n matrix s·π(BA) is built (the paper's O(n²(r + b)) cost): π acts on the
  product BA, not on the factors.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ntk_peft.adapters.base import AdaptedLinear
from ntk_peft.errors import UserError


def _uniform(shape: tuple[int, ...], bound: float, like: torch.Tensor,
             generator: torch.Generator | None) -> torch.Tensor:
    """U(−bound, bound) of ``shape`` drawn from ``generator`` (CPU), in like's dtype/device."""
    draw = torch.rand(shape, generator=generator, dtype=like.dtype) * 2 * bound - bound
    return draw.to(like.device)


def shift_index(n: int, device: torch.device | None = None) -> torch.Tensor:
    """Index map of π: ``idx[i, j] = (j − i) mod n``, ``[n, n]`` long.

    ``torch.gather(M, 1, idx)`` is π(M), i.e. π(M)[i, j] = M[i, (j − i) mod n]
    (row i rotated right by i).
    """
    rows = torch.arange(n, device=device)[:, None]
    cols = torch.arange(n, device=device)[None, :]
    return (cols - rows) % n


def permute_rows(matrix: torch.Tensor, index: torch.Tensor | None = None) -> torch.Tensor:
    """π(M) for ``M [n, n]``: row i rotated right by i (a gather, no loop)."""
    if index is None:
        index = shift_index(matrix.shape[1], matrix.device)
    return torch.gather(matrix, 1, index)


class _LoRMAAdapter(AdaptedLinear):
    """Shared parts: rank, scale, orientation and the side n of I(BA)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None, post: bool):
        super().__init__(base)
        if rank < 1:
            raise UserError(f"LoRMA rank must be at least 1, got {rank}")
        self.rank = rank
        self.alpha = float(rank if alpha is None else alpha)
        self.scale = self.alpha / rank
        self.post = post
        self.n = base.in_features if post else base.out_features

    def inflated_matrix(self) -> torch.Tensor:
        """I(BA), ``[n, n]``: the matrix that multiplies W0."""
        raise NotImplementedError

    def num_params(self) -> int:
        return 2 * self.rank * self.n

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, rank={self.rank}, scale={self.scale:g}, {'post' if self.post else 'pre'}"


class LoRMAPlusAdapter(_LoRMAAdapter):
    """LoRMA₊: W = (I + s·B·A)·W0 (pre) or W0·(I + s·B·A) (post).

    Args:
        base: the frozen ``nn.Linear`` (W0 ``[d_out, d_in]``).
        rank: r.
        alpha: α, s = α/r; default r (s = 1).
        post: multiply on the right (n = d_in) instead of the left (n = d_out).
        generator: draws A.

    Attributes:
        A: ``[r, n]``, Kaiming-uniform U(±1/√n).
        B: ``[n, r]``, zero.
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, post: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__(base, rank, alpha, post)
        weight = base.weight
        self.A = nn.Parameter(_uniform((rank, self.n), 1.0 / math.sqrt(self.n), weight, generator))
        self.B = nn.Parameter(weight.new_zeros(self.n, rank))

    def inflated_matrix(self) -> torch.Tensor:
        eye = torch.eye(self.n, dtype=self.A.dtype, device=self.A.device)
        return eye + self.scale * (self.B @ self.A)

    def compute_delta_weight(self) -> torch.Tensor:
        w0 = self.base.weight
        if self.post:
            return self.scale * ((w0 @ self.B) @ self.A)
        return self.scale * (self.B @ (self.A @ w0))

    def delta_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """s·(W0·B)·A (post) or s·B·(A·W0) (pre): rank at most r."""
        w0 = self.base.weight
        return (self.scale * (w0 @ self.B), self.A) if self.post else (self.scale * self.B, self.A @ w0)

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """ΔW·x: s·B(A(W0 x)) (pre) or s·W0(B(A x)) (post)."""
        w0 = self.base.weight
        if self.post:
            return F.linear(self.scale * F.linear(F.linear(x, self.A), self.B), w0)
        return self.scale * F.linear(F.linear(F.linear(x, w0), self.A), self.B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        if self.post:
            return self.base(x + self.scale * F.linear(F.linear(x, self.A), self.B))
        out = self.base(x)  # W0 x + b, the only product with W0
        h = out if self.base.bias is None else out - self.base.bias
        return out + self.scale * F.linear(F.linear(h, self.A), self.B)


class LoRMAPiAdapter(_LoRMAAdapter):
    """LoRMA_π: W = s·π(BA)·W0 (pre) or W0·s·π(BA) (post).

    Args:
        base: the frozen ``nn.Linear`` (W0 ``[d_out, d_in]``).
        rank: r.
        alpha: α, s = α/r; default r (s = 1).
        post: multiply on the right (n = d_in) instead of the left (n = d_out).
        generator: draws the random columns 1..r−1 of B.

    Attributes:
        A: ``[r, n]``: A[0, 0] = 1/√s, the rest 0.
        B: ``[n, r]``: column 0 = 1/√s, the rest U(±1/√r)/√s.
        shift: ``[n, n]`` π's gather index (a non-persistent buffer).
    """

    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, post: bool = False,
                 generator: torch.Generator | None = None):
        super().__init__(base, rank, alpha, post)
        weight = base.weight
        root = math.sqrt(self.scale)
        b = _uniform((self.n, rank), 1.0 / math.sqrt(rank), weight, generator)
        b[:, 0] = 1.0
        a = weight.new_zeros(rank, self.n)
        a[0, 0] = 1.0
        self.A = nn.Parameter(a / root)
        self.B = nn.Parameter(b / root)
        self.register_buffer("shift", shift_index(self.n, weight.device), persistent=False)

    def inflated_matrix(self) -> torch.Tensor:
        return self.scale * permute_rows(self.B @ self.A, self.shift)

    def compute_delta_weight(self) -> torch.Tensor:
        w0 = self.base.weight
        eye = torch.eye(self.n, dtype=w0.dtype, device=w0.device)
        change = self.inflated_matrix() - eye
        return w0 @ change if self.post else change @ w0

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """ΔW·x: (s·π(BA) − I)(W0 x) (pre) or W0((s·π(BA) − I) x) (post)."""
        w0 = self.base.weight
        change = self.inflated_matrix() - torch.eye(self.n, dtype=w0.dtype, device=w0.device)
        if self.post:
            return F.linear(F.linear(x, change), w0)
        return F.linear(F.linear(x, w0), change)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        inflated = self.inflated_matrix()
        if self.post:
            return self.base(F.linear(x, inflated))
        return F.linear(F.linear(x, self.base.weight), inflated, self.base.bias)


def inflated_matrix(adapter: LoRMAPlusAdapter | LoRMAPiAdapter) -> torch.Tensor:
    """The multiplicative matrix I(BA), ``[n, n]``, of a LoRMA adapter.

    I + s·B·A for LoRMA₊, s·π(BA) for LoRMA_π; n = d_out (pre) or d_in
    (post). Its rank is the paper's "rank of I(BA)" (appendix E.2).
    """
    return adapter.inflated_matrix()

"""LoRA (Hu et al.): ΔW = s·B·A with A ``[r, in]``, B ``[out, r]``, s = α/r.

A is Kaiming-uniform (as peft), B = 0, so ΔW = 0 at initialisation. The
forward is s·B(A·drop(x)), never the d_out×d_in product.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ntk_peft.adapters.base import AdaptedLinear


class LoRAAdapter(AdaptedLinear):
    def __init__(self, base: nn.Linear, rank: int, alpha: float | None = None, dropout: float = 0.0,
                 generator: torch.Generator | None = None):
        super().__init__(base)
        self.rank = rank
        self.scale = (rank if alpha is None else alpha) / rank
        self.A = nn.Parameter(base.weight.new_empty(rank, base.in_features))
        self.B = nn.Parameter(base.weight.new_zeros(base.out_features, rank))
        bound = 1.0 / math.sqrt(base.in_features)  # kaiming_uniform_(a=sqrt(5)), as nn.Linear and peft
        with torch.no_grad():
            self.A.copy_(torch.rand(self.A.shape, generator=generator, dtype=self.A.dtype) * 2 * bound - bound)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def compute_delta_weight(self) -> torch.Tensor:
        return self.scale * (self.B @ self.A)

    def delta_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.scale * self.B, self.A

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.scale * F.linear(F.linear(self.dropout(x), self.A), self.B)

    def num_params(self) -> int:
        return self.rank * (self.in_features + self.out_features)

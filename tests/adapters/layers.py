"""Small float64 layers and inputs shared by the adapter tests."""

from __future__ import annotations

import torch
from torch import nn


def linear(d_in: int, d_out: int, bias: bool = True, seed: int = 0) -> nn.Linear:
    """A seeded float64 nn.Linear."""
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out, bias=bias).double()


def inputs(d_in: int, seed: int = 1) -> torch.Tensor:
    """``[2, 3, d_in]`` float64 (two leading dimensions)."""
    return torch.randn(2, 3, d_in, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

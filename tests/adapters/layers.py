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


def check_merge_unmerge(adapter, x: torch.Tensor, tol: float = 1e-12) -> None:
    """merge adds exactly ΔW and keeps the outputs, twice is a no-op, unmerge restores W0 and the outputs.

    While merged, ``delta_weight()`` must return the ΔW that was added (W0-dependent
    adapters would otherwise recompute it from W0 + ΔW).
    """
    close = dict(rtol=tol, atol=tol)
    w0 = adapter.base.weight.detach().clone()
    with torch.no_grad():
        unmerged = adapter(x)
        delta = adapter.delta_weight().clone()
        adapter.merge()
        merged_weight = adapter.base.weight.clone()
        torch.testing.assert_close(merged_weight, w0 + delta, **close)
        torch.testing.assert_close(adapter(x), unmerged, **close)
        torch.testing.assert_close(adapter.delta_weight(), delta, rtol=0, atol=0)
        adapter.merge()
        assert torch.equal(adapter.base.weight, merged_weight)
        adapter.unmerge()
        torch.testing.assert_close(adapter.base.weight, w0, **close)
        torch.testing.assert_close(adapter(x), unmerged, **close)
        adapter.unmerge()
        torch.testing.assert_close(adapter.base.weight, w0, **close)

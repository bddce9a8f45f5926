"""The adapter protocol: one wrapped `nn.Linear`, its own parameters, an exact ΔW.

An `AdaptedLinear` holds the frozen pretrained layer as ``base`` and computes
``(W0 + ΔW) x + b + Δb``. Subclasses provide `compute_delta_weight` (the exact ΔW,
``[out, in]``), `num_params` (analytic) and, where a cheaper order exists,
`adapter_forward` (``ΔW x`` without building ΔW) and, for a low-rank ΔW,
`delta_factors`. At initialisation ΔW = 0 (LoRMA-π: s·π(BA) = I), so the
adapted model equals the pretrained one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class AdaptedLinear(nn.Module):
    """Base class of every per-layer adapter.

    Attributes:
        base: the wrapped pretrained layer, frozen.
        merged: whether ΔW (and Δb) are currently added into ``base``.
    """

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base
        for param in base.parameters():
            param.requires_grad_(False)
        self.merged = False
        self._merged: tuple[torch.Tensor, torch.Tensor | None] | None = None

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        """The pretrained weight W0 while unmerged (code that reads ``.weight`` keeps working)."""
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    def delta_weight(self) -> torch.Tensor:
        """Exact ΔW, ``[out, in]``, such that the layer computes (W0 + ΔW) x + b.

        While merged, the ΔW that was added (adapters whose ΔW depends on W0
        would otherwise read the merged weight).
        """
        return self._merged[0] if self.merged else self.compute_delta_weight()

    def compute_delta_weight(self) -> torch.Tensor:
        """ΔW from the current parameters and the unmerged W0."""
        raise NotImplementedError

    def delta_factors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(L [out, r], R [r, in])`` with ΔW = L·R from the current parameters, for adapters whose update
        has a known low rank r (its spectrum then costs two thin QRs, `factored_singular_values`, not a
        dense SVD); None where ΔW has no such form."""
        return None

    def delta_bias(self) -> torch.Tensor | None:
        """Δb, ``[out]``, or None when the adapter leaves the bias alone."""
        return None

    def num_params(self) -> int:
        """Trainable parameters of this layer's adapter (analytic formula)."""
        raise NotImplementedError

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``ΔW x + Δb`` for ``x [..., in]``; subclasses use cheaper orders."""
        out = F.linear(x, self.delta_weight())
        delta_b = self.delta_bias()
        return out if delta_b is None else out + delta_b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        return self.base(x) + self.adapter_forward(x)

    @torch.no_grad()
    def merge(self) -> None:
        """Add ΔW (and Δb) into the base layer; idempotent."""
        if self.merged:
            return
        delta_w, delta_b = self.compute_delta_weight().detach().clone(), self.delta_bias()
        delta_b = None if delta_b is None else delta_b.detach().clone()
        self.base.weight += delta_w
        if delta_b is not None:
            self.base.bias += delta_b
        self._merged, self.merged = (delta_w, delta_b), True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Subtract exactly what `merge` added; idempotent."""
        if not self.merged:
            return
        delta_w, delta_b = self._merged
        self.base.weight -= delta_w
        if delta_b is not None:
            self.base.bias -= delta_b
        self._merged, self.merged = None, False

    def extra_repr(self) -> str:
        return f"in={self.in_features}, out={self.out_features}, params={self.num_params()}, merged={self.merged}"

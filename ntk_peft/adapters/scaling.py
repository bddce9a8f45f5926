"""BitFit (biases) and IA3 (scaling vectors).

- BitFit: a trainable Δb ``[out]`` (zero) on every targeted layer, also where
  the layer has no bias (merging then creates one), so that ΔW = 0 and Δb is
  the whole update.
- IA3 (Liu et al.): a vector l (ones). On attention keys/values and other
  non-feed-forward layers it scales the output of the weight,
  y = l ⊙ (W0 x) + b, so ΔW = (l − 1)·W0 row-wise (the bias is not scaled, so
  that the update is exactly a ΔW; on bias-free models this is IA3 as in
  peft). On the feed-forward down projection it scales the input,
  y = W0 (l ⊙ x) + b, so ΔW = W0·diag(l − 1). With ``scale_bias`` (spec
  ``ia3:bias``, peft's convention) the output scaling covers the bias too,
  y = l ⊙ (W0 x + b): ΔW as above plus Δb = (l − 1) ⊙ b.
"""

from __future__ import annotations

import torch
from torch import nn

from ntk_peft.adapters.base import AdaptedLinear


class BiasAdapter(AdaptedLinear):
    def __init__(self, base: nn.Linear):
        super().__init__(base)
        self.delta_b = nn.Parameter(base.weight.new_zeros(base.out_features))
        self._created_bias = False

    def compute_delta_weight(self) -> torch.Tensor:
        return self.delta_b.new_zeros(self.out_features, self.in_features)

    def delta_bias(self) -> torch.Tensor:
        return self.delta_b

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.delta_b.expand(*x.shape[:-1], self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) if self.merged else self.base(x) + self.delta_b

    @torch.no_grad()
    def merge(self) -> None:
        if not self.merged and self.base.bias is None:
            self.base.bias = nn.Parameter(self.delta_b.new_zeros(self.out_features), requires_grad=False)
            self._created_bias = True
        super().merge()

    @torch.no_grad()
    def unmerge(self) -> None:
        super().unmerge()
        if self._created_bias:
            self.base.bias, self._created_bias = None, False

    def num_params(self) -> int:
        return self.out_features


class IA3Adapter(AdaptedLinear):
    def __init__(self, base: nn.Linear, feedforward: bool, scale_bias: bool = False):
        super().__init__(base)
        self.feedforward, self.scale_bias = feedforward, scale_bias
        self.scale = nn.Parameter(base.weight.new_ones(base.in_features if feedforward else base.out_features))

    def compute_delta_weight(self) -> torch.Tensor:
        w0 = self.base.weight
        return w0 * (self.scale - 1)[None, :] if self.feedforward else w0 * (self.scale - 1)[:, None]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        if self.feedforward:
            return self.base(x * self.scale)
        if self.scale_bias:
            return self.base(x) * self.scale
        out = torch.nn.functional.linear(x, self.base.weight) * self.scale
        return out if self.base.bias is None else out + self.base.bias

    def delta_bias(self) -> torch.Tensor | None:
        """(l − 1) ⊙ b with ``scale_bias`` on an output-scaled layer that has a bias, else None."""
        if not self.scale_bias or self.feedforward or self.base.bias is None:
            return None
        return (self.scale - 1) * self.base.bias

    def num_params(self) -> int:
        return self.scale.numel()

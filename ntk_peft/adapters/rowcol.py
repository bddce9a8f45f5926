"""RoCoFT (Kowsher et al.): only r rows or r columns of W0 change.

The trainable tensor is r×d_in (rows) or d_out×r (columns); the index set is a
buffer. The forward is W0·x + b plus the r-row (r-column) correction, never a
concatenated full weight. Selections (RoCoFT section 6):

- ``first``: indices 0..r-1 (the paper's default);
- ``random``: uniformly at random (seeded);
- ``wanda-max`` / ``wanda-min``: Wanda scores S_ij = |W_ij|·‖X_j‖₂ over a
  calibration batch, summed over columns (rows) or rows (columns); the r
  largest / smallest;
- ``wanda-mixed``: ceil(r/2) largest and floor(r/2) smallest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ntk_peft.adapters.base import AdaptedLinear
from ntk_peft.errors import UserError


def select_indices(scores_or_size, r: int, selection: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Sorted indices of r rows/columns.

    Args:
        scores_or_size: ``[n]`` Wanda scores (wanda-*), or n for first/random.
        r: how many to pick.
        selection: first, random, wanda-max, wanda-min, wanda-mixed.
        generator: for ``random``.
    """
    if selection == "first":
        return torch.arange(r)
    if selection == "random":
        return torch.randperm(int(scores_or_size), generator=generator)[:r].sort().values
    order = torch.argsort(scores_or_size, descending=True, stable=True)
    if selection == "wanda-max":
        chosen = order[:r]
    elif selection == "wanda-min":
        chosen = order[-r:]
    else:  # wanda-mixed
        top = (r + 1) // 2
        chosen = torch.cat([order[:top], order[len(order) - (r - top):]]) if r > top else order[:top]
    return chosen.sort().values


def wanda_scores(weight: torch.Tensor, input_norms: torch.Tensor, axis: str) -> torch.Tensor:
    """Row (``axis='row'``, ``[out]``) or column (``[in]``) sums of |W_ij|·‖X_j‖₂."""
    scores = weight.abs() * input_norms[None, :]
    return scores.sum(dim=1) if axis == "row" else scores.sum(dim=0)


class RowAdapter(AdaptedLinear):
    """ΔW nonzero only on rows R: ``ΔW[R] = delta`` with delta ``[r, in]``."""

    def __init__(self, base: nn.Linear, rows: torch.Tensor):
        super().__init__(base)
        if rows.numel() > base.out_features:
            raise UserError(f"row{rows.numel()}: the layer has only {base.out_features} rows")
        self.register_buffer("rows", rows.to(torch.long))
        self.delta = nn.Parameter(base.weight.new_zeros(rows.numel(), base.in_features))

    def compute_delta_weight(self) -> torch.Tensor:
        full = self.delta.new_zeros(self.out_features, self.in_features)
        return full.index_copy(0, self.rows, self.delta)

    def delta_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ΔW = E·delta with E ``[out, r]`` the one-hot columns of the rows R."""
        picks = self.delta.new_zeros(self.out_features, self.rows.numel())
        picks[self.rows, torch.arange(self.rows.numel(), device=picks.device)] = 1
        return picks, self.delta

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x.new_zeros(*x.shape[:-1], self.out_features)
        return out.index_copy(-1, self.rows, F.linear(x, self.delta))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        return self.base(x).index_add(-1, self.rows, F.linear(x, self.delta))

    def num_params(self) -> int:
        return self.rows.numel() * self.in_features


class ColAdapter(AdaptedLinear):
    """ΔW nonzero only on columns S: ``ΔW[:, S] = delta`` with delta ``[out, r]``."""

    def __init__(self, base: nn.Linear, cols: torch.Tensor):
        super().__init__(base)
        if cols.numel() > base.in_features:
            raise UserError(f"col{cols.numel()}: the layer has only {base.in_features} columns")
        self.register_buffer("cols", cols.to(torch.long))
        self.delta = nn.Parameter(base.weight.new_zeros(base.out_features, cols.numel()))

    def compute_delta_weight(self) -> torch.Tensor:
        full = self.delta.new_zeros(self.out_features, self.in_features)
        return full.index_copy(1, self.cols, self.delta)

    def delta_factors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """ΔW = delta·Eᵀ with Eᵀ ``[r, in]`` the one-hot rows of the columns S."""
        picks = self.delta.new_zeros(self.cols.numel(), self.in_features)
        picks[torch.arange(self.cols.numel(), device=picks.device), self.cols] = 1
        return self.delta, picks

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.index_select(-1, self.cols), self.delta)

    def num_params(self) -> int:
        return self.cols.numel() * self.out_features


class RandomEntriesAdapter(AdaptedLinear):
    """ΔW nonzero on a fixed random entry set (each entry kept with probability p).

    Only the selected entries are trainable: ``values [k]`` at flat indices
    ``entries [k]``, so optimiser state is k numbers, not a full-size mask.
    """

    def __init__(self, base: nn.Linear, prob: float, generator: torch.Generator):
        super().__init__(base)
        keep = torch.rand(base.out_features * base.in_features, generator=generator) < prob
        self.register_buffer("entries", keep.nonzero().flatten())
        self.values = nn.Parameter(base.weight.new_zeros(self.entries.numel()))

    def compute_delta_weight(self) -> torch.Tensor:
        flat = self.values.new_zeros(self.out_features * self.in_features)
        return flat.index_copy(0, self.entries, self.values).view(self.out_features, self.in_features)

    def num_params(self) -> int:
        return self.entries.numel()

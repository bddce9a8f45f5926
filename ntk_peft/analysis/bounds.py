"""MoRe's expressivity statements made computable (appendix A of the MoRe paper).

- `theorem_rhs`: the right-hand side of theorems A.3 (r = N) and A.4 (N | r),
  ‖Π_{l<L} W_l‖_F² · ‖Ẽ − P_M(Ẽ)‖_F², for any (N, r) with this package's caps
  (`monarch_block_ranks`); `theorem_rhs_spectral` is the tighter ‖Π‖_2² form;
- `worst_case_ratio(m)` = (m−1)/m, with `orthogonal_blocks_matrix` (every
  sub-block orthogonal: Monarch with r = N = m keeps exactly 1/m) and
  `rank_m_orthogonal_blocks_matrix` (the same sub-blocks and rank m with equal
  singular values: rank one also keeps exactly 1/m, the case the paper marks "(?)");
- `monarch_error_curve`: the projection error of ``more{N}x{r}`` for many r at
  once (one batched SVD of the N² sub-blocks);
- `equal_budget_errors`: for a parameter budget, the best relative error of
  each class (Monarch over its (N, r) choices, low rank, rows, columns).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ntk_peft.analysis.projections import (
    checked_matrix,
    monarch_block_ranks,
    monarch_params,
    monarch_project,
    positive_int,
)
from ntk_peft.errors import UserError

MONARCH_BLOCKS = (2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


def theorem_rhs(prefix, e_tilde, blocks: int, rank: int) -> float:
    """‖prefix‖_F² · ‖Ẽ − P_M(Ẽ)‖_F² (squared-error form of MoRe theorems A.3/A.4)."""
    prefix = checked_matrix(prefix)
    return float(prefix.norm() ** 2) * monarch_project(e_tilde, blocks, rank).error ** 2


def theorem_rhs_spectral(prefix, e_tilde, blocks: int, rank: int) -> float:
    """‖prefix‖_2² · ‖Ẽ − P_M(Ẽ)‖_F²: the same argument with ‖AB‖_F ≤ ‖A‖_2‖B‖_F (tighter)."""
    prefix = checked_matrix(prefix)
    return float(torch.linalg.matrix_norm(prefix, 2) ** 2) * monarch_project(e_tilde, blocks, rank).error ** 2


def worst_case_ratio(m: int) -> float:
    """(m−1)/m: the largest share of ‖A‖_F² that Monarch with r = N = m (m×m sub-blocks) can miss."""
    return (positive_int("m", m) - 1) / m


def _orthogonal(m: int, generator: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(m, m, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))


def _place(blocks: dict[tuple[int, int], torch.Tensor], m: int) -> torch.Tensor:
    """An m²×m² matrix with sub-block (k_out, k_in) (rows k_out::m, columns k_in·m...) given."""
    out = torch.zeros(m * m, m * m, dtype=torch.float64)
    for (k_out, k_in), block in blocks.items():
        out[k_out::m, k_in * m:(k_in + 1) * m] = block
    return out


def orthogonal_blocks_matrix(m: int, seed: int = 0) -> torch.Tensor:
    """m²×m², every sub-block an independent random orthogonal matrix (full rank, equal singular values)."""
    g = torch.Generator().manual_seed(seed)
    return _place({(a, b): _orthogonal(m, g) for a in range(m) for b in range(m)}, m)


def rank_m_orthogonal_blocks_matrix(m: int, seed: int = 0) -> torch.Tensor:
    """m²×m², sub-block (a, b) = Q_a R_b (orthogonal), so the matrix is X·Y with XᵀX = YYᵀ = m·I:
    rank m with m equal singular values. Monarch (r = N = m) and rank one both miss (m−1)/m."""
    g = torch.Generator().manual_seed(seed)
    left = [_orthogonal(m, g) for _ in range(m)]
    right = [_orthogonal(m, g) for _ in range(m)]
    return _place({(a, b): left[a] @ right[b] for a in range(m) for b in range(m)}, m)


def sub_block_singular_values(matrix, blocks: int) -> torch.Tensor:
    """``[N, N, min(b_out, b_in)]`` singular values of every sub-block (padded rows/columns are zeros)."""
    matrix = checked_matrix(matrix)
    blocks = positive_int("N", blocks)
    m, n = matrix.shape
    if blocks > min(m, n):
        raise UserError(f"N={blocks} blocks exceed the matrix's size {m}x{n}")
    b_in, b_out = math.ceil(n / blocks), math.ceil(m / blocks)
    padded = matrix.new_zeros(blocks * b_out, blocks * b_in)
    padded[:m, :n] = matrix
    # row o = i·N + k_out, column k_in·b_in + c  ->  [k_out, k_in, i, c]
    tiles = padded.reshape(b_out, blocks, blocks, b_in).permute(1, 2, 0, 3)
    return torch.linalg.svdvals(tiles)


def monarch_error_curve(matrix, blocks: int, ranks) -> dict[int, float]:
    """r -> ‖M − P_{more{N}x{r}}(M)‖_F for every valid r in ``ranks`` (same values as `monarch_project`)."""
    matrix = checked_matrix(matrix)
    sigma2 = sub_block_singular_values(matrix, blocks) ** 2  # [N, N, s]
    tails = torch.flip(torch.cumsum(torch.flip(sigma2, [-1]), -1), [-1])  # tails[..., c] = Σ_{i ≥ c} σ_i²
    tails = torch.cat([tails, tails.new_zeros(*tails.shape[:-1], 1)], -1)
    m, n = matrix.shape
    limit = max(math.ceil(n / blocks), math.ceil(m / blocks))
    out = {}
    for rank in ranks:
        if not 1 <= rank <= limit:
            continue
        caps = torch.from_numpy(np.minimum(monarch_block_ranks(blocks, rank), sigma2.shape[-1]))
        out[int(rank)] = float(torch.gather(tails, -1, caps[..., None]).sum().clamp_min(0).sqrt())
    return out


def equal_budget_errors(matrix, budget: int, monarch_blocks=MONARCH_BLOCKS) -> list[dict]:
    """The best relative error ‖M − P(M)‖_F/‖M‖_F of each class within ``budget`` parameters.

    Rows ``{"class", "config", "params", "relative_error"}`` for ``lowrank`` (rank ⌊P/(m+n)⌋),
    ``rows`` (⌊P/n⌋ rows), ``cols`` (⌊P/m⌋ columns) and ``monarch`` (the best ``more{N}x{r}``
    over N in ``monarch_blocks`` and every r that fits; N = 1 is low rank); a class that cannot
    spend the budget (not even one rank, row or block rank) is left out.
    """
    return equal_budget_table(matrix, [budget], monarch_blocks)[budget]


def equal_budget_table(matrix, budgets, monarch_blocks=MONARCH_BLOCKS) -> dict[int, list[dict]]:
    """`equal_budget_errors` for several budgets at once: one SVD of M, one of each N's sub-blocks."""
    matrix = checked_matrix(matrix)
    budgets = [positive_int("budget", b) for b in budgets]
    m, n = matrix.shape
    norm = float(matrix.norm())
    if norm == 0:
        raise UserError("the matrix is zero; relative errors are undefined")
    sigma2 = torch.linalg.svdvals(matrix) ** 2
    lowrank_tails = torch.flip(torch.cumsum(torch.flip(sigma2, [0]), 0), [0])  # [i] = Σ_{j ≥ i} σ_j²
    row_norms = torch.sort((matrix ** 2).sum(1), descending=True).values
    col_norms = torch.sort((matrix ** 2).sum(0), descending=True).values
    total = float((matrix ** 2).sum())
    curves = {}
    largest = max(budgets)
    for blocks in monarch_blocks:
        if blocks <= min(m, n) and monarch_params(m, n, blocks, 1) <= largest:
            curves[blocks] = monarch_error_curve(matrix, blocks, range(1, largest // monarch_params(m, n, blocks, 1) + 1))
    out = {}
    for budget in budgets:
        rows = []
        rank = min(budget // (m + n), min(m, n))
        if rank >= 1:
            error = float(lowrank_tails[rank]) if rank < sigma2.numel() else 0.0
            rows.append({"class": "lowrank", "config": f"lora{rank}", "params": rank * (m + n),
                         "relative_error": math.sqrt(max(error, 0.0)) / norm})
        for kind, size, norms in (("rows", n, row_norms), ("cols", m, col_norms)):
            count = min(budget // size, norms.numel())
            if count >= 1:
                rest = max(total - float(norms[:count].sum()), 0.0)
                rows.append({"class": kind, "config": f"{kind[:3]}{count}", "params": count * size,
                             "relative_error": math.sqrt(rest) / norm})
        best = None
        for blocks, curve in curves.items():
            for r, error in curve.items():
                if monarch_params(m, n, blocks, r) <= budget and (best is None or error < best[2]):
                    best = (blocks, r, error)
        if best is not None:
            blocks, r, error = best
            rows.append({"class": "monarch", "config": f"more{blocks}x{r}",
                         "params": monarch_params(m, n, blocks, r), "relative_error": error / norm})
        out[budget] = rows
    return out

"""MoRe's appendix-A statements: worst cases, the batched error curve, equal-budget comparisons."""

from __future__ import annotations

import pytest
import torch

from ntk_peft.analysis import lowrank_project, monarch_project
from ntk_peft.analysis.bounds import (
    equal_budget_errors,
    monarch_error_curve,
    orthogonal_blocks_matrix,
    rank_m_orthogonal_blocks_matrix,
    worst_case_ratio,
)
from ntk_peft.errors import UserError


@pytest.mark.parametrize("m", [2, 3, 4])
def test_worst_case_construction_attains_the_ratio(m):
    matrix = orthogonal_blocks_matrix(m, seed=m)
    share = monarch_project(matrix, m, m).error ** 2 / float(matrix.norm() ** 2)
    assert share == pytest.approx(worst_case_ratio(m), rel=1e-12)
    assert lowrank_project(matrix, 1).error ** 2 / float(matrix.norm() ** 2) > share  # rank m², rank one misses more


@pytest.mark.parametrize("m", [2, 3, 4])
def test_rank_m_equal_spectrum_case_ties_monarch_and_rank_one(m):
    """The paper's "(?)": such a matrix exists, and there the two errors are equal."""
    matrix = rank_m_orthogonal_blocks_matrix(m, seed=m)
    sigma = torch.linalg.svdvals(matrix)
    assert torch.allclose(sigma[:m], torch.full((m,), float(m), dtype=torch.float64), rtol=1e-12)
    assert sigma[m:].abs().max() <= 1e-12 * m
    total = float(matrix.norm() ** 2)
    assert monarch_project(matrix, m, m).error ** 2 / total == pytest.approx(worst_case_ratio(m), rel=1e-10)
    assert lowrank_project(matrix, 1).error ** 2 / total == pytest.approx(worst_case_ratio(m), rel=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_rank_above_m_monarch_strictly_beats_rank_one_and_never_misses_more_than_the_ratio(seed):
    m = 3
    g = torch.Generator().manual_seed(seed)
    matrix = torch.randn(m * m, m + 2, generator=g, dtype=torch.float64) @ torch.randn(m + 2, m * m, generator=g,
                                                                                        dtype=torch.float64)
    assert torch.linalg.matrix_rank(matrix) > m
    monarch, rank_one = monarch_project(matrix, m, m).error, lowrank_project(matrix, 1).error
    assert monarch < rank_one * (1 - 1e-6)
    assert monarch ** 2 <= worst_case_ratio(m) * float(matrix.norm() ** 2)


@pytest.mark.parametrize("shape,blocks", [((16, 16), 4), ((13, 10), 3), ((24, 12), 4), ((9, 14), 4)])
def test_error_curve_equals_the_projection(shape, blocks):
    matrix = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    ranks = range(1, 5)
    curve = monarch_error_curve(matrix, blocks, ranks)
    assert set(curve) == set(ranks)
    for rank, error in curve.items():
        assert error == pytest.approx(monarch_project(matrix, blocks, rank).error, rel=1e-10)


def test_equal_budget_rows_respect_the_budget_and_each_class_wins_on_its_own_matrices():
    g = torch.Generator().manual_seed(0)
    low = torch.randn(48, 2, generator=g, dtype=torch.float64) @ torch.randn(2, 64, generator=g, dtype=torch.float64)
    rows = {r["class"]: r for r in equal_budget_errors(low, 4 * (48 + 64))}
    assert set(rows) == {"lowrank", "rows", "cols", "monarch"}
    assert all(r["params"] <= 4 * (48 + 64) for r in rows.values())
    assert rows["lowrank"]["relative_error"] <= 1e-12  # rank 2 within rank 4
    assert rows["monarch"]["relative_error"] <= 1e-12  # more2x4: sub-block caps 2 hold any rank-2 matrix
    assert min(rows["rows"]["relative_error"], rows["cols"]["relative_error"]) > 0.1
    member = monarch_project(torch.randn(16, 16, generator=g, dtype=torch.float64), 4, 4).matrix  # rank up to 16
    best = {r["class"]: r for r in equal_budget_errors(member, 4 * 4 * 8)}  # more4x4's budget = rank 4's
    assert best["monarch"]["relative_error"] <= 1e-12 < best["lowrank"]["relative_error"]
    # at the same budget, low rank beats Monarch even on the matrix built to be Monarch's worst case
    blocky = {r["class"]: r for r in equal_budget_errors(orthogonal_blocks_matrix(4), 4 * 4 * 8)}
    assert blocky["lowrank"]["relative_error"] < blocky["monarch"]["relative_error"]
    with pytest.raises(UserError, match="zero"):
        equal_budget_errors(torch.zeros(4, 4, dtype=torch.float64), 8)


def test_equal_budget_table_agrees_with_the_projections():
    from ntk_peft.analysis import cols_project, monarch_params, rows_project
    from ntk_peft.analysis.bounds import equal_budget_table

    matrix = torch.randn(20, 28, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    norm = float(matrix.norm())
    budgets = [48, 96, 200, 480]
    table = equal_budget_table(matrix, budgets, monarch_blocks=(2, 3, 4))
    for budget in budgets:
        rows = {r["class"]: r for r in table[budget]}
        assert all(r["params"] <= budget for r in rows.values())
        rank = budget // 48
        assert rows["lowrank"]["relative_error"] == pytest.approx(lowrank_project(matrix, rank).error / norm, rel=1e-10)
        assert rows["rows"]["relative_error"] == pytest.approx(rows_project(matrix, budget // 28).error / norm, rel=1e-10)
        assert rows["cols"]["relative_error"] == pytest.approx(cols_project(matrix, budget // 20).error / norm, rel=1e-10)
        brute = min(monarch_project(matrix, n_, r).error for n_ in (2, 3, 4) for r in range(1, 15)
                    if monarch_params(20, 28, n_, r) <= budget and r <= max(-(-20 // n_), -(-28 // n_)))
        assert rows["monarch"]["relative_error"] == pytest.approx(brute / norm, rel=1e-10)
        assert table[budget] == equal_budget_errors(matrix, budget, monarch_blocks=(2, 3, 4))

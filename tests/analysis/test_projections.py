"""Adapter-class projections against brute force: class members, SVD tails, adapters, random restarts."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from ntk_peft.analysis import (
    cols_project,
    cp_project,
    lowrank_project,
    monarch_block_ranks,
    monarch_params,
    monarch_project,
    rows_project,
)
from ntk_peft.errors import UserError
from tests.helpers import dense_monarch

# (m, n, N, r): square, rectangular, N not dividing r (uneven caps), r < N (structural zeros), padded
CASES = [(16, 16, 4, 4), (12, 24, 3, 6), (18, 12, 3, 5), (16, 16, 4, 2), (13, 10, 3, 2), (9, 14, 4, 3)]


def _member(m, n, blocks, rank, seed):
    """A random matrix of the more{N}x{r} class: the adapter's ΔW (zero-padded input, truncated output)."""
    g = torch.Generator().manual_seed(seed)
    w1 = torch.randn(blocks, rank, math.ceil(n / blocks), generator=g, dtype=torch.float64)
    w2 = torch.randn(blocks, math.ceil(m / blocks), rank, generator=g, dtype=torch.float64)
    return dense_monarch(w1, w2)[:m, :n]


def _sub_blocks(matrix, blocks):
    """Sub-block (k_out, k_in): rows k_out::N, columns of input block k_in (brute-force index lists)."""
    m, n = matrix.shape
    b_in = math.ceil(n / blocks)
    for k_out, k_in in itertools.product(range(blocks), repeat=2):
        rows = [o for o in range(m) if o % blocks == k_out]
        cols = [c for c in range(n) if c // b_in == k_in]
        yield k_out, k_in, matrix[np.ix_(rows, cols)]


@pytest.mark.parametrize("m,n,blocks,rank", CASES)
def test_a_class_member_is_its_own_projection(m, n, blocks, rank):
    member = _member(m, n, blocks, rank, seed=m * n + rank)
    result = monarch_project(member, blocks, rank)
    assert result.error <= 1e-10 * member.norm()
    assert (result.matrix - member).abs().max() <= 1e-10 * member.abs().max()


@pytest.mark.parametrize("m,n,blocks,rank", CASES)
def test_error_is_the_discarded_sub_block_spectrum_and_factors_load_into_the_adapter(m, n, blocks, rank):
    from ntk_peft.adapters import MonarchAdapter

    matrix = torch.randn(m, n, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    caps = monarch_block_ranks(blocks, rank)
    discarded = sum(float(np.sum(np.linalg.svd(block.numpy(), compute_uv=False)[caps[k_out, k_in]:] ** 2))
                    for k_out, k_in, block in _sub_blocks(matrix, blocks))
    w1, w2, error = monarch_project(matrix, blocks, rank)
    assert error ** 2 == pytest.approx(discarded, rel=1e-10)
    adapter = MonarchAdapter(torch.nn.Linear(n, m, bias=False, dtype=torch.float64), blocks, rank)
    with torch.no_grad():
        adapter.w1.copy_(w1)
        adapter.w2.copy_(w2)
    projected = monarch_project(matrix, blocks, rank).matrix
    assert (adapter.delta_weight() - projected).abs().max() <= 1e-12 * projected.abs().max()
    assert (matrix - adapter.delta_weight()).norm().item() == pytest.approx(error, rel=1e-10)
    assert adapter.num_params() == monarch_params(m, n, blocks, rank)


def test_block_rank_caps():
    assert (monarch_block_ranks(4, 8) == 2).all()  # N | r: r/N everywhere (theorem A.4)
    assert (monarch_block_ranks(3, 3) == 1).all()  # r = N: rank one (theorem A.3)
    uneven = monarch_block_ranks(3, 5)
    assert set(uneven.ravel().tolist()) == {1, 2} and (uneven.sum(0) == 5).all()
    sparse = monarch_block_ranks(4, 2)
    assert (sparse == 0).sum() == 8 and (sparse.sum(0) == 2).all()  # r < N: structurally zero sub-blocks
    assert sparse.tolist() == [[1, 0, 1, 0], [1, 0, 1, 0], [0, 1, 0, 1], [0, 1, 0, 1]]


@pytest.mark.parametrize("m,n,blocks,rank", [(6, 6, 2, 2), (6, 8, 2, 3), (5, 7, 3, 2)])
def test_no_random_start_of_gradient_descent_beats_the_projection(m, n, blocks, rank):
    matrix = torch.randn(m, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    best = monarch_project(matrix, blocks, rank).error ** 2
    finals = []
    for start in range(20):
        g = torch.Generator().manual_seed(100 + start)
        w1 = torch.randn(blocks, rank, math.ceil(n / blocks), generator=g, dtype=torch.float64, requires_grad=True)
        w2 = torch.randn(blocks, math.ceil(m / blocks), rank, generator=g, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS([w1, w2], max_iter=500, tolerance_grad=1e-12, tolerance_change=1e-14,
                                      line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            loss = ((matrix - dense_monarch(w1, w2)[:m, :n]) ** 2).sum()
            loss.backward()
            return loss

        for _ in range(3):
            optimizer.step(closure)
        finals.append(float(closure().detach()))
    assert min(finals) >= best * (1 - 1e-8)
    assert min(finals) <= best * (1 + 1e-6)  # and the optimum is reached: the projection is not a loose bound


def test_one_block_is_eckart_young():
    matrix = torch.randn(9, 7, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    for rank in (1, 3, 7):
        monarch, lowrank = monarch_project(matrix, 1, rank), lowrank_project(matrix, rank)
        sigma = np.linalg.svd(matrix.numpy(), compute_uv=False)
        assert lowrank.error == pytest.approx(np.sqrt(np.sum(sigma[rank:] ** 2)), rel=1e-12, abs=1e-12)
        assert monarch.error == pytest.approx(lowrank.error, rel=1e-12, abs=1e-12)
        assert (monarch.matrix - lowrank.matrix).abs().max() <= 1e-12 * matrix.abs().max()


def test_rows_and_columns_beat_every_other_subset():
    matrix = torch.randn(6, 5, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    for rank in (1, 2, 4):
        rows, cols = rows_project(matrix, rank), cols_project(matrix, rank)
        brute_rows = min(float((matrix ** 2).sum() - (matrix[list(s)] ** 2).sum())
                         for s in itertools.combinations(range(6), rank))
        brute_cols = min(float((matrix ** 2).sum() - (matrix[:, list(s)] ** 2).sum())
                         for s in itertools.combinations(range(5), rank))
        assert rows.error ** 2 == pytest.approx(brute_rows, rel=1e-12)
        assert cols.error ** 2 == pytest.approx(brute_cols, rel=1e-12)
        assert (matrix - rows.matrix).norm().item() == pytest.approx(rows.error, rel=1e-12)
        assert torch.equal(cols.matrix[:, cols.indices], matrix[:, cols.indices])


def test_cp_fit_recovers_an_exact_cp_stack():
    g = np.random.default_rng(0)
    factors = [g.normal(size=(dim, 3)) for dim in (3, 2, 8, 6)]
    stack = np.einsum("ar,br,cr,dr->abcd", *factors)
    fit = cp_project(stack, 3)
    assert fit.error <= 1e-6 * np.linalg.norm(stack)
    assert fit.error == pytest.approx(float(np.linalg.norm(stack - fit.tensor.numpy())), rel=1e-9, abs=1e-12)
    assert cp_project(stack, 1).error > 1e-2 * np.linalg.norm(stack)


@pytest.mark.parametrize("call,match", [
    (lambda m: monarch_project(m, 0, 2), "N must be a positive integer"),
    (lambda m: monarch_project(m, 2, -1), "r must be a positive integer"),
    (lambda m: monarch_project(m, 2, 9), "block rank r=9 exceeds the block size 4"),
    (lambda m: monarch_project(m, 9, 1), "N=9 blocks exceed"),
    (lambda m: monarch_project(m * float("nan"), 2, 2), "NaN"),
    (lambda m: lowrank_project(m, 9), "exceeds"),
    (lambda m: rows_project(m, 0), "positive integer"),
    (lambda m: cp_project(m, 2), "stack of matrices"),
])
def test_bad_input_is_a_clear_error(call, match):
    with pytest.raises(UserError, match=match):
        call(torch.ones(8, 8, dtype=torch.float64))

"""LoRMA₊ and LoRMA_π on standalone float64 layers against dense loop-built references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ntk_peft.adapters.lorma import LoRMAPiAdapter, LoRMAPlusAdapter, inflated_matrix, permute_rows
from ntk_peft.errors import UserError
from tests.adapters.layers import check_merge_unmerge
from tests.adapters.layers import inputs as _x
from tests.adapters.layers import linear as _linear

# (d_in, d_out); at 64 -> 48 F.linear(x, W, b) and F.linear(x, W) + b differ in the last bit,
# so the exact-at-init checks see a forward that adds the bias separately
SHAPES = [(12, 4), (5, 9), (7, 7), (64, 48)]
RANK = 2
TOL = dict(rtol=1e-12, atol=1e-12)




def _randomise(adapter, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        adapter.A.copy_(torch.randn(adapter.A.shape, generator=g, dtype=torch.float64) * 0.5)
        adapter.B.copy_(torch.randn(adapter.B.shape, generator=g, dtype=torch.float64) * 0.5)


def _loop_pi(m):
    """π(M)[i, j] = M[i, (j − i) mod n], with explicit loops."""
    n = m.shape[0]
    out = torch.empty_like(m)
    for i in range(n):
        for j in range(n):
            out[i, j] = m[i, (j - i) % n]
    return out


def _dense_multiplier(adapter):
    """I(BA) built densely: I + s·B·A, or s·π(BA) with the loop π."""
    a, b, s = adapter.A.detach(), adapter.B.detach(), adapter.scale
    if isinstance(adapter, LoRMAPlusAdapter):
        return torch.eye(adapter.n, dtype=torch.float64) + s * (b @ a)
    return s * _loop_pi(b @ a)


def _dense_delta(adapter, w0):
    """ΔW = I(BA)·W0 − W0 (pre) or W0·I(BA) − W0 (post)."""
    m = _dense_multiplier(adapter)
    return (w0 @ m if adapter.post else m @ w0) - w0


def _make(cls, d_in, d_out, post, alpha=None, bias=True):
    return cls(_linear(d_in, d_out, bias=bias), RANK, alpha=alpha, post=post,
               generator=torch.Generator().manual_seed(5))


def test_permute_rows_matches_the_paper_figure_and_loops():
    # LoRMA figure 3: a rank-1 matrix with identical rows becomes full rank.
    m = torch.ones(3, 1, dtype=torch.float64) @ torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64)
    expected = torch.tensor([[1.0, 2.0, 3.0], [3.0, 1.0, 2.0], [2.0, 3.0, 1.0]], dtype=torch.float64)
    assert torch.equal(permute_rows(m), expected)
    assert torch.linalg.matrix_rank(m) == 1 and torch.linalg.matrix_rank(permute_rows(m)) == 3
    r = torch.randn(6, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert torch.equal(permute_rows(r), _loop_pi(r))


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("post", [False, True])
@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_plus_equals_base_exactly_at_init(d_in, d_out, post, bias):
    adapter = _make(LoRMAPlusAdapter, d_in, d_out, post, alpha=6.0, bias=bias)
    x = _x(d_in)
    assert torch.equal(adapter(x), adapter.base(x))
    assert torch.equal(adapter.delta_weight(), torch.zeros(d_out, d_in, dtype=torch.float64))
    assert torch.equal(inflated_matrix(adapter), torch.eye(adapter.n, dtype=torch.float64))
    assert torch.equal(adapter.B, torch.zeros_like(adapter.B))
    assert adapter.A.abs().max() > 0 and adapter.A.abs().max() <= 1 / adapter.n ** 0.5


@pytest.mark.parametrize("alpha", [None, 6.0])
@pytest.mark.parametrize("post", [False, True])
@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_pi_is_identity_at_init(d_in, d_out, post, alpha):
    adapter = _make(LoRMAPiAdapter, d_in, d_out, post, alpha=alpha)
    n = d_in if post else d_out
    eye = torch.eye(n, dtype=torch.float64)
    torch.testing.assert_close(inflated_matrix(adapter), eye, rtol=0, atol=1e-12)
    x = _x(d_in)
    torch.testing.assert_close(adapter(x), adapter.base(x), **TOL)
    zeros = torch.zeros(d_out, d_in, dtype=torch.float64)
    torch.testing.assert_close(adapter.delta_weight(), zeros, rtol=0, atol=1e-12)
    # the paper's init: column 0 of B and A[0, 0] set (here scaled by 1/√s), the rest of A zero, B random
    root = adapter.scale ** 0.5
    torch.testing.assert_close(adapter.B[:, 0] * root, torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-15)
    torch.testing.assert_close(adapter.A[0, 0] * root, torch.tensor(1.0, dtype=torch.float64), rtol=0, atol=1e-15)
    assert torch.count_nonzero(adapter.A) == 1
    assert torch.all(adapter.B[:, 1:] != 0)


def test_pi_at_default_scale_is_exact_identity():
    adapter = _make(LoRMAPiAdapter, 12, 4, post=False)
    assert adapter.scale == 1.0
    assert torch.equal(inflated_matrix(adapter), torch.eye(4, dtype=torch.float64))
    assert torch.equal(adapter.B[:, 0], torch.ones(4, dtype=torch.float64))
    assert adapter.A[0, 0] == 1.0


@pytest.mark.parametrize("cls", [LoRMAPlusAdapter, LoRMAPiAdapter])
@pytest.mark.parametrize("alpha", [None, 6.0])
@pytest.mark.parametrize("post", [False, True])
@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_delta_and_forward_match_dense_reference(cls, d_in, d_out, post, alpha):
    adapter = _make(cls, d_in, d_out, post, alpha=alpha)
    _randomise(adapter)
    w0, b = adapter.base.weight.detach().clone(), adapter.base.bias.detach().clone()
    expected_delta = _dense_delta(adapter, w0)
    assert expected_delta.abs().max() > 0.1  # not a trivial comparison
    torch.testing.assert_close(adapter.delta_weight(), expected_delta, **TOL)
    torch.testing.assert_close(inflated_matrix(adapter), _dense_multiplier(adapter), **TOL)
    x = _x(d_in)
    torch.testing.assert_close(adapter(x), F.linear(x, w0 + expected_delta, b), **TOL)
    torch.testing.assert_close(adapter.adapter_forward(x), F.linear(x, expected_delta), **TOL)


@pytest.mark.parametrize("cls", [LoRMAPlusAdapter, LoRMAPiAdapter])
@pytest.mark.parametrize("post", [False, True])
def test_merge_unmerge(cls, post):
    adapter = _make(cls, 12, 4, post, alpha=6.0)
    _randomise(adapter)
    check_merge_unmerge(adapter, _x(12))


@pytest.mark.parametrize("post", [False, True])
def test_ranks_pi_inflated_full_plus_delta_low(post):
    d_in, d_out = 12, 10
    pi = _make(LoRMAPiAdapter, d_in, d_out, post)
    plus = _make(LoRMAPlusAdapter, d_in, d_out, post)
    _randomise(pi)
    _randomise(plus)
    n = pi.n
    with torch.no_grad():
        assert torch.linalg.matrix_rank(pi.B @ pi.A) <= RANK
        assert torch.linalg.matrix_rank(inflated_matrix(pi)) == n
        assert torch.linalg.matrix_rank(pi.delta_weight()) == min(d_in, d_out)
        assert torch.linalg.matrix_rank(plus.delta_weight()) == RANK
        assert torch.linalg.matrix_rank(inflated_matrix(plus)) == n


@pytest.mark.parametrize("cls", [LoRMAPlusAdapter, LoRMAPiAdapter])
@pytest.mark.parametrize("post", [False, True])
@pytest.mark.parametrize("d_in,d_out", SHAPES)
def test_num_params(cls, d_in, d_out, post):
    adapter = _make(cls, d_in, d_out, post)
    n = d_in if post else d_out
    trainable = sum(p.numel() for p in adapter.parameters() if p.requires_grad)
    assert adapter.num_params() == 2 * RANK * n == trainable
    assert adapter.A.shape == (RANK, n) and adapter.B.shape == (n, RANK)
    assert not adapter.base.weight.requires_grad


@pytest.mark.parametrize("cls", [LoRMAPlusAdapter, LoRMAPiAdapter])
def test_gradients_reach_the_factors(cls):
    adapter = _make(cls, 12, 4, post=False)
    _randomise(adapter)
    adapter(_x(12)).square().sum().backward()
    assert adapter.A.grad.abs().max() > 0 and adapter.B.grad.abs().max() > 0
    assert adapter.base.weight.grad is None


def test_initialisation_is_seeded():
    first = _make(LoRMAPlusAdapter, 12, 4, post=False)
    second = _make(LoRMAPlusAdapter, 12, 4, post=False)
    assert torch.equal(first.A, second.A)


def test_bad_rank_is_a_user_error():
    with pytest.raises(UserError, match="rank"):
        LoRMAPlusAdapter(_linear(4, 4), 0)

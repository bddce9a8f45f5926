"""The Monarch product against dense P_out·BD(w2)·P_mid·BD(w1) matrices, and gradcheck."""

from __future__ import annotations

import pytest
import torch

from ntk_peft.kernels import monarch_matmul_reference
from tests.helpers import dense_monarch
from tests.kernels.shapes import SHAPES


@pytest.mark.parametrize("blocks,rank,b_in,b_out", [(1, 3, 5, 4), (2, 2, 3, 5), (4, 3, 2, 2), (3, 5, 2, 3), (8, 1, 1, 2)])
@pytest.mark.parametrize("lead", [(), (2,), (2, 3)])
def test_reference_equals_dense_product(blocks, rank, b_in, b_out, lead):
    g = torch.Generator().manual_seed(blocks * 100 + rank)
    w1 = torch.randn(blocks, rank, b_in, generator=g, dtype=torch.float64)
    w2 = torch.randn(blocks, b_out, rank, generator=g, dtype=torch.float64)
    x = torch.randn(*lead, blocks * b_in, generator=g, dtype=torch.float64)
    expected = x @ dense_monarch(w1, w2).T
    torch.testing.assert_close(monarch_matmul_reference(x, w1, w2), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape", SHAPES[:-1], ids=str)
def test_gradcheck_in_float64(shape):
    blocks, rank, b_in, b_out, lead = shape
    g = torch.Generator().manual_seed(0)
    w1 = torch.randn(blocks, rank, b_in, generator=g, dtype=torch.float64, requires_grad=True)
    w2 = torch.randn(blocks, b_out, rank, generator=g, dtype=torch.float64, requires_grad=True)
    x = torch.randn(*lead, blocks * b_in, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(monarch_matmul_reference, (x, w1, w2))


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="monarch shapes"):
        monarch_matmul_reference(torch.zeros(7), torch.zeros(2, 1, 4), torch.zeros(2, 3, 1))

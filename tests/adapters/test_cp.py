"""LoRTA CP adapters on standalone float64 layers against the full 5-way tensor."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ntk_peft.adapters.cp import CPAdapter, CPFactors
from ntk_peft.errors import UserError
from tests.adapters.layers import check_merge_unmerge
from tests.adapters.layers import inputs as _x
from tests.adapters.layers import linear as _linear

D_IN, HEAD_DIM, HEADS, LAYERS, MATRICES, RANK = 12, 2, 6, 3, 4, 3
TOL = dict(rtol=1e-12, atol=1e-12)
# (d_in, d_out, layer, matrix): square q/o, a grouped-query k/v 12 -> 4 (2 heads of 6),
# a non-square 12 -> 6 and a layer whose input is smaller than the factors' (8 -> 4)
LAYOUTS = [(12, 12, 0, 0), (12, 4, 1, 1), (12, 4, 2, 2), (12, 6, 2, 3), (8, 4, 1, 2)]


def _factors(alpha=None, seed=3):
    return CPFactors(D_IN, HEAD_DIM, HEADS, LAYERS, MATRICES, RANK, alpha=alpha,
                     generator=torch.Generator().manual_seed(seed), dtype=torch.float64)




def _randomise(factors, seed=2):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in factors.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))


def _dense_delta(factors, layer, matrix, d_in, d_out):
    """Slice [:, :, :, layer, matrix] of the full tensor s·⟦A, B, C_head, C_layer, C_matrix⟧, head-major."""
    f = factors
    full = f.scale * torch.einsum("cj,oj,kj,lj,mj->coklm", f.A, f.B, f.C_head, f.C_layer, f.C_matrix)
    assert full.shape == (D_IN, HEAD_DIM, HEADS, LAYERS, MATRICES)
    heads = d_out // HEAD_DIM
    block = full[:d_in, :, :heads, layer, matrix]  # [d_in, head_dim, heads]
    return block.permute(2, 1, 0).reshape(d_out, d_in).detach()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("d_in,d_out,layer,matrix", LAYOUTS)
def test_equals_base_exactly_at_init(d_in, d_out, layer, matrix, bias):
    factors = _factors(alpha=16.0)
    adapter = CPAdapter(_linear(d_in, d_out, bias=bias), factors, layer, matrix, HEAD_DIM)
    x = _x(d_in)
    assert torch.equal(adapter(x), adapter.base(x))
    assert torch.equal(adapter.delta_weight(), torch.zeros(d_out, d_in, dtype=torch.float64))
    assert torch.equal(factors.B, torch.zeros(HEAD_DIM, RANK, dtype=torch.float64))
    bound = 1 / RANK ** 0.5
    for p in (factors.A, factors.C_head, factors.C_layer, factors.C_matrix):
        assert 0 < p.abs().max() <= bound


@pytest.mark.parametrize("alpha", [None, 16.0])
@pytest.mark.parametrize("d_in,d_out,layer,matrix", LAYOUTS)
def test_delta_and_forward_match_full_tensor(d_in, d_out, layer, matrix, alpha):
    factors = _factors(alpha=alpha)
    _randomise(factors)
    adapter = CPAdapter(_linear(d_in, d_out), factors, layer, matrix, HEAD_DIM)
    expected = _dense_delta(factors, layer, matrix, d_in, d_out)
    assert expected.abs().max() > 0.1
    torch.testing.assert_close(adapter.delta_weight(), expected, **TOL)
    w0, b = adapter.base.weight.detach().clone(), adapter.base.bias.detach().clone()
    x = _x(d_in)
    torch.testing.assert_close(adapter(x), F.linear(x, w0 + expected, b), **TOL)
    torch.testing.assert_close(adapter.adapter_forward(x), F.linear(x, expected), **TOL)


def test_head_major_layout_entry_by_entry():
    factors = _factors(alpha=6.0)
    _randomise(factors)
    adapter = CPAdapter(_linear(12, 4), factors, 1, 2, HEAD_DIM)
    f = factors
    with torch.no_grad():
        delta = adapter.delta_weight()
        for k in range(2):
            for o in range(HEAD_DIM):
                for c in range(12):
                    value = sum(float(f.A[c, j] * f.B[o, j] * f.C_head[k, j] * f.C_layer[1, j] * f.C_matrix[2, j])
                                for j in range(RANK))
                    assert abs(delta[k * HEAD_DIM + o, c].item() - f.scale * value) < 1e-12


def test_smollm2_sized_grouped_query_projection():
    # SmolLM2-135M: hidden 576, 9 query heads of 64, k/v projections 576 -> 192 (3 heads)
    factors = CPFactors(576, 64, 9, 2, 4, 4, alpha=8.0, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    k_proj = CPAdapter(_linear(576, 192), factors, 1, 1, 64)
    x = _x(576)
    assert torch.equal(k_proj(x), k_proj.base(x))
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for p in factors.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * 0.3)
    f = factors
    full = f.scale * torch.einsum("cj,oj,kj,lj,mj->coklm", f.A, f.B, f.C_head, f.C_layer, f.C_matrix)
    expected = full[:, :, :3, 1, 1].permute(2, 1, 0).reshape(192, 576).detach()
    torch.testing.assert_close(k_proj.delta_weight(), expected, **TOL)
    w0, b = k_proj.base.weight.detach(), k_proj.base.bias.detach()
    torch.testing.assert_close(k_proj(x), F.linear(x, w0 + expected, b), **TOL)


def test_merge_unmerge():
    factors = _factors(alpha=16.0)
    _randomise(factors)
    adapter = CPAdapter(_linear(12, 4), factors, 1, 1, HEAD_DIM)
    check_merge_unmerge(adapter, _x(12))


def test_shared_factors_are_listed_once():
    factors = _factors()
    model = nn.Module()
    model.factors = factors  # the handle owns the factors
    model.layers = nn.ModuleList(CPAdapter(_linear(d_in, d_out), factors, layer, matrix, HEAD_DIM)
                                 for d_in, d_out, layer, matrix in LAYOUTS)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(trainable) == 5 and {id(p) for p in trainable} == {id(p) for p in factors.parameters()}
    assert all(adapter.factors is factors for adapter in model.layers)
    assert not any("factors" in name for name, _ in model.layers.named_parameters())
    for adapter in model.layers:
        assert sum(p.numel() for p in adapter.parameters() if p.requires_grad) == 0 == adapter.num_params()


def test_num_params():
    factors = _factors()
    expected = (D_IN + HEAD_DIM + HEADS + LAYERS + MATRICES) * RANK
    assert factors.num_params() == expected == sum(p.numel() for p in factors.parameters() if p.requires_grad)
    assert factors.A.shape == (D_IN, RANK) and factors.B.shape == (HEAD_DIM, RANK)
    assert factors.C_head.shape == (HEADS, RANK) and factors.C_layer.shape == (LAYERS, RANK)
    assert factors.C_matrix.shape == (MATRICES, RANK)


def test_gradients_reach_the_shared_factors():
    factors = _factors()
    _randomise(factors)
    first = CPAdapter(_linear(12, 4), factors, 0, 1, HEAD_DIM)
    second = CPAdapter(_linear(8, 6, seed=1), factors, 2, 3, HEAD_DIM)
    (first(_x(12)).square().sum() + second(_x(8)).square().sum()).backward()
    for p in factors.parameters():
        assert p.grad is not None and p.grad.abs().max() > 0
    # only the rows a layer uses get a gradient: heads 0..2 of 6, inputs 0..11 of 12
    assert torch.equal(factors.C_head.grad[3:], torch.zeros(3, RANK, dtype=torch.float64))
    assert torch.equal(factors.C_layer.grad[1], torch.zeros(RANK, dtype=torch.float64))
    assert first.base.weight.grad is None


def test_scale_default_and_seeding():
    assert _factors().scale == 1.0 and _factors(alpha=16.0).scale == 16.0 / RANK
    assert torch.equal(_factors().A, _factors().A)


@pytest.mark.parametrize("d_in,d_out,layer,matrix,head_dim,message", [
    (12, 5, 0, 0, HEAD_DIM, "multiple of head_dim"),
    (12, 14, 0, 0, HEAD_DIM, "heads"),
    (13, 4, 0, 0, HEAD_DIM, "input size"),
    (12, 4, LAYERS, 0, HEAD_DIM, "layer"),
    (12, 4, 0, -1, HEAD_DIM, "matrix"),
    (12, 4, 0, 0, 4, "head_dim"),
])
def test_bad_shapes_are_user_errors(d_in, d_out, layer, matrix, head_dim, message):
    with pytest.raises(UserError, match=message) as info:
        CPAdapter(_linear(d_in, d_out), _factors(), layer, matrix, head_dim)
    assert "\n" not in str(info.value)


# The transposed convention (the authors' released code): heads along the input columns, A along the output rows.
TRANSPOSED_LAYOUTS = [(12, 12, 0, 0), (4, 12, 1, 1), (6, 12, 2, 3), (4, 8, 1, 2)]  # d_in multiple of HEAD_DIM


@pytest.mark.parametrize("d_in,d_out,layer,matrix", TRANSPOSED_LAYOUTS)
def test_transposed_convention_is_the_transpose_of_the_dense_tensor_slice(d_in, d_out, layer, matrix):
    factors = _factors(alpha=5.0)
    _randomise(factors)
    adapter = CPAdapter(_linear(d_in, d_out), factors, layer, matrix, HEAD_DIM, transpose=True)
    # the same tensor slice, read with c over the outputs and the heads over the inputs
    expected = _dense_delta(factors, layer, matrix, d_out, d_in).T
    assert torch.allclose(adapter.delta_weight(), expected, **TOL)
    x = _x(d_in)
    assert torch.allclose(adapter(x), F.linear(x, adapter.base.weight + expected, adapter.base.bias), **TOL)
    check_merge_unmerge(adapter, x)


def test_transposed_convention_on_a_model_and_its_spec():
    from ntk_peft import load_model
    from ntk_peft.adapters import apply_adapter, parse_spec

    assert str(parse_spec("cp4:transpose")) == "cp4:transpose" and parse_spec("cp4:transpose") != parse_spec("cp4")
    model, _ = load_model("tiny-llama", dtype=torch.float64, seed=1)
    handle = apply_adapter(model, "cp2:transpose", seed=0)
    layer = next(iter(handle.layers.values()))
    assert layer.transpose and handle.shared["cp"].A.shape[0] == max(m.out_features for m in handle.layers.values())
    with pytest.raises(UserError, match="CP adapter: input size 3 is not a multiple of head_dim 2"):
        CPAdapter(_linear(3, 12), _factors(), 0, 0, HEAD_DIM, transpose=True)

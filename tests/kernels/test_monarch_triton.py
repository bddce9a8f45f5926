"""The fused Triton Monarch product against the torch reference (interpreted on a CPU).

Forward and the three gradients over leading dimensions, non-square blocks,
N ∈ {1, 2, 4, 8}, r below and above the block width and sizes off the tile
grid; torch.func transforms (per-example gradients, jacrev, batched weights);
dispatch; and a short MoRe training run and an eNTK on both paths.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
from torch.func import grad, jacrev, vmap

from ntk_peft.kernels import monarch as monarch_module
from ntk_peft.kernels import monarch_matmul, monarch_matmul_reference
from tests.kernels.shapes import SHAPES

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.float16] + ([torch.bfloat16] if DEVICE == "cuda" else [])



@pytest.fixture
def triton_path(monkeypatch):
    monkeypatch.setenv("NTK_PEFT_TRITON", "1")


def _inputs(shape, dtype, seed=0):
    blocks, rank, b_in, b_out, lead = shape
    g = torch.Generator().manual_seed(seed)
    make = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    return make(*lead, blocks * b_in), make(blocks, rank, b_in), make(blocks, b_out, rank)


def _value_and_grads(fn, tensors, dy):
    tensors = [t.detach().clone().requires_grad_() for t in tensors]
    y = fn(*tensors)
    return [y, *torch.autograd.grad(y, tensors, dy)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_and_gradients_match_the_reference(triton_path, shape, dtype):
    inputs = _inputs(shape, dtype)
    exact = _value_and_grads(monarch_matmul_reference, inputs, dy64 := torch.randn(
        *shape[4], shape[0] * shape[3], generator=torch.Generator().manual_seed(1), dtype=torch.float64))
    cast = [t.to(DEVICE, dtype) for t in inputs]
    dy = dy64.to(DEVICE, dtype)
    got = _value_and_grads(monarch_matmul, cast, dy)
    ref = _value_and_grads(monarch_matmul_reference, cast, dy)
    names = ["y", "dx", "dw1", "dw2"]
    for name, g, r, e in zip(names, got, ref, exact):
        assert g.dtype == dtype and g.shape == e.shape, name
        scale = float(e.detach().abs().max())
        triton_error = float((g.detach().double().cpu() - e.detach()).abs().max())
        if dtype == torch.float32:
            assert triton_error <= 1e-5 * scale, name
            torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-5 * scale)
        else:  # half precision: no worse than the reference's own rounding
            reference_error = float((r.detach().double().cpu() - e.detach()).abs().max())
            assert triton_error <= 2 * reference_error + 1e-3 * scale, name


def test_triton_path_is_taken(triton_path, monkeypatch):
    from ntk_peft.kernels import monarch_triton

    calls = []
    original = monarch_triton.forward
    monkeypatch.setattr(monarch_triton, "forward", lambda *a: calls.append(1) or original(*a))
    x, w1, w2 = (t.float().to(DEVICE) for t in _inputs(SHAPES[4], torch.float32))
    monarch_matmul(x, w1, w2)
    assert calls == [1]
    monkeypatch.setenv("NTK_PEFT_TRITON", "0")
    monarch_matmul(x, w1, w2)
    monarch_matmul(x.double(), w1.double(), w2.double())  # fp64 always takes the reference
    assert calls == [1]


def test_dispatch_rules(monkeypatch):
    x, w1, w2 = (t.float() for t in _inputs(SHAPES[0], torch.float32))
    monkeypatch.delenv("NTK_PEFT_TRITON", raising=False)
    assert not monarch_module.use_triton(x, w1)  # CPU tensors default to the reference
    assert monarch_module.use_triton(x.to(DEVICE), w1) == (DEVICE == "cuda")  # CUDA tensors default to Triton
    monkeypatch.setenv("NTK_PEFT_TRITON", "1")
    assert monarch_module.use_triton(x.to(DEVICE), w1)
    assert not monarch_module.use_triton(x.to(DEVICE), torch.zeros(64, 17, 1))  # N·r above the fused width
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        monarch_module.use_triton(x, w1)  # CPU tensors cannot run compiled kernels


def test_bad_shapes_are_errors(triton_path):
    x, w1, w2 = (t.float().to(DEVICE) for t in _inputs(SHAPES[4], torch.float32))
    for args in [(x[..., :-1], w1, w2), (x, w1, w2[:, :, :-1]), (x, w1, w2[0]), (x, w1[0], w2)]:
        with pytest.raises(ValueError, match="monarch shapes"):
            monarch_matmul(*args)


def test_factors_follow_the_input_dtype_as_under_autocast(triton_path):
    x, w1, w2 = _inputs(SHAPES[4], torch.float32)
    x = x.float().to(DEVICE)
    w1, w2 = w1.to(DEVICE).requires_grad_(), w2.to(DEVICE).requires_grad_()  # float64 parameters
    y = monarch_matmul(x, w1, w2)
    assert y.dtype == torch.float32
    expected = monarch_matmul_reference(x, w1.float(), w2.float())
    torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5 * float(expected.detach().abs().max()))
    g1, g2 = torch.autograd.grad(y.sum(), (w1, w2))
    assert g1.dtype == g2.dtype == torch.float64


def test_empty_batch(triton_path):
    x, w1, w2 = (t.float().to(DEVICE) for t in _inputs(SHAPES[4], torch.float32))
    x = x[:0].requires_grad_()
    w1.requires_grad_()
    y = monarch_matmul(x, w1, w2)
    assert y.shape == (0, 3, 8)
    (g,) = torch.autograd.grad(y.sum(), w1)
    assert torch.equal(g, torch.zeros_like(w1))


def test_second_derivative_is_refused(triton_path):
    x, w1, w2 = (t.float().to(DEVICE).requires_grad_() for t in _inputs(SHAPES[4], torch.float32))
    (gx,) = torch.autograd.grad(monarch_matmul(x, w1, w2).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="differentiable once"):
        torch.autograd.grad(gx.sum(), w1)


def _close(a, b):
    for p, q in zip(a, b):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-5 * float(q.abs().max()))


@pytest.mark.parametrize("grid_limit", [None, 5], ids=["one-launch", "chunked-groups"])
def test_per_example_gradients_and_jacobians_under_torch_func(triton_path, monkeypatch, grid_limit):
    if grid_limit is not None:  # more row groups than a launch may hold: chunked launches
        from ntk_peft.kernels import monarch_triton

        monkeypatch.setattr(monarch_triton, "_MAX_GRID_Y", grid_limit)
    x, w1, w2 = (t.float().to(DEVICE) for t in _inputs((2, 3, 4, 5, (6, 3)), torch.float32))
    directions = torch.randn(4, 10, dtype=x.dtype, device=DEVICE)

    def logit(fn):
        return lambda a, b, ex, c: (fn(ex, a, b) * c).sum()

    def per_example(fn):  # the eNTK engine's vmap(vmap(grad)) over examples and class directions
        per_class = vmap(grad(logit(fn), argnums=(0, 1)), in_dims=(None, None, None, 0))
        return vmap(per_class, in_dims=(None, None, 0, None))(w1, w2, x, directions)

    got, want = per_example(monarch_matmul), per_example(monarch_matmul_reference)
    assert got[0].shape == (6, 4, 2, 3, 4)
    _close(got, want)
    for argnums, fn_args in [((0, 1), (w1, w2)), ((0,), (x[0],))]:
        if argnums == (0,):
            make = lambda f: jacrev(lambda ex: f(ex, w1, w2))  # noqa: E731
        else:
            make = lambda f: jacrev(lambda a, b: f(x, a, b), argnums=argnums)  # noqa: E731
        got_j, want_j = make(monarch_matmul)(*fn_args), make(monarch_matmul_reference)(*fn_args)
        _close(got_j if isinstance(got_j, tuple) else (got_j,), want_j if isinstance(want_j, tuple) else (want_j,))


def test_batched_weights_under_vmap(triton_path):
    x, w1, w2 = (t.float().to(DEVICE) for t in _inputs((2, 3, 4, 5, (6,)), torch.float32))
    stack = torch.stack([w1, 2 * w1, -w1])
    loss = lambda fn: (lambda a, b: fn(x, a, b).square().sum())  # noqa: E731
    for fn_pair in [(monarch_matmul, monarch_matmul_reference)]:
        got = vmap(grad(loss(fn_pair[0]), argnums=(0, 1)), in_dims=(0, None))(stack, w2)
        want = vmap(grad(loss(fn_pair[1]), argnums=(0, 1)), in_dims=(0, None))(stack, w2)
        _close(got, want)
        _close([vmap(fn_pair[0], in_dims=(None, 0, None))(x, stack, w2)],
               [vmap(fn_pair[1], in_dims=(None, 0, None))(x, stack, w2)])


def test_kernels_compile_for_a_gpu_without_one(tmp_path):
    """What the interpreter does not check (types, dot shapes, tiles): compile for sm_90 in a fresh process."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, TRITON_INTERPRET="0", TRITON_CACHE_DIR=str(tmp_path), TRITON_DEFAULT_FP_FUSION="1")
    code = "from ntk_peft.kernels.monarch_triton import compile_for_gpu; print(len(compile_for_gpu(90)))"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split()[-1] == "15"  # 5 kernels x fp32, fp16, bf16

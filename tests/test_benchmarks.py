"""The benchmarks' shared helpers (``benchmarks/timing.py``): the FLOP count that gives a device's floor."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from timing import cost_measure, counted_flops  # noqa: E402


def test_counted_flops_of_products_forward_and_backward():
    a, b = torch.randn(2, 3, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    assert counted_flops(lambda: a @ b) == 2 * 2 * 3 * 4
    layer = torch.nn.Linear(3, 4, bias=False).double()
    x = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)  # a leaf, as capture's inputs are

    def input_gradient():  # forward 2·5·3·4, backward to the input only: the same again
        torch.autograd.grad(layer(x).sum(), x)
    assert counted_flops(input_gradient) == 2 * (2 * 5 * 3 * 4)
    assert cost_measure(1e3)(lambda: a @ b, 5) == 48 / 1e3  # FLOPs at 1000 FLOP/s, counted once


def test_fused_cpu_attention_counts_as_its_products():
    q, k, v = (torch.randn(2, 3, 5, 4, requires_grad=True) for _ in range(3))  # batch, heads, tokens, head dim
    mask = torch.ones(5, 5, dtype=torch.bool).tril()

    def attention(function):
        def run():
            out = function(q, k, v, mask)
            torch.autograd.grad(out.sum(), (q, k, v))
        return run

    def by_products(q, k, v, mask):  # the same attention as explicit products (what eager attention runs)
        scores = (q @ k.transpose(-1, -2) / 2).masked_fill(~mask, float("-inf"))
        return scores.softmax(-1) @ v

    fused = counted_flops(attention(lambda q, k, v, mask: torch.nn.functional.scaled_dot_product_attention(
        q, k, v, attn_mask=mask)))
    recomputed_scores = 2 * 2 * 3 * 5 * 5 * 4  # flash's backward forms q·kᵀ again: torch's table counts it
    assert fused == counted_flops(attention(by_products)) + recomputed_scores
    assert counted_flops(attention(by_products)) == 6 * (2 * 2 * 3 * 5 * 5 * 4)  # 2 products forward, 4 backward

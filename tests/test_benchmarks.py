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

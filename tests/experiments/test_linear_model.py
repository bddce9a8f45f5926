"""MoRe theorems A.3/A.4 checked on the deep linear model experiment."""

from __future__ import annotations

import math

import pytest
import torch

from ntk_peft.analysis import monarch_project
from ntk_peft.analysis.bounds import theorem_rhs, theorem_rhs_spectral
from ntk_peft.errors import UserError
from ntk_peft.experiments.linear_model import linear_model_experiment, monarch_dense, random_linear_model


def test_monarch_dense_matches_the_adapter():
    from ntk_peft.adapters import MonarchAdapter

    adapter = MonarchAdapter(torch.nn.Linear(10, 7, bias=False, dtype=torch.float64), 3, 2,
                             torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapter.w2.normal_()
    assert torch.allclose(monarch_dense(adapter.w1, adapter.w2, 7, 10), adapter.delta_weight(), rtol=0, atol=1e-13)


@pytest.mark.parametrize("seed", [0, 1])
def test_theorem_right_hand_sides_bound_the_achieved_error(seed):
    classes = ("more4x4", "more2x4", "lora4", "row2")  # A.3, A.4 (N | r)
    rows = linear_model_experiment(d=16, depth=3, classes=classes, seed=seed, iterations=2)
    for row in rows:
        assert row["projection_error"] <= row["bound_spectral"] * (1 + 1e-10)
        assert row["bound_spectral"] <= row["bound_frobenius"] * (1 + 1e-12)
        # descent optimises the true objective, so it can only do better than projecting Ẽ
        assert row["descent_error"] <= row["projection_error"] * (1 + 1e-6)
        assert row["descent_error"] < row["initial_error"]
    monarch = {r["config"]: r for r in rows if r["class"] == "monarch"}
    assert set(monarch) == {"more4x4", "more2x4"}
    assert [r["class"] for r in rows] == ["monarch", "monarch", "lowrank", "rows"]


def test_the_bound_is_the_projection_error_scaled():
    layers, target = random_linear_model(8, 2, seed=3)
    prefix = layers[0]
    e_tilde = torch.linalg.solve(prefix, target - prefix @ layers[1])
    row = linear_model_experiment(d=8, depth=2, classes=("more2x2",), seed=3)[0]
    expect = float(prefix.norm() ** 2) * monarch_project(e_tilde, 2, 2).error ** 2
    assert row["bound_frobenius"] == pytest.approx(expect, rel=1e-12)
    # MoRe theorems A.3/A.4 as the analysis module states them: the same numbers
    assert theorem_rhs(prefix, e_tilde, 2, 2) == pytest.approx(row["bound_frobenius"], rel=1e-12)
    assert theorem_rhs_spectral(prefix, e_tilde, 2, 2) == pytest.approx(row["bound_spectral"], rel=1e-12)
    assert math.isfinite(row["descent_error"])


def test_adapter_specs_outside_the_experiment_are_one_line():
    with pytest.raises(UserError, match="compares more, lora, row, col adapters; got ia3"):
        linear_model_experiment(d=8, depth=2, classes=("ia3",))
    with pytest.raises(UserError, match="bad adapter spec 'monarch4'"):
        linear_model_experiment(d=8, depth=2, classes=("monarch4",))

"""Projections onto parameter directions: fast against reference, and against the kernel they replace."""

from __future__ import annotations

import pytest
import torch

from ntk_peft import load_model
from ntk_peft.adapters import parse_spec
from ntk_peft.errors import UserError
from ntk_peft.ntk import capture, empirical_ntk, subset_params
from ntk_peft.ntk.directions import (
    project_directions,
    recorded_directions,
    reference_projection,
    subset_directions,
)
from ntk_peft.tasks import load_split, make_batch
from tests.helpers import ENGINE_MODELS as MODELS
from tests.helpers import ENGINE_SUBSETS as SUBSETS

# Llama's RMSNorm computes in float32 even in a float64 model, so a gradient of Σ W·f differs from
# Σ W·(gradient of f) at float32 rounding there; the other models are float64 throughout.
DIRECTION_TOLERANCE = {"tiny-llama": 1e-6, "tiny-roberta": 1e-12, "tiny-bert": 1e-12}


@pytest.fixture(scope="module", params=[(m, t) for m in MODELS for t in ("sst2", "mnli")], ids=str)
def setup(request):
    """(name, model, train blocks [3 + 2 prompts], eval batch [3 prompts], its capture, W [5, C, 2])."""
    name, task = request.param
    model, tok = load_model(name, dtype=torch.float64, seed=2)
    train = load_split(task).train
    blocks = [make_batch(tok, task, train[:3]), make_batch(tok, task, train[3:5])]
    evaluation = make_batch(tok, task, train[20:23])
    classes = 2 if task == "sst2" else 3
    weights = torch.randn(5, classes, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    return name, model, blocks, evaluation, capture(model, evaluation), weights


@pytest.mark.parametrize("spec", SUBSETS)
def test_fast_projection_matches_reference_and_the_kernel(setup, spec):
    name, model, blocks, evaluation, cap, weights = setup
    sub = subset_params(model, parse_spec(spec))
    directions = subset_directions(sub, blocks, weights)
    fast = project_directions(model, sub, cap, directions)
    reference = reference_projection(sub, evaluation, directions)
    assert fast.shape == (3, weights.shape[1], 2) and fast.dtype == torch.float64
    assert (fast - reference).abs().max() <= 1e-10 * reference.abs().max()
    kernel = torch.cat([empirical_ntk(model, evaluation, b, subsets=[spec])[spec] for b in blocks], dim=1)
    via_kernel = torch.einsum("jidc,ics->jds", kernel, weights)
    terms = torch.einsum("jidc,ics->jds", kernel.abs(), weights.abs())  # the sum's scale before cancelling
    assert ((fast - via_kernel).abs() <= DIRECTION_TOLERANCE[name] * terms).all()


def test_one_hot_weights_give_one_gradient(setup):
    """W = e_(i, c): the direction is exactly ∂f_c(x_i)/∂θ (no summation to round)."""
    name, model, blocks, evaluation, cap, weights = setup
    from ntk_peft.ntk import reference_jacobian

    sub = subset_params(model, parse_spec("full"))
    one_hot = torch.zeros(5, weights.shape[1], 1, dtype=torch.float64)
    one_hot[4, 1, 0] = 1.0
    directions = subset_directions(sub, blocks, one_hot)
    flat = torch.cat([directions[n].reshape(-1) for n in sub.params])
    expected = reference_jacobian(sub, blocks[1])[1, 1]
    assert (flat - expected).abs().max() <= 1e-12 * expected.abs().max()


def test_direction_weights_must_cover_the_prompts(setup):
    _, model, blocks, _, _, weights = setup
    sub = subset_params(model, parse_spec("row1"))
    with pytest.raises(UserError, match=r"must be \[n, C, S\] over the 5 prompts"):
        subset_directions(sub, blocks, weights[:4])


@pytest.mark.parametrize("spec", ["full", "row1", "lora1"])
def test_directions_in_chunks_of_prompts_equal_one_pass_per_block(setup, spec):
    """The backward passes are cut into chunks of prompts to bound memory; the sum is the same."""
    name, model, blocks, _, _, weights = setup
    sub = subset_params(model, parse_spec(spec))
    whole = subset_directions(sub, blocks, weights, chunk=16)
    for chunk in (1, 2):
        cut = subset_directions(sub, blocks, weights, chunk=chunk)
        # relative to the whole direction: some entries are zero in exact arithmetic (key biases) and
        # rounding noise in float64, so a per-tensor scale would measure noise against noise
        scale = max(float(value.abs().max()) for value in whole.values())
        for key, value in whole.items():
            assert (cut[key] - value).abs().max() <= DIRECTION_TOLERANCE[name] * scale, (chunk, key)


def test_recorded_directions_equal_the_backward_pass_for_every_subset_at_once(setup):
    """One capture per block gives every subset's directions (Linear weights by one GEMM), equal to the
    reverse-mode pass of `subset_directions` subset by subset."""
    name, model, blocks, _, _, weights = setup
    subs = {spec: subset_params(model, parse_spec(spec)) for spec in SUBSETS}
    recorded = recorded_directions(model, subs, blocks, {spec: weights for spec in SUBSETS})
    for spec, sub in subs.items():
        backward = subset_directions(sub, blocks, weights)
        assert list(recorded[spec]) == list(sub.params)
        scale = max(float(value.abs().max()) for value in backward.values())
        for key, value in backward.items():
            assert recorded[spec][key].dtype == sub.params[key].dtype
            assert (recorded[spec][key] - value).abs().max() <= DIRECTION_TOLERANCE[name] * scale, (spec, key)


def test_recorded_direction_weights_must_cover_the_prompts(setup):
    _, model, blocks, _, _, weights = setup
    subs = {"row1": subset_params(model, parse_spec("row1"))}
    with pytest.raises(UserError, match=r"row1 must be \[n, O, S\] over the 5 prompts"):
        recorded_directions(model, subs, blocks, {"row1": weights[:4]})

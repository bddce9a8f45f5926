"""The fast path's building blocks against their generic counterparts (float64 unless stated)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from ntk_peft import load_model
from ntk_peft.adapters import parse_spec
from ntk_peft.ntk import empirical_ntk, subset_params
from ntk_peft.ntk.capture import Capture, capture
from ntk_peft.ntk.contract import elementwise_affine_jacobian, module_jacobian
from ntk_peft.ntk.fast import closed_form_jacobian, full_kernel
from ntk_peft.ntk.subsets import share_tensors_clone
from ntk_peft.tasks import load_split, make_batch


@pytest.fixture(scope="module")
def llama():
    model, tok = load_model("tiny-llama", dtype=torch.float64, seed=3)
    batch = make_batch(tok, "sst2", load_split("sst2").train[:3])
    return model, batch, capture(model, batch)


def _flat(grads: dict[str, torch.Tensor], order) -> torch.Tensor:
    return torch.cat([grads[k].reshape(*grads[k].shape[:2], -1) for k in order], dim=-1)


@pytest.mark.parametrize("spec", ["row2:random", "col3:random", "lora2"])
def test_closed_forms_equal_the_adapter_forward_away_from_initialisation(llama, spec):
    """Rows, columns and LoRA (B random, so the A part is non-zero) against vmap(grad) of adapter_forward."""
    model, _, cap = llama
    sub = subset_params(model, parse_spec(spec))
    generator = torch.Generator().manual_seed(0)
    for name, layer in sub.handle.layers.items():
        own = {k: v for k, v in layer.named_parameters() if not k.startswith("base.")}
        with torch.no_grad():
            for value in own.values():
                value.copy_(torch.randn(value.shape, generator=generator, dtype=value.dtype))
        closed = closed_form_jacobian(layer, cap.records[name])
        generic = module_jacobian(layer, cap.records[name], {k: v.detach() for k, v in own.items()},
                                  lambda m, x: m.adapter_forward(x))
        expected = _flat(generic, own)
        assert closed.shape == expected.shape
        assert (closed - expected).abs().max() <= 1e-12 * expected.abs().max()


class _OnePlusWeightNorm(nn.Module):
    """y = x̂ ⊙ (1 + w): not of the form h(x) ⊙ w, so it must take the generic path."""

    def __init__(self, width: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(width, dtype=torch.float64))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * (1 + self.weight)


def test_elementwise_affine_closed_form_and_its_fallback(llama):
    model, _, cap = llama
    norms = [(n, r) for n, r in cap.records.items() if "norm" in n]
    assert norms
    for name, rec in norms:
        closed = elementwise_affine_jacobian(rec.module, rec)
        assert closed is not None, name
        generic = _flat(module_jacobian(rec.module, rec), dict(rec.module.named_parameters(recurse=False)))
        assert (closed - generic).abs().max() <= 1e-12 * generic.abs().max()
    rec = norms[0][1]
    layer_norm = nn.LayerNorm(rec.packed_inputs.shape[1], dtype=torch.float64)
    with torch.no_grad():
        layer_norm.weight.normal_()
        layer_norm.bias.normal_()
    rec_ln = dataclasses.replace(rec, module=layer_norm)
    generic = _flat(module_jacobian(layer_norm, rec_ln), ["weight", "bias"])
    closed = elementwise_affine_jacobian(layer_norm, rec_ln)
    assert (closed - generic).abs().max() <= 1e-12 * generic.abs().max()
    assert elementwise_affine_jacobian(_OnePlusWeightNorm(rec.packed_inputs.shape[1]), rec) is None


def _upcast(cap: Capture) -> Capture:
    records = {}
    for name, rec in cap.records.items():
        inputs = rec.packed_inputs.double() if rec.packed_inputs.is_floating_point() else rec.packed_inputs
        records[name] = dataclasses.replace(rec, packed_inputs=inputs, packed_grads=rec.packed_grads.double())
    return Capture(records, cap.features.double(), cap.logits.double(), cap.words)


def test_float32_contractions_agree_with_float64_on_the_same_recording():
    """A float32 model's Grams run in float32; against float64 contractions of the same data: 1e-5."""
    model, tok = load_model("tiny-llama", dtype=torch.float32, seed=3)
    train = load_split("sst2").train
    cap1 = capture(model, make_batch(tok, "sst2", train[:4]))
    cap2 = capture(model, make_batch(tok, "sst2", train[10:13]))
    for method in ("gram", "reduced", "materialise"):
        fast = full_kernel(model, cap1, cap2, method)
        exact = full_kernel(model, _upcast(cap1), _upcast(cap2), method)
        assert fast.dtype == torch.float64
        assert (fast - exact).norm() <= 1e-5 * exact.norm()


def test_share_tensors_clone_leaves_the_original_alone(llama):
    model, batch, _ = llama
    before = empirical_ntk(model, batch, subsets=["full"])["full"]
    types = {n: type(m) for n, m in model.named_modules()}
    clone = share_tensors_clone(model)
    assert all(a is b for a, b in zip(clone.parameters(), model.parameters()))
    sub = subset_params(model, parse_spec("lora2"))
    sub.model.register_forward_hook(lambda *args: None)
    assert {n: type(m) for n, m in model.named_modules()} == types
    assert not model._forward_hooks
    assert torch.equal(empirical_ntk(model, batch, subsets=["full"])["full"], before)

"""The adapter family registry: one entry per family, unknown kinds refused, new families known everywhere."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from ntk_peft import load_model
from ntk_peft.adapters import (
    FAMILIES,
    AdaptedLinear,
    AdapterFamily,
    AdapterSpec,
    apply_adapter,
    get_family,
    parse_spec,
    register_adapter_family,
    valid_forms,
)
from ntk_peft.adapters.registry import positive
from ntk_peft.errors import UserError
from ntk_peft.ntk import empirical_ntk
from ntk_peft.tasks import load_split, make_batch
from tests.helpers import brute_force_kernel, per_example_gradients, relative_error


class OutputScale(AdaptedLinear):
    """y = (W0 x + b) ⊙ (1 + s), s ∈ R^{d_out} starting at 0 (a test family; like every adapter it leaves the
    model as it was at initialisation, which the kernel engine relies on: it records the pretrained model)."""

    def __init__(self, base: nn.Linear):
        super().__init__(base)
        self.s = nn.Parameter(torch.zeros(base.out_features, dtype=base.weight.dtype))

    def adapter_forward(self, x):
        return self.base(x) * self.s

    def forward(self, x):
        return self.base(x) * (1 + self.s)

    def compute_delta_weight(self):
        return self.s[:, None] * self.base.weight

    def num_params(self):
        return self.s.numel()


@pytest.fixture
def scale_family():
    family = register_adapter_family(AdapterFamily(
        "oscale", "oscale", "a test family: output scaling", re.compile("oscale"),
        lambda match, raw: AdapterSpec("oscale"),
        lambda spec, target, context: OutputScale(target.module)))
    yield family
    del FAMILIES["oscale"]


def test_every_built_in_family_is_registered_once_with_its_defaults():
    assert list(FAMILIES) == ["full", "linear", "row", "col", "rand", "lora", "more", "cp", "lorma+", "lormapi",
                              "bias", "ia3"]
    assert get_family("ia3").default_targets == "k,v,down" and get_family("cp").default_targets == "attn"
    assert {k for k, f in FAMILIES.items() if f.scaled} == {"lora", "cp", "lorma+", "lormapi"}
    with pytest.raises(ValueError, match="registered already"):
        register_adapter_family(FAMILIES["lora"])


def test_unknown_kinds_are_refused_not_built_as_another_family():
    model, _ = load_model("tiny-llama", dtype=torch.float64, seed=0)
    with pytest.raises(UserError, match="unknown adapter family 'banana'; known: full, linear, row"):
        apply_adapter(model, AdapterSpec("banana"))
    with pytest.raises(UserError, match="linear is a kernel subset, not an adapter"):
        apply_adapter(model, "linear")
    assert not any(isinstance(m, AdaptedLinear) for m in model.modules())


def test_a_registered_family_is_parsed_applied_and_has_exact_kernels(scale_family):
    assert parse_spec("oscale") == AdapterSpec("oscale") and str(parse_spec("OScale")) == "oscale"
    assert valid_forms().endswith("ia3[:bias], oscale")
    model, tok = load_model("tiny-llama", dtype=torch.float64, seed=4)
    handle = apply_adapter(model, "oscale", "q,v", seed=1)
    assert len(handle.layers) == 4 and all(isinstance(m, OutputScale) for m in handle.layers.values())
    handle.remove()
    train = load_split("sst2").train
    batch1, batch2 = make_batch(tok, "sst2", train[:3]), make_batch(tok, "sst2", train[5:7])
    expected = brute_force_kernel(per_example_gradients(model, "oscale", batch1),
                                  per_example_gradients(model, "oscale", batch2))
    for implementation in ("fast", "reference"):
        got = empirical_ntk(model, batch1, batch2, ["oscale"], implementation)["oscale"]
        assert relative_error(got, expected) < 1e-10


def test_family_helpers_give_one_line_errors():
    with pytest.raises(UserError, match=r"bad adapter spec 'lora0': the rank must be at least 1; valid forms: full"):
        positive("lora0", "0", "the rank")
    with pytest.raises(UserError, match="lormapi needs its number"):
        parse_spec("lormapix")


def test_delta_weights_are_measurements_detached_from_autograd():
    model, _ = load_model("tiny-llama", dtype=torch.float64, seed=0)
    handle = apply_adapter(model, "lora2", "q")
    with torch.no_grad():
        for layer in handle.layers.values():
            layer.B.normal_()
    deltas = handle.delta_weights()
    assert deltas and all(not d.requires_grad for d in deltas.values())
    assert all(torch.equal(deltas[n], layer.delta_weight()) for n, layer in handle.layers.items())

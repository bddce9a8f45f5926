"""Adapters: exact ΔW against dense references, identity at init, merge, counts, save/load."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ntk_peft import label_logits, load_model
from ntk_peft.adapters import ShiftedLinear, apply_adapter, fold_adapter, load_adapter
from ntk_peft.analysis import factored_singular_values, singular_values
from ntk_peft.errors import UserError
from ntk_peft.tasks import load_split, make_batch
from tests.helpers import dense_monarch

SPECS = ["row2", "col2", "row2:random", "rand0.1", "lora2", "more2x2", "more3x2", "cp2", "lorma+2",
         "lorma+2:post", "lormapi2", "lormapi2:post", "bias", "ia3", "ia3:bias", "cp2:transpose"]
NOT_BITWISE_AT_INIT = ("ia3", "ia3:bias", "lormapi2", "lormapi2:post")  # multiplicative: identity up to rounding


def _randomise(handle, seed=0):
    """Trained-looking values: N(0, 0.1²) entries (N(0, 0.6²) for LoRTA's factors, whose ΔW multiplies five of
    them, so that its update is as large as a two-factor adapter's rather than 0.1⁵)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in handle.named_parameters():
            scale = 0.6 if name.startswith("shared.cp.") else 0.1
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)


def _batch(tok, n=4):
    return make_batch(tok, "sst2", load_split("sst2").train[:n])


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-roberta", "tiny-bert"])
@pytest.mark.parametrize("spec", SPECS)
def test_identity_at_init_and_exact_delta_after_training_values(name, spec):
    model, tok = load_model(name, dtype=torch.float64, seed=1)
    batch = _batch(tok)
    with torch.no_grad():
        before = label_logits(model, batch)
    handle = apply_adapter(model, spec, seed=3)
    with torch.no_grad():
        at_init = label_logits(model, batch)
    if spec in NOT_BITWISE_AT_INIT:
        torch.testing.assert_close(at_init, before, rtol=1e-12, atol=1e-14)
    else:
        assert torch.equal(at_init, before)
    _randomise(handle)
    x = torch.randn(2, 3, 32, dtype=torch.float64)
    for layer_name, layer in handle.layers.items():
        if layer.in_features != 32:
            continue
        delta_b = layer.delta_bias()
        bias = layer.base.bias if delta_b is None else (0 if layer.base.bias is None else layer.base.bias) + delta_b
        expected = F.linear(x, layer.base.weight + layer.delta_weight(), bias)
        torch.testing.assert_close(layer(x), expected, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        adapted = label_logits(model, batch)
        handle.merge()
        handle.merge()  # idempotent
        merged = label_logits(model, batch)
        handle.unmerge()
        handle.unmerge()
        unmerged = label_logits(model, batch)
    assert not torch.allclose(adapted, before)
    torch.testing.assert_close(merged, adapted, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(unmerged, adapted, rtol=1e-12, atol=1e-12)
    assert handle.num_trainable() == sum(p.numel() for p in handle.parameters())
    original = handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(label_logits(original, batch), before, rtol=1e-12, atol=1e-13)


def _layer(d_out, d_in, seed=0, bias=True):
    torch.manual_seed(seed)
    return nn.Linear(d_in, d_out, bias=bias).double()


class _Wrap(nn.Module):
    """A one-block model so apply_adapter can target a single Linear."""

    def __init__(self, layer):
        super().__init__()
        self.blocks = nn.ModuleList([nn.ModuleDict({"proj": layer})])


@pytest.mark.parametrize("shape", [(4, 12), (7, 5), (9, 9)])
def test_delta_weights_equal_dense_reconstructions(shape):
    d_out, d_in = shape
    for spec in ("row2", "col3", "rand0.3", "lora2", "more2x2", "more3x1"):
        wrap = _Wrap(_layer(d_out, d_in))
        handle = apply_adapter(wrap, spec, seed=1)
        _randomise(handle, seed=2)
        layer = next(iter(handle.layers.values()))
        dense = torch.zeros(d_out, d_in, dtype=torch.float64)
        if spec.startswith("row"):
            for k, row in enumerate(layer.rows.tolist()):
                dense[row] = layer.delta[k]
        elif spec.startswith("col"):
            for k, col in enumerate(layer.cols.tolist()):
                dense[:, col] = layer.delta[:, k]
        elif spec.startswith("rand"):
            for k, flat in enumerate(layer.entries.tolist()):
                dense[flat // d_in, flat % d_in] = layer.values[k]
        elif spec.startswith("lora"):
            dense = layer.scale * layer.B @ layer.A
        else:
            blocks = layer.w1.shape[0]
            full = dense_monarch(layer.w1.detach(), layer.w2.detach())  # padded (N·b_out)×(N·b_in)
            dense = full[:d_out, :d_in]
            assert full.shape == (blocks * -(-d_out // blocks), blocks * -(-d_in // blocks))
        torch.testing.assert_close(layer.delta_weight(), dense, rtol=1e-12, atol=1e-12)


FACTORED = ("row2", "col2", "row2:random", "lora2", "cp2", "cp2:transpose", "lorma+2", "lorma+2:post")


@pytest.mark.parametrize("spec", SPECS)
def test_delta_factors_multiply_to_delta_weight_and_give_its_spectrum(spec):
    """Adapters with a low-rank ΔW by construction give factors whose product is ΔW and whose thin-QR
    spectrum is ΔW's dense SVD; the others give none."""
    model, _ = load_model("tiny-llama", dtype=torch.float64, seed=1)
    handle = apply_adapter(model, spec, seed=3)
    _randomise(handle)
    for layer in handle.layers.values():
        factors = layer.delta_factors()
        if spec not in FACTORED:
            assert factors is None
            continue
        left, right = factors
        delta = layer.delta_weight().detach()
        assert left.shape[1] == right.shape[0] == 2
        torch.testing.assert_close(left @ right, delta, rtol=1e-12, atol=1e-14)
        dense = singular_values(delta)
        np.testing.assert_allclose(factored_singular_values(left, right), dense, rtol=0, atol=1e-12 * dense[0])


def test_more_with_one_block_is_lora_and_reaches_rank_n_r():
    layer = _layer(16, 16)
    more = apply_adapter(_Wrap(copy.deepcopy(layer)), "more1x3", seed=0)
    lora = apply_adapter(_Wrap(copy.deepcopy(layer)), "lora3", seed=0)
    _randomise(more, 5)
    m_layer, l_layer = next(iter(more.layers.values())), next(iter(lora.layers.values()))
    with torch.no_grad():
        l_layer.A.copy_(m_layer.w1[0])
        l_layer.B.copy_(m_layer.w2[0])
    torch.testing.assert_close(m_layer.delta_weight(), l_layer.delta_weight(), rtol=1e-12, atol=1e-13)
    # Equal parameter counts, LoRA rank r, MoRe rank N·r.
    more4 = apply_adapter(_Wrap(copy.deepcopy(layer)), "more4x2", seed=0)
    lora2 = apply_adapter(_Wrap(copy.deepcopy(layer)), "lora2", seed=0)
    _randomise(more4, 6)
    _randomise(lora2, 7)
    assert more4.num_trainable() == lora2.num_trainable() == 64
    assert torch.linalg.matrix_rank(next(iter(lora2.layers.values())).delta_weight()) == 2
    assert torch.linalg.matrix_rank(next(iter(more4.layers.values())).delta_weight()) == 8


@pytest.mark.parametrize("spec", ["row1", "col2", "rand0.2"])
def test_optimiser_touches_only_selected_entries(spec):
    model, tok = load_model("tiny-llama", dtype=torch.float32, seed=0)
    originals = {n: p.detach().clone() for n, p in model.named_parameters()}
    handle = apply_adapter(model, spec, seed=0)
    opt = torch.optim.AdamW(handle.parameters(), lr=1e-2, weight_decay=0.1)
    batch = _batch(tok)
    for _ in range(3):
        opt.zero_grad()
        F.cross_entropy(label_logits(model, batch), batch["labels"]).backward()
        opt.step()
    state_tensors = {id(p) for p in opt.state}
    assert state_tensors == {id(p) for p in handle.parameters()}
    assert sum(s["exp_avg"].numel() for s in opt.state.values()) == handle.num_trainable()
    handle.merge()
    changed_any = False
    for name, layer in handle.layers.items():
        diff = (layer.base.weight - originals[f"{name}.weight"]) != 0
        allowed = torch.zeros_like(diff)
        if spec.startswith("row"):
            allowed[layer.rows] = True
        elif spec.startswith("col"):
            allowed[:, layer.cols] = True
        else:
            allowed.view(-1)[layer.entries] = True
        assert not (diff & ~allowed).any(), name
        changed_any |= bool(diff.any())
    assert changed_any
    for name, p in model.named_parameters():  # everything else is untouched
        if not any(name.startswith(layer) for layer in handle.layers):
            assert torch.equal(p, originals[name]), name
    handle.merge()  # idempotent
    handle.unmerge()
    for name, layer in handle.layers.items():  # unmerge restores W0 (fp32)
        assert (layer.base.weight - originals[f"{name}.weight"]).abs().max() <= 1e-6


def test_roberta_base_row_counts_match_rocoft():
    from transformers import RobertaConfig, RobertaForMaskedLM

    with torch.device("meta"):
        model = RobertaForMaskedLM(RobertaConfig())
    assert apply_adapter(model, "row1").num_trainable() == 82_944
    with torch.device("meta"):
        model = RobertaForMaskedLM(RobertaConfig())
    assert apply_adapter(model, "row3").num_trainable() == 248_832


def test_grouped_query_shapes_of_smollm2(smollm2):
    k_proj = smollm2[0].model.layers[0].self_attn.k_proj
    assert (k_proj.out_features, k_proj.in_features) == (192, 576)
    x = torch.randn(2, 576, dtype=torch.float64)
    for spec in ("row1", "col1", "lora4", "more4x8", "more5x8", "rand0.001", "lorma+4", "lorma+4:post",
                 "lormapi4", "lormapi4:post", "bias", "ia3"):
        layer = copy.deepcopy(k_proj).double()  # the real weights, in float64 for an exact check
        handle = apply_adapter(_Wrap(layer), spec, targets="all", seed=0)
        _randomise(handle, 1)
        adapted = next(iter(handle.layers.values()))
        delta_b = adapted.delta_bias()
        expected = F.linear(x, layer.weight + adapted.delta_weight(), delta_b)
        torch.testing.assert_close(adapted(x), expected, rtol=1e-12, atol=1e-12)


def test_targets_and_bad_targets(tiny_models):
    model = copy.deepcopy(tiny_models["tiny-llama"][0])
    attn = apply_adapter(model, "lora1", targets="attn")
    assert len(attn.layers) == 2 * 4 and all("self_attn" in n for n in attn.layers)
    attn.remove()
    names = apply_adapter(model, "row1", targets="q_proj,down")
    assert sorted({n.rsplit(".", 1)[1] for n in names.layers}) == ["down_proj", "q_proj"]
    with pytest.raises(UserError, match="already carries an adapter"):
        apply_adapter(model, "row1")
    names.remove()
    with pytest.raises(UserError, match="target 'nothing' matches no Linear layer"):
        apply_adapter(model, "row1", targets="nothing")
    with pytest.raises(UserError, match="rank 99 is larger than the 32 rows"):
        apply_adapter(model, "row99")
    with pytest.raises(UserError, match="needs a calibration batch"):
        apply_adapter(model, "row1:wanda-max")


@pytest.mark.parametrize("selection", ["wanda-max", "wanda-min", "wanda-mixed"])
def test_wanda_selection_picks_by_score(selection):
    model, tok = load_model("tiny-bert", dtype=torch.float64, seed=0)
    batch = _batch(tok, 6)
    handle = apply_adapter(model, f"row4:{selection}", calibration=batch)
    from ntk_peft.adapters import input_feature_norms, resolve_targets
    from ntk_peft.adapters.rowcol import wanda_scores

    handle.remove()
    targets = resolve_targets(model, "all")
    norms = input_feature_norms(model, targets, batch)
    handle = apply_adapter(model, f"row4:{selection}", calibration=batch)
    for target in targets:
        scores = wanda_scores(target.module.weight.double(), norms[target.name], "row")
        order = torch.argsort(scores, descending=True).tolist()
        expect = {"wanda-max": order[:4], "wanda-min": order[-4:], "wanda-mixed": order[:2] + order[-2:]}[selection]
        assert handle.layers[target.name].rows.tolist() == sorted(expect)


def _save_trained(folder, name, dtype, spec):
    """Apply ``spec`` to a tiny model, give it random values, save it; returns (batch, its label logits)."""
    model, tok = load_model(name, dtype=dtype, seed=0)
    handle = apply_adapter(model, spec, seed=4)
    _randomise(handle, 9)
    batch = _batch(tok)
    with torch.no_grad():
        expected = label_logits(model, batch)
    handle.save(folder)
    return batch, expected


@pytest.mark.parametrize("spec", ["row2:random", "lora2", "more2x2", "rand0.1", "ia3", "ia3:bias", "cp2",
                                  "cp2:transpose", "lormapi2"])
def test_save_and_load_give_identical_outputs(tmp_path, spec):
    batch, expected = _save_trained(tmp_path, "tiny-roberta", torch.float32, spec)
    fresh, _ = load_model("tiny-roberta", dtype=torch.float32, seed=0)
    loaded = load_adapter(fresh, tmp_path)
    assert str(loaded.spec) == spec
    with torch.no_grad():
        assert torch.equal(label_logits(fresh, batch), expected)


@pytest.mark.parametrize("spec", ["lora2", "row2", "more2x2", "cp2", "lormapi2", "ia3", "bias", "full"])
def test_folded_adapter_is_the_fine_tuned_function_on_the_pretrained_parameters(tmp_path, spec):
    """fold_adapter: same outputs as the adapted model, same parameter names and shapes as the pretrained
    one (a BitFit bias on bias-free tiny-llama becomes a fixed shift, not a new parameter)."""
    shapes = {n: p.shape for n, p in load_model("tiny-llama", dtype=torch.float64, seed=0)[0].named_parameters()}
    batch, expected = _save_trained(tmp_path, "tiny-llama", torch.float64, spec)
    folded = fold_adapter(load_model("tiny-llama", dtype=torch.float64, seed=0)[0], tmp_path)
    with torch.no_grad():
        assert (label_logits(folded, batch) - expected).abs().max() <= 1e-12 * expected.abs().max()
    assert {n: p.shape for n, p in folded.named_parameters()} == shapes
    assert all(p.requires_grad for p in folded.parameters())
    assert not any(n.startswith("base") or ".base." in n for n, _ in folded.named_modules())
    assert any(isinstance(m, ShiftedLinear) for m in folded.modules()) == (spec == "bias")


def test_cp_shares_one_factor_set_and_counts_lorta_formula(smollm2):
    """LoRTA on SmolLM2 shapes (grouped-query k/v 576 -> 192): (d + d/h + h + L + M)·r."""
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**{k: getattr(smollm2[0].config, k) for k in (
            "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "vocab_size")}))
    handle = apply_adapter(model, "cp4")
    assert len(handle.layers) == 30 * 4
    assert handle.num_trainable() == (576 + 64 + 9 + 30 + 4) * 4
    assert handle.num_trainable() == sum(p.numel() for p in handle.parameters())
    assert all(layer.num_params() == 0 for layer in handle.layers.values())


@pytest.mark.parametrize("spec", ["lormapi8", "lormapi8:post"])
def test_lorma_pi_is_identity_at_init_in_fp32_on_smollm2_layer(smollm2, spec):
    layer = copy.deepcopy(smollm2[0].model.layers[3].self_attn.v_proj)
    x = torch.randn(4, layer.in_features)
    expected = layer(x)
    handle = apply_adapter(_Wrap(layer), spec, targets="all")
    got = next(iter(handle.layers.values()))(x)
    assert (got - expected).abs().max() <= 1e-6 * expected.abs().max()


@pytest.mark.parametrize("scale_bias", [False, True])
def test_ia3_output_scaling_with_and_without_the_bias_against_a_dense_reference(scale_bias):
    """ia3 scales W0·x only (ours: an exact ΔW); ia3:bias scales W0·x + b (peft's convention), Δb = (l − 1) ⊙ b."""
    from ntk_peft.adapters import IA3Adapter
    from tests.adapters.layers import check_merge_unmerge, inputs, linear

    base = linear(5, 4, bias=True)
    adapter = IA3Adapter(base, feedforward=False, scale_bias=scale_bias)
    with torch.no_grad():
        adapter.scale.copy_(torch.tensor([0.5, 2.0, -1.0, 3.0], dtype=torch.float64))
    x = inputs(5)
    w0, b, scale = base.weight.detach(), base.bias.detach(), adapter.scale.detach()
    expected = (x @ w0.T + b) * scale if scale_bias else (x @ w0.T) * scale + b
    assert torch.allclose(adapter(x), expected, rtol=1e-13, atol=1e-13)
    assert torch.allclose(adapter.delta_weight(), (scale - 1)[:, None] * w0, rtol=0, atol=1e-15)
    delta_b = adapter.delta_bias()
    assert (delta_b is None) == (not scale_bias)
    if scale_bias:
        assert torch.allclose(delta_b, (scale - 1) * b, rtol=0, atol=1e-15)
    check_merge_unmerge(adapter, x)
    feedforward = IA3Adapter(linear(5, 4, bias=True), feedforward=True, scale_bias=True)
    assert feedforward.delta_bias() is None  # input scaling leaves the bias alone in both conventions


def test_wanda_norms_of_several_batches_are_those_of_their_union():
    """A list of calibration batches counts every real token once, whatever the padding of each batch."""
    from ntk_peft.adapters import input_feature_norms, resolve_targets
    from ntk_peft.tasks import load_split, make_batch

    model, tok = load_model("tiny-llama", dtype=torch.float64, seed=0)
    examples = load_split("sst2", 4, 13).train
    targets = resolve_targets(model, "all")
    whole = input_feature_norms(model, targets, make_batch(tok, "sst2", examples))
    parts = input_feature_norms(model, targets, [make_batch(tok, "sst2", examples[:3]),
                                                 make_batch(tok, "sst2", examples[3:])])
    single = input_feature_norms(model, targets, make_batch(tok, "sst2", examples[:1]))
    assert set(whole) == set(parts) == {t.name for t in targets}
    for name in whole:
        torch.testing.assert_close(parts[name], whole[name], rtol=1e-12, atol=0)
        assert (single[name] < whole[name]).any()  # more tokens, larger norms: the union is really summed

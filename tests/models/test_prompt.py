"""label_logits: agrees with the full model's logits and ignores padding and batch-mates."""

from __future__ import annotations

import pytest
import torch

from ntk_peft import label_logits, load_model
from ntk_peft.models import position_ids
from ntk_peft.tasks import load_split, make_batch

TOL = {torch.float64: 1e-12, torch.float32: 1e-5}


def _examples(task="sst2", n=6):
    split = load_split(task)
    pool = sorted(split.train, key=lambda e: len(e.text_a) + len(e.text_b or ""))
    return [pool[i] for i in torch.linspace(0, len(pool) - 1, n).long().tolist()]


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-roberta", "tiny-bert"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("side", ["left", "right"])
@pytest.mark.parametrize("task", ["sst2", "mnli"])
def test_alone_equals_padded_beside_longer_examples(name, dtype, side, task):
    model, tok = load_model(name, dtype=dtype, seed=3)
    examples = _examples(task)
    together = label_logits(model, make_batch(tok, task, examples, padding_side=side))
    lengths = make_batch(tok, task, examples)["attention_mask"].sum(1)
    assert lengths.min() < lengths.max()  # the batch really pads
    reversed_ = label_logits(model, make_batch(tok, task, examples[::-1], padding_side=side)).flip(0)
    for i, example in enumerate(examples):
        alone = label_logits(model, make_batch(tok, task, [example], padding_side=side))[0]
        scale = alone.abs().max()
        assert (together[i] - alone).abs().max() <= TOL[dtype] * scale
        assert (reversed_[i] - alone).abs().max() <= TOL[dtype] * scale
    assert together.shape == (len(examples), 3 if task == "mnli" else 2)
    assert together.dtype == dtype


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-roberta", "tiny-bert"])
def test_matches_full_model_logits_at_readout(name, tiny_models):
    """The read-out path equals gathering from the whole model's vocabulary logits."""
    model, tok = tiny_models[name]
    batch = make_batch(tok, "sst2", _examples(), padding_side="left")
    ours = label_logits(model, batch)
    mask = batch["attention_mask"]
    kwargs = dict(input_ids=batch["input_ids"], attention_mask=mask, position_ids=position_ids(model, mask))
    with torch.no_grad():
        full = model(**kwargs).logits
    rows = torch.arange(full.shape[0])
    reference = full[rows, batch["readout_positions"]][:, batch["label_token_ids"]]
    torch.testing.assert_close(ours, reference, rtol=1e-12, atol=1e-12)


def test_right_padded_positions_match_hf_defaults(tiny_models):
    """Unpadded inputs get the same position ids the models make themselves."""
    for name, (model, _) in tiny_models.items():
        mask = torch.ones(1, 5, dtype=torch.long)
        start = 2 if name == "tiny-roberta" else 0  # RoBERTa counts from padding_idx + 1
        assert position_ids(model, mask).tolist() == [list(range(start, start + 5))]


@pytest.mark.parametrize("side", ["left", "right"])
def test_smollm2_padding_invariance_fp32(smollm2, side):
    model, tok = smollm2
    examples = _examples("sst2", 3)
    together = label_logits(model, make_batch(tok, "sst2", examples, padding_side=side))
    for i, example in enumerate(examples):
        alone = label_logits(model, make_batch(tok, "sst2", [example], padding_side=side))[0]
        assert (together[i] - alone).abs().max() <= 1e-5 * alone.abs().max()


def test_gradients_flow_to_label_rows_of_tied_embedding(tiny_models):
    model, tok = tiny_models["tiny-llama"]
    batch = make_batch(tok, "sst2", _examples(n=2))
    model.zero_grad()
    label_logits(model, batch).sum().backward()
    grad = model.get_input_embeddings().weight.grad
    assert model.lm_head.weight is model.get_input_embeddings().weight  # tied, as in SmolLM2
    assert grad[batch["label_token_ids"]].abs().sum() > 0
    model.zero_grad()

"""make_batch: token layout, read-out positions, truncation, padding sides."""

from __future__ import annotations

import pytest
import torch

from ntk_peft.errors import UserError
from ntk_peft.tasks import Example, Prompt, load_split, make_batch
from ntk_peft.tasks.batch import iter_batches, special_tokens_around


def test_special_tokens_of_each_family(tiny_models, smollm2):
    bert = tiny_models["tiny-bert"][1]
    assert special_tokens_around(bert) == ([bert.cls_token_id], [bert.sep_token_id])
    llama = tiny_models["tiny-llama"][1]
    assert special_tokens_around(llama) == ([llama.bos_token_id], [])
    assert special_tokens_around(smollm2[1]) == ([], [])


def test_masked_batch_reads_out_at_the_mask(tiny_models):
    _, tok = tiny_models["tiny-roberta"]
    examples = load_split("sst2").train[:4]
    batch = make_batch(tok, "sst2", examples)
    ids, pos = batch["input_ids"], batch["readout_positions"]
    assert (ids[torch.arange(4), pos] == tok.mask_token_id).all()
    assert ((ids == tok.mask_token_id).sum(1) == 1).all()
    assert (ids[:, 0] == tok.cls_token_id).all()
    assert batch["label_token_ids"].tolist() == tok.convert_tokens_to_ids(["terrible", "great"])
    assert batch["labels"].tolist() == [e.label for e in examples]


def test_causal_prompt_tokens_equal_whole_string_tokenization(smollm2):
    """Segment-wise tokenization matches tokenizing the rendered prompt (SmolLM2)."""
    _, tok = smollm2
    for task in ("sst2", "mnli", "trec", "mrpc"):
        split = load_split(task)
        batch = make_batch(tok, task, split.train[:8], padding_side="right")
        for row, example in enumerate(split.train[:8]):
            text = split.task.causal_template.replace("{mask}", "")
            text = text.replace("{text_a}", example.text_a).replace("{text_b}", example.text_b or "")
            expected = tok(text, add_special_tokens=False)["input_ids"]
            n = int(batch["attention_mask"][row].sum())
            assert batch["input_ids"][row, :n].tolist() == expected
            assert batch["readout_positions"][row] == n - 1


@pytest.mark.parametrize("side", ["left", "right"])
def test_padding_side(side, tiny_models):
    _, tok = tiny_models["tiny-llama"]
    examples = [Example("a", "good", None, 1), Example("b", "a very long and boring film indeed", None, 0)]
    batch = make_batch(tok, "sst2", examples, padding_side=side)
    mask = batch["attention_mask"]
    short = mask[0]
    assert short.sum() < mask[1].sum()
    if side == "left":
        assert short[0] == 0 and short[-1] == 1
        assert batch["readout_positions"].tolist() == [mask.shape[1] - 1] * 2
    else:
        assert short[0] == 1 and short[-1] == 0
        assert batch["readout_positions"][0] == short.sum() - 1
    assert (batch["input_ids"][mask == 0] == tok.pad_token_id).all()


def test_truncation_cuts_the_longest_text_and_keeps_the_template(tiny_models):
    _, tok = tiny_models["tiny-bert"]
    long_a = " ".join(["film"] * 50)
    ex = Example("x", long_a, "the movie", 1)
    batch = make_batch(tok, "mrpc", [ex], max_length=20)
    ids = batch["input_ids"][0]
    assert len(ids) == 20
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert ids[batch["readout_positions"][0]] == tok.mask_token_id
    words = tok.convert_ids_to_tokens(ids.tolist())
    assert words == ["[CLS]"] + ["film"] * 14 + ["[MASK]", ",", "the", "movie", "[SEP]"]
    with pytest.raises(UserError, match="template alone is longer"):
        make_batch(tok, "mrpc", [ex], max_length=3)


def test_custom_prompt_and_label_words(tiny_models):
    _, tok = tiny_models["tiny-llama"]
    ex = [Example("x", "good film", None, 1)]
    batch = make_batch(tok, "sst2", ex, "Review: {text_a} Sentiment:{mask}", [" bad", " good"])
    assert batch["label_token_ids"].tolist() == tok.convert_tokens_to_ids(["bad", "good"])
    same = make_batch(tok, "sst2", ex, Prompt("Review: {text_a} Sentiment:{mask}", (" bad", " good"), "causal"))
    assert torch.equal(batch["input_ids"], same["input_ids"])
    with pytest.raises(UserError, match="needs a tokenizer with a mask token"):
        make_batch(tok, "sst2", ex, mode="masked")


def test_iter_batches_covers_every_example_once(tiny_models):
    _, tok = tiny_models["tiny-bert"]
    examples = load_split("sst2").train
    seen = []
    for idx, batch in iter_batches(tok, "sst2", examples, 5):
        assert batch["input_ids"].shape[0] == len(idx) <= 5
        seen.extend(idx)
    assert sorted(seen) == list(range(len(examples)))

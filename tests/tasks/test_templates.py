"""Template parsing, prompt resolution and label-word checks."""

from __future__ import annotations

import pytest

from ntk_peft.errors import UserError
from ntk_peft.tasks import CAUSAL, MASKED, TASKS, get_task, parse_template, resolve_prompt
from ntk_peft.tasks.templates import Segment, apply_transforms, label_word_ids


def test_parse_moves_spaces_onto_texts_and_keeps_braces():
    segs = parse_template("Review: {text_a}\nSentiment:{mask} {{x}}")
    assert segs == [
        Segment("literal", "Review:"),
        Segment("text", 0, ("space1",)),
        Segment("literal", "\nSentiment:"),
        Segment("mask"),
        Segment("literal", " {x}"),
    ]


def test_lm_bff_transforms():
    segs = parse_template("{text_a|nopunct} ?{mask} , {text_b|lowerfirst}")
    assert [s.kind for s in segs] == ["text", "literal", "mask", "literal", "text"]
    assert apply_transforms("It rains.", segs[0].transforms) == "It rains"
    assert apply_transforms("It rains", segs[0].transforms) == "It rains"
    assert apply_transforms("The dog", segs[4].transforms) == " the dog"


@pytest.mark.parametrize("bad,match", [
    ("{text_a} {label}", "unknown placeholder {label}"),
    ("{text_a|upper}{mask}", "unknown placeholder"),
    ("{text_a} {mask", "unmatched '{'"),
])
def test_bad_templates_say_what_is_valid(bad, match):
    with pytest.raises(UserError, match=match):
        parse_template(bad)


def test_template_checks_by_mode_and_task():
    sst2, mnli = get_task("sst2"), get_task("mnli")
    with pytest.raises(UserError, match="must end with {mask}"):
        resolve_prompt(sst2, CAUSAL, "{mask} {text_a}")
    with pytest.raises(UserError, match="exactly once, found 2"):
        resolve_prompt(sst2, MASKED, "{mask} {text_a} {mask}")
    with pytest.raises(UserError, match="must use {text_a} and {text_b}"):
        resolve_prompt(mnli, MASKED, "{text_a}{mask}")
    with pytest.raises(UserError, match="2 classes .* but 3 label words"):
        resolve_prompt(sst2, CAUSAL, label_words=[" a", " b", " c"])


@pytest.mark.parametrize("spec", TASKS, ids=lambda s: s.name)
def test_default_prompts_are_valid(spec):
    for mode in (MASKED, CAUSAL):
        prompt = resolve_prompt(spec, mode)
        assert len(prompt.label_words) == spec.num_classes
        assert all(word.startswith(" ") for word in prompt.label_words)


@pytest.mark.parametrize("spec", TASKS, ids=lambda s: s.name)
def test_label_words_are_single_tokens_of_every_model(spec, tiny_models, smollm2):
    tokenizers = [tok for _, tok in tiny_models.values()] + [smollm2[1]]
    for tok in tokenizers:
        mode = MASKED if tok.mask_token_id is not None else CAUSAL
        label_word_ids(tok, resolve_prompt(spec, mode).label_words)


def test_multi_token_and_unknown_label_words_are_errors(smollm2, tiny_models):
    with pytest.raises(UserError, match=r"label word ' antidisestablishmentarianism' is \d+ tokens \["):
        label_word_ids(smollm2[1], [" good", " antidisestablishmentarianism"])
    with pytest.raises(UserError, match="unknown to this tokenizer"):
        label_word_ids(tiny_models["tiny-bert"][1], [" zyzzyva"])
    with pytest.raises(UserError, match="repeated token ids"):
        label_word_ids(smollm2[1], [" good", " good"])

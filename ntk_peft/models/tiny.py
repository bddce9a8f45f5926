"""Tiny randomly initialised models and word-level tokenizers, built in code.

Tests use them so that nothing is ever downloaded: ``tiny-llama`` (causal LM,
grouped-query attention with non-square k/v projections, tied embeddings, as
SmolLM2), ``tiny-roberta`` and ``tiny-bert`` (masked LMs with their LM heads).
Weights are seeded; the tokenizers know every word of every task's templates
and label words plus a few hundred common words, and map the rest to unknown.
"""

from __future__ import annotations

import re

import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import (
    BertConfig,
    BertForMaskedLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaForMaskedLM,
)

from ntk_peft.tasks.registry import TASKS

TINY_MODELS = ("tiny-llama", "tiny-roberta", "tiny-bert")
HIDDEN, LAYERS, HEADS, INTERMEDIATE, MAX_POSITIONS = 32, 2, 4, 64, 512

_COMMON_WORDS = """
the a an and or but not no is are was were be been it its this that these those
i you he she we they me him her us them my your his our their what which who whom
whose when where why how of in on at to for from by with about as into than then
so too very just only also more most less least all any some many much few each
other one two three four five first last good great bad best worst better worse
movie film story plot acting actor actors director characters scenes script
funny boring dull fun love hate like enjoy enjoyed fine nice poor awful excellent
do does did done have has had make makes made can could will would should may
might must shall time year years day people man woman men women world life
way thing things work well even still never ever always often new old big small
long short little own same real really quite rather enough again up down out
over under after before while because if though although there here now
""".split()

_SPECIALS = {
    "tiny-llama": ["<unk>", "<s>", "</s>", "<pad>"],
    "tiny-roberta": ["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
    "tiny-bert": ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
}


def _task_words() -> list[str]:
    words: list[str] = []
    for spec in TASKS:
        text = " ".join([spec.mlm_template, spec.causal_template, *spec.mlm_label_words, *spec.causal_label_words])
        text = re.sub(r"\{[^{}]*\}", " ", text)
        words.extend(re.findall(r"\w+|[^\w\s]", text))
    return words


def tiny_vocab(name: str) -> dict[str, int]:
    """Specials first, then task words, punctuation, digits and common words."""
    tokens = list(_SPECIALS[name])
    extra = _task_words() + list(".,!?;:'\"()-") + [str(d) for d in range(10)] + _COMMON_WORDS
    for word in extra:
        if word not in tokens:
            tokens.append(word)
    return {tok: i for i, tok in enumerate(tokens)}


def tiny_tokenizer(name: str) -> PreTrainedTokenizerFast:
    """A word-level tokenizer with the special tokens of the model family."""
    if name not in _SPECIALS:
        raise ValueError(f"no tiny tokenizer {name!r}; valid: {', '.join(_SPECIALS)}")
    vocab = tiny_vocab(name)
    specials = _SPECIALS[name]
    unk = specials[0] if name == "tiny-llama" else specials[3 if name == "tiny-roberta" else 1]
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=unk))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    if name == "tiny-llama":
        core.post_processor = processors.TemplateProcessing(
            single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
        )
        return PreTrainedTokenizerFast(
            tokenizer_object=core, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
            pad_token="<pad>", padding_side="right", model_max_length=MAX_POSITIONS,
        )
    cls, sep, pad, mask = (("<s>", "</s>", "<pad>", "<mask>") if name == "tiny-roberta"
                           else ("[CLS]", "[SEP]", "[PAD]", "[MASK]"))
    core.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", pair=f"{cls} $A {sep} $B {sep}",
        special_tokens=[(cls, vocab[cls]), (sep, vocab[sep])],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=core, unk_token=unk, cls_token=cls, sep_token=sep, pad_token=pad,
        mask_token=mask, bos_token=cls, eos_token=sep, padding_side="right",
        model_max_length=MAX_POSITIONS,
    )


def tiny_model(name: str, dtype: torch.dtype = torch.float32, seed: int = 0):
    """``(model, tokenizer)`` for a tiny model, seeded and in eval mode."""
    tokenizer = tiny_tokenizer(name)
    vocab = len(tokenizer)
    common = dict(vocab_size=vocab, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                  num_attention_heads=HEADS, intermediate_size=INTERMEDIATE)
    if name == "tiny-llama":
        config = LlamaConfig(**common, num_key_value_heads=2, max_position_embeddings=MAX_POSITIONS,
                             tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        cls = LlamaForCausalLM
    elif name == "tiny-roberta":
        config = RobertaConfig(**common, max_position_embeddings=MAX_POSITIONS + 2, type_vocab_size=1,
                               pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                               eos_token_id=tokenizer.sep_token_id)
        cls = RobertaForMaskedLM
    else:
        config = BertConfig(**common, max_position_embeddings=MAX_POSITIONS, pad_token_id=tokenizer.pad_token_id)
        cls = BertForMaskedLM
    # sdpa, as the pretrained models use; eager attention in float64 turns fully
    # masked (left-padded) rows into NaN that then leaks through 0 * NaN.
    config._attn_implementation = "sdpa"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
    model.to(dtype)
    model.eval()
    return model, tokenizer

"""Turning examples into padded prompt batches.

A batch is a plain dict of tensors:

- ``input_ids``, ``attention_mask``: ``[B, T]`` long, padded to the longest
  example on the tokenizer's padding side (or ``padding_side``);
- ``readout_positions``: ``[B]`` long, where the label word is read out (the
  mask token, or the last prompt token for causal LMs);
- ``label_token_ids``: ``[C]`` long, the label words' token ids;
- ``labels``: ``[B]`` long, class indices.

Position ids are not stored: `ntk_peft.label_logits` derives them from the
attention mask, so results do not depend on padding.
"""

from __future__ import annotations

import torch

from ntk_peft.errors import UserError
from ntk_peft.tasks.data import Example
from ntk_peft.tasks.registry import TaskSpec, get_task
from ntk_peft.tasks.templates import (
    CAUSAL,
    MASKED,
    Prompt,
    apply_transforms,
    check_template,
    label_word_ids,
    resolve_prompt,
)

DEFAULT_MAX_LENGTH = 512


def prompt_mode(tokenizer) -> str:
    """MASKED when the tokenizer has a mask token, else CAUSAL."""
    return MASKED if getattr(tokenizer, "mask_token_id", None) is not None else CAUSAL


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """Ids the tokenizer adds before and after a single sequence.

    BERT gives ([CLS], [SEP]), RoBERTa (<s>, </s>), Llama (<s>, none),
    SmolLM2 (none, none).
    """
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    full = tokenizer("a", add_special_tokens=True)["input_ids"]
    for start in range(len(full) - len(bare) + 1):
        if full[start : start + len(bare)] == bare:
            return full[:start], full[start + len(bare) :]
    return [], []


def _encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"] if text else []


def encode_example(tokenizer, segments, example: Example, mode: str, max_length: int,
                   prefix: list[int], suffix: list[int]) -> tuple[list[int], int]:
    """Token ids of one prompt and its read-out position.

    Text pieces are cut from their end, longest first, until the prompt fits
    ``max_length``; template pieces and special tokens are never cut.
    """
    pieces: list[list[int]] = []
    text_pieces: list[int] = []
    mask_piece = -1
    for seg in segments:
        if seg.kind == "literal":
            pieces.append(_encode(tokenizer, seg.value))
        elif seg.kind == "text":
            raw = example.text_a if seg.value == 0 else example.text_b
            text_pieces.append(len(pieces))
            pieces.append(_encode(tokenizer, apply_transforms(raw or "", seg.transforms)))
        else:
            mask_piece = len(pieces)
            pieces.append([tokenizer.mask_token_id] if mode == MASKED else [])
    tail = suffix if mode == MASKED else []
    excess = len(prefix) + sum(map(len, pieces)) + len(tail) - max_length
    while excess > 0:  # one token at a time from the currently longest text
        longest = max(text_pieces, key=lambda i: len(pieces[i]))
        if not pieces[longest]:
            raise UserError(f"the prompt template alone is longer than max_length={max_length} tokens")
        pieces[longest].pop()
        excess -= 1
    readout = -1
    ids = list(prefix)
    for i, piece in enumerate(pieces):
        if i == mask_piece:
            readout = len(ids) if mode == MASKED else len(ids) - 1
        ids.extend(piece)
    if readout < 0:
        raise UserError("a causal prompt must have at least one token before {mask}")
    return ids + tail, readout


def make_batch(tokenizer, task: str | TaskSpec, examples: list[Example], template=None,
               label_words=None, *, mode: str | None = None, max_length: int | None = None,
               padding_side: str | None = None) -> dict[str, torch.Tensor]:
    """Tokenize examples into a padded prompt batch (keys in the module doc).

    Args:
        tokenizer: a Hugging Face tokenizer.
        task: task name or `TaskSpec`.
        examples: `Example` list (B of them).
        template: None for the task's default (masked-LM template when the
            tokenizer has a mask token, else the causal one), a template string,
            or a `Prompt` (which also fixes label words and mode).
        label_words: one word per class; default: the template mode's words.
        mode: ``masked`` or ``causal``; default from the tokenizer.
        max_length: longest prompt in tokens (texts are truncated to fit);
            default min(512, tokenizer.model_max_length).
        padding_side: ``left`` or ``right``; default the tokenizer's.

    Returns:
        dict with input_ids/attention_mask [B, T], readout_positions [B],
        label_token_ids [C] and labels [B], all torch.long.
    """
    spec = get_task(task)
    if isinstance(template, Prompt):
        prompt = template
        check_template(prompt.template, prompt.mode, spec)
    else:
        prompt = resolve_prompt(spec, mode or prompt_mode(tokenizer), template, label_words)
    if prompt.mode == MASKED and getattr(tokenizer, "mask_token_id", None) is None:
        raise UserError("a masked-LM prompt needs a tokenizer with a mask token; use mode='causal'")
    if not examples:
        raise UserError("make_batch needs at least one example")
    side = padding_side or getattr(tokenizer, "padding_side", "right")
    if side not in ("left", "right"):
        raise UserError(f"unknown padding side {side!r}; valid: left, right")
    limit = max_length or min(DEFAULT_MAX_LENGTH, getattr(tokenizer, "model_max_length", DEFAULT_MAX_LENGTH))
    segments = check_template(prompt.template, prompt.mode, spec)
    prefix, suffix = special_tokens_around(tokenizer)
    encoded = [encode_example(tokenizer, segments, ex, prompt.mode, limit, prefix, suffix) for ex in examples]
    width = max(len(ids) for ids, _ in encoded)
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
    input_ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    readout = torch.empty(len(encoded), dtype=torch.long)
    for row, (ids, pos) in enumerate(encoded):
        start = width - len(ids) if side == "left" else 0
        input_ids[row, start : start + len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention[row, start : start + len(ids)] = 1
        readout[row] = start + pos
    return {
        "input_ids": input_ids,
        "attention_mask": attention,
        "readout_positions": readout,
        "label_token_ids": torch.tensor(label_word_ids(tokenizer, prompt.label_words), dtype=torch.long),
        "labels": torch.tensor([ex.label for ex in examples], dtype=torch.long),
    }


def iter_batches(tokenizer, task, examples: list[Example], batch_size: int, **kwargs):
    """Yield ``(indices, batch)`` over examples sorted by length (less padding).

    ``indices`` maps each batch row back to its position in ``examples``.
    """
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].text_a) + len(examples[i].text_b or ""))
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        yield idx, make_batch(tokenizer, task, [examples[i] for i in idx], **kwargs)


def slice_batch(batch: dict[str, torch.Tensor], rows) -> dict[str, torch.Tensor]:
    """The examples ``rows`` of a batch (``label_token_ids`` is shared, kept whole)."""
    rows = torch.as_tensor(rows, dtype=torch.long)
    return {key: value if key == "label_token_ids" else value[rows] for key, value in batch.items()}


def to_device(batch: dict, model: torch.nn.Module) -> dict:
    """The batch's tensors on the model's device (the batch itself when they are there already)."""
    device = next(model.parameters()).device
    if all(v.device == device for v in batch.values() if isinstance(v, torch.Tensor)):
        return batch
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}

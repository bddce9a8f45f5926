"""Prompt templates: parsing, label words, and token-level rendering.

A template is a string with placeholders:

- ``{text_a}`` / ``{sentence}`` / ``{sentence1}``: the first text,
  ``{text_b}`` / ``{sentence2}``: the second text of pair tasks;
- ``{mask}``: the label word's slot. For masked LMs it becomes the mask token;
  for causal LMs it must end the template, and the label word is read out as
  the next token after the last position;
- transforms after ``|``: ``nopunct`` drops one trailing punctuation mark,
  ``lowerfirst`` lower-cases the first character (LM-BFF's ``sent-`` and
  ``sentl``); ``{{`` and ``}}`` are literal braces.

As in LM-BFF, each piece is tokenized on its own and the ids are concatenated,
so the label slot is exactly one token and long texts can be truncated without
touching the template. Spaces that end a literal before a text placeholder are
moved onto the text, so ``"Review: {text_a}"`` tokenizes like the whole string
would with byte-level BPE. Label words carry their own leading space
(``" great"``) and must each be a single token of the tokenizer.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

from ntk_peft.errors import UserError
from ntk_peft.tasks.registry import TaskSpec

MASKED, CAUSAL = "masked", "causal"
_FIELDS = {"text_a": 0, "sentence": 0, "sentence1": 0, "text_b": 1, "sentence2": 1}
_TRANSFORMS = ("nopunct", "lowerfirst")
_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{([^{}]*)\}|[{}]")


@dataclass(frozen=True)
class Segment:
    """One piece of a parsed template.

    ``kind`` is ``literal`` (``value`` is the text), ``text`` (``value`` is the
    field index 0 or 1, ``transforms`` names what to apply) or ``mask``.
    """

    kind: str
    value: str | int = ""
    transforms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Prompt:
    """A resolved prompt: template, label words (one per class) and mode."""

    template: str
    label_words: tuple[str, ...]
    mode: str  # MASKED or CAUSAL


def parse_template(template: str) -> list[Segment]:
    """Split a template into literal, text and mask segments (see module doc)."""
    segments: list[Segment] = []
    literal: list[str] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        literal.append(template[pos : match.start()])
        pos = match.end()
        token = match.group(0)
        if token in ("{{", "}}"):
            literal.append(token[0])
            continue
        if match.group(1) is None:
            raise UserError(f"template {template!r}: unmatched {token!r} (write {token * 2} for a brace)")
        name, *transforms = [part.strip() for part in match.group(1).split("|")]
        if literal:
            segments.append(Segment("literal", "".join(literal)))
            literal = []
        if name == "mask" and not transforms:
            segments.append(Segment("mask"))
        elif name in _FIELDS and all(t in _TRANSFORMS for t in transforms):
            segments.append(Segment("text", _FIELDS[name], tuple(transforms)))
        else:
            raise UserError(
                f"template {template!r}: unknown placeholder {{{match.group(1)}}}; valid: "
                f"{{text_a}}, {{text_b}}, {{sentence}}, {{sentence1}}, {{sentence2}}, {{mask}}, "
                f"with optional |{'|'.join(_TRANSFORMS)} on texts"
            )
    literal.append(template[pos:])
    if "".join(literal):
        segments.append(Segment("literal", "".join(literal)))
    # Move spaces that end a literal onto the text that follows it.
    for i in range(len(segments) - 1):
        here, after = segments[i], segments[i + 1]
        if here.kind == "literal" and after.kind == "text":
            stripped = here.value.rstrip(" ")
            if stripped != here.value:
                spaces = len(here.value) - len(stripped)
                segments[i] = Segment("literal", stripped)
                segments[i + 1] = Segment("text", after.value, (f"space{spaces}", *after.transforms))
    return [s for s in segments if not (s.kind == "literal" and s.value == "")]


def apply_transforms(text: str, transforms: tuple[str, ...]) -> str:
    """Apply ``nopunct``/``lowerfirst`` and the moved leading spaces to a text."""
    lead = ""
    for name in transforms:
        if name.startswith("space"):
            lead = " " * int(name[5:])
        elif name == "nopunct" and text and text[-1] in string.punctuation:
            text = text[:-1]
        elif name == "lowerfirst" and text:
            text = text[0].lower() + text[1:]
    return lead + text


def check_template(template: str, mode: str, task: TaskSpec) -> list[Segment]:
    """Parse and validate a template for a mode and a task."""
    segments = parse_template(template)
    masks = [i for i, s in enumerate(segments) if s.kind == "mask"]
    if len(masks) != 1:
        raise UserError(f"template {template!r} must contain {{mask}} exactly once, found {len(masks)}")
    if mode == CAUSAL and masks[0] != len(segments) - 1:
        raise UserError(f"causal template {template!r} must end with {{mask}} (the label word comes last)")
    fields = {s.value for s in segments if s.kind == "text"}
    needed = {0, 1} if task.is_pair else {0}
    if fields != needed:
        names = "{text_a} and {text_b}" if task.is_pair else "{text_a} and not {text_b}"
        raise UserError(f"template {template!r} for {task.name} must use {names}")
    return segments


def resolve_prompt(task: TaskSpec, mode: str, template: str | None = None,
                   label_words=None) -> Prompt:
    """The task's default prompt for a mode, or the user's template/label words."""
    if mode not in (MASKED, CAUSAL):
        raise UserError(f"unknown prompt mode {mode!r}; valid: {MASKED}, {CAUSAL}")
    default_template = task.mlm_template if mode == MASKED else task.causal_template
    default_words = task.mlm_label_words if mode == MASKED else task.causal_label_words
    words = tuple(default_words if label_words is None else label_words)
    if len(words) != task.num_classes:
        raise UserError(
            f"{task.name} has {task.num_classes} classes ({', '.join(task.labels)}) "
            f"but {len(words)} label words were given: {list(words)}"
        )
    prompt = Prompt(template or default_template, words, mode)
    check_template(prompt.template, mode, task)
    return prompt


def label_word_ids(tokenizer, words) -> list[int]:
    """Token id of each label word; a word that is not one token is an error."""
    ids = []
    for word in words:
        tokens = tokenizer(word, add_special_tokens=False)["input_ids"]
        if len(tokens) != 1:
            pieces = tokenizer.convert_ids_to_tokens(tokens)
            raise UserError(
                f"label word {word!r} is {len(tokens)} tokens {pieces} for this tokenizer; "
                f"each label word must be a single token (mind the leading space)"
            )
        unk = getattr(tokenizer, "unk_token_id", None)
        if unk is not None and tokens[0] == unk and word.strip() != tokenizer.unk_token:
            raise UserError(f"label word {word!r} is unknown to this tokenizer (it becomes {tokenizer.unk_token!r})")
        ids.append(tokens[0])
    if len(set(ids)) != len(ids):
        raise UserError(f"label words {list(words)} map to repeated token ids {ids}")
    return ids

"""One registry of adapter families: each family's spec pattern, parser, printer, builder and default targets.

A family is registered once (`register_adapter_family`, as peft's
``register_peft_method``) and is then known everywhere a spec is read: the
parser (`parse_spec`), `apply_adapter`, kernel subsets, the CLI's error
messages. The built-in families live in `ntk_peft.adapters.families`.

A new family, e.g.::

    register_adapter_family(AdapterFamily(
        kind="mylora", form="mylora{r}", meaning="my LoRA variant",
        pattern=re.compile(r"mylora([0-9]+)"),
        parse=lambda match, raw: AdapterSpec("mylora", rank=positive(raw, match.group(1), "the rank")),
        build=lambda spec, target, context: MyLoRA(target.module, spec.rank, generator=context.generator)))
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from ntk_peft.errors import UserError


@dataclass
class BuildContext:
    """What a family's builder may use beside the spec and the target layer.

    Attributes:
        generator: seeded by ``apply_adapter(seed=)``; draw every random choice from it.
        alpha, dropout: scale numerator and input dropout (families with ``scaled``).
        norms: input-feature norms per target (Wanda selections), when a calibration batch was given.
        shared: modules shared by every wrapped layer (made by the family's ``prepare``).
        extra: anything else ``prepare`` hands to ``build``.
    """

    generator: torch.Generator
    alpha: float | None = None
    dropout: float = 0.0
    norms: dict | None = None
    shared: nn.ModuleDict = field(default_factory=nn.ModuleDict)
    extra: dict = field(default_factory=dict)


@dataclass(frozen=True)
class AdapterFamily:
    """One adapter family.

    Attributes:
        kind: the spec's kind (``lora``), unique.
        form: the spec's written form for error messages (``lora{r}``).
        meaning: one line for the spec table.
        pattern: full-match regular expression of the lower-cased spec text.
        parse: ``(match, raw text) -> AdapterSpec`` (raise `UserError` via `bad_spec` for bad numbers).
        build: ``(spec, target, context) -> module`` wrapping ``target.module`` (an `AdaptedLinear` that
            computes exactly what the target did at initialisation, ΔW = 0: kernels of adapter subsets are
            recorded on the pretrained model); None for specs that are kernel subsets only (``full``,
            ``linear``).
        text: ``spec -> str``, the canonical spelling (default: the kind, plus the rank if any).
        default_targets: targets when none are given.
        scaled: takes ``alpha`` and ``dropout``.
        prepare: ``(model, spec, targets, context) -> None``, run once before the layers are built
            (e.g. LoRTA's shared factors into ``context.shared``).
    """

    kind: str
    form: str
    meaning: str
    pattern: re.Pattern
    parse: Callable[[re.Match, str], object]
    build: Callable | None = None
    text: Callable | None = None
    default_targets: str = "all"
    scaled: bool = False
    prepare: Callable | None = None


FAMILIES: dict[str, AdapterFamily] = {}


def register_adapter_family(family: AdapterFamily, *, replace: bool = False) -> AdapterFamily:
    """Make a family known to the spec parser, `apply_adapter` and the kernel subsets."""
    if family.kind in FAMILIES and not replace:
        raise ValueError(f"adapter family {family.kind!r} is registered already (pass replace=True)")
    FAMILIES[family.kind] = family
    return family


def get_family(kind: str) -> AdapterFamily:
    """The family of ``kind``; a `UserError` naming the known ones otherwise."""
    if kind not in FAMILIES:
        raise UserError(f"unknown adapter family {kind!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[kind]


def valid_forms() -> str:
    """Every registered spec form, for error messages."""
    return ", ".join(f.form for f in FAMILIES.values())


def bad_spec(text: str, why: str) -> UserError:
    return UserError(f"bad adapter spec {text!r}: {why}; valid forms: {valid_forms()}")


def positive(text: str, value: str, what: str) -> int:
    """``value`` as an integer ≥ 1, else a `bad_spec` error about ``what``."""
    number = int(value)
    if number < 1:
        raise bad_spec(text, f"{what} must be at least 1")
    return number

"""The one spec grammar that names adapters and kernel subsets everywhere.

========================  ==================================================
spec                      meaning
========================  ==================================================
``full``                  every parameter of the model
``linear``                every weight of the targeted Linear layers
``row{r}[:sel]``          RoCoFT: r rows of each weight change
``col{r}[:sel]``          RoCoFT: r columns of each weight change
``rand{p}``               a random fraction p (0 < p <= 1) of the entries
``lora{r}``               LoRA of rank r
``more{N}x{r}``           MoRe: Monarch with N blocks of block rank r
``cp{r}``                 LoRTA: one rank-r CP tensor over all targeted layers
``lorma+{r}[:post]``      LoRMA additive-multiplicative, W0 + B(A W0)
``lormapi{r}[:post]``     LoRMA permutation-inflated, π(BA) W0
``bias``                  BitFit: the biases
``ia3``                   IA3 scaling vectors
========================  ==================================================

``sel`` is one of ``first`` (default), ``random``, ``wanda-max``,
``wanda-min``, ``wanda-mixed``. ``row1`` and ``row1:first`` are the same spec
and print as ``row1``. Each family (its pattern, parser, printer, builder and
default targets) is one entry of `ntk_peft.adapters.registry`; families
registered there are parsed here too.
"""

from __future__ import annotations

from dataclasses import dataclass

from ntk_peft.adapters.registry import FAMILIES, bad_spec

SELECTIONS = ("first", "random", "wanda-max", "wanda-min", "wanda-mixed")


@dataclass(frozen=True)
class AdapterSpec:
    """A parsed spec.

    Attributes:
        kind: ``full linear row col rand lora more cp lorma+ lormapi bias ia3``.
        rank: r (rows, columns, LoRA/CP/LoRMA rank, MoRe block rank); 0 if none.
        blocks: MoRe's N; 0 otherwise.
        prob: ``rand``'s p; 0.0 otherwise.
        selection: rows/columns selection rule.
        post: LoRMA multiplies on the right (W0 · M) instead of the left.
        variant: a family's other convention (``ia3:bias``, ``cp8:transpose``); empty for the default.
    """

    kind: str
    rank: int = 0
    blocks: int = 0
    prob: float = 0.0
    selection: str = "first"
    post: bool = False
    variant: str = ""

    def __str__(self) -> str:
        family = FAMILIES.get(self.kind)
        if family is not None and family.text is not None:
            return family.text(self)
        return f"{self.kind}{self.rank}" if self.rank else self.kind


def parse_spec(text: str | AdapterSpec) -> AdapterSpec:
    """Parse a spec string with the registered families (see the module table); errors list the valid forms."""
    if isinstance(text, AdapterSpec):
        return text
    raw = str(text)
    spec = raw.strip().lower()
    for family in FAMILIES.values():
        match = family.pattern.fullmatch(spec)
        if match is not None:
            return family.parse(match, raw)
    hint = "not a known adapter"
    for kind in sorted(FAMILIES, key=len, reverse=True):  # lormapi before lorma+ before lora
        if spec.startswith(kind) and FAMILIES[kind].form != kind:
            hint = f"{kind} needs its number(s) in the form shown"
            break
    raise bad_spec(raw, hint)

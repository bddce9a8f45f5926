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
and print as ``row1``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from ntk_peft.errors import UserError

SELECTIONS = ("first", "random", "wanda-max", "wanda-min", "wanda-mixed")
VALID_FORMS = (
    "full, linear, row{r}[:sel], col{r}[:sel] with sel in " + "|".join(SELECTIONS)
    + ", rand{p} (0<p<=1), lora{r}, more{N}x{r}, cp{r}, lorma+{r}[:post], lormapi{r}[:post], bias, ia3"
)

_INT = r"([0-9]+)"
_PATTERNS = {
    "row": re.compile(rf"row{_INT}(?::([a-z-]+))?"),
    "col": re.compile(rf"col{_INT}(?::([a-z-]+))?"),
    "rand": re.compile(r"rand([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)"),
    "lora": re.compile(rf"lora{_INT}"),
    "more": re.compile(rf"more{_INT}x{_INT}"),
    "cp": re.compile(rf"cp{_INT}"),
    "lorma+": re.compile(rf"lorma\+{_INT}(:post)?"),
    "lormapi": re.compile(rf"lormapi{_INT}(:post)?"),
}


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
    """

    kind: str
    rank: int = 0
    blocks: int = 0
    prob: float = 0.0
    selection: str = "first"
    post: bool = False

    def __str__(self) -> str:
        if self.kind in ("row", "col"):
            return f"{self.kind}{self.rank}" + ("" if self.selection == "first" else f":{self.selection}")
        if self.kind == "rand":
            return f"rand{self.prob:g}"
        if self.kind == "more":
            return f"more{self.blocks}x{self.rank}"
        if self.kind in ("lora", "cp"):
            return f"{self.kind}{self.rank}"
        if self.kind in ("lorma+", "lormapi"):
            return f"{self.kind}{self.rank}" + (":post" if self.post else "")
        return self.kind


def _bad(text: str, why: str) -> UserError:
    return UserError(f"bad adapter spec {text!r}: {why}; valid forms: {VALID_FORMS}")


def _positive(text: str, value: str, what: str) -> int:
    number = int(value)
    if number < 1:
        raise _bad(text, f"{what} must be at least 1")
    return number


def parse_spec(text: str | AdapterSpec) -> AdapterSpec:
    """Parse a spec string (see the module table); errors list the valid forms."""
    if isinstance(text, AdapterSpec):
        return text
    raw = str(text)
    spec = raw.strip().lower()
    if spec in ("full", "linear", "bias", "ia3"):
        return AdapterSpec(spec)
    for kind, pattern in _PATTERNS.items():
        match = pattern.fullmatch(spec)
        if match is None:
            continue
        if kind in ("row", "col"):
            selection = match.group(2) or "first"
            if selection not in SELECTIONS:
                raise _bad(raw, f"unknown selection {selection!r} (valid: {', '.join(SELECTIONS)})")
            return AdapterSpec(kind, rank=_positive(raw, match.group(1), "the number of " + kind + "s"),
                               selection=selection)
        if kind == "rand":
            prob = float(match.group(1))
            if not 0.0 < prob <= 1.0:
                raise _bad(raw, f"the probability must be in (0, 1], got {prob:g}")
            return AdapterSpec(kind, prob=prob)
        if kind == "more":
            return AdapterSpec(kind, blocks=_positive(raw, match.group(1), "the number of blocks N"),
                               rank=_positive(raw, match.group(2), "the block rank r"))
        if kind in ("lorma+", "lormapi"):
            return AdapterSpec(kind, rank=_positive(raw, match.group(1), "the rank"), post=bool(match.group(2)))
        return AdapterSpec(kind, rank=_positive(raw, match.group(1), "the rank"))
    hint = "not a known adapter"
    for name in ("lormapi", "lorma+", "lorma", "more", "lora", "rand", "row", "col", "cp"):
        if spec.startswith(name):
            hint = f"{name} needs its number(s) in the form shown"
            break
    raise _bad(raw, hint)

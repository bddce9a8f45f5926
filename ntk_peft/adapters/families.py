"""The built-in adapter families, registered in `ntk_peft.adapters.registry` (one entry each).

Order matters only for error messages (the valid forms are listed in it).
"""

from __future__ import annotations

import re

from torch import nn

from ntk_peft.adapters.cp import CPAdapter, CPFactors
from ntk_peft.adapters.lora import LoRAAdapter
from ntk_peft.adapters.lorma import LoRMAPiAdapter, LoRMAPlusAdapter
from ntk_peft.adapters.monarch import MonarchAdapter
from ntk_peft.adapters.registry import AdapterFamily, BuildContext, bad_spec, positive, register_adapter_family
from ntk_peft.adapters.rowcol import ColAdapter, RandomEntriesAdapter, RowAdapter, select_indices, wanda_scores
from ntk_peft.adapters.scaling import BiasAdapter, IA3Adapter
from ntk_peft.adapters.spec import SELECTIONS, AdapterSpec
from ntk_peft.adapters.targets import Target
from ntk_peft.errors import UserError

_INT = r"([0-9]+)"


def _word(kind: str, meaning: str, build=None) -> AdapterFamily:
    return AdapterFamily(kind, kind, meaning, re.compile(re.escape(kind)), lambda match, raw: AdapterSpec(kind),
                         build=build)


# ---- rows and columns (RoCoFT) -------------------------------------------------------------------------------

def _parse_rowcol(kind: str):
    def parse(match: re.Match, raw: str) -> AdapterSpec:
        selection = match.group(2) or "first"
        if selection not in SELECTIONS:
            raise bad_spec(raw, f"unknown selection {selection!r} (valid: {', '.join(SELECTIONS)})")
        return AdapterSpec(kind, rank=positive(raw, match.group(1), f"the number of {kind}s"), selection=selection)
    return parse


def _rowcol_text(spec: AdapterSpec) -> str:
    return f"{spec.kind}{spec.rank}" + ("" if spec.selection == "first" else f":{spec.selection}")


def _build_rowcol(spec: AdapterSpec, target: Target, context: BuildContext) -> nn.Module:
    base = target.module
    size = base.out_features if spec.kind == "row" else base.in_features
    if spec.rank > size:
        raise UserError(f"{spec}: rank {spec.rank} is larger than the {size} {spec.kind}s of {target.name}")
    scores = size
    if spec.selection.startswith("wanda"):
        scores = wanda_scores(base.weight.detach().double(), context.norms[target.name], spec.kind)
    indices = select_indices(scores, spec.rank, spec.selection, context.generator).to(base.weight.device)
    return RowAdapter(base, indices) if spec.kind == "row" else ColAdapter(base, indices)


# ---- random entries ------------------------------------------------------------------------------------------

def _parse_rand(match: re.Match, raw: str) -> AdapterSpec:
    prob = float(match.group(1))
    if not 0.0 < prob <= 1.0:
        raise bad_spec(raw, f"the probability must be in (0, 1], got {prob:g}")
    return AdapterSpec("rand", prob=prob)


# ---- LoRA ------------------------------------------------------------------------------------------------------

def _build_lora(spec: AdapterSpec, target: Target, context: BuildContext) -> nn.Module:
    base = target.module
    if spec.rank > min(base.in_features, base.out_features):
        raise UserError(f"{spec}: rank {spec.rank} is larger than min(d_out, d_in) of {target.name} "
                        f"({base.out_features}x{base.in_features})")
    layer = LoRAAdapter(base, spec.rank, generator=context.generator)
    if context.dropout:
        layer.dropout = nn.Dropout(context.dropout)
    if context.alpha is not None:
        layer.scale = context.alpha / spec.rank
    return layer


# ---- LoRTA: one CP tensor shared by every targeted layer ---------------------------------------------------------

def head_dim_of(model: nn.Module) -> int:
    """Attention head size from the model config (LoRTA's output-within-head mode)."""
    config = getattr(model, "config", None)
    size = getattr(config, "head_dim", None)
    if size is None and not hasattr(config, "num_attention_heads"):
        raise UserError(f"LoRTA needs the attention head size; {type(model).__name__} has no config with head_dim "
                        f"or hidden_size and num_attention_heads")
    return int(size or config.hidden_size // config.num_attention_heads)


def _prepare_cp(model: nn.Module, spec: AdapterSpec, targets: list[Target], context: BuildContext) -> None:
    """LoRTA's shared factors sized for the targets, and each matrix type's index.

    The input mode has the largest d_in, the head mode the most heads
    (d_out / head_dim) among the targets; a smaller layer uses the leading
    rows (grouped-query k/v projections use the first heads).
    """
    outside = [t.name for t in targets if t.layer < 0]
    if outside:
        raise UserError(f"LoRTA factors span the transformer blocks; {outside[0]} lies outside them")
    head_dim = head_dim_of(model)
    kinds = list(dict.fromkeys(t.matrix for t in targets))
    weight = targets[0].module.weight
    transpose = spec.variant == "transpose"  # the authors' code: heads along the input, A along the output
    a_size = (lambda t: t.module.out_features) if transpose else (lambda t: t.module.in_features)
    head_size = (lambda t: t.module.in_features) if transpose else (lambda t: t.module.out_features)
    context.shared["cp"] = CPFactors(max(a_size(t) for t in targets), head_dim,
                                     max(-(-head_size(t) // head_dim) for t in targets),
                                     max(t.layer for t in targets) + 1, len(kinds), spec.rank, alpha=context.alpha,
                                     generator=context.generator, dtype=weight.dtype, device=weight.device)
    context.extra["matrix_index"] = {kind: i for i, kind in enumerate(kinds)}


def _build_cp(spec: AdapterSpec, target: Target, context: BuildContext) -> nn.Module:
    factors = context.shared["cp"]
    return CPAdapter(target.module, factors, target.layer, context.extra["matrix_index"][target.matrix],
                     factors.head_dim, transpose=spec.variant == "transpose")


# ---- LoRMA -------------------------------------------------------------------------------------------------------

def _parse_lorma(kind: str):
    def parse(match: re.Match, raw: str) -> AdapterSpec:
        return AdapterSpec(kind, rank=positive(raw, match.group(1), "the rank"), post=bool(match.group(2)))
    return parse


def _build_lorma(spec: AdapterSpec, target: Target, context: BuildContext) -> nn.Module:
    base = target.module
    n = base.in_features if spec.post else base.out_features
    if spec.rank > n:
        raise UserError(f"{spec}: rank {spec.rank} is larger than n = {n} of {target.name}")
    cls = LoRMAPlusAdapter if spec.kind == "lorma+" else LoRMAPiAdapter
    return cls(base, spec.rank, alpha=context.alpha, post=spec.post, generator=context.generator)


def _rank(kind: str, what: str = "the rank"):
    return lambda match, raw: AdapterSpec(kind, rank=positive(raw, match.group(1), what))


BUILT_IN = [
    _word("full", "every parameter of the model", build=None),
    _word("linear", "every weight of the targeted Linear layers (a kernel subset)"),
    AdapterFamily("row", "row{r}[:sel]", "RoCoFT: r rows of each weight change",
                  re.compile(rf"row{_INT}(?::([a-z-]+))?"), _parse_rowcol("row"), _build_rowcol, _rowcol_text),
    AdapterFamily("col", "col{r}[:sel] (sel: " + "|".join(SELECTIONS) + ")", "RoCoFT: r columns of each weight change",
                  re.compile(rf"col{_INT}(?::([a-z-]+))?"), _parse_rowcol("col"), _build_rowcol, _rowcol_text),
    AdapterFamily("rand", "rand{p} (0<p<=1)", "a random fraction p of the entries",
                  re.compile(r"rand([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)"), _parse_rand,
                  lambda spec, target, context: RandomEntriesAdapter(target.module, spec.prob, context.generator),
                  lambda spec: f"rand{spec.prob:g}"),
    AdapterFamily("lora", "lora{r}", "LoRA of rank r", re.compile(rf"lora{_INT}"), _rank("lora"), _build_lora,
                  scaled=True),
    AdapterFamily("more", "more{N}x{r}", "MoRe: Monarch with N blocks of block rank r",
                  re.compile(rf"more{_INT}x{_INT}"),
                  lambda match, raw: AdapterSpec("more", blocks=positive(raw, match.group(1), "the number of blocks N"),
                                                 rank=positive(raw, match.group(2), "the block rank r")),
                  lambda spec, target, context: MonarchAdapter(target.module, spec.blocks, spec.rank,
                                                               context.generator),
                  lambda spec: f"more{spec.blocks}x{spec.rank}"),
    AdapterFamily("cp", "cp{r}[:transpose]", "LoRTA: one rank-r CP tensor over all targeted layers (heads on the "
                  "output rows as the paper; :transpose as the authors' code)", re.compile(rf"cp{_INT}(:transpose)?"),
                  lambda match, raw: AdapterSpec("cp", rank=positive(raw, match.group(1), "the rank"),
                                                 variant="transpose" if match.group(2) else ""),
                  _build_cp, lambda spec: f"cp{spec.rank}" + (":transpose" if spec.variant else ""),
                  default_targets="attn", scaled=True, prepare=_prepare_cp),
    AdapterFamily("lorma+", "lorma+{r}[:post]", "LoRMA additive-multiplicative, W0 + B(A W0)",
                  re.compile(rf"lorma\+{_INT}(:post)?"), _parse_lorma("lorma+"), _build_lorma,
                  lambda spec: f"lorma+{spec.rank}" + (":post" if spec.post else ""), scaled=True),
    AdapterFamily("lormapi", "lormapi{r}[:post]", "LoRMA permutation-inflated, π(BA) W0",
                  re.compile(rf"lormapi{_INT}(:post)?"), _parse_lorma("lormapi"), _build_lorma,
                  lambda spec: f"lormapi{spec.rank}" + (":post" if spec.post else ""), scaled=True),
    _word("bias", "BitFit: the biases", build=lambda spec, target, context: BiasAdapter(target.module)),
    AdapterFamily("ia3", "ia3[:bias]", "IA3 scaling vectors (:bias also scales the bias, as peft)",
                  re.compile("ia3(:bias)?"), lambda match, raw: AdapterSpec("ia3", variant="bias" if match.group(1) else ""),
                  lambda spec, target, context: IA3Adapter(target.module, feedforward=target.matrix == "down",
                                                           scale_bias=spec.variant == "bias"),
                  lambda spec: "ia3" + (":bias" if spec.variant else ""), default_targets="k,v,down"),
]

for _family in BUILT_IN:
    register_adapter_family(_family)

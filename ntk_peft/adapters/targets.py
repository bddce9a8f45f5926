"""Which `nn.Linear` layers an adapter wraps.

Targets are resolved inside the transformer blocks (the model's largest
`nn.ModuleList`; every Linear of a model without one), never the embeddings
or the LM head:

- ``all`` (default): every Linear in the blocks;
- ``attn``: q, k, v, o; ``mlp``: gate, up, down;
- a comma-separated list of matrix types (``q,v``) or built-in names
  (Llama ``q_proj k_proj v_proj o_proj gate_proj up_proj down_proj``;
  BERT/RoBERTa ``query key value attention.output.dense intermediate.dense
  output.dense``);
- glob patterns over full module names (``*.layers.0.*``); a full name or
  pattern that matches no Linear in the blocks may name Linear layers
  outside them (``classifier.*``).
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from torch import nn

from ntk_peft.errors import UserError

# Block-relative module names -> matrix type.
KNOWN_NAMES = {
    "self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v", "self_attn.o_proj": "o",
    "mlp.gate_proj": "gate", "mlp.up_proj": "up", "mlp.down_proj": "down",
    "attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
    "attention.output.dense": "o", "intermediate.dense": "up", "output.dense": "down",
}
MATRIX_TYPES = ("q", "k", "v", "o", "gate", "up", "down")
GROUPS = {"attn": ("q", "k", "v", "o"), "mlp": ("gate", "up", "down")}
_SHORT_NAMES = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o", "gate_proj": "gate",
                "up_proj": "up", "down_proj": "down", "query": "q", "key": "k", "value": "v",
                "attention.output.dense": "o", "intermediate.dense": "up", "output.dense": "down"}


@dataclass(frozen=True)
class Target:
    """One targeted layer: full name, block index, block-relative name, type."""

    name: str
    layer: int
    local: str
    matrix: str  # one of MATRIX_TYPES, or the local name for unknown layers
    module: nn.Linear


def transformer_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The model's list of transformer blocks (its largest ModuleList)."""
    best = None
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) and (best is None or len(module) > len(best[1])):
            best = (name, module)
    if best is None:
        raise UserError(f"{type(model).__name__} has no list of transformer blocks to adapt")
    return best


def block_linears(model: nn.Module) -> list[Target]:
    """Every Linear inside the blocks, with its layer index and matrix type; for a model without a list of
    blocks (an MLP, a custom module), every Linear of the model (layer index = its order, type = its name)."""
    try:
        prefix, blocks = transformer_blocks(model)
    except UserError:
        linears = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]
        return [Target(name, index, name, name, module) for index, (name, module) in enumerate(linears)]
    out = []
    for layer, block in enumerate(blocks):
        for local, module in block.named_modules():
            if isinstance(module, nn.Linear):
                name = f"{prefix}.{layer}.{local}" if prefix else f"{layer}.{local}"
                out.append(Target(name, layer, local, KNOWN_NAMES.get(local, local), module))
    return out


def outside_linears(model: nn.Module, inside: list[Target]) -> list[Target]:
    """Linear layers outside the blocks (a classifier, a patch projection): reachable by name or pattern only,
    layer index -1."""
    taken = {t.name for t in inside}
    return [Target(name, -1, name, name, module) for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and name not in taken]


def resolve_targets(model: nn.Module, targets: str | list[str] = "all") -> list[Target]:
    """The Linear layers named by ``targets`` (see the module doc), in model order."""
    layers = block_linears(model)
    items = [t.strip() for t in (targets.split(",") if isinstance(targets, str) else targets) if t.strip()]
    if not items:
        raise UserError("empty targets; valid: all, attn, mlp, matrix types (q,k,v,o,gate,up,down), "
                        "built-in names (q_proj, query, ...) or module-name patterns")
    chosen: dict[str, Target] = {}
    for item in items:
        if item == "all":
            hits = layers
        elif item in GROUPS:
            hits = [t for t in layers if t.matrix in GROUPS[item]]
        elif item in MATRIX_TYPES or item in _SHORT_NAMES:
            kind = _SHORT_NAMES.get(item, item)
            hits = [t for t in layers if t.matrix == kind]
        else:
            hits = [t for t in layers if fnmatch.fnmatchcase(t.name, item) or t.local == item]
            if not hits:  # a name or pattern may also name Linear layers outside the blocks
                hits = [t for t in outside_linears(model, layers) if fnmatch.fnmatchcase(t.name, item)]
        if not hits:
            raise UserError(
                f"target {item!r} matches no Linear layer in the blocks of {type(model).__name__}; valid: "
                f"all, attn, mlp, q,k,v,o,gate,up,down, built-in names or module-name patterns "
                f"(e.g. {layers[0].name})"
            )
        for target in hits:
            chosen[target.name] = target
    return [t for t in layers + outside_linears(model, layers) if t.name in chosen]

"""Kernel subsets: which parameters θ_S a kernel differentiates.

A subset is an adapter spec, meaning the adapter's trainable parameters at
their initial values (``lora1`` is A random, B = 0, so its A part is exactly
zero), or ``full`` (every parameter: embeddings, the tied output matrix once,
norms, biases) or ``linear`` (the weights of the targeted Linear layers).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

from torch import nn

from ntk_peft.adapters import AdapterHandle, AdapterSpec, apply_adapter, parse_spec, resolve_targets
from ntk_peft.errors import UserError


@dataclass
class SubsetParams:
    """The parameters of one subset, ready for differentiation.

    Attributes:
        spec: the parsed spec.
        model: the model whose forward defines f (a copy carrying the
            adapter for adapter subsets, else the model itself).
        params: name -> parameter, in a fixed order (names as in
            ``model.named_parameters()``, or ``shared.<...>`` for LoRTA).
        handle: the adapter handle for adapter subsets, else None.
    """

    spec: AdapterSpec
    model: nn.Module
    params: dict[str, nn.Parameter]
    handle: AdapterHandle | None = None

    @property
    def size(self) -> int:
        return sum(p.numel() for p in self.params.values())


def share_tensors_clone(module: nn.Module) -> nn.Module:
    """A copy of ``module``'s tree of modules that shares its parameters and buffers.

    Replacing a child in the copy (as `apply_adapter` does) leaves the original
    untouched; no tensor is copied. Hook dictionaries are copied too, so hooks
    added to one tree do not fire in the other.
    """
    clone = copy.copy(module)
    for key, value in vars(module).items():
        if key.startswith("_") and isinstance(value, dict):
            setattr(clone, key, copy.copy(value))
    clone._modules = {k: None if v is None else share_tensors_clone(v) for k, v in module._modules.items()}
    return clone


def parse_subsets(subsets) -> list[AdapterSpec]:
    """Parse and de-duplicate subset specs, keeping their order."""
    if isinstance(subsets, (str, AdapterSpec)):
        subsets = [subsets]
    out: list[AdapterSpec] = []
    for text in subsets:
        spec = parse_spec(text)
        if spec not in out:
            out.append(spec)
    if not out:
        raise UserError("no kernel subsets given; e.g. full, row1, lora1")
    return out


def subset_params(model: nn.Module, spec: AdapterSpec, targets="all", seed: int = 0,
                  calibration: dict | None = None) -> SubsetParams:
    """Resolve a subset into the parameters the kernel differentiates.

    ``calibration``: a prompt batch, or a list of them, for ``wanda-*`` row/column selections.
    """
    if spec.kind == "full":
        return SubsetParams(spec, model, dict(model.named_parameters()))
    if spec.kind == "linear":
        names = [t.name for t in resolve_targets(model, targets)]
        params = dict(model.named_parameters())
        return SubsetParams(spec, model, {f"{n}.weight": params[f"{n}.weight"] for n in names})
    # A copy of the module tree that shares every tensor: cheap, and the model's
    # own requires_grad flags (which apply_adapter changes) are restored.
    flags = {id(p): p.requires_grad for p in model.parameters()}
    adapted = share_tensors_clone(model)
    try:
        handle = apply_adapter(adapted, spec, None if targets == "all" else targets, seed=seed,
                               calibration=calibration)
    finally:
        for p in model.parameters():
            p.requires_grad_(flags[id(p)])
    return SubsetParams(spec, adapted, dict(handle.named_parameters()), handle)

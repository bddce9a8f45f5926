"""`apply_adapter`: wrap a model's targeted Linear layers and hand back a handle.

The handle lists only the adapter's trainable parameters (every other model
parameter is frozen), and offers ``delta_weights()``, ``merge()``,
``unmerge()``, ``remove()``, ``num_trainable()``, ``save()``; `load_adapter`
re-applies a saved adapter and its weights.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from torch import nn

from ntk_peft.adapters.base import AdaptedLinear
from ntk_peft.adapters.registry import FAMILIES, BuildContext, get_family
from ntk_peft.adapters.spec import AdapterSpec, parse_spec
from ntk_peft.adapters.targets import Target, resolve_targets
from ntk_peft.errors import UserError
from ntk_peft.io import save_tensors, write_json


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)


@torch.no_grad()
def input_feature_norms(model: nn.Module, targets: list[Target], calibration: dict | list[dict]
                        ) -> dict[str, torch.Tensor]:
    """‖X_j‖₂ of each targeted layer's input features over a calibration batch (or several).

    Args:
        calibration: a prompt batch (``make_batch``) or a list of them, whose
            tokens are all counted; padding tokens are excluded.

    Returns:
        name -> ``[d_in]``.
    """
    from ntk_peft.models import label_logits
    from ntk_peft.tasks import to_device

    sums: dict[str, torch.Tensor] = {}
    batches = [calibration] if isinstance(calibration, dict) else list(calibration)
    current: dict = {}

    def hook(name):
        def record(module, args):
            keep = current["keep"]
            x = args[0][keep] if args[0].dim() == 3 and args[0].shape[:2] == keep.shape else args[0]
            sq = x.reshape(-1, x.shape[-1]).double().pow(2).sum(0)
            sums[name] = sums.get(name, 0) + sq
        return record

    handles = [t.module.register_forward_pre_hook(hook(t.name)) for t in targets]
    try:
        with torch.no_grad():
            for batch in batches:
                batch = to_device(batch, model)
                current["keep"] = batch["attention_mask"].bool()
                label_logits(model, batch)
    finally:
        for h in handles:
            h.remove()
    return {name: value.sqrt() for name, value in sums.items()}


class AdapterHandle:
    """What `apply_adapter` returns.

    Attributes:
        model: the adapted model (modified in place).
        spec: the parsed spec.
        targets: the targeted layer names.
        layers: name -> `AdaptedLinear` (empty for ``full``).
        shared: modules shared by all layers (LoRTA's factors), owned here.
    """

    def __init__(self, model: nn.Module, spec: AdapterSpec, targets: list[str], layers: dict[str, AdaptedLinear],
                 originals: dict[str, nn.Linear], shared: nn.ModuleDict | None = None, options: dict | None = None):
        self.model, self.spec, self.targets = model, spec, targets
        self.layers, self._originals = layers, originals
        self.shared = shared if shared is not None else nn.ModuleDict()
        self.options = options or {}
        self._full_initial = ({n: p.detach().clone() for n, p in model.named_parameters()}
                              if spec.kind == "full" else None)

    def named_parameters(self) -> list[tuple[str, nn.Parameter]]:
        """The adapter's trainable parameters only, with stable names."""
        if self.spec.kind == "full":
            return list(self.model.named_parameters())
        out = [(f"{name}.{p_name}", p) for name, layer in self.layers.items()
               for p_name, p in layer.named_parameters() if not p_name.startswith("base.")]
        out += [(f"shared.{n}", p) for n, p in self.shared.named_parameters()]
        return out

    def parameters(self) -> list[nn.Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_trainable(self) -> int:
        """Analytic count (sum of each layer's formula plus shared modules)."""
        if self.spec.kind == "full":
            return sum(p.numel() for p in self.model.parameters())
        shared = sum(m.num_params() if hasattr(m, "num_params") else sum(p.numel() for p in m.parameters())
                     for m in self.shared.values())
        return sum(layer.num_params() for layer in self.layers.values()) + shared

    def delta_weights(self) -> dict[str, torch.Tensor]:
        """Layer name -> exact ΔW ``[out, in]`` (for ``full``: current minus initial weights), detached from
        autograd (a measurement, not part of a training graph: use ``layer.delta_weight()`` for that)."""
        if self.spec.kind == "full":
            return {name[: -len(".weight")]: p.detach() - self._full_initial[name]
                    for name, p in self.model.named_parameters()
                    if name.endswith(".weight") and p.dim() == 2 and name[: -len(".weight")] in self.targets}
        return {name: layer.delta_weight().detach() for name, layer in self.layers.items()}

    def merge(self) -> None:
        for layer in self.layers.values():
            layer.merge()

    def unmerge(self) -> None:
        for layer in self.layers.values():
            layer.unmerge()

    def remove(self) -> nn.Module:
        """Put the original Linear layers back (unmerged); returns the model."""
        for name, layer in self.layers.items():
            layer.unmerge()
            _set_module(self.model, name, self._originals[name])
        self.layers = {}
        return self.model

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Trainable tensors and the index buffers that define them."""
        out = {name: p.detach() for name, p in self.named_parameters()}
        for name, layer in self.layers.items():
            for b_name, buf in layer.named_buffers():
                if not b_name.startswith("base."):
                    out[f"{name}.{b_name}"] = buf
        return out

    def save(self, folder: str | Path) -> Path:
        """Write ``adapter.safetensors`` and ``adapter.json`` (spec, targets, options)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_tensors(folder / "adapter.safetensors", {k: v.clone() for k, v in self.state_dict().items()})
        meta = {"spec": str(self.spec), "targets": self.options.get("targets", "all"),
                "options": {k: v for k, v in self.options.items() if k != "targets"},
                "num_trainable": self.num_trainable(), "layers": self.targets}
        write_json(folder / "adapter.json", meta)
        return folder


def apply_adapter(model: nn.Module, spec: str | AdapterSpec, targets: str | list[str] | None = None, *,
                  seed: int = 0, calibration: dict | None = None, alpha: float | None = None,
                  dropout: float = 0.0) -> AdapterHandle:
    """Wrap every targeted Linear of ``model`` with the adapter ``spec``.

    Args:
        model: a Hugging Face model (modified in place; all its own
            parameters are frozen unless ``spec`` is ``full``).
        spec: adapter spec string (see `ntk_peft.adapters.spec`).
        targets: ``all``, ``attn``, ``mlp``, types, names or patterns
            (see `ntk_peft.adapters.targets`); default ``all``, for IA3
            ``k,v,down``, for LoRTA ``attn`` (the papers' choices).
        seed: seeds random initialisations and selections.
        calibration: a prompt batch, needed by ``wanda-*`` selections.
        alpha, dropout: scale numerator of LoRA, LoRMA and LoRTA (s = α/r,
            default α = r) and LoRA's input dropout.

    Returns:
        `AdapterHandle`.
    """
    spec = parse_spec(spec)
    family = get_family(spec.kind)
    if family.build is None and spec.kind != "full":
        raise UserError(f"{spec} is a kernel subset, not an adapter; adapters: "
                        f"{', '.join(k for k, f in FAMILIES.items() if f.build is not None or k == 'full')}")
    if targets is None:
        targets = family.default_targets
    chosen = resolve_targets(model, targets)
    options = {"targets": targets if isinstance(targets, str) else ",".join(targets), "seed": seed}
    if family.scaled:
        options.update(alpha=alpha, dropout=dropout)
    if spec.kind == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return AdapterHandle(model, spec, [t.name for t in chosen], {}, {}, options=options)
    if any(isinstance(m, AdaptedLinear) for m in model.modules()):
        raise UserError("the model already carries an adapter; call handle.remove() first")
    context = BuildContext(torch.Generator().manual_seed(seed), alpha=alpha, dropout=dropout)
    if spec.selection.startswith("wanda") and spec.kind in ("row", "col"):
        if calibration is None:
            raise UserError(f"{spec} needs a calibration batch (Wanda scores use input activations)")
        context.norms = input_feature_norms(model, chosen, calibration)
    for p in model.parameters():
        p.requires_grad_(False)
    if family.prepare is not None:
        family.prepare(model, spec, chosen, context)
    layers, originals = {}, {}
    for target in chosen:
        layers[target.name], originals[target.name] = family.build(spec, target, context), target.module
    for name, layer in layers.items():
        _set_module(model, name, layer)
    return AdapterHandle(model, spec, list(layers), layers, originals, shared=context.shared, options=options)


def load_adapter(model: nn.Module, folder: str | Path) -> AdapterHandle:
    """Apply the adapter saved in ``folder`` to ``model`` and load its weights."""
    from safetensors.torch import load_file

    folder = Path(folder)
    meta_path, weights_path = folder / "adapter.json", folder / "adapter.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise UserError(f"no saved adapter in {folder} (needs adapter.json and adapter.safetensors)")
    meta = json.loads(meta_path.read_text())
    options = meta.get("options", {})
    spec = parse_spec(meta["spec"])
    # The saved index buffers fix the selection, so no calibration batch is needed.
    build = dataclasses.replace(spec, selection="first")
    handle = apply_adapter(model, build, meta["targets"], seed=options.get("seed", 0),
                           alpha=options.get("alpha"), dropout=options.get("dropout", 0.0))
    handle.spec = spec
    saved = load_file(str(weights_path))
    own = handle.state_dict()
    if set(saved) != set(own):
        raise UserError(f"adapter in {folder} does not fit this model: tensors differ "
                        f"({sorted(set(saved) ^ set(own))[:3]} ...)")
    with torch.no_grad():
        for name, tensor in own.items():
            if tensor.shape != saved[name].shape:
                raise UserError(f"adapter in {folder} does not fit this model: {name} has shape "
                                f"{tuple(saved[name].shape)}, expected {tuple(tensor.shape)}")
            tensor.copy_(saved[name])
    return handle


class ShiftedLinear(nn.Linear):
    """A bias-free Linear plus a fixed shift: ``y = W x + shift``.

    A BitFit bias trained on a bias-free layer, folded in: the shift is a buffer, so the
    folded model has exactly the pretrained model's parameters (its kernels are comparable).
    """

    def __init__(self, base: nn.Linear, shift: torch.Tensor):
        super().__init__(base.in_features, base.out_features, bias=False, device="meta", dtype=base.weight.dtype)
        self.weight = base.weight
        self.register_buffer("shift", shift.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) + self.shift


def fold_adapter(model: nn.Module, folder: str | Path) -> nn.Module:
    """The model at a fine-tuned point: the adapter saved in ``folder`` loaded and folded in.

    Every adapted layer becomes a plain ``nn.Linear`` with ``W0 + ΔW`` (and ``b + Δb``); a
    bias the adapter added to a bias-free layer becomes a fixed shift (`ShiftedLinear`). The
    result has the same parameter names and shapes as ``model`` had, all trainable, so
    kernels over any subset are defined as at the pretrained point. Modifies ``model``.
    """
    handle = load_adapter(model, folder)
    for name, layer in list(handle.layers.items()):
        layer.merge()
        base = layer.base
        if getattr(layer, "_created_bias", False):
            shift, base.bias = base.bias, None
            base = ShiftedLinear(base, shift)
        _set_module(model, name, base)
    for param in model.parameters():
        param.requires_grad_(True)
    return model

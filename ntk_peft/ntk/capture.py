"""Recording what the fast eNTK needs: module inputs and output-gradients.

One forward pass records the first input of every module that owns
parameters directly (Linear, Embedding, norms, ...), and C backward passes
(one per label word, summed over the batch; examples do not interact) give
the gradient of f_c at each such module's output. No weight gradient is
formed. Only real (non-pad) positions are kept, packed, so memory follows the
number of real tokens; padded views are rebuilt on demand.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import nn

from ntk_peft.adapters import AdaptedLinear
from ntk_peft.errors import UserError
from ntk_peft.models import readout_hidden, split_lm_head
from ntk_peft.ntk.outputs import batch_size, model_outputs


@dataclass
class Record:
    """One module's recorded data for a block of n examples, real positions only.

    Attributes:
        module: the module.
        packed_inputs: ``[N, d_in]`` inputs at the N real positions (token ids ``[N]``
            for embeddings); shared between modules that read the same tensor.
        packed_grads: ``[C, N, d_out]`` ∂f_c/∂output at those positions.
        example: ``[N]`` example index of each position.
        position: ``[N]`` its index along the example's row.
        shape: ``(n, L)`` of the padded layout (L = 1 for per-example inputs).
    """

    module: nn.Module
    packed_inputs: torch.Tensor
    packed_grads: torch.Tensor
    example: torch.Tensor
    position: torch.Tensor
    shape: tuple[int, int]

    @property
    def size(self) -> int:
        return self.shape[0]

    @functools.cached_property
    def membership(self) -> torch.Tensor:
        """``[n, N]`` float64, 1 where position t belongs to example i (computed once)."""
        tokens = self.example.numel()
        out = torch.zeros(self.size, tokens, dtype=torch.float64, device=self.example.device)
        return out.index_put_((self.example, torch.arange(tokens, device=out.device)),
                              torch.ones((), dtype=torch.float64, device=out.device))

    @functools.cached_property
    def starts(self) -> list[int]:
        """n + 1 offsets: example i owns packed positions ``starts[i]:starts[i + 1]`` (positions are in example order)."""
        bounds = torch.searchsorted(self.example, torch.arange(self.size + 1, device=self.example.device))
        return bounds.tolist()

    def packed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(inputs [N, d_in], grads [C, N, d_out], example [N])`` in the recorded dtype."""
        return self.packed_inputs, self.packed_grads, self.example

    def _unpack(self, packed: torch.Tensor) -> torch.Tensor:
        out = packed.new_zeros(*self.shape, *packed.shape[1:])
        out[self.example, self.position] = packed
        return out

    @property
    def inputs(self) -> torch.Tensor:
        """Padded ``[n, L, d_in]`` (zeros at pads), built on demand."""
        return self._unpack(self.packed_inputs)

    @property
    def grads(self) -> torch.Tensor:
        """Padded ``[C, n, L, d_out]`` (zeros at pads), built on demand."""
        return torch.stack([self._unpack(g) for g in self.packed_grads])


@dataclass
class Capture:
    """Everything recorded for one block of examples.

    Attributes:
        records: module name -> `Record`.
        features: ``[B, d]`` head-transform output at the read-out position
            (the gradient of f_c w.r.t. the output matrix's row of word c).
        logits: ``[B, O]`` the outputs (the label logits unless combined).
        words: ``[C]`` label-word token ids.
        head_map: ``[O, C]`` float64, the outputs as combinations of the label
            logits (`with_outputs`); None when the outputs are the label logits.
    """

    records: dict[str, Record]
    features: torch.Tensor
    logits: torch.Tensor
    words: torch.Tensor
    head_map: torch.Tensor | None = None

    def with_outputs(self, head_map: torch.Tensor | None) -> "Capture":
        """The capture of the outputs o = M·f (``head_map`` M ``[O, C]``): every recorded output-gradient
        is combined the same way (gradients are linear in f); inputs are shared, not copied."""
        if head_map is None:
            return self
        records = {}
        for name, rec in self.records.items():
            mixed = torch.einsum("oc,cnd->ond", head_map.to(rec.packed_grads.dtype), rec.packed_grads)
            records[name] = Record(rec.module, rec.packed_inputs, mixed, rec.example, rec.position, rec.shape)
            if "membership" in rec.__dict__:
                records[name].__dict__["membership"] = rec.__dict__["membership"]
        logits = self.logits.double() @ head_map.T
        return Capture(records, self.features, logits.to(self.logits.dtype), self.words, head_map)

    @property
    def outputs(self) -> int:
        return self.logits.shape[1]

    @property
    def size(self) -> int:
        return self.logits.shape[0]

    @property
    def nbytes(self) -> int:
        """Memory held by the recorded tensors (each shared tensor counted once)."""
        tensors = {id(t): t for r in self.records.values() for t in (r.packed_inputs, r.packed_grads)}
        return sum(t.numel() * t.element_size() for t in tensors.values())


def parameter_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that own parameters directly (not through children)."""
    return {name: m for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None}


def _acts_on_last_dim(module: nn.Module) -> bool:
    """Modules applied to each position's feature vector alone (Linear layers, adapted ones, norms): their leading
    dims are tokens."""
    name = type(module).__name__
    return (isinstance(module, (nn.Linear, nn.LayerNorm, AdaptedLinear)) or name.endswith("RMSNorm")
            or name.endswith("LayerNorm"))


def _token_dims(module: nn.Module, tensor: torch.Tensor, batch_size: int) -> int:
    """How many dims after the example dim are positions: all of an embedding's ids, all but the features for
    modules acting on the last dim (`_acts_on_last_dim`), none for any other module (whole per-example inputs)."""
    if tensor.dim() == 0 or tensor.shape[0] != batch_size:
        raise UserError(f"cannot map a module input of shape {tuple(tensor.shape)} to {batch_size} examples")
    if isinstance(module, nn.Embedding):
        return tensor.dim() - 1
    if _acts_on_last_dim(module) and tensor.dim() >= 3:
        return tensor.dim() - 2
    return 0


def capture(model: nn.Module, batch: dict, modules: dict[str, nn.Module] | None = None,
            outputs=None) -> Capture:
    """Run one forward and C backward passes, recording ``modules`` (default: all with parameters).

    Parameters are frozen during the passes, so no weight gradient is formed:
    the backward passes run from f_c to the recorded outputs that start the
    differentiable graph (embeddings), and a tensor hook on every recorded
    output packs its gradient as soon as it is produced, so the padded
    gradients are freed at once rather than held until the pass ends.

    ``outputs``: an output function (`ntk_peft.ntk.outputs`) for any model; by default the label-word
    logits of an LM prompt. Positions are the real (attention-mask) tokens of prompt batches, all positions
    otherwise; modules other than embeddings, Linear layers and norms are recorded per example whole.
    """
    split = None
    if outputs is None:
        split = split_lm_head(model)
        if split is None:
            raise UserError(f"the fast eNTK does not know the LM head of {type(model).__name__}; "
                            f"use implementation='reference' or give an output function")
    modules = parameter_modules(model) if modules is None else modules
    mask = batch.get("attention_mask")
    size = batch_size(batch)
    layout: dict[str, tuple[torch.Tensor, int, int]] = {}  # name -> (rows into the flattened input, L, token dims)
    rows_by_shape: dict[tuple, torch.Tensor] = {}
    inputs_by_name: dict[str, torch.Tensor] = {}
    outputs_by_name: dict[str, torch.Tensor] = {}
    sources: list[torch.Tensor] = []
    packed_grads: dict[str, torch.Tensor] = {}
    current_class = [0]

    def rows_for(tensor: torch.Tensor, dims: int) -> tuple[torch.Tensor, int]:
        """Rows of the real positions in the flattened ``[B·L, ...]`` layout, and L."""
        length = math.prod(tensor.shape[1 : 1 + dims])
        masked = dims == 1 and mask is not None and tuple(tensor.shape[:2]) == tuple(mask.shape)
        key = (length, masked)
        if key not in rows_by_shape:  # one tensor per layout, so layers of one layout are summed together
            rows_by_shape[key] = ((mask > 0).flatten().nonzero().squeeze(1) if masked
                                  else torch.arange(size * length, device=tensor.device))
        return rows_by_shape[key], length

    def pack_grad(name):
        def store(grad):
            rows, _, dims = layout[name]
            flat = grad.flatten(0, dims) if dims else grad  # [B·L, ...] or [B, ...]
            if name not in packed_grads:
                packed_grads[name] = flat.new_zeros(n_classes, rows.numel(), *flat.shape[1:])
            torch.index_select(flat, 0, rows, out=packed_grads[name][current_class[0]])
        return store

    def hook(name):
        def record(module, args, output):
            if name in outputs_by_name:
                raise UserError(f"module {name} runs twice in one forward; the fast eNTK needs "
                                f"implementation='reference' for this model")
            if not isinstance(output, torch.Tensor) or not args or not isinstance(args[0], torch.Tensor):
                raise UserError(f"module {name} ({type(module).__name__}) does not map one tensor to one tensor; "
                                f"the fast eNTK needs implementation='reference' for this model")
            if not output.requires_grad:  # nothing differentiable upstream: a start of the graph
                output.requires_grad_()
                sources.append(output)
            dims = _token_dims(module, args[0], size)
            rows, length = rows_for(args[0], dims)
            layout[name] = (rows, length, dims)
            inputs_by_name[name] = args[0].detach()
            outputs_by_name[name] = output
            output.register_hook(pack_grad(name))
            return output
        return record

    frozen = [p for p in model.parameters() if p.requires_grad]
    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        for p in frozen:
            p.requires_grad_(False)
        with torch.enable_grad():
            if split is not None:
                hidden = readout_hidden(model, batch)
                if not hidden.requires_grad:
                    raise UserError("no recorded module feeds the read-out; nothing to differentiate")
                features = split.transform(hidden)
                words = batch["label_token_ids"].to(hidden.device)
                bias = None if split.bias is None else split.bias[words]
                logits = torch.nn.functional.linear(features, split.weight[words], bias)
            else:
                features = words = None
                logits = model_outputs(model, batch, outputs)
                if not logits.requires_grad:
                    raise UserError("no recorded module feeds the outputs; nothing to differentiate")
            if not torch.isfinite(logits).all():
                raise UserError("the model's outputs contain NaN or Inf; no kernel can be computed")
            n_classes = logits.shape[1]
            for c in range(n_classes):
                current_class[0] = c
                torch.autograd.grad(logits[:, c].sum(), sources, retain_graph=c < n_classes - 1, allow_unused=True)
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)

    records = {}
    packed_by_tensor: dict[tuple, torch.Tensor] = {}
    positions = {id(rows): (rows // length, rows % length) for rows, length, _ in layout.values()}
    for name, output in outputs_by_name.items():
        rows, length, dims = layout[name]
        raw = inputs_by_name[name]
        key = (raw.data_ptr(), tuple(raw.shape), raw.dtype, dims)
        if key not in packed_by_tensor:  # q, k and v read the same tensor: pack it once
            flat = raw.flatten(0, dims) if dims else raw  # [B·L, ...] or [B, ...]
            packed_by_tensor[key] = flat.index_select(0, rows)
        grads = packed_grads.get(name)
        if grads is None:  # the output does not reach the read-out
            grads = output.new_zeros(n_classes, rows.numel(), *output.shape[1 + dims :])
        example, position = positions[id(rows)]  # shared, so layers with one layout are summed together
        records[name] = Record(modules[name], packed_by_tensor[key], grads, example, position, (size, length))
    return Capture(records, None if features is None else features.detach(), logits.detach(), words)

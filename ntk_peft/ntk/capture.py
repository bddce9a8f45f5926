"""Recording what the fast eNTK needs: module inputs and output-gradients.

One forward pass records the first input of every module that owns
parameters directly (Linear, Embedding, norms, ...), and C backward passes
(one per label word, summed over the batch; examples do not interact) give
the gradient of f_c at each such module's output. No weight gradient is
formed. Pads are zeroed in inputs and gradients.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ntk_peft.errors import UserError
from ntk_peft.models import readout_hidden, split_lm_head


@dataclass
class Record:
    """One module's recorded data for a block of B examples.

    Attributes:
        module: the module.
        inputs: ``[B, L, d_in]`` (token ids ``[B, L]`` for embeddings), pads zeroed.
        grads: ``[C, B, L, d_out]`` ∂f_c/∂output, pads zeroed.
        mask: ``[B, L]`` 1 for real positions.
    """

    module: nn.Module
    inputs: torch.Tensor
    grads: torch.Tensor
    mask: torch.Tensor
    _packed: tuple | None = None

    def packed(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Real positions only, in float64: ``(inputs [N, d_in], grads [C, N, d_out], example [N])``.

        Computed once and kept (kernels of several subsets and block pairs reuse it).
        """
        if self._packed is None:
            keep = self.mask.reshape(-1) > 0
            length = self.mask.shape[1]
            example = torch.arange(self.mask.shape[0], device=keep.device).repeat_interleave(length)[keep]
            inputs = self.inputs.reshape(-1, self.inputs.shape[-1])[keep].double()
            grads = self.grads.reshape(self.grads.shape[0], -1, self.grads.shape[-1])[:, keep].double()
            self._packed = (inputs, grads, example)
        return self._packed


@dataclass
class Capture:
    """Everything recorded for one block of examples.

    Attributes:
        records: module name -> `Record`.
        features: ``[B, d]`` head-transform output at the read-out position
            (the gradient of f_c w.r.t. the output matrix's row of word c).
        logits: ``[B, C]``.
        words: ``[C]`` label-word token ids.
    """

    records: dict[str, Record]
    features: torch.Tensor
    logits: torch.Tensor
    words: torch.Tensor

    @property
    def size(self) -> int:
        return self.logits.shape[0]


def parameter_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Modules that own parameters directly (not through children)."""
    return {name: m for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None}


def _as_tokens(tensor: torch.Tensor, batch_size: int, seq_len: int) -> tuple[torch.Tensor, bool]:
    """View as ``[B, L, ...]``; True when L is the prompt's token axis."""
    if tensor.dim() >= 2 and tensor.shape[0] == batch_size and tensor.shape[1] == seq_len:
        return tensor, True
    if tensor.shape[0] == batch_size:
        return tensor.unsqueeze(1), False
    raise UserError(f"cannot map a module input of shape {tuple(tensor.shape)} to {batch_size} examples")


def capture(model: nn.Module, batch: dict, modules: dict[str, nn.Module] | None = None) -> Capture:
    """Run one forward and C backward passes, recording ``modules`` (default: all with parameters)."""
    split = split_lm_head(model)
    if split is None:
        raise UserError(f"the fast eNTK does not know the LM head of {type(model).__name__}; "
                        f"use implementation='reference'")
    modules = parameter_modules(model) if modules is None else modules
    mask = batch["attention_mask"]
    size, seq_len = mask.shape
    seen: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    def hook(name):
        def record(module, args, output):
            if name in seen:
                raise UserError(f"module {name} runs twice in one forward; the fast eNTK needs "
                                f"implementation='reference' for this model")
            if not output.requires_grad:
                output.requires_grad_()
            seen[name] = (args[0].detach(), output)
            return output
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    try:
        with torch.enable_grad():
            hidden = readout_hidden(model, batch)
            if not hidden.requires_grad:
                raise UserError("no recorded module feeds the read-out; nothing to differentiate")
            features = split.transform(hidden)
            words = batch["label_token_ids"].to(hidden.device)
            bias = None if split.bias is None else split.bias[words]
            logits = torch.nn.functional.linear(features, split.weight[words], bias)
            if not torch.isfinite(logits).all():
                raise UserError("the model's label logits contain NaN or Inf; no kernel can be computed")
            names = list(seen)
            outputs = [seen[n][1] for n in names]
            per_class = []
            for c in range(logits.shape[1]):
                grads = torch.autograd.grad(logits[:, c].sum(), outputs, retain_graph=c < logits.shape[1] - 1,
                                            allow_unused=True)
                per_class.append([torch.zeros_like(o) if g is None else g.detach() for o, g in zip(outputs, grads)])
    finally:
        for h in handles:
            h.remove()
    records = {}
    for k, name in enumerate(names):
        inputs, on_tokens = _as_tokens(seen[name][0], size, seq_len)
        grads = torch.stack([_as_tokens(per_class[c][k], size, seq_len)[0] for c in range(len(per_class))])
        keep = mask.to(grads.dtype) if on_tokens else torch.ones(size, 1, dtype=grads.dtype, device=grads.device)
        grads = grads * keep.view(1, size, -1, *([1] * (grads.dim() - 3)))
        if inputs.is_floating_point():
            inputs = inputs * keep.view(size, -1, *([1] * (inputs.dim() - 2))).to(inputs.dtype)
        records[name] = Record(modules[name], inputs, grads, keep)
    return Capture(records, features.detach(), logits.detach(), words)

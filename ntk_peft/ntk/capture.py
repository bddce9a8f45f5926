"""Recording what the fast eNTK needs: module inputs and output-gradients.

One forward pass records the first input of every module that owns
parameters directly (Linear, Embedding, norms, ...), and C backward passes
(one per label word, summed over the batch; examples do not interact) give
the gradient of f_c at each such module's output. No weight gradient is
formed. Only real (non-pad) positions are kept, packed, so memory follows the
number of real tokens; padded views are rebuilt on demand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ntk_peft.errors import UserError
from ntk_peft.models import readout_hidden, split_lm_head


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
            # Where each module's real positions are, and its packed inputs (shared tensors once).
            layout, packed_by_tensor = {}, {}
            for name in names:
                raw_inputs = seen[name][0]
                inputs, on_tokens = _as_tokens(raw_inputs, size, seq_len)
                keep = (mask > 0) if on_tokens else torch.ones(size, 1, dtype=torch.bool, device=mask.device)
                example, position = keep.nonzero(as_tuple=True)
                key = (raw_inputs.data_ptr(), tuple(raw_inputs.shape), raw_inputs.dtype)
                if key not in packed_by_tensor:  # q, k and v read the same tensor: pack it once
                    packed_by_tensor[key] = inputs[example, position]
                layout[name] = (packed_by_tensor[key], example, position, inputs.shape[1])
            packed_grads: dict[str, list[torch.Tensor]] = {name: [] for name in names}
            for c in range(logits.shape[1]):
                grads = torch.autograd.grad(logits[:, c].sum(), outputs, retain_graph=c < logits.shape[1] - 1,
                                            allow_unused=True)
                for name, output, grad in zip(names, outputs, grads):  # pack each class's gradients at once
                    _, example, position, _ = layout[name]
                    grad = torch.zeros_like(output) if grad is None else grad.detach()
                    packed_grads[name].append(_as_tokens(grad, size, seq_len)[0][example, position])
                del grads
    finally:
        for h in handles:
            h.remove()
    seen.clear()
    records = {}
    for name in names:
        inputs, example, position, length = layout[name]
        records[name] = Record(modules[name], inputs, torch.stack(packed_grads.pop(name)), example, position,
                               (size, length))
    return Capture(records, features.detach(), logits.detach(), words)

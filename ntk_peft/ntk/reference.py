"""The reference eNTK: torch.func ``jacrev`` over exactly the subset's parameters."""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call, jacrev

from ntk_peft.ntk.outputs import OutputFunction, batch_size, model_outputs
from ntk_peft.ntk.subsets import SubsetParams
from ntk_peft.tasks import slice_batch


class PromptFunction(nn.Module):
    """f(batch) (`model_outputs`: label-word logits or an output function) as a module, with shared adapter
    factors registered."""

    def __init__(self, model: nn.Module, shared: nn.Module, outputs: OutputFunction | None = None):
        super().__init__()
        self.model, self.shared, self.outputs = model, shared, outputs

    def forward(self, batch):
        return model_outputs(self.model, batch, self.outputs)


def reference_jacobian(subset: SubsetParams, batch: dict, chunk: int = 4,
                       outputs: OutputFunction | None = None) -> torch.Tensor:
    """Per-example Jacobian of the label logits w.r.t. the subset: ``[B, C, P]`` in the model's dtype.

    Args:
        subset: from `subset_params`.
        batch: prompt batch of B examples.
        chunk: examples per ``jacrev`` call (memory ~ chunk·C·P).
        outputs: the output function (default: the label-word logits).
    """
    shared = subset.handle.shared if subset.handle is not None else nn.ModuleDict()
    function = PromptFunction(subset.model, shared, outputs)
    names = [n if n.startswith("shared.") else f"model.{n}" for n in subset.params]
    primals = tuple(p.detach() for p in subset.params.values())

    def logits(*tensors, part):
        return functional_call(function, dict(zip(names, tensors)), (part,))

    rows = batch_size(batch)
    blocks = []
    for start in range(0, rows, chunk):
        part = slice_batch(batch, range(start, min(start + chunk, rows)))
        jac = jacrev(lambda *t: logits(*t, part=part), argnums=tuple(range(len(primals))))(*primals)
        blocks.append(torch.cat([j.detach().reshape(j.shape[0], j.shape[1], -1) for j in jac], dim=-1))
        del jac
    return torch.cat(blocks, dim=0)

"""`empirical_ntk`: eNTKs of several parameter subsets from one set of passes."""

from __future__ import annotations

import torch
from torch import nn

from ntk_peft.ntk.blocked import kernel_blocks


def empirical_ntk(model: nn.Module, batch1: dict, batch2: dict | None = None, subsets=("full", "row1"),
                  implementation="fast", *, targets="all", seed: int = 0,
                  linear_method: str = "auto") -> dict[str, torch.Tensor]:
    """Empirical NTKs of the label-logit function over parameter subsets.

    Args:
        model: a Hugging Face LM (not modified; adapter subsets use a copy).
        batch1: prompt batch of n1 examples (`ntk_peft.tasks.make_batch`).
        batch2: n2 examples, or None for the symmetric kernel of batch1.
        subsets: specs: ``full``, ``linear`` or any adapter spec (its
            trainable parameters at their initial values).
        implementation: ``fast`` or ``reference`` (see `NtkImplementation`).
        targets: Linear layers for ``linear`` and adapter subsets (adapter
            defaults when ``all``: IA3 k,v,down; LoRTA attn).
        seed: adapter initialisation seed (random rows, LoRA's A, ...).
        linear_method: ``auto``, ``gram``, ``reduced`` or ``materialise`` for Linear weights.

    Returns:
        subset name -> K ``[n1, n2, C, C]`` float64, K[i, j, c, c'] =
        ⟨∂f_c(x_i)/∂θ_S, ∂f_c'(x'_j)/∂θ_S⟩. For large example sets use
        `kernel_blocks` (blocked, resumable).
    """
    return kernel_blocks(model, [batch1], None if batch2 is None else [batch2], subsets, implementation,
                         targets=targets, seed=seed, progress=False, linear_method=linear_method)


__all__ = ["empirical_ntk"]

"""`empirical_ntk`: eNTKs of several parameter subsets from one set of passes."""

from __future__ import annotations

import torch
from torch import nn

from ntk_peft.ntk.blocked import kernel_blocks


def empirical_ntk(model: nn.Module, batch1: dict, batch2: dict | None = None, subsets=("full", "row1"),
                  implementation="fast", *, targets="all", seed: int = 0,
                  linear_method: str = "auto", kernel: str = "ntk", output: str = "labels",
                  outputs=None, calibration=None) -> dict[str, torch.Tensor]:
    """Empirical NTKs (or SignGD kernels) of the label-logit function (or any output function) over subsets.

    Args:
        model: a Hugging Face LM or any module (not modified; adapter subsets use a copy).
        batch1: prompt batch of n1 examples (`ntk_peft.tasks.make_batch`), or with ``outputs`` any dict.
        batch2: n2 examples, or None for the symmetric kernel of batch1.
        subsets: specs: ``full``, ``linear`` or any adapter spec (its
            trainable parameters at their initial values).
        implementation: ``fast`` or ``reference`` (see `NtkImplementation`).
        targets: Linear layers for ``linear`` and adapter subsets (adapter
            defaults when ``all``: IA3 k,v,down; LoRTA attn).
        seed: adapter initialisation seed (random rows, LoRA's A, ...).
        linear_method: ``auto``, ``gram``, ``reduced`` or ``materialise`` for Linear weights.
        kernel: ``ntk``, ``signgd`` or ``asymmetric_signgd`` (see `KernelType`).
        output: ``labels`` (the C label logits) or ``difference`` (f₁ − f₀, two
            label words only; the output LM-Kernel-FT's sign kernels are of).
        outputs: an output function ``outputs(model, batch) -> [B, C]`` for any
            model (`ntk_peft.ntk.outputs`; e.g. `sequence_logits` for a
            classification head); batches are then any dicts of tensors.
            Default: the label-word logits of an LM prompt batch.
        calibration: a prompt batch (or list of them) whose input activations give
            ``row``/``col`` subsets with a ``wanda-*`` selection their Wanda scores.

    Returns:
        subset name -> K ``[n1, n2, O, O]`` float64 (O = C, or 1 for the
        difference), K[i, j, c, c'] = ⟨T₁(∂f_c(x_i)/∂θ_S), T₂(∂f_c'(x'_j)/∂θ_S)⟩
        with the kernel type's transforms (identity for the NTK). An
        asymmetric kernel also gives ``<subset>~``, whose ``permute(1, 0, 3, 2)``
        is the kernel with batch2 first. For large example sets use
        `kernel_blocks` (blocked, resumable).
    """
    return kernel_blocks(model, [batch1], None if batch2 is None else [batch2], subsets, implementation,
                         targets=targets, seed=seed, progress=False, linear_method=linear_method, kernel=kernel,
                         output=output, outputs=outputs, calibration=calibration)


__all__ = ["empirical_ntk"]

"""Fast eNTK contractions of one subset between two captures (see `NtkImplementation`).

A walker over the subset's parameter kinds (`ntk_peft.ntk.kinds`): each kind
adds its contribution for every requested transform pair (kernel type).
"""

from __future__ import annotations

import torch
from torch import nn

from ntk_peft.ntk.capture import Capture, Record
from ntk_peft.ntk.kernel_types import KernelType, TransformPair, flipped
from ntk_peft.ntk.kinds import AdapterForward, KernelSum, adapter_kind, subset_kinds
from ntk_peft.ntk.subsets import SubsetParams, parse_subsets


def fast_kernels(model: nn.Module, sub: SubsetParams, cap1: Capture, cap2: Capture, pairs: list[TransformPair],
                 linear_method: str = "auto") -> list[torch.Tensor]:
    """One ``[n1, n2, O, O]`` float64 kernel per transform pair (`KernelType.transforms`), from one walk
    over the subset's parameter kinds (each kind's gradients are formed once for all pairs)."""
    acc = KernelSum(cap1, cap2, pairs, linear_method)
    for kind in subset_kinds(model, sub, cap1):
        kind.add_kernels(acc, cap1, cap2)
    return acc.result()


def fast_kernel(model: nn.Module, sub: SubsetParams, cap1: Capture, cap2: Capture, linear_method: str = "auto",
                kernel: str | KernelType = KernelType.NTK, *, with_flip: bool = False):
    """The fast kernel of one resolved subset between two captures: ``[n1, n2, O, O]``.

    ``with_flip``: also ⟨T₂(g(x)), T₁(g(x'))⟩ between the same captures (the kernel of the mirrored pair,
    for an asymmetric type), returned as a tuple (kernel, flip) from one walk.
    """
    pair = KernelType.parse(kernel).transforms
    if with_flip:
        return tuple(fast_kernels(model, sub, cap1, cap2, [pair, flipped(pair)], linear_method))
    return fast_kernels(model, sub, cap1, cap2, [pair], linear_method)[0]


def full_kernel(model: nn.Module, cap1: Capture, cap2: Capture, linear_method: str = "auto") -> torch.Tensor:
    """The NTK over every parameter of the model (tied matrices counted once)."""
    return fast_kernel(model, SubsetParams(parse_subsets("full")[0], model, dict(model.named_parameters())),
                       cap1, cap2, linear_method)


def closed_form_jacobian(layer: nn.Module, rec: Record) -> torch.Tensor | None:
    """Per-example gradients ``[n, O, P]`` of rows, columns and LoRA adapters, else None (see `kinds`)."""
    kind = adapter_kind("layer", layer, nn.ModuleDict())
    return None if isinstance(kind, AdapterForward) else kind.record_gradients(rec)

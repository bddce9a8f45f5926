"""Kernel types and output functions: which inner product of which per-example gradients.

A kernel type pairs two elementwise transforms of the per-example gradients
g(x) = ∂f(x)/∂θ_S, K(x, x') = ⟨T₁(g(x)), T₂(g(x'))⟩ (LM-Kernel-FT, Malladi et al. 2023):

- ``ntk``: T₁ = T₂ = identity, the eNTK;
- ``signgd``: T₁ = T₂ = sign, the kernel of SignGD (Adam without momentum);
- ``asymmetric_signgd``: T₁ = identity, T₂ = sign, ⟨g(x), sign g(x')⟩, the
  kernel that describes one SignGD step's effect on f(x); not symmetric.

Sign kernels are taken of whole parameter tensors' gradients entry by entry,
so they cannot be reduced to token Grams as the NTK can: each parameter kind
materialises its per-example gradients (one layer at a time) for them.

Output functions (``output``): ``labels`` (the C label-word logits, as the
NTK's default) or ``difference`` (binary tasks: the single output f₁ − f₀, the
function LM-Kernel-FT's sign kernels are of; sign ∇(f₁ − f₀) cannot be formed
from per-class sign kernels).
"""

from __future__ import annotations

from enum import Enum
from typing import Callable

import torch

from ntk_peft.errors import UserError

Transform = Callable[[torch.Tensor], torch.Tensor] | None  # None: the identity
TransformPair = tuple[Transform, Transform]
OUTPUTS = ("labels", "difference")


class KernelType(str, Enum):
    """The kernel axis (see the module docstring)."""

    NTK = "ntk"
    SIGNGD = "signgd"
    ASYMMETRIC_SIGNGD = "asymmetric_signgd"

    @classmethod
    def parse(cls, value: "str | KernelType") -> "KernelType":
        try:
            return cls(value)
        except ValueError:
            raise UserError(f"unknown kernel type {value!r}; valid: {', '.join(m.value for m in cls)}") from None

    @property
    def transforms(self) -> TransformPair:
        """(T₁, T₂): K(x, x') = ⟨T₁(g(x)), T₂(g(x'))⟩."""
        return {KernelType.NTK: (None, None), KernelType.SIGNGD: (torch.sign, torch.sign),
                KernelType.ASYMMETRIC_SIGNGD: (None, torch.sign)}[self]

    @property
    def symmetric(self) -> bool:
        return self is not KernelType.ASYMMETRIC_SIGNGD


def apply_transform(transform: Transform, gradients: torch.Tensor) -> torch.Tensor:
    return gradients if transform is None else transform(gradients)


def flipped(pair: TransformPair) -> TransformPair:
    """(T₂, T₁): with it, K(x', x) is computed from the same two sides as K(x, x')."""
    return pair[1], pair[0]


def output_map(output: str, classes: int) -> torch.Tensor | None:
    """The outputs as combinations of the C label logits, ``[O, C]`` float64 (None: the logits themselves).

    Raises:
        UserError: unknown output, or ``difference`` with C ≠ 2.
    """
    if output not in OUTPUTS:
        raise UserError(f"unknown kernel output {output!r}; valid: {', '.join(OUTPUTS)}")
    if output == "labels":
        return None
    if classes != 2:
        raise UserError(f"the logit-difference output needs 2 label words, this task has {classes}")
    return torch.tensor([[-1.0, 1.0]], dtype=torch.float64)


def direction_plan(kernel: KernelType, count: int) -> list[TransformPair]:
    """Per direction column s of a solver's weights W ``[n, O, S]``: (transform of the training gradients in
    v_s = Σ W·T(g(x_i)), transform of the new example's gradient it is projected on).

    A prediction Σ_i W_i K(x, x_i) = ⟨T₁(g(x)), Σ_i W_i T₂(g(x_i))⟩: (T₂, T₁). The asymmetric LS-SVM's two
    columns (`AsymmetricLSSVM.direction_weights`) use K(x_i, x) = ⟨g(x_i), T₂(g(x))⟩ for its target side
    (column 0: (T₁, T₂)) and K(x, x_i) for its source side (column 1: (T₂, T₁)).
    """
    first, second = kernel.transforms
    if kernel.symmetric:
        return [(second, first)] * count
    if count != 2:
        raise UserError(f"an asymmetric kernel's solver gives 2 direction columns (target and source side), "
                        f"got {count}")
    return [(first, second), (second, first)]

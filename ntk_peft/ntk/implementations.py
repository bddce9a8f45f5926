"""Named eNTK implementations, cross-checked against each other in the tests.

Notation: n examples, C label words, T tokens per prompt, P parameters in the
subset, L hooked layers of width d.
"""

from __future__ import annotations

from enum import Enum

from ntk_peft.errors import UserError


class NtkImplementation(str, Enum):
    """How `empirical_ntk` computes K_S(x, x') = <∂f(x)/∂θ_S, ∂f(x')/∂θ_S>.

    - ``REFERENCE``: torch.func ``functional_call`` + ``jacrev`` over exactly
      the subset's parameters, a chunk of examples at a time. Time: one
      backward per (example, class) over the whole model; memory: the chunk's
      Jacobian, chunk·C·P numbers (for ``full`` on a 135M model, about 1 GB
      per example in float64). The plain baseline.
    - ``FAST``: one forward and C backward passes per block of examples, with
      hooks recording each parameterised module's inputs and output-gradients
      at the real (non-pad) tokens only (no weight gradients; each gradient is
      packed as the backward pass produces it). Per-example subset gradients
      are then formed directly: Linear weights as ⟨A·A'ᵀ, G·G'ᵀ⟩ over tokens
      (``gram``: time ~ N1·N2·(d_in + C²·d_out) per layer for N1, N2 tokens;
      the token products of all layers summed before one reduction to
      examples), with the input Gram applied to one side's gradients per
      example first (``reduced``: ~ N1·N2·(d_in + C·d_out) + C²·N1·n2·d_out,
      the choice from C = 3 on), or through materialised per-layer gradients
      (``materialise``: ~ n1·n2·C²·d_in·d_out), whichever costs least; embeddings by matching token ids (no
      one-hot matrices), the tied output matrix added to the same rows; norms
      in closed form (y = h(x) ⊙ w + b, checked); rows, columns and LoRA as one
      GEMM per layer; other adapters and modules through their own forward
      (``vmap(grad)``). The Linear contractions run in the recorded dtype and
      accumulate in float64. Memory: the recorded activations, about
      N·L·d·(1 + C) numbers, plus one layer's products at a time. All
      requested subsets share the passes.
    """

    REFERENCE = "reference"
    FAST = "fast"

    @classmethod
    def parse(cls, value: "str | NtkImplementation") -> "NtkImplementation":
        try:
            return cls(value)
        except ValueError:
            raise UserError(f"unknown eNTK implementation {value!r}; valid: "
                            f"{', '.join(m.value for m in cls)}") from None

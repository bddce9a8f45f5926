"""The ``reduced`` Linear contraction against a brute-force token sum, and the method choice."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ntk_peft.ntk.capture import Record
from ntk_peft.ntk.contract import LinearKernelSum, choose_linear_method, reduced_linear_kernel


def _record(lengths: list[int], d_in: int, d_out: int, classes: int, generator, inputs=None) -> Record:
    example = torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))
    position = torch.cat([torch.arange(n) for n in lengths])
    tokens = int(example.numel())
    inputs = torch.randn(tokens, d_in, generator=generator, dtype=torch.float64) if inputs is None else inputs
    grads = torch.randn(classes, tokens, d_out, generator=generator, dtype=torch.float64)
    return Record(nn.Linear(d_in, d_out), inputs, grads, example, position, (len(lengths), max(lengths)))


def _brute_force(rec1: Record, rec2: Record) -> torch.Tensor:
    """Σ_{t∈i, t'∈j} (a_t·a'_t')(g_tc·g'_t'd) by explicit loops over example pairs: [n1, n2, C1, C2]."""
    out = torch.zeros(rec1.size, rec2.size, rec1.packed_grads.shape[0], rec2.packed_grads.shape[0],
                      dtype=torch.float64)
    for i in range(rec1.size):
        t1 = rec1.example == i
        for j in range(rec2.size):
            t2 = rec2.example == j
            inputs = rec1.packed_inputs[t1] @ rec2.packed_inputs[t2].T
            for c in range(out.shape[2]):
                for d in range(out.shape[3]):
                    grads = rec1.packed_grads[c, t1] @ rec2.packed_grads[d, t2].T
                    out[i, j, c, d] = (inputs * grads).sum()
    return out


def test_reduced_kernel_equals_the_token_sum():
    generator = torch.Generator().manual_seed(0)
    rec1 = _record([3, 1, 5], 7, 6, 3, generator)
    rec2 = _record([2, 4, 1, 3], 7, 6, 3, generator)
    expected = _brute_force(rec1, rec2)
    per_token = reduced_linear_kernel(rec1.packed_inputs @ rec2.packed_inputs.T, rec1.packed_grads,
                                      rec2.packed_grads, rec2.starts, chunk_bytes=64)  # several token chunks
    got = torch.einsum("it,tcjd->ijcd", rec1.membership, per_token)
    assert (got - expected).abs().max() <= 1e-12 * expected.abs().max()


@pytest.mark.parametrize("sizes", [([3, 1, 5], [2, 4, 1, 3]), ([1, 1, 1, 1, 1, 1], [5, 5])])  # both reduction sides
def test_every_method_sums_layers_to_the_same_kernel(sizes):
    """Two layers reading one input tensor (stacked by ``reduced``) and one reading another, each method."""
    generator = torch.Generator().manual_seed(1)
    lengths1, lengths2 = sizes
    first1 = _record(lengths1, 5, 4, 4, generator)
    first2 = _record(lengths2, 5, 4, 4, generator)
    second1 = _record(lengths1, 5, 3, 4, generator, inputs=first1.packed_inputs)  # same input as first
    second2 = _record(lengths2, 5, 3, 4, generator, inputs=first2.packed_inputs)
    second1.example, second2.example = first1.example, first2.example  # one layout, as in a capture
    other1 = _record(lengths1, 2, 6, 4, generator)
    other2 = _record(lengths2, 2, 6, 4, generator)
    expected = sum(_brute_force(a, b) for a, b in ((first1, first2), (second1, second2), (other1, other2)))
    for method in ("gram", "reduced", "materialise"):
        total = LinearKernelSum(method)
        for a, b in ((first1, first2), (second1, second2), (other1, other2)):
            total.add(a, b)
        got = total.result(len(lengths1), len(lengths2), 4, 4)
        assert (got - expected).abs().max() <= 1e-12 * expected.abs().max(), method


@pytest.mark.parametrize("classes,expected", [(2, "gram"), (3, "reduced"), (5, "reduced")])
def test_auto_takes_the_token_gram_for_two_classes_and_reduced_from_three(classes, expected):
    """At SmolLM2's widths and prompt lengths (16 prompts of 29 tokens a block)."""
    generator = torch.Generator().manual_seed(2)
    rec1 = _record([29] * 16, 576, 1536, classes, generator)
    rec2 = _record([29] * 16, 576, 1536, classes, generator)
    assert choose_linear_method(rec1, rec2) == expected


def test_unknown_method_lists_the_valid_ones():
    with pytest.raises(ValueError, match="valid: auto, gram, reduced, materialise"):
        LinearKernelSum("fancy")

"""Brute-force oracles shared by the tests (import as ``from tests.helpers import ...``)."""

from __future__ import annotations

import torch

from ntk_peft.adapters import parse_spec
from ntk_peft.ntk import subset_params
from ntk_peft.ntk.kernel_types import KernelType, output_map
from ntk_peft.ntk.outputs import batch_size, model_outputs
from ntk_peft.tasks import slice_batch

# The subsets and tiny models every eNTK implementation is checked on (test_engine, test_directions).
ENGINE_SUBSETS = ["full", "linear", "row1", "row2:random", "col1", "rand0.1", "lora2", "more2x2", "cp2",
                  "cp2:transpose", "lorma+2", "lormapi2", "bias", "ia3", "ia3:bias"]
ENGINE_MODELS = ["tiny-llama", "tiny-roberta", "tiny-bert"]


def per_example_gradients(model, spec, batch, output="labels", outputs=None, targets="all"):
    """``[n, O, P]``: torch.autograd.grad of each output of each example alone w.r.t. the subset's parameters,
    in their order (zeros for parameters an output does not reach); the difference output combines the label
    logits' gradients (autograd of f₁ − f₀ itself can differ by ~1e-7: CPU attention's backward is not linear
    to float64 precision)."""
    sub = subset_params(model, parse_spec(spec), targets)
    params = list(sub.params.values())
    rows = []
    for i in range(batch_size(batch)):
        values = model_outputs(sub.model, slice_batch(batch, [i]), outputs)[0]
        per_output = []
        for o in range(values.shape[0]):
            g = torch.autograd.grad(values[o], params, retain_graph=True, allow_unused=True)
            per_output.append(torch.cat([torch.zeros(p.numel(), dtype=torch.float64) if x is None
                                         else x.reshape(-1).double() for p, x in zip(params, g)]))
        rows.append(torch.stack(per_output))
    jac = torch.stack(rows)
    mixing = output_map(output, jac.shape[1])
    return jac if mixing is None else torch.einsum("oc,ncp->nop", mixing, jac)


def brute_force_kernel(jac1, jac2, kernel="ntk"):
    """⟨T₁(J1[i, c]), T₂(J2[j, d])⟩ ``[n1, n2, O, O]`` with the kernel type's transforms."""
    t1, t2 = KernelType(kernel).transforms
    a = jac1 if t1 is None else t1(jac1)
    b = jac2 if t2 is None else t2(jac2)
    return torch.einsum("icp,jdp->ijcd", a, b)


def relative_error(a, b):
    return float((a - b).abs().max() / b.abs().max())


def dense_monarch(w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Build the m×n matrix from explicit permutation and block-diagonal matrices."""
    blocks, rank, b_in = w1.shape
    b_out = w2.shape[1]
    bd1 = torch.block_diag(*w1)  # (N·r, N·b_in)
    bd2 = torch.block_diag(*w2)  # (N·b_out, N·r)
    p_mid = torch.zeros(blocks * rank, blocks * rank, dtype=w1.dtype)
    for k_new in range(blocks):
        for j_new in range(rank):
            p_mid[k_new * rank + j_new, j_new * blocks + k_new] = 1  # h'[k', j'] = h[j'·N + k']
    p_out = torch.zeros(blocks * b_out, blocks * b_out, dtype=w1.dtype)
    for k in range(blocks):
        for i in range(b_out):
            p_out[i * blocks + k, k * b_out + i] = 1  # output o = i·N + k
    return p_out @ bd2 @ p_mid @ bd1

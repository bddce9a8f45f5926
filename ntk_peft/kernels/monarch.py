"""The Monarch product of MoRe, ``y = P_out · BD(w2) · P_mid · BD(w1) · x``.

Permutation convention (the one of MoRe's appendix G pseudocode and of
HazyResearch/fly's ``blockdiag_butterfly_multiply``), for x ``[..., n]`` with
n = N·b_in, w1 ``(N, r, b_in)``, w2 ``(N, b_out, r)``:

1. BD(w1): input block k is ``x[k·b_in : (k+1)·b_in]`` (contiguous, no input
   permutation); ``h[k, j] = Σ_c w1[k, j, c] · x[k·b_in + c]``, flattened as
   ``t = k·r + j``.
2. P_mid: the flat vector of length N·r is read as an ``(r, N)`` grid, so
   ``h'[k', j'] = h_flat[j'·N + k']``: block k' of the second factor takes
   entries k', k'+N, k'+2N, … of the first factor's output.
3. BD(w2): ``z[k', i] = Σ_j' w2[k', i, j'] · h'[k', j']``.
4. P_out: output index ``o = i·N + k'`` (block k' fills every N-th output).

The reference here (two batched products and two reshapes) is the CPU path
and the oracle for any faster kernel.
"""

from __future__ import annotations

import torch


def monarch_matmul_reference(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """Monarch product in plain torch.

    Args:
        x: ``[..., N·b_in]``.
        w1: ``(N, r, b_in)`` first block-diagonal factor.
        w2: ``(N, b_out, r)`` second block-diagonal factor.

    Returns:
        ``[..., N·b_out]``.
    """
    blocks, rank, b_in = w1.shape
    b_out = w2.shape[1]
    if x.shape[-1] != blocks * b_in or w2.shape != (blocks, b_out, rank):
        raise ValueError(f"monarch shapes: x {tuple(x.shape)}, w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}")
    lead = x.shape[:-1]
    xb = x.reshape(-1, blocks, b_in).transpose(0, 1)  # (N, B, b_in)
    h = torch.bmm(xb, w1.transpose(1, 2))  # (N, B, r)
    h = h.transpose(0, 1).reshape(-1, rank, blocks).permute(2, 0, 1)  # P_mid -> (N, B, r)
    z = torch.bmm(h, w2.transpose(1, 2))  # (N, B, b_out)
    return z.permute(1, 2, 0).reshape(*lead, b_out * blocks)  # P_out: o = i·N + k


def monarch_matmul(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """The Monarch product used by training and kernels (dispatches by device).

    Only the torch reference exists so far; a fused Triton kernel plugs in here.
    """
    return monarch_matmul_reference(x, w1, w2)

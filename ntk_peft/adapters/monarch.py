"""MoRe (Monarch rectangular fine-tuning): ΔW = P_out·BD(w2)·P_mid·BD(w1).

w1 ``(N, r, b_in)``, w2 ``(N, b_out, r)`` with b_in = ⌈d_in/N⌉ and
b_out = ⌈d_out/N⌉; the permutations are those of
`ntk_peft.kernels.monarch` (read its docstring). When N does not divide a
dimension, the input is zero-padded to N·b_in and the output truncated to the
first d_out entries (so some weights of w1/w2 never act; they are still
counted). Init: w1 uniform ±1/√b_in, w2 = 0, so ΔW = 0. The forward goes
through `ntk_peft.kernels.monarch_matmul`, the function a fused kernel
replaces, so training and kernels share it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ntk_peft.adapters.base import AdaptedLinear
from ntk_peft.errors import UserError
from ntk_peft.kernels import monarch_matmul


def monarch_shapes(d_in: int, d_out: int, blocks: int, rank: int) -> tuple[tuple, tuple]:
    """Shapes of (w1, w2) for a d_out×d_in layer."""
    return (blocks, rank, math.ceil(d_in / blocks)), (blocks, math.ceil(d_out / blocks), rank)


class MonarchAdapter(AdaptedLinear):
    def __init__(self, base: nn.Linear, blocks: int, rank: int, generator: torch.Generator | None = None):
        super().__init__(base)
        d_in, d_out = base.in_features, base.out_features
        if blocks > min(d_in, d_out):
            raise UserError(f"more{blocks}x{rank}: N={blocks} blocks exceed the layer's size {d_out}x{d_in}")
        shape1, shape2 = monarch_shapes(d_in, d_out, blocks, rank)
        if rank > max(shape1[2], shape2[1]):
            raise UserError(f"more{blocks}x{rank}: block rank {rank} exceeds the block size "
                            f"{max(shape1[2], shape2[1])} of a {d_out}x{d_in} layer")
        bound = 1.0 / math.sqrt(shape1[2])
        w1 = (torch.rand(shape1, generator=generator, dtype=base.weight.dtype) * 2 - 1) * bound
        self.w1 = nn.Parameter(w1.to(base.weight.device))
        self.w2 = nn.Parameter(base.weight.new_zeros(shape2))

    @property
    def blocks(self) -> int:
        return self.w1.shape[0]

    def adapter_forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = self.blocks * self.w1.shape[2] - self.in_features
        if pad:
            x = F.pad(x, (0, pad))
        return monarch_matmul(x, self.w1, self.w2)[..., : self.out_features]

    def compute_delta_weight(self) -> torch.Tensor:
        eye = torch.eye(self.in_features, dtype=self.w1.dtype, device=self.w1.device)
        return self.adapter_forward(eye).T  # column c of ΔW is ΔW·e_c

    def num_params(self) -> int:
        return self.w1.numel() + self.w2.numel()

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
and the oracle for the fused Triton kernels of `monarch_triton`, which
`monarch_matmul` dispatches to on CUDA (``NTK_PEFT_TRITON=1`` forces them,
e.g. on a CPU under ``TRITON_INTERPRET=1``; ``NTK_PEFT_TRITON=0`` forbids
them). The Triton path is a `torch.autograd.Function` with vmap rules, so
torch.func's ``vmap(grad)`` / ``jacrev`` (the eNTK engines) run on the same
kernels as training: a vmapped input becomes one more leading dimension, and
per-example weight gradients come from the kernel's row groups.
"""

from __future__ import annotations

import importlib.util
import os

import torch
from torch.func import vjp, vmap


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


_TRITON_ENV = "NTK_PEFT_TRITON"
_calls = [0]


def monarch_triton_calls() -> int:
    """How many Monarch products have taken the Triton path in this process (forward launches)."""
    return _calls[0]


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def use_triton(x: torch.Tensor, w1: torch.Tensor) -> bool:
    """Whether `monarch_matmul` takes the Triton path for these tensors.

    ``NTK_PEFT_TRITON=1`` forces it (CPU tensors need ``TRITON_INTERPRET=1``),
    ``0`` forbids it; otherwise CUDA tensors use it when triton is installed.
    Dtypes other than fp16/bf16/fp32 and products wider than
    `monarch_triton.MAX_FUSED_WIDTH` always use the reference.
    """
    flag = os.environ.get(_TRITON_ENV, "")
    if flag == "0" or (flag != "1" and not (x.is_cuda and triton_available())):
        return False
    if not triton_available():
        raise RuntimeError(f"{_TRITON_ENV}=1 but triton is not installed")
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"{_TRITON_ENV}=1 on CPU tensors needs TRITON_INTERPRET=1 (set before the first use)")
    from ntk_peft.kernels import monarch_triton

    return monarch_triton.supported(x, w1)


def monarch_matmul(x: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """The Monarch product used by training and kernels (dispatches by device; see `use_triton`).

    Args and result as `monarch_matmul_reference`. On the Triton path the
    factors are cast to x's dtype (as autocast does for a matmul: under
    ``torch.autocast`` x arrives in bf16 while the parameters stay fp32); their
    gradients come back in their own dtype.
    """
    if not use_triton(x, w1):
        return monarch_matmul_reference(x, w1, w2)
    if (w1.dim() != 3 or w2.dim() != 3 or x.shape[-1] != w1.shape[0] * w1.shape[2]
            or w2.shape[0] != w1.shape[0] or w2.shape[2] != w1.shape[1]):
        raise ValueError(f"monarch shapes: x {tuple(x.shape)}, w1 {tuple(w1.shape)}, w2 {tuple(w2.shape)}")
    return _MonarchMatmul.apply(x, w1.to(x.dtype), w2.to(x.dtype))


def _triton():
    from ntk_peft.kernels import monarch_triton

    return monarch_triton


def _moved(tensor: torch.Tensor, dim: int | None, size: int) -> torch.Tensor:
    """``tensor`` with its vmapped dimension first (expanded to ``size`` if it had none)."""
    if dim is None:
        return tensor.unsqueeze(0).expand(size, *tensor.shape)
    return tensor.movedim(dim, 0)


class _MonarchMatmul(torch.autograd.Function):
    """``y = monarch(x, w1, w2)`` on the Triton kernels; backward through `_MonarchBackward`."""

    @staticmethod
    def forward(x, w1, w2):
        lead = x.shape[:-1]
        _calls[0] += 1
        y = _triton().forward(x.reshape(-1, x.shape[-1]).contiguous(), w1.contiguous(), w2.contiguous())
        return y.reshape(*lead, y.shape[-1])

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(*inputs)

    @staticmethod
    def backward(ctx, dy):
        x, w1, w2 = ctx.saved_tensors
        return _MonarchBackward.apply(dy, x, w1, w2, None)

    @staticmethod
    def vmap(info, in_dims, x, w1, w2):
        x_dim, w1_dim, w2_dim = in_dims
        if w1_dim is None and w2_dim is None:  # a vmapped input is one more leading dimension
            return _MonarchMatmul.apply(_moved(x, x_dim, info.batch_size), w1, w2), 0
        return vmap(monarch_matmul_reference, in_dims=in_dims)(x, w1, w2), 0  # batched weights: reference


class _MonarchBackward(torch.autograd.Function):
    """``(dx, dw1, dw2)`` of the Monarch product; ``groups`` as in `monarch_triton.backward`.

    With ``groups=G`` the first dimension of dy and x indexes the groups and the
    weight gradients come back per group; a vmap over this function folds its
    batch into that dimension, which is how ``vmap(grad(...))`` gets per-example
    weight gradients from one kernel launch.
    """

    @staticmethod
    def forward(dy, x, w1, w2, groups):
        n, m = x.shape[-1], dy.shape[-1]
        dx, dw1, dw2 = _triton().backward(dy.reshape(-1, m).contiguous(), x.reshape(-1, n).contiguous(),
                                          w1.contiguous(), w2.contiguous(), groups)
        return dx.reshape(x.shape), dw1, dw2

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, *grads):
        raise RuntimeError("the Triton Monarch product is differentiable once; use NTK_PEFT_TRITON=0 "
                           "for higher derivatives")

    @staticmethod
    def vmap(info, in_dims, dy, x, w1, w2, groups):
        dy_dim, x_dim, w1_dim, w2_dim, _ = in_dims
        size = info.batch_size
        if w1_dim is not None or w2_dim is not None:  # batched weights: the reference's vjp
            return vmap(_reference_backward, in_dims=(dy_dim, x_dim, w1_dim, w2_dim, None))(dy, x, w1, w2, groups), 0
        dy_b, x_b = _moved(dy, dy_dim, size), _moved(x, x_dim, size)
        if groups is None:
            dx, dw1, dw2 = _MonarchBackward.apply(dy_b, x_b, w1, w2, size)
            return (dx, dw1, dw2), (0, 0, 0)
        # already grouped on the first dimension: the batch splits every group
        dx, dw1, dw2 = _MonarchBackward.apply(dy_b.flatten(0, 1), x_b.flatten(0, 1), w1, w2, size * groups)
        return ((dx.unflatten(0, (size, groups)), dw1.unflatten(0, (size, groups)),
                 dw2.unflatten(0, (size, groups))), (0, 0, 0))


def _reference_backward(dy, x, w1, w2, groups):
    """`_MonarchBackward` in plain torch (for batched weights)."""
    if groups is None:
        _, pull = vjp(monarch_matmul_reference, x, w1, w2)
        return pull(dy)
    return vmap(_reference_backward, in_dims=(0, 0, None, None, None))(dy, x, w1, w2, None)

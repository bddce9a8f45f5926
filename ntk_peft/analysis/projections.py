"""Best approximations of a matrix within each adapter class (Frobenius norm, exact, float64).

- `monarch_project(M, N, r)`: the closest member of the ``more{N}x{r}`` class
  (`ntk_peft.adapters.MonarchAdapter`), with factors that load into the adapter;
- `lowrank_project(M, R)`: Eckart–Young (LoRA rank R);
- `rows_project(M, r)`, `cols_project(M, r)`: the best r rows / columns to free (RoCoFT);
- `cp_project(stack, R)`: a rank-R CP (LoRTA-style) fit of a stack of same-shape
  matrices by alternating least squares (not guaranteed optimal: CP fitting is non-convex).

**Structure of the Monarch class.** With the permutation convention of
`ntk_peft.kernels.monarch` (x split into N contiguous input blocks of
b_in = ⌈n/N⌉; w1 ``[N, r, b_in]``; middle index t = k_in·r + j is read by output
block k_out = t mod N as its column j' = t div N; output row o = i·N + k_out),
ΔW = P_out·BD(w2)·P_mid·BD(w1) decomposes into N×N sub-blocks
``ΔW[k_out::N, k_in·b_in:(k_in+1)·b_in]``, and sub-block (k_out, k_in) is a sum of
rank-one terms w2[k_out][:, t div N] ⊗ w1[k_in][t mod r] over the middle indices
t ∈ [k_in·r, (k_in+1)·r) with t ≡ k_out (mod N). Every column of w2 and every
row of w1 belongs to exactly one t, so the sub-blocks are independent and the
class is exactly {sub-block (k_out, k_in) has rank ≤ c[k_out, k_in]} with

    c[k_out, k_in] = #{t ∈ [k_in·r, (k_in+1)·r) : t ≡ k_out (mod N)}    (`monarch_block_ranks`).

When N divides r every cap is r/N (MoRe theorem A.4; r = N gives A.3's rank
one). Otherwise caps are ⌊r/N⌋ or ⌈r/N⌉, and when r < N most are 0: sub-block
(k_out, k_in) is structurally zero unless some t in input block k_in's range is
≡ k_out. When N does not divide n or m, the adapter zero-pads the input and
truncates the output: sub-blocks lose their padded columns/rows (the caps stay).
The projection is therefore the truncated SVD of every sub-block, and its squared
error is the sum of the discarded squared singular values.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ntk_peft.errors import UserError


def checked_matrix(matrix) -> torch.Tensor:
    """A finite float64 CPU matrix."""
    if isinstance(matrix, np.ndarray):
        matrix = torch.from_numpy(matrix)
    if not isinstance(matrix, torch.Tensor) or matrix.dim() != 2:
        raise UserError(f"expected a matrix, got {type(matrix).__name__} of shape {tuple(getattr(matrix, 'shape', ()))}")
    matrix = matrix.detach().to("cpu", torch.float64)
    if not torch.isfinite(matrix).all():
        raise UserError("the matrix contains NaN or Inf")
    return matrix


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise UserError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def monarch_block_ranks(blocks: int, rank: int) -> np.ndarray:
    """``[N_out, N_in]`` rank cap of every sub-block of the ``more{N}x{r}`` class (see the module docstring)."""
    blocks, rank = positive_int("N", blocks), positive_int("r", rank)
    caps = np.zeros((blocks, blocks), dtype=np.int64)
    for t in range(blocks * rank):
        caps[t % blocks, t // rank] += 1
    return caps


def monarch_params(m: int, n: int, blocks: int, rank: int) -> int:
    """Parameters of ``more{N}x{r}`` on an m×n matrix, padding included (as the adapter counts)."""
    return blocks * rank * (math.ceil(n / blocks) + math.ceil(m / blocks))


@dataclass
class MonarchProjection:
    """The closest ``more{N}x{r}`` matrix: factors, its dense form and the error ‖M − P‖_F."""

    w1: torch.Tensor  # [N, r, b_in]
    w2: torch.Tensor  # [N, b_out, r]
    matrix: torch.Tensor  # [m, n]
    error: float

    def __iter__(self):  # w1, w2, error = monarch_project(...)
        return iter((self.w1, self.w2, self.error))


def monarch_project(matrix, blocks: int, rank: int) -> MonarchProjection:
    """Frobenius-optimal member of the ``more{N}x{r}`` class for an m×n matrix (any N, r, m, n).

    Returns factors ``w1 [N, r, ⌈n/N⌉]``, ``w2 [N, ⌈m/N⌉, r]`` (balanced: each kept singular
    triple's √σ on both sides; padded rows/columns and unused middle indices are zero) that
    `MonarchAdapter` accepts as its ``w1``/``w2``, the projected matrix and ‖M − P(M)‖_F.
    """
    matrix = checked_matrix(matrix)
    blocks, rank = positive_int("N", blocks), positive_int("r", rank)
    m, n = matrix.shape
    if blocks > min(m, n):
        raise UserError(f"N={blocks} blocks exceed the matrix's size {m}x{n}")
    b_in, b_out = math.ceil(n / blocks), math.ceil(m / blocks)
    if rank > max(b_in, b_out):
        raise UserError(f"block rank r={rank} exceeds the block size {max(b_in, b_out)} of a {m}x{n} matrix")
    w1 = torch.zeros(blocks, rank, b_in, dtype=torch.float64)
    w2 = torch.zeros(blocks, b_out, rank, dtype=torch.float64)
    projected = torch.zeros_like(matrix)
    middle: dict[tuple[int, int], list[int]] = {}
    for t in range(blocks * rank):
        middle.setdefault((t % blocks, t // rank), []).append(t)
    discarded = 0.0
    for k_out in range(blocks):
        rows = torch.arange(k_out, m, blocks)  # output rows i·N + k_out that exist
        for k_in in range(blocks):
            cols = torch.arange(k_in * b_in, min((k_in + 1) * b_in, n))
            if rows.numel() == 0 or cols.numel() == 0:
                continue
            block = matrix[rows][:, cols]
            u, sigma, vh = torch.linalg.svd(block, full_matrices=False)
            ts = middle.get((k_out, k_in), [])
            keep = min(len(ts), sigma.numel())
            discarded += float((sigma[keep:] ** 2).sum())
            root = sigma[:keep].sqrt()
            for index, t in enumerate(ts[:keep]):
                w2[k_out, : rows.numel(), t // blocks] = u[:, index] * root[index]
                w1[k_in, t % rank, : cols.numel()] = vh[index] * root[index]
            projected[rows[:, None], cols[None, :]] = (u[:, :keep] * sigma[:keep]) @ vh[:keep]
    return MonarchProjection(w1, w2, projected, math.sqrt(discarded))


@dataclass
class LowRankProjection:
    """Eckart–Young: ``B [m, R] @ A [R, n]`` (LoRA's ΔW = B A) and ‖M − BA‖_F."""

    b: torch.Tensor
    a: torch.Tensor
    error: float

    @property
    def matrix(self) -> torch.Tensor:
        return self.b @ self.a


def lowrank_project(matrix, rank: int) -> LowRankProjection:
    """The best rank-R approximation (truncated SVD), factors balanced by √σ."""
    matrix = checked_matrix(matrix)
    rank = positive_int("R", rank)
    if rank > min(matrix.shape):
        raise UserError(f"rank R={rank} exceeds min{tuple(matrix.shape)}")
    u, sigma, vh = torch.linalg.svd(matrix, full_matrices=False)
    root = sigma[:rank].sqrt()
    return LowRankProjection(u[:, :rank] * root, root[:, None] * vh[:rank],
                             float((sigma[rank:] ** 2).sum().sqrt()))


@dataclass
class SelectionProjection:
    """The r freed rows (or columns) and their values; everything else stays at zero."""

    indices: torch.Tensor  # [r], ascending
    values: torch.Tensor  # [r, n] rows or [m, r] columns
    matrix: torch.Tensor
    error: float


def rows_project(matrix, rank: int) -> SelectionProjection:
    """The best r rows to free: those of largest norm, at their values (RoCoFT rows)."""
    matrix = checked_matrix(matrix)
    rank = positive_int("r", rank)
    if rank > matrix.shape[0]:
        raise UserError(f"r={rank} rows exceed the matrix's {matrix.shape[0]} rows")
    norms = (matrix ** 2).sum(1)
    chosen = torch.sort(torch.topk(norms, rank).indices).values
    projected = torch.zeros_like(matrix)
    projected[chosen] = matrix[chosen]
    rest = norms.sum() - norms[chosen].sum()
    return SelectionProjection(chosen, matrix[chosen].clone(), projected, float(rest.clamp_min(0).sqrt()))


def cols_project(matrix, rank: int) -> SelectionProjection:
    """The best r columns to free (RoCoFT columns)."""
    matrix = checked_matrix(matrix)
    if positive_int("r", rank) > matrix.shape[1]:
        raise UserError(f"r={rank} columns exceed the matrix's {matrix.shape[1]} columns")
    rows = rows_project(matrix.T, rank)
    return SelectionProjection(rows.indices, rows.values.T.contiguous(), rows.matrix.T.contiguous(), rows.error)


@dataclass
class CPFit:
    """A rank-R CP model of a stack ``[L, M, m, n]``: one factor ``[dim, R]`` per mode (weights folded in)."""

    factors: list[torch.Tensor]
    tensor: torch.Tensor
    error: float


def cp_params(shape: tuple[int, ...], rank: int) -> int:
    """Parameters of a rank-R CP model of a tensor of ``shape``: R·Σ dims."""
    return rank * sum(shape)


def cp_project(stack, rank: int, *, n_iter_max: int = 500, tol: float = 1e-10, seed: int = 0) -> CPFit:
    """Rank-R CP fit of a stack of same-shape matrices (layers × types × m × n, or any order ≥ 3) by
    alternating least squares (tensorly's ``parafac``, SVD initialisation). A local optimum: its error
    is an upper bound on the best rank-R CP error."""
    import tensorly
    from tensorly.decomposition import parafac

    if isinstance(stack, np.ndarray):
        stack = torch.from_numpy(stack)
    stack = stack.detach().to("cpu", torch.float64)
    if stack.dim() < 3:
        raise UserError(f"a CP fit needs a stack of matrices (3 or more modes), got shape {tuple(stack.shape)}")
    if not torch.isfinite(stack).all():
        raise UserError("the stack contains NaN or Inf")
    rank = positive_int("R", rank)
    array = stack.numpy()
    init = "svd" if rank <= min(array.shape) else "random"
    weights, factors = parafac(tensorly.tensor(array), rank, n_iter_max=n_iter_max, tol=tol, init=init,
                               random_state=seed, normalize_factors=False)
    factors = [np.asarray(f, dtype=np.float64) for f in factors]
    factors[0] = factors[0] * np.asarray(weights, dtype=np.float64)[None, :]
    fitted = tensorly.cp_to_tensor((np.ones(rank), factors))
    return CPFit([torch.from_numpy(f) for f in factors], torch.from_numpy(np.asarray(fitted)),
                 float(np.linalg.norm(array - fitted)))

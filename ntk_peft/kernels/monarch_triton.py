"""Triton kernels for the Monarch product (imported lazily: it needs triton).

With T = N·r, the product of `ntk_peft.kernels.monarch` is ``y = x · S1 · S2``
for two matrices that are never formed:

- ``S1 (n × T)``: column t = k·r + j holds row j of w1's block k in the rows
  of input block k: ``S1[c, t] = w1[k, j, c − k·b_in]`` if ``c // b_in == t // r``.
- ``S2 (T × m)``: P_mid and P_out folded in: row t = j'·N + k' feeds the
  outputs o = i·N + k' of block k': ``S2[t, o] = w2[o % N, o // N, t // N]``
  if ``t % N == o % N``.

Every kernel loads tiles of S1/S2 straight from w1/w2 by index arithmetic
(plain pointers, masks), so no permuted copy is ever written. The forward
keeps ``h = x·S1`` (a ``[BLOCK_M, T]`` tile) in registers between the two
products: x is read once and y written once. A dense S1/S2 tile is 1/N
non-zero, so the products spend N× the minimal FLOPs to stay a single fused
pass; the layer is memory-bound for the usual N ≤ 8.

Backward: one kernel per row tile recomputes h and forms ``g = dy·S2ᵀ`` and
``dx = g·S1ᵀ`` (g stays in registers for dx), writing h and g (``[M, T]``,
small beside x) for the weight gradients; a second kernel forms each weight
gradient as a gathered ``Lᵀ·R`` over row groups (``dw1[k] = g_kᵀ·x_k``,
``dw2[k'] = dy_{k'}ᵀ·h_{k'}``), per group when vmap asks for per-example
gradients, summed over split partials otherwise.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

#: Largest N·r kept in registers; wider products go to the reference.
MAX_FUSED_WIDTH = 1024
_MAX_GRID_Y = 65535
_DOT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


def supported(x: torch.Tensor, w1: torch.Tensor) -> bool:
    """Whether the fused kernels handle this dtype and width."""
    return x.dtype in _DOT_DTYPES and w1.shape[0] * w1.shape[1] <= MAX_FUSED_WIDTH


def _pow2(value: int, low: int = 16) -> int:
    return max(low, triton.next_power_of_2(value))


def _row_block(width: int) -> int:
    """Rows per program: keeps the ``[BLOCK_M, T]`` register tile bounded."""
    return 64 if width <= 128 else 32 if width <= 256 else 16


def _column_block(width: int, size: int) -> int:
    """Columns of x, y (or dx, dy) per inner step: keeps the ``[BLOCK, T]`` S1/S2 tiles bounded."""
    return min(_pow2(size), max(16, min(64, 8192 // _pow2(width))))


@triton.jit
def _s1_tile(w1_ptr, c, t, n, width, rank, b_in):
    """Tile ``S1[c, t]`` of shape ``[len(c), len(t)]`` (zero off the block diagonal)."""
    block = t[None, :] // rank
    inner = c[:, None] - block * b_in
    mask = (c[:, None] < n) & (t[None, :] < width) & (c[:, None] // b_in == block)
    return tl.load(w1_ptr + t[None, :] * b_in + inner, mask=mask, other=0.0)


@triton.jit
def _s2_tile(w2_ptr, t, o, m, width, blocks, rank, b_out):
    """Tile ``S2[t, o]`` of shape ``[len(t), len(o)]`` (zero where t % N != o % N)."""
    k_out = o[None, :] % blocks
    offset = (k_out * b_out + o[None, :] // blocks) * rank + t[:, None] // blocks
    mask = (t[:, None] < width) & (o[None, :] < m) & (t[:, None] % blocks == k_out)
    return tl.load(w2_ptr + offset, mask=mask, other=0.0)


@triton.jit
def _x_times_s1(x_ptr, w1_ptr, rows, t, rows_total, n, width, rank, b_in,
                BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, PRECISION: tl.constexpr):
    """``h = x[rows] · S1`` as a float32 ``[BLOCK_M, BLOCK_T]`` tile."""
    h = tl.zeros((BLOCK_M, BLOCK_T), dtype=tl.float32)
    for c0 in range(0, n, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        xt = tl.load(x_ptr + rows[:, None] * n + c[None, :], mask=(rows[:, None] < rows_total) & (c[None, :] < n),
                     other=0.0)
        h += tl.dot(xt, _s1_tile(w1_ptr, c, t, n, width, rank, b_in), input_precision=PRECISION)
    return h


@triton.jit
def _forward_kernel(x_ptr, w1_ptr, w2_ptr, y_ptr, rows_total, n, m, blocks, rank, b_in, b_out,
                    BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_O: tl.constexpr,
                    PRECISION: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # M·n may pass 2³¹
    t = tl.arange(0, BLOCK_T)
    width = blocks * rank
    h = _x_times_s1(x_ptr, w1_ptr, rows, t, rows_total, n, width, rank, b_in, BLOCK_M, BLOCK_T, BLOCK_C, PRECISION)
    h = h.to(y_ptr.dtype.element_ty)  # the reference rounds h to the input dtype too
    for o0 in range(0, m, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)
        y = tl.dot(h, _s2_tile(w2_ptr, t, o, m, width, blocks, rank, b_out), input_precision=PRECISION)
        tl.store(y_ptr + rows[:, None] * m + o[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=(rows[:, None] < rows_total) & (o[None, :] < m))


@triton.jit
def _backward_input_kernel(dy_ptr, x_ptr, w1_ptr, w2_ptr, dx_ptr, h_ptr, g_ptr, rows_total, n, m, blocks, rank,
                           b_in, b_out, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
                           BLOCK_O: tl.constexpr, PRECISION: tl.constexpr):
    rows = (tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)  # M·n may pass 2³¹
    t = tl.arange(0, BLOCK_T)
    width = blocks * rank
    row_mask = rows[:, None] < rows_total
    scratch = rows[:, None] * width + t[None, :]
    scratch_mask = row_mask & (t[None, :] < width)
    dtype = dx_ptr.dtype.element_ty
    h = _x_times_s1(x_ptr, w1_ptr, rows, t, rows_total, n, width, rank, b_in, BLOCK_M, BLOCK_T, BLOCK_C, PRECISION)
    tl.store(h_ptr + scratch, h.to(dtype), mask=scratch_mask)
    g = tl.zeros((BLOCK_M, BLOCK_T), dtype=tl.float32)
    for o0 in range(0, m, BLOCK_O):
        o = o0 + tl.arange(0, BLOCK_O)
        dyt = tl.load(dy_ptr + rows[:, None] * m + o[None, :], mask=row_mask & (o[None, :] < m), other=0.0)
        s2 = _s2_tile(w2_ptr, t, o, m, width, blocks, rank, b_out)
        g += tl.dot(dyt, tl.trans(s2), input_precision=PRECISION)
    g = g.to(dtype)
    tl.store(g_ptr + scratch, g, mask=scratch_mask)
    for c0 in range(0, n, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        dx = tl.dot(g, tl.trans(_s1_tile(w1_ptr, c, t, n, width, rank, b_in)), input_precision=PRECISION)
        tl.store(dx_ptr + rows[:, None] * n + c[None, :], dx.to(dtype), mask=row_mask & (c[None, :] < n))


@triton.jit
def _gathered_at_b_kernel(left_ptr, right_ptr, out_ptr, rows_total, rows_per_group, left_cols, right_cols,
                          size_a, size_b, left_block_stride, left_a_stride, right_block_stride, right_b_stride,
                          tiles_a, tiles_b, BLOCK_M: tl.constexpr, BLOCK_A: tl.constexpr, BLOCK_B: tl.constexpr,
                          PRECISION: tl.constexpr):
    """``out[grp, k, a, b] = Σ_{rows of grp} left[row, k·lbs + a·las] · right[row, k·rbs + b·rbb]`` (float32)."""
    tile = tl.program_id(0)
    group = tl.program_id(1).to(tl.int64)  # per-group outputs may pass 2³¹ entries
    tiles_per_block = tiles_a * tiles_b
    k = tile // tiles_per_block
    a = (tile % tiles_per_block) // tiles_b * BLOCK_A + tl.arange(0, BLOCK_A)
    b = (tile % tiles_b) * BLOCK_B + tl.arange(0, BLOCK_B)
    left_col = k * left_block_stride + a * left_a_stride
    right_col = k * right_block_stride + b * right_b_stride
    start = group * rows_per_group
    stop = tl.minimum(start + rows_per_group, rows_total)
    acc = tl.zeros((BLOCK_A, BLOCK_B), dtype=tl.float32)
    for r0 in range(start, stop, BLOCK_M):
        rows = (r0 + tl.arange(0, BLOCK_M)).to(tl.int64)
        in_rows = rows < stop
        lt = tl.load(left_ptr + rows[:, None] * left_cols + left_col[None, :],
                     mask=in_rows[:, None] & (a[None, :] < size_a), other=0.0)
        rt = tl.load(right_ptr + rows[:, None] * right_cols + right_col[None, :],
                     mask=in_rows[:, None] & (b[None, :] < size_b), other=0.0)
        acc += tl.dot(tl.trans(lt), rt, input_precision=PRECISION)
    blocks = tl.num_programs(0) // tiles_per_block
    offset = ((group * blocks + k) * size_a + a[:, None]) * size_b + b[None, :]
    tl.store(out_ptr + offset, acc, mask=(a[:, None] < size_a) & (b[None, :] < size_b))


def _precision(dtype: torch.dtype) -> str:
    """fp32 in true fp32 (torch's default matmul), not tf32."""
    return "ieee" if dtype == torch.float32 else "tf32"


def _dims(w1: torch.Tensor, w2: torch.Tensor) -> tuple[int, int, int, int]:
    blocks, rank, b_in = w1.shape
    return blocks, rank, b_in, w2.shape[1]


def forward(x2: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor) -> torch.Tensor:
    """``y [M, m]`` for contiguous ``x2 [M, n]`` and contiguous w1, w2 of x2's dtype."""
    blocks, rank, b_in, b_out = _dims(w1, w2)
    rows, n, m, width = x2.shape[0], blocks * b_in, blocks * b_out, blocks * rank
    y = x2.new_empty(rows, m)
    if rows == 0:
        return y
    block_m = _row_block(width)
    _forward_kernel[(triton.cdiv(rows, block_m),)](
        x2, w1, w2, y, rows, n, m, blocks, rank, b_in, b_out, BLOCK_M=block_m, BLOCK_T=_pow2(width),
        BLOCK_C=_column_block(width, n), BLOCK_O=_column_block(width, m), PRECISION=_precision(x2.dtype))
    return y


def backward(dy2: torch.Tensor, x2: torch.Tensor, w1: torch.Tensor, w2: torch.Tensor, groups: int | None):
    """``(dx [M, n], dw1, dw2)`` for contiguous ``dy2 [M, m]``, ``x2 [M, n]``.

    ``groups=None`` sums the weight gradients over all rows (shapes of w1, w2);
    ``groups=G`` splits the rows into G equal consecutive groups and returns
    one gradient per group (``[G, *w1.shape]``, ``[G, *w2.shape]``).
    """
    blocks, rank, b_in, b_out = _dims(w1, w2)
    rows, n, m, width = x2.shape[0], blocks * b_in, blocks * b_out, blocks * rank
    precision = _precision(x2.dtype)
    dx = torch.empty_like(x2)
    h = x2.new_empty(rows, width)
    g = x2.new_empty(rows, width)
    if rows:
        block_m = _row_block(width)
        _backward_input_kernel[(triton.cdiv(rows, block_m),)](
            dy2, x2, w1, w2, dx, h, g, rows, n, m, blocks, rank, b_in, b_out, BLOCK_M=block_m,
            BLOCK_T=_pow2(width), BLOCK_C=_column_block(width, n), BLOCK_O=_column_block(width, m),
            PRECISION=precision)
    if groups is None:
        splits = max(1, min(64, triton.cdiv(rows, 256)))  # parallel partial sums over rows
        per_group = max(1, triton.cdiv(rows, splits))
    else:
        if rows % groups:
            raise ValueError(f"{rows} rows do not split into {groups} groups")
        splits, per_group = groups, max(1, rows // groups)
    # dw1[k, j, c] = Σ g[:, k·r + j] · x[:, k·b_in + c]
    dw1 = _gathered_at_b(g, x2, rows, per_group, splits, blocks, rank, b_in, (rank, 1), (b_in, 1), precision)
    # dw2[k', i, j'] = Σ dy[:, i·N + k'] · h[:, j'·N + k']
    dw2 = _gathered_at_b(dy2, h, rows, per_group, splits, blocks, b_out, rank, (1, blocks), (1, blocks), precision)
    if groups is None:
        dw1, dw2 = dw1.sum(0), dw2.sum(0)
    return dx, dw1.to(w1.dtype), dw2.to(w2.dtype)


def _gathered_at_b(left, right, rows, per_group, splits, blocks, size_a, size_b, left_strides, right_strides,
                   precision):
    """``[splits, blocks, size_a, size_b]`` float32 weight gradients, one per consecutive row group."""
    if splits > _MAX_GRID_Y:  # CUDA's second grid dimension: launch groups in chunks (rows are consecutive)
        step = _MAX_GRID_Y * per_group
        return torch.cat([_gathered_at_b(left[r0:r0 + step], right[r0:r0 + step], min(step, rows - r0), per_group,
                                         min(_MAX_GRID_Y, splits - r0 // per_group), blocks, size_a, size_b,
                                         left_strides, right_strides, precision)
                          for r0 in range(0, rows, step)])
    out = torch.empty(splits, blocks, size_a, size_b, dtype=torch.float32, device=left.device)
    if rows == 0:
        return out.zero_()
    block_a, block_b = min(64, _pow2(size_a)), min(64, _pow2(size_b))
    tiles_a, tiles_b = triton.cdiv(size_a, block_a), triton.cdiv(size_b, block_b)
    _gathered_at_b_kernel[(blocks * tiles_a * tiles_b, splits)](
        left, right, out, rows, per_group, left.shape[1], right.shape[1], size_a, size_b, *left_strides,
        *right_strides, tiles_a, tiles_b, BLOCK_M=32, BLOCK_A=block_a, BLOCK_B=block_b, PRECISION=precision)
    return out


def compile_for_gpu(arch: int = 90, dtypes=("fp32", "fp16", "bf16")) -> list[str]:
    """Compile every kernel ahead of time for an NVIDIA GPU of compute capability ``arch`` (no GPU needed).

    Catches what the interpreter does not check (types, dot shapes, register tiles): the tests run it
    with ``TRITON_INTERPRET=0`` in a subprocess. Covers the narrowest and the widest tile set
    (`MAX_FUSED_WIDTH`). Returns one line per compiled kernel.
    """
    import inspect

    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if hasattr(_forward_kernel, "interpret") or not hasattr(_forward_kernel, "fn"):
        raise RuntimeError("compile_for_gpu needs TRITON_INTERPRET unset when this module is first imported")
    target = GPUTarget("cuda", arch, 32)
    done = []
    for dtype in dtypes:
        precision = "ieee" if dtype == "fp32" else "tf32"
        wide = _pow2(MAX_FUSED_WIDTH)
        cases = [
            (_forward_kernel, ("x_ptr", "w1_ptr", "w2_ptr", "y_ptr"), dict(BLOCK_M=64, BLOCK_T=16, BLOCK_C=64, BLOCK_O=64)),
            (_forward_kernel, ("x_ptr", "w1_ptr", "w2_ptr", "y_ptr"),
             dict(BLOCK_M=_row_block(wide), BLOCK_T=wide, BLOCK_C=_column_block(wide, 4096),
                  BLOCK_O=_column_block(wide, 4096))),
            (_backward_input_kernel, ("dy_ptr", "x_ptr", "w1_ptr", "w2_ptr", "dx_ptr", "h_ptr", "g_ptr"),
             dict(BLOCK_M=64, BLOCK_T=16, BLOCK_C=64, BLOCK_O=64)),
            (_backward_input_kernel, ("dy_ptr", "x_ptr", "w1_ptr", "w2_ptr", "dx_ptr", "h_ptr", "g_ptr"),
             dict(BLOCK_M=_row_block(wide), BLOCK_T=wide, BLOCK_C=_column_block(wide, 4096),
                  BLOCK_O=_column_block(wide, 4096))),
            (_gathered_at_b_kernel, ("left_ptr", "right_ptr"), dict(BLOCK_M=32, BLOCK_A=64, BLOCK_B=16)),
        ]
        for kernel, pointers, constants in cases:
            constants = dict(constants, PRECISION=precision)
            signature = {}
            for name in inspect.signature(kernel.fn).parameters:
                signature[name] = ("constexpr" if name in constants else f"*{dtype}" if name in pointers
                                   else "*fp32" if name == "out_ptr" else "i32")
            compiled = triton.compile(ASTSource(kernel, signature, constexprs=constants), target=target)
            done.append(f"{kernel.fn.__name__} {dtype} {constants}: {len(compiled.asm['ptx'])} bytes of PTX")
    return done

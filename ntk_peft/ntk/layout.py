"""Kernel layouts: ours ``[n1, n2, C, C]`` and the others researchers use."""

from __future__ import annotations

import torch


def to_flat(kernel: torch.Tensor) -> torch.Tensor:
    """``[n1, n2, C, C]`` -> ``[(n1·C), (n2·C)]``, row index i·C + c."""
    n1, n2, c1, c2 = kernel.shape
    return kernel.permute(0, 2, 1, 3).reshape(n1 * c1, n2 * c2)


def from_flat(flat: torch.Tensor, classes: int) -> torch.Tensor:
    """Inverse of `to_flat`."""
    rows, cols = flat.shape
    return flat.reshape(rows // classes, classes, cols // classes, classes).permute(0, 2, 1, 3)


def to_lm_kernel_ft(kernel: torch.Tensor) -> torch.Tensor:
    """LM-Kernel-FT's layout ``(n1, C, n2, C)``."""
    return kernel.permute(0, 2, 1, 3)


def trace_over_outputs(kernel: torch.Tensor) -> torch.Tensor:
    """Σ_c K[i, j, c, c]: ``[n1, n2]`` (a scalar-output kernel)."""
    return torch.diagonal(kernel, dim1=2, dim2=3).sum(-1)

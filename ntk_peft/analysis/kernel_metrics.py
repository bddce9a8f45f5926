"""Comparing kernels (pure functions on ``[n1, n2, C, C]`` float64 arrays).

- `relative_difference`: RoCoFT's ‖K_S/‖K_S‖_p − K/‖K‖_p‖_p on flattened
  kernels (entry-wise p-norms; p = 1, 2);
- `centered_alignment`: centred kernel alignment (Cortes et al. 2012) of
  the flattened kernels;
- `kernel_distance`: ‖K_0 − K_t‖_F/‖K_0‖_F, how far a kernel moved (e.g. from the
  pretrained to a fine-tuned point: small in the lazy regime);
- `eigenvalues`, `effective_rank`: spectrum of the flattened symmetric
  kernel and exp(entropy) of its normalised eigenvalues.
"""

from __future__ import annotations

import numpy as np


def _flat(kernel) -> np.ndarray:
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim == 4:
        n1, n2, c1, c2 = kernel.shape
        return kernel.transpose(0, 2, 1, 3).reshape(n1 * c1, n2 * c2)
    return kernel


def relative_difference(kernel_subset, kernel_full, p: int = 2) -> float:
    """‖K_S/‖K_S‖_p − K/‖K‖_p‖_p with entry-wise p-norms of the flattened kernels."""
    a, b = _flat(kernel_subset).ravel(), _flat(kernel_full).ravel()
    norm_a, norm_b = np.linalg.norm(a, ord=p), np.linalg.norm(b, ord=p)
    if norm_a == 0 or norm_b == 0:
        return float("nan")
    return float(np.linalg.norm(a / norm_a - b / norm_b, ord=p))


def kernel_distance(kernel_0, kernel_t) -> float:
    """‖K_0 − K_t‖_F / ‖K_0‖_F (not scale-free: a kernel that only grew counts as moved)."""
    a, b = _flat(kernel_0), _flat(kernel_t)
    if a.shape != b.shape:
        raise ValueError(f"kernels of different shapes {a.shape} and {b.shape}")
    norm = np.linalg.norm(a)
    return float(np.linalg.norm(a - b) / norm) if norm > 0 else float("nan")


def centered_alignment(kernel_a, kernel_b) -> float:
    """⟨HAH, HBH⟩ / (‖HAH‖ ‖HBH‖) with H the centring matrix, on square flattened kernels."""
    a, b = _flat(kernel_a), _flat(kernel_b)
    n = a.shape[0]
    h = np.eye(n) - 1.0 / n
    ca, cb = h @ a @ h, h @ b @ h
    return float(np.sum(ca * cb) / (np.linalg.norm(ca) * np.linalg.norm(cb)))


def eigenvalues(kernel) -> np.ndarray:
    """Eigenvalues (descending) of the symmetrised flattened square kernel."""
    a = _flat(kernel)
    return np.linalg.eigvalsh((a + a.T) / 2)[::-1]


def effective_rank(kernel) -> float:
    """exp of the entropy of the normalised positive eigenvalues (Roy & Vetterli 2007)."""
    values = np.clip(eigenvalues(kernel), 0, None)
    total = values.sum()
    if total == 0:
        return 0.0
    p = values[values > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))

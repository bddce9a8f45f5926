"""Rank and spectrum of weight updates ΔW, and pairwise comparisons (pure functions, float64).

Single matrices (`delta_w_metrics`): singular values, numerical rank under
two tolerances, effective rank, stable rank, Frobenius norm. Pairs
(`compare_delta_w`, LoRMA table 9): Frobenius distance, cosine similarity of
the flattened matrices, squared differences of the top-r singular values and
of the top-r eigenvalues, and the largest principal angle between column
spaces.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch

RELATIVE_TOLERANCE = 1e-3


def working_eps(matrix) -> float:
    """Machine epsilon of the dtype a matrix was computed in (float32 ΔW: 1.2e-7)."""
    dtype = getattr(matrix, "dtype", np.float64)
    if hasattr(dtype, "is_floating_point"):  # a torch dtype
        return float(torch.finfo(dtype).eps) if dtype.is_floating_point else float(np.finfo(np.float64).eps)
    return float(np.finfo(dtype).eps) if np.issubdtype(dtype, np.floating) else float(np.finfo(np.float64).eps)


def _matrix(matrix) -> np.ndarray:
    if hasattr(matrix, "detach"):
        matrix = matrix.detach().cpu().double().numpy()
    array = np.asarray(matrix, dtype=np.float64)
    if array.ndim != 2:
        raise ValueError(f"expected a matrix, got shape {array.shape}")
    return array


def singular_values(matrix) -> np.ndarray:
    """Singular values in float64, descending: ``[min(m, n)]``."""
    return scipy.linalg.svdvals(_matrix(matrix))


def factored_singular_values(left, right) -> np.ndarray:
    """Singular values of ``left @ right`` (``[m, r]`` times ``[r, n]``) in float64, descending: ``[min(m, n)]``.

    For r < min(m, n), from the r×r core R_L·R_Rᵀ of the thin QRs left = Q_L·R_L and rightᵀ = Q_R·R_R
    (Q_L, Q_R have orthonormal columns, so left·right = Q_L·(R_L·R_Rᵀ)·Q_Rᵀ has the core's singular
    values), padded with min(m, n) − r exact zeros: O((m + n)·r²) work instead of a dense SVD's
    O(m·n·min(m, n)). The product is formed in float64, never in the factors' dtype.
    """
    left, right = _matrix(left), _matrix(right)
    (m, rank), n = left.shape, right.shape[1]
    if right.shape[0] != rank:
        raise ValueError(f"factors do not multiply: {left.shape} @ {right.shape}")
    if rank >= min(m, n):
        return singular_values(left @ right)
    core = np.linalg.qr(left, mode="r") @ np.linalg.qr(right.T, mode="r").T
    return np.concatenate([scipy.linalg.svdvals(core), np.zeros(min(m, n) - rank)])


def numerical_rank(sigma: np.ndarray, shape: tuple[int, int], tolerance: str = "machine",
                   eps: float = float(np.finfo(np.float64).eps)) -> int:
    """Number of singular values above a threshold.

    ``machine``: max(m, n)·eps·σ_max (numpy's ``matrix_rank`` default), eps of
    the dtype the matrix was computed in; ``relative``: `RELATIVE_TOLERANCE`·σ_max.
    """
    if sigma.size == 0 or sigma[0] == 0:
        return 0
    if tolerance == "machine":
        threshold = max(shape) * eps * sigma[0]
    elif tolerance == "relative":
        threshold = RELATIVE_TOLERANCE * sigma[0]
    else:
        raise ValueError(f"unknown tolerance {tolerance!r}; machine or relative")
    return int(np.sum(sigma > threshold))


def effective_rank_of(sigma: np.ndarray) -> float:
    """exp(entropy of σ/Σσ) (Roy and Vetterli 2007); 0 for the zero matrix."""
    total = sigma.sum()
    if total == 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def delta_w_metrics(matrix) -> dict[str, float]:
    """Rank and size of one update: ``rank_machine`` (eps of the matrix's own dtype: a float32 ΔW
    carries float32 rounding), ``rank_relative``, ``effective_rank``, ``stable_rank``
    (‖ΔW‖_F²/σ_max²), ``frobenius``, ``sigma_max``; the SVD itself runs in float64."""
    array = _matrix(matrix)
    return spectrum_metrics(singular_values(array), array.shape, working_eps(matrix))


def spectrum_metrics(sigma: np.ndarray, shape: tuple[int, int], eps: float) -> dict[str, float]:
    """`delta_w_metrics` from singular values already computed (descending) of a matrix of ``shape``."""
    top = float(sigma[0]) if sigma.size else 0.0
    frobenius = float(np.sqrt(np.sum(sigma ** 2)))
    return {"rank_machine": numerical_rank(sigma, shape, "machine", eps),
            "rank_relative": numerical_rank(sigma, shape, "relative"),
            "effective_rank": effective_rank_of(sigma),
            "stable_rank": frobenius ** 2 / top ** 2 if top > 0 else 0.0,
            "frobenius": frobenius, "sigma_max": top}


def principal_angles(a, b, rank: int | None = None) -> np.ndarray:
    """Principal angles (radians, ascending) between the column spaces of a and b.

    Each column space is the span of the left singular vectors of the
    non-zero singular values (numerical rank, machine tolerance of the
    input's dtype), at most
    ``rank`` of them.
    """
    bases = []
    for original in (a, b):
        matrix = _matrix(original)
        u, sigma, _ = scipy.linalg.svd(matrix, full_matrices=False)
        keep = numerical_rank(sigma, matrix.shape, eps=working_eps(original))
        keep = keep if rank is None else min(rank, keep)
        bases.append(u[:, :keep])
    if bases[0].shape[0] != bases[1].shape[0]:
        raise ValueError("column spaces of matrices with different numbers of rows")
    if bases[0].shape[1] == 0 or bases[1].shape[1] == 0:
        return np.zeros(0)
    return scipy.linalg.subspace_angles(bases[0], bases[1])[::-1]


def _top_eigenvalues(matrix: np.ndarray, r: int) -> np.ndarray:
    """The r eigenvalues of largest modulus; ties (conjugate pairs) by real, then imaginary part."""
    values = scipy.linalg.eigvals(matrix)
    modulus = np.round(np.abs(values), 10 - int(np.floor(np.log10(max(np.abs(values).max(), 1e-300)))))
    return values[np.lexsort((values.imag, values.real, -modulus))][:r]


def compare_delta_w(a, b, r: int = 8) -> dict[str, float | None]:
    """LoRMA table 9 metrics between two updates of the same shape.

    ``frobenius_distance`` ‖a − b‖_F; ``cosine`` of the flattened matrices;
    ``singular_sq_diff`` Σ_{i≤r} (σ_i(a) − σ_i(b))²; ``eigen_sq_diff``
    Σ_{i≤r} |λ_i(a) − λ_i(b)|² with eigenvalues ordered by modulus (None for
    non-square matrices); ``max_principal_angle`` the largest principal angle
    (radians) between the column spaces (top-r left singular vectors).
    """
    x, y = _matrix(a), _matrix(b)
    if x.shape != y.shape:
        raise ValueError(f"shapes differ: {x.shape} and {y.shape}")
    norms = np.linalg.norm(x) * np.linalg.norm(y)
    sx, sy = singular_values(x)[:r], singular_values(y)[:r]
    eigen = None
    if x.shape[0] == x.shape[1]:
        eigen = float(np.sum(np.abs(_top_eigenvalues(x, r) - _top_eigenvalues(y, r)) ** 2))
    angles = principal_angles(x, y, r)
    return {"frobenius_distance": float(np.linalg.norm(x - y)),
            "cosine": float(np.sum(x * y) / norms) if norms > 0 else float("nan"),
            "singular_sq_diff": float(np.sum((sx - sy) ** 2)),
            "eigen_sq_diff": eigen,
            "max_principal_angle": float(angles.max()) if angles.size else float("nan")}

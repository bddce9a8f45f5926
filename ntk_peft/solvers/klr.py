"""Kernel logistic regression in the RKHS of an eNTK.

Minimise over α

    L(α) = Σ_i loss(f0_i + (K α)_i, y_i) + (λ/2)·αᵀ K α

- binary (C = 2, ``mode="binary"``): the scalar kernel of the logit
  difference f_1 − f_0, K_b = K11 − K10 − K01 + K00, logistic loss, α ``[n]``;
- multi-class (``mode="softmax"``): the matrix-valued kernel over (example,
  class) pairs, ``[n, n, C, C]`` flattened to (n·C)², softmax cross-entropy,
  α ``[n, C]``.

f0 is the pretrained model's label logits (LM-Kernel-FT's ``adjust_for_init``);
without it the model starts from zero logits. Newton steps with a
backtracking line search solve it: the gradient is K·(∇ℓ + λα), and the
step solves (W·K + λI)·Δ = −(∇ℓ + λα), W the loss Hessian at the current
logits; that system is nonsingular for λ > 0 even when K is singular.
L-BFGS (scipy) takes over when n·C exceeds ``newton_max``.
"""

from __future__ import annotations

import numpy as np
import scipy.optimize
from scipy.special import log_softmax

from ntk_peft.errors import UserError


def binary_kernel(kernel: np.ndarray) -> np.ndarray:
    """Kernel of f_1 − f_0: ``[n1, n2]`` from a ``[n1, n2, 2, 2]`` label-logit kernel (exact for bilinear
    kernels, the NTK) or from a ``[n1, n2, 1, 1]`` kernel of the difference output itself (sign kernels)."""
    if kernel.shape[2] == 1:
        return kernel[..., 0, 0]
    return kernel[..., 1, 1] - kernel[..., 1, 0] - kernel[..., 0, 1] + kernel[..., 0, 0]


def flat_kernel(kernel: np.ndarray) -> np.ndarray:
    """``[n1, n2, C, C]`` -> ``[(n1·C), (n2·C)]``, index i·C + c."""
    n1, n2, c1, c2 = kernel.shape
    return kernel.transpose(0, 2, 1, 3).reshape(n1 * c1, n2 * c2)


def _loss_terms(z: np.ndarray, y: np.ndarray, binary: bool):
    """Loss, its gradient and Hessian-vector map at logits z (binary: [n]; softmax: [n, C])."""
    if binary:
        p = 1.0 / (1.0 + np.exp(-z))
        loss = np.sum(np.logaddexp(0.0, z) - y * z)
        weights = p * (1 - p)
        return loss, p - y, lambda v: weights * v
    logp = log_softmax(z, axis=1)
    p = np.exp(logp)
    onehot = np.eye(z.shape[1])[y]
    loss = -np.sum(logp[np.arange(len(y)), y])
    return loss, p - onehot, lambda v: p * v - p * np.sum(p * v, axis=1, keepdims=True)


def fit_klr(kernel: np.ndarray, y: np.ndarray, lam: float, f0: np.ndarray | None = None, mode: str = "auto",
            tol: float = 1e-10, max_iter: int = 100, newton_max: int = 3000) -> dict:
    """Fit kernel logistic regression.

    Args:
        kernel: train kernel ``[n, n, C, C]`` float64.
        y: ``[n]`` class indices.
        lam: λ > 0.
        f0: ``[n, C]`` offset logits, or None for zeros.
        mode: ``binary`` (C = 2, or a C = 1 kernel of the logit difference f_1 − f_0), ``softmax``,
            or ``auto`` (binary when C ≤ 2).

    Returns:
        dict with ``alpha`` (``[n]`` or ``[n, C]``), ``mode``, ``objective``,
        ``grad_norm``, ``iterations``.
    """
    kernel = np.asarray(kernel, dtype=np.float64)
    n, _, classes, _ = kernel.shape
    y = np.asarray(y, dtype=np.int64)
    if not lam > 0:
        raise UserError(f"lambda must be positive, got {lam}")
    if mode == "auto":
        mode = "binary" if classes <= 2 else "softmax"
    if mode == "binary" and classes > 2:
        raise UserError(f"binary kernel logistic regression needs 2 classes, got {classes}")
    if mode == "softmax" and classes == 1:
        raise UserError("a kernel of the logit difference (one output) takes binary kernel logistic regression")
    f0 = np.zeros((n, max(classes, 2))) if f0 is None else np.asarray(f0, dtype=np.float64)
    binary = mode == "binary"
    gram = binary_kernel(kernel) if binary else flat_kernel(kernel)
    offset = f0[:, 1] - f0[:, 0] if binary else f0.reshape(-1)
    targets = y.astype(np.float64) if binary else y
    shape = (n,) if binary else (n, classes)

    def evaluate(alpha_flat):
        z = offset + gram @ alpha_flat
        loss, dz, hess = _loss_terms(z.reshape(shape), targets, binary)
        reg = 0.5 * lam * alpha_flat @ gram @ alpha_flat
        inner = dz.reshape(-1) + lam * alpha_flat  # gradient = gram @ inner
        return loss + reg, inner, hess

    alpha = np.zeros(gram.shape[0])
    objective, inner, hess = evaluate(alpha)
    iterations = 0
    if gram.shape[0] <= newton_max:
        for iterations in range(1, max_iter + 1):
            grad = gram @ inner
            if np.linalg.norm(grad) < tol:
                break
            columns = np.stack([hess(col.reshape(shape)).reshape(-1) for col in gram.T], axis=1)
            step = np.linalg.solve(columns + lam * np.eye(len(alpha)), -inner)
            slope = grad @ step
            t = 1.0
            while True:
                candidate = alpha + t * step
                new_objective, new_inner, new_hess = evaluate(candidate)
                # Armijo, or no increase beyond rounding (near the optimum the decrease
                # drops below the objective's precision while Newton still converges).
                if (new_objective <= objective + 1e-4 * t * slope
                        or (t == 1.0 and new_objective <= objective + 1e-13 * abs(objective)) or t < 1e-12):
                    break
                t *= 0.5
            alpha, objective, inner, hess = candidate, new_objective, new_inner, new_hess
    else:
        result = scipy.optimize.minimize(lambda a: evaluate(a)[0], alpha, jac=lambda a: gram @ evaluate(a)[1],
                                         method="L-BFGS-B", options={"maxiter": 10000, "gtol": tol})
        alpha, iterations = result.x, result.nit
        objective, inner, _ = evaluate(alpha)
    return {"alpha": alpha.reshape(shape), "mode": mode, "objective": float(objective),
            "grad_norm": float(np.linalg.norm(gram @ inner)), "iterations": iterations}


def klr_logits(kernel_eval_train: np.ndarray, alpha: np.ndarray, mode: str,
               f0: np.ndarray | None = None) -> np.ndarray:
    """Predicted label logits ``[m, C]`` from K(eval, train) ``[m, n, C, C]``."""
    kernel = np.asarray(kernel_eval_train, dtype=np.float64)
    m, _, classes, _ = kernel.shape
    f0 = np.zeros((m, max(classes, 2))) if f0 is None else np.asarray(f0, dtype=np.float64)
    if mode == "binary":
        # f_1 − f_0 moves by K_b·α; split it symmetrically over the two logits.
        shift = binary_kernel(kernel) @ alpha
        return f0 + np.stack([-shift / 2, shift / 2], axis=1)
    return f0 + (flat_kernel(kernel) @ alpha.reshape(-1)).reshape(m, classes)


"""Least-squares SVM for asymmetric kernels (AsK-LS), as LM-Kernel-FT solves its asymmetric SignGD kernel.

An asymmetric kernel K(u, v) = ⟨φ(u), ψ(v)⟩ (e.g. ⟨∇f(u), sign ∇f(v)⟩) has two
feature maps, so AsK-LS (He et al., 2022) fits two linear models, ω on φ and
ν on ψ, with squared-error slacks on both (no bias, as LM-Kernel-FT):

    min ⟨ω, ν⟩ + γ/2·Σ e_i² + γ/2·Σ r_i²   s.t.  t_i⟨ω, φ(x_i)⟩ = 1 − e_i,  t_i⟨ν, ψ(x_i)⟩ = 1 − r_i.

With H = diag(t)·K_train·diag(t) (K_train[i, j] = K(x_i, x_j)) its dual is the
2n-by-2n linear system

    [ I/γ   H  ] [α]   [1]
    [ Hᵀ   I/γ ] [β] = [1],

solved here through its n-by-n Schur complement, (I/γ − γ·H·Hᵀ)·α = 1 − γ·H·1 and
β = γ·(1 − Hᵀ·α). A new x is scored λ_mix·Σ_i α_i t_i K(x_i, x) + (1 − λ_mix)·Σ_i
β_i t_i K(x, x_i) (LM-Kernel-FT's prediction from K and its flip). For a
symmetric kernel α = β and this is the ordinary LS-SVM without bias.

Binary classification only (t_i = ±1 for the two classes; with the offset f0,
LM-Kernel-FT's choice: t_i = ±1 minus the pretrained logit difference, and the
prediction adds it back). More classes are refused: AsK-LS has no standard
multi-class form, and one-vs-rest over sign kernels of a difference output is
not defined by the per-class kernels.
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin

from ntk_peft.errors import UserError
from ntk_peft.solvers.klr import binary_kernel


def _scalar(kernel, what: str) -> np.ndarray:
    """``[n1, n2]`` kernel of the logit difference f_1 − f_0 (given as such, as ``[n1, n2, 1, 1]``, or
    reduced from ``[n1, n2, 2, 2]``)."""
    kernel = np.asarray(kernel, dtype=np.float64)
    if kernel.ndim == 4:
        if kernel.shape[2:] not in ((2, 2), (1, 1)):
            raise UserError(f"the asymmetric LS-SVM is for two classes only; the {what} kernel has "
                            f"{kernel.shape[2]} (use klr or krr for more)")
        kernel = binary_kernel(kernel)
    if kernel.ndim != 2:
        raise UserError(f"expected the {what} kernel as [n1, n2] or [n1, n2, 2, 2], got shape {kernel.shape}")
    if not np.isfinite(kernel).all():
        raise UserError(f"the {what} kernel contains NaN or Inf")
    return kernel


def _difference(f0) -> np.ndarray | None:
    if f0 is None:
        return None
    f0 = np.asarray(f0, dtype=np.float64)
    return f0[:, 1] - f0[:, 0] if f0.ndim == 2 else f0


class AsymmetricLSSVM(ClassifierMixin, BaseEstimator):
    """AsK-LS on a (possibly asymmetric) kernel of the logit difference; scikit-learn interface.

    Kernels are given in the toolkit's orientation: ``fit(K_train, y, f0)`` with
    ``K_train[i, j] = K(x_i, x_j)``; ``decision_function(K_eval, f0, flipped)``
    with ``K_eval[m, i] = K(x_m, x_i)`` (evaluation example first, as every
    solver here) and ``flipped[i, m] = K(x_i, x_m)`` (default: ``K_eval``
    transposed, the symmetric case). 4-d ``[n1, n2, 2, 2]`` kernels are reduced
    to the logit difference by `binary_kernel`, which is exact for bilinear
    kernels (the NTK) only: give sign kernels as kernels of the difference output.

    Args:
        lam: regularisation, 1/γ.
        mix: λ_mix, the weight of the α (target-side) model in the prediction.
    """

    def __init__(self, lam: float = 1e-3, mix: float = 0.5):
        self.lam = lam
        self.mix = mix

    def fit(self, kernel, y, f0=None):
        kernel = _scalar(kernel, "training")
        n = kernel.shape[0]
        y = np.asarray(y)
        if kernel.shape != (n, n) or y.shape != (n,):
            raise UserError(f"the training kernel must be [n, n] over the n = {y.size} labels, got {kernel.shape}")
        if not set(np.unique(y)) <= {0, 1}:
            raise UserError("the asymmetric LS-SVM is for two classes (labels 0 and 1)")
        if not 0.0 <= self.mix <= 1.0:
            raise UserError(f"mix must lie in [0, 1], got {self.mix}")
        self.classes_ = np.arange(2)
        shift = _difference(f0)
        targets = 2.0 * y - 1.0 - (0.0 if shift is None else shift)
        gamma = 1.0 / self.lam
        h = targets[:, None] * kernel * targets[None, :]
        ones = np.ones(n)
        schur = np.eye(n) / gamma - gamma * h @ h.T
        self.alpha_ = np.linalg.solve(schur, ones - gamma * h @ ones)
        self.beta_ = gamma * (ones - h.T @ self.alpha_)
        self.targets_ = targets
        return self

    def decision_scores(self, kernel, f0=None, flipped=None) -> np.ndarray:
        """The predicted logit difference ``[m]``."""
        kernel = _scalar(kernel, "evaluation")
        flipped = kernel.T if flipped is None else _scalar(flipped, "flipped evaluation")
        n = self.targets_.size
        if kernel.shape[1] != n or flipped.shape != (n, kernel.shape[0]):
            raise UserError(f"evaluation kernels must be [m, {n}] and [{n}, m], got {kernel.shape} and "
                            f"{flipped.shape}")
        target_side = flipped.T @ (self.alpha_ * self.targets_)  # Σ_i α_i t_i K(x_i, x)
        source_side = kernel @ (self.beta_ * self.targets_)  # Σ_i β_i t_i K(x, x_i)
        scores = self.mix * target_side + (1.0 - self.mix) * source_side
        shift = _difference(f0)
        return scores if shift is None else scores + shift

    def decision_function(self, kernel, f0=None, flipped=None) -> np.ndarray:
        """``[m, 2]``: the logit difference split over the two classes (the layout of the other solvers)."""
        scores = self.decision_scores(kernel, f0, flipped)
        return np.stack([-scores / 2, scores / 2], axis=1)

    def predict(self, kernel, f0=None, flipped=None) -> np.ndarray:
        return (self.decision_scores(kernel, f0, flipped) > 0).astype(np.int64)

    def predict_proba(self, kernel, f0=None, flipped=None) -> np.ndarray:
        return softmax(self.decision_function(kernel, f0, flipped), axis=1)

    def direction_weights(self) -> np.ndarray:
        """W ``[n, 1, 2]`` over the difference output: column 0 the target side λ_mix·α·t (a direction of
        gradients, projected on T₂ of the new example's gradient), column 1 the source side
        (1 − λ_mix)·β·t (a direction of T₂ of gradients, projected on the new example's gradient); see
        `ntk_peft.ntk.kernel_types.direction_plan`."""
        target = self.mix * self.alpha_ * self.targets_
        source = (1.0 - self.mix) * self.beta_ * self.targets_
        return np.stack([target, source], axis=1)[:, None, :]

    def decision_from_projections(self, projections, f0=None) -> np.ndarray:
        """``[m, 2]`` from P ``[m, 1, 2]`` (the two columns of `direction_weights`, each projected its way)."""
        projections = np.asarray(projections, dtype=np.float64)
        scores = projections[:, 0, 0] + projections[:, 0, 1]
        shift = _difference(f0)
        scores = scores if shift is None else scores + shift
        return np.stack([-scores / 2, scores / 2], axis=1)

    def predict_from_projections(self, projections, f0=None) -> np.ndarray:
        return np.argmax(self.decision_from_projections(projections, f0), axis=1)

"""scikit-learn compatible kernel classifiers on eNTK kernels.

All take the kernel in the toolkit's layout: ``fit(K_train [n, n, C, C], y,
f0=None)``, ``predict(K_eval_train [m, n, C, C], f0=None)``. ``f0`` is the
pretrained model's label logits (offset; default on in ``ntk-compare``).

- `KernelLogisticRegression` (``klr``): see `ntk_peft.solvers.klr`.
- `KernelRidgeClassifier` (``krr``): ridge regression of the one-hot targets
  minus f0 on the flattened matrix-valued kernel, (K + λI)·α = Y − f0.
- `KernelSVMClassifier` (``svm``): scikit-learn's ``SVC(kernel="precomputed")``
  on the logit-difference kernel (2 classes) or the trace over outputs
  (C > 2); f0 is not used.

Every decision function is linear in the evaluation kernel. `direction_weights`
gives W ``[n, C, S]`` such that the decision depends on K_eval only through
P[j, d, s] = Σ_{i,c} K_eval[j, i, d, c]·W[i, c, s], and
`decision_from_projections(P, f0)` finishes it; P is what
`ntk_peft.ntk.directions.project_directions` computes without forming K_eval
(None where no small W exists: the multi-class SVM).
"""

from __future__ import annotations

import numpy as np
from scipy.special import softmax
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.svm import SVC

from ntk_peft.errors import UserError
from ntk_peft.solvers.asymmetric import AsymmetricLSSVM
from ntk_peft.solvers.klr import binary_kernel, fit_klr, flat_kernel, klr_logits


class _KernelClassifier(ClassifierMixin, BaseEstimator):
    def _check(self, kernel, train: bool):
        kernel = np.asarray(kernel, dtype=np.float64)
        if kernel.ndim != 4 or kernel.shape[2] != kernel.shape[3]:
            raise UserError(f"expected a kernel of shape [n1, n2, C, C], got {kernel.shape}")
        if train and kernel.shape[0] != kernel.shape[1]:
            raise UserError(f"the training kernel must be square over examples, got {kernel.shape}")
        if not np.isfinite(kernel).all():
            raise UserError("the kernel contains NaN or Inf")
        return kernel

    def predict(self, kernel, f0=None):
        return np.argmax(self.decision_function(kernel, f0), axis=1)

    def predict_proba(self, kernel, f0=None):
        return softmax(self.decision_function(kernel, f0), axis=1)

    def direction_weights(self) -> np.ndarray | None:
        """W ``[n_train, C, S]`` (see the module docstring), or None."""
        return None

    def decision_from_projections(self, projections, f0=None) -> np.ndarray:
        """The decision function ``[m, C]`` from P ``[m, C, S]`` = K_eval contracted with `direction_weights`."""
        raise NotImplementedError(f"{type(self).__name__} predicts from kernels only")

    def predict_from_projections(self, projections, f0=None) -> np.ndarray:
        return np.argmax(self.decision_from_projections(projections, f0), axis=1)


def _offset(f0, m: int, classes: int) -> np.ndarray:
    return np.zeros((m, classes)) if f0 is None else np.asarray(f0, dtype=np.float64)


def _split_shift(shift: np.ndarray) -> np.ndarray:
    """A logit-difference shift split symmetrically over two logits: ``[m, 2]``."""
    return np.stack([-shift / 2, shift / 2], axis=1)


def _difference_weights(coefficients: np.ndarray) -> np.ndarray:
    """W for the logit-difference kernel: row i is coefficient_i·(−1, +1), ``[n, 2, 1]``."""
    return np.stack([-coefficients, coefficients], axis=1)[..., None]


class KernelLogisticRegression(_KernelClassifier):
    """Kernel logistic regression (binary for 2 classes, else softmax)."""

    def __init__(self, lam: float = 1e-3, mode: str = "auto", tol: float = 1e-10):
        self.lam, self.mode, self.tol = lam, mode, tol

    def fit(self, kernel, y, f0=None):
        kernel = self._check(kernel, True)
        self.classes_ = np.arange(max(kernel.shape[2], 2))  # one output: the logit difference of 2 classes
        self.outputs_ = kernel.shape[2]
        self.fit_ = fit_klr(kernel, np.asarray(y), self.lam, f0, self.mode, self.tol)
        return self

    def decision_function(self, kernel, f0=None):
        return klr_logits(self._check(kernel, False), self.fit_["alpha"], self.fit_["mode"], f0)

    def direction_weights(self) -> np.ndarray:
        alpha = self.fit_["alpha"]
        if self.outputs_ == 1:  # a kernel of the difference output: W[i, 0, 0] = α_i
            return alpha[:, None, None]
        return _difference_weights(alpha) if self.fit_["mode"] == "binary" else alpha[..., None]

    def decision_from_projections(self, projections, f0=None) -> np.ndarray:
        projections = np.asarray(projections, dtype=np.float64)
        m, classes, _ = projections.shape
        if self.outputs_ == 1:
            return _offset(f0, m, 2) + _split_shift(projections[:, 0, 0])
        if self.fit_["mode"] == "binary":
            return _offset(f0, m, classes) + _split_shift(projections[:, 1, 0] - projections[:, 0, 0])
        return _offset(f0, m, classes) + projections[:, :, 0]


class KernelRidgeClassifier(_KernelClassifier):
    """Kernel ridge regression on one-hot targets (offset by f0); on a one-output kernel of the logit
    difference, on the targets ±1 (offset by f0₁ − f0₀)."""

    def __init__(self, lam: float = 1e-3):
        self.lam = lam

    def fit(self, kernel, y, f0=None):
        kernel = self._check(kernel, True)
        n, _, outputs, _ = kernel.shape
        self.outputs_ = outputs
        self.classes_ = np.arange(max(outputs, 2))
        y = np.asarray(y)
        if outputs == 1:
            targets = 2.0 * y - 1.0 - _difference(_offset(f0, n, 2))
        else:
            targets = np.eye(outputs)[y] - _offset(f0, n, outputs)
        system = flat_kernel(kernel) + self.lam * np.eye(n * outputs)
        self.alpha_ = np.linalg.solve(system, targets.reshape(-1))
        return self

    def _finish(self, moved: np.ndarray, f0, m: int) -> np.ndarray:
        """``[m, C]`` from the kernel part ``[m, O]``."""
        if self.outputs_ == 1:
            return _offset(f0, m, 2) + _split_shift(moved[:, 0])
        return _offset(f0, m, self.outputs_) + moved

    def decision_function(self, kernel, f0=None):
        kernel = self._check(kernel, False)
        m = kernel.shape[0]
        return self._finish((flat_kernel(kernel) @ self.alpha_).reshape(m, self.outputs_), f0, m)

    def direction_weights(self) -> np.ndarray:
        return self.alpha_.reshape(-1, self.outputs_)[..., None]

    def decision_from_projections(self, projections, f0=None) -> np.ndarray:
        projections = np.asarray(projections, dtype=np.float64)
        return self._finish(projections[:, :, 0], f0, projections.shape[0])


def _difference(f0: np.ndarray) -> np.ndarray:
    return f0[:, 1] - f0[:, 0]


def scalar_kernel(kernel: np.ndarray) -> np.ndarray:
    """Logit-difference kernel for 2 classes (or the one-output kernel of the difference itself), trace
    over outputs otherwise."""
    return binary_kernel(kernel) if kernel.shape[2] == 2 else np.trace(kernel, axis1=2, axis2=3)


class KernelSVMClassifier(_KernelClassifier):
    """``SVC(kernel="precomputed")`` on a scalar kernel; C_svm = 1/λ."""

    def __init__(self, lam: float = 1e-3):
        self.lam = lam

    def fit(self, kernel, y, f0=None):
        kernel = self._check(kernel, True)
        self.outputs_ = kernel.shape[2]
        self.classes_ = np.arange(max(kernel.shape[2], 2))
        self.svc_ = SVC(kernel="precomputed", C=1.0 / self.lam).fit(scalar_kernel(kernel), np.asarray(y))
        self.n_train_ = kernel.shape[0]
        return self

    def decision_function(self, kernel, f0=None):
        kernel = self._check(kernel, False)
        scores = self.svc_.decision_function(scalar_kernel(kernel))
        if scores.ndim == 1:  # binary: one score for class 1
            return np.stack([-scores / 2, scores / 2], axis=1)
        out = np.full((kernel.shape[0], len(self.classes_)), -np.inf)
        out[:, self.svc_.classes_] = scores
        return out

    def direction_weights(self) -> np.ndarray | None:
        """Binary only: scikit-learn's decision is Σ_k dual_coef_[k]·K_b(x, x_support_k) + intercept_."""
        if len(self.classes_) != 2 or len(self.svc_.classes_) != 2:
            return None
        coefficients = np.zeros(self.n_train_)
        coefficients[self.svc_.support_] = self.svc_.dual_coef_[0]
        return coefficients[:, None, None] if self.outputs_ == 1 else _difference_weights(coefficients)

    def decision_from_projections(self, projections, f0=None) -> np.ndarray:
        if self.direction_weights() is None:
            raise NotImplementedError("the multi-class SVM predicts from kernels only")
        projections = np.asarray(projections, dtype=np.float64)
        moved = projections[:, 0, 0] if self.outputs_ == 1 else projections[:, 1, 0] - projections[:, 0, 0]
        return _split_shift(moved + self.svc_.intercept_[0])


SOLVERS = {"klr": KernelLogisticRegression, "krr": KernelRidgeClassifier, "svm": KernelSVMClassifier,
           "lssvm": AsymmetricLSSVM}


def make_solver(name: str, lam: float):
    """A solver by name (``klr``, ``krr``, ``svm``, ``lssvm``: AsK-LS) with regularisation λ."""
    if name not in SOLVERS:
        raise UserError(f"unknown solver {name!r}; valid: {', '.join(SOLVERS)}")
    return SOLVERS[name](lam=lam)


def kernel_scale(kernel) -> float:
    """Mean diagonal of the flattened train kernel (λ grids are relative to it)."""
    flat = flat_kernel(np.asarray(kernel, dtype=np.float64))
    return float(np.mean(np.diag(flat))) or 1.0


LAMBDA_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # λ / kernel_scale; the last is the most regularised


def lambda_grid(kernel_train, grid=LAMBDA_GRID) -> list[float]:
    """The λ values g·scale for g in ``grid``, ``scale`` the train kernel's `kernel_scale`."""
    scale = kernel_scale(kernel_train)
    return [g * scale for g in grid]


def best_lambda(lambdas: list[float], accuracies: list[float]) -> float:
    """The λ with the best dev accuracy (ties: the larger λ)."""
    return lambdas[max(range(len(lambdas)), key=lambda k: (accuracies[k], lambdas[k]))]


def select_lambda(name: str, kernel_train, y_train, kernel_dev_train, y_dev, f0_train=None, f0_dev=None,
                  grid=LAMBDA_GRID, flipped=None) -> tuple[float, list[float]]:
    """λ = g·scale for g in ``grid`` with the best dev accuracy (ties: the larger λ).

    ``scale`` is `kernel_scale` of the train kernel, so the grid means the
    same on kernels of any magnitude. ``flipped``: K(train, dev) for an
    asymmetric kernel (``lssvm``). Returns (λ, dev accuracies per g).
    (`ntk_peft.experiments.dev_projections` gives the same choice from
    projections, without ``kernel_dev_train``.)
    """
    grid = lambda_grid(kernel_train, grid)
    accuracies = []
    for lam in grid:
        model = make_solver(name, lam).fit(kernel_train, y_train, f0_train)
        extra = {} if flipped is None else {"flipped": flipped}
        accuracies.append(float(np.mean(model.predict(kernel_dev_train, f0_dev, **extra) == np.asarray(y_dev))))
    return best_lambda(grid, accuracies), accuracies

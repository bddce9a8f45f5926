"""Kernel logistic regression: optimality, scipy agreement, primal equivalence, limits."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.optimize
from scipy.special import log_softmax
from sklearn.base import clone

from ntk_peft.errors import UserError
from ntk_peft.solvers import (
    KernelLogisticRegression,
    KernelRidgeClassifier,
    KernelSVMClassifier,
    binary_kernel,
    fit_klr,
    flat_kernel,
    klr_logits,
    select_lambda,
)


def _problem(n=12, classes=2, features=5, seed=0):
    rng = np.random.default_rng(seed)
    jac = rng.normal(size=(n, classes, features))  # a rank-deficient PSD matrix-valued kernel
    kernel = np.einsum("icp,jdp->ijcd", jac, jac)
    y = rng.integers(0, classes, size=n)
    y[:classes] = np.arange(classes)
    f0 = rng.normal(size=(n, classes)) * 0.3
    return kernel, y, f0


def _objective(alpha, kernel, y, f0, lam, mode):
    if mode == "binary":
        gram = binary_kernel(kernel)
        z = f0[:, 1] - f0[:, 0] + gram @ alpha
        return np.sum(np.logaddexp(0, z) - y * z) + 0.5 * lam * alpha @ gram @ alpha
    gram = flat_kernel(kernel)
    z = (f0.reshape(-1) + gram @ alpha).reshape(len(y), -1)
    return -np.sum(log_softmax(z, axis=1)[np.arange(len(y)), y]) + 0.5 * lam * alpha @ gram @ alpha


@pytest.mark.parametrize("classes,mode", [(2, "binary"), (2, "softmax"), (3, "softmax"), (5, "softmax")])
@pytest.mark.parametrize("lam", [1e-2, 1.0])
def test_newton_optimum_matches_scipy(classes, mode, lam):
    kernel, y, f0 = _problem(classes=classes, seed=classes)
    fit = fit_klr(kernel, y, lam, f0, mode)
    assert fit["grad_norm"] < 1e-8
    size = len(y) if mode == "binary" else len(y) * classes
    best = scipy.optimize.minimize(_objective, np.zeros(size), args=(kernel, y, f0, lam, mode), method="BFGS",
                                   options={"gtol": 1e-12, "maxiter": 10000})
    assert abs(fit["objective"] - best.fun) <= 1e-9 * abs(best.fun)
    assert abs(fit["objective"] - _objective(fit["alpha"].reshape(-1), kernel, y, f0, lam, mode)) < 1e-12


def test_lbfgs_path_agrees_with_newton():
    kernel, y, f0 = _problem(n=10, classes=3, seed=7)
    newton = fit_klr(kernel, y, 0.1, f0)
    lbfgs = fit_klr(kernel, y, 0.1, f0, newton_max=0)
    assert abs(newton["objective"] - lbfgs["objective"]) <= 1e-9 * abs(newton["objective"])


def test_linear_kernel_matches_primal_l2_logistic_regression():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(20, 4))
    y = (x @ np.array([1.0, -2.0, 0.5, 0.0]) + 0.3 * rng.normal(size=20) > 0).astype(int)
    kernel = np.zeros((20, 20, 2, 2))
    kernel[..., 1, 1] = x @ x.T  # binary kernel of f_1 − f_0 is X Xᵀ
    lam = 0.5
    fit = fit_klr(kernel, y, lam, mode="binary")

    def primal(w):
        z = x @ w
        return np.sum(np.logaddexp(0, z) - y * z) + 0.5 * lam * w @ w

    w = np.zeros(4)  # primal Newton: an independent, exact reference
    for _ in range(50):
        p = 1 / (1 + np.exp(-(x @ w)))
        gradient = x.T @ (p - y) + lam * w
        hessian = x.T @ (x * (p * (1 - p))[:, None]) + lam * np.eye(4)
        w -= np.linalg.solve(hessian, gradient)
    assert np.linalg.norm(x.T @ (1 / (1 + np.exp(-(x @ w))) - y) + lam * w) < 1e-12
    assert primal(w) <= fit["objective"] + 1e-12 * abs(primal(w))
    np.testing.assert_allclose(binary_kernel(kernel) @ fit["alpha"], x @ w, rtol=0, atol=1e-9)
    np.testing.assert_allclose(x.T @ fit["alpha"], w, rtol=0, atol=1e-9)  # w = Xᵀα


def test_infinite_lambda_predicts_from_f0_alone():
    kernel, y, f0 = _problem(classes=3, seed=1)
    fit = fit_klr(kernel, y, 1e12, f0)
    logits = klr_logits(kernel, fit["alpha"], fit["mode"], f0)
    np.testing.assert_allclose(logits, f0, atol=1e-9)


@pytest.mark.parametrize("cls", [KernelLogisticRegression, KernelRidgeClassifier, KernelSVMClassifier])
def test_estimators_fit_separable_data_and_clone(cls):
    kernel, y, f0 = _problem(n=16, classes=2, features=40, seed=5)
    model = cls(lam=1e-4).fit(kernel, y, f0 if cls is not KernelSVMClassifier else None)
    assert (model.predict(kernel, f0) == y).mean() == 1.0
    proba = model.predict_proba(kernel, f0)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    assert clone(model).get_params() == {"lam": 1e-4, **({"mode": "auto", "tol": 1e-10}
                                                          if cls is KernelLogisticRegression else {})}


def test_lambda_selection_and_bad_input():
    kernel, y, f0 = _problem(n=16, classes=3, seed=2)
    lam, accuracies = select_lambda("klr", kernel[:10, :10], y[:10], kernel[10:, :10], y[10:], f0[:10], f0[10:])
    assert lam > 0 and len(accuracies) == 8
    with pytest.raises(UserError, match="lambda must be positive"):
        fit_klr(kernel, y, 0.0)
    with pytest.raises(UserError, match="needs 2 classes"):
        fit_klr(kernel, y, 1.0, mode="binary")
    with pytest.raises(UserError, match="must be square"):
        KernelLogisticRegression().fit(kernel[:, :5], y)


@pytest.mark.parametrize("cls,classes,mode", [
    (KernelLogisticRegression, 2, "auto"), (KernelLogisticRegression, 2, "softmax"),
    (KernelLogisticRegression, 4, "auto"), (KernelRidgeClassifier, 2, None), (KernelRidgeClassifier, 3, None),
    (KernelSVMClassifier, 2, None),
])
def test_decisions_from_direction_projections_equal_the_kernel_decisions(cls, classes, mode):
    """P = K_eval contracted with the direction weights carries everything the decision needs."""
    rng = np.random.default_rng(4)
    jac = rng.normal(size=(20, classes, 6))
    kernel = np.einsum("icp,jdp->ijcd", jac, jac)
    y = rng.integers(0, classes, size=14)
    y[:classes] = np.arange(classes)
    f0 = rng.normal(size=(20, classes)) * 0.3
    model = cls(lam=0.05) if mode is None else cls(lam=0.05, mode=mode)
    model.fit(kernel[:14, :14], y, f0[:14])
    k_eval = kernel[14:, :14]
    weights = model.direction_weights()
    projections = np.einsum("jidc,ics->jds", k_eval, weights)
    expected = model.decision_function(k_eval, f0[14:])
    got = model.decision_from_projections(projections, f0[14:])
    assert np.abs(got - expected).max() <= 1e-10 * np.abs(expected).max()
    assert (model.predict_from_projections(projections, f0[14:]) == model.predict(k_eval, f0[14:])).all()


def test_multiclass_svm_has_no_direction_weights():
    kernel, y, f0 = _problem(n=12, classes=3)
    model = KernelSVMClassifier(lam=0.1).fit(kernel, y)
    assert model.direction_weights() is None
    with pytest.raises(NotImplementedError):
        model.decision_from_projections(np.zeros((2, 3, 1)))

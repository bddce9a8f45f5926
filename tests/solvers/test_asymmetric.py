"""The asymmetric LS-SVM (AsK-LS): its linear system, its primal, its symmetric special case."""

from __future__ import annotations

import numpy as np
import pytest

from ntk_peft.errors import UserError
from ntk_peft.solvers.asymmetric import AsymmetricLSSVM


def _features(n=12, m=5, p=7, seed=0):
    rng = np.random.default_rng(seed)
    phi, psi = rng.normal(size=(n + m, p)), rng.normal(size=(n + m, p))  # K(u, v) = <phi(u), psi(v)>
    y = np.array([0, 1] * (n // 2))
    return phi, psi, y, n


def test_solution_equals_a_direct_dense_solve_of_the_2n_system():
    phi, psi, y, n = _features()
    kernel = phi[:n] @ psi[:n].T
    lam = 0.3
    model = AsymmetricLSSVM(lam=lam).fit(kernel, y)
    t = 2.0 * y - 1.0
    h = t[:, None] * kernel * t[None, :]
    system = np.block([[np.eye(n) * lam, h], [h.T, np.eye(n) * lam]])
    direct = np.linalg.solve(system, np.ones(2 * n))
    assert np.allclose(model.alpha_, direct[:n], rtol=1e-10, atol=1e-12)
    assert np.allclose(model.beta_, direct[n:], rtol=1e-10, atol=1e-12)


def test_dual_solution_is_a_stationary_point_of_the_primal_and_scores_with_both_feature_maps():
    phi, psi, y, n = _features(seed=1)
    lam = 0.5
    gamma = 1 / lam
    model = AsymmetricLSSVM(lam=lam, mix=0.3).fit(phi[:n] @ psi[:n].T, y)
    t = 2.0 * y - 1.0
    omega = (model.beta_ * t) @ psi[:n]  # the model on phi
    nu = (model.alpha_ * t) @ phi[:n]  # the model on psi
    e, r = 1 - t * (phi[:n] @ omega), 1 - t * (psi[:n] @ nu)
    # gradient of <w, v> + g/2 |1 - t<w, phi>|^2 + g/2 |1 - t<v, psi>|^2 in w and in v
    assert np.allclose(nu - gamma * (e * t) @ phi[:n], 0, atol=1e-10)
    assert np.allclose(omega - gamma * (r * t) @ psi[:n], 0, atol=1e-10)
    new_phi, new_psi = phi[n:], psi[n:]
    scores = model.decision_scores(new_phi @ psi[:n].T, flipped=phi[:n] @ new_psi.T)
    assert np.allclose(scores, 0.3 * new_psi @ nu + 0.7 * new_phi @ omega, atol=1e-10)


def test_a_symmetric_kernel_gives_alpha_equal_beta_the_plain_ls_svm():
    phi, _, y, n = _features(seed=2)
    kernel = phi[:n] @ phi[:n].T
    model = AsymmetricLSSVM(lam=0.1).fit(kernel, y)
    t = 2.0 * y - 1.0
    ls_svm = np.linalg.solve(np.eye(n) * 0.1 + t[:, None] * kernel * t[None, :], np.ones(n))
    assert np.allclose(model.alpha_, model.beta_, rtol=1e-9) and np.allclose(model.alpha_, ls_svm, rtol=1e-9)
    evaluation = phi[n:] @ phi[:n].T
    for mix in (0.0, 0.5, 1.0):  # the flip is the transpose, so every mix predicts the same
        model.set_params(mix=mix)
        assert np.allclose(model.decision_scores(evaluation), evaluation @ (ls_svm * t), rtol=1e-9)


def test_four_dimensional_kernels_and_the_f0_offset():
    rng = np.random.default_rng(3)
    n = 8
    kernel = rng.normal(size=(n, n, 2, 2))
    y = np.array([0, 1] * (n // 2))
    f0 = rng.normal(size=(n, 2))
    model = AsymmetricLSSVM(lam=0.2).fit(kernel, y, f0)
    difference = kernel[..., 1, 1] - kernel[..., 1, 0] - kernel[..., 0, 1] + kernel[..., 0, 0]
    twin = AsymmetricLSSVM(lam=0.2).fit(difference, y, f0[:, 1] - f0[:, 0])
    assert np.allclose(model.alpha_, twin.alpha_) and np.allclose(model.targets_, 2 * y - 1 - (f0[:, 1] - f0[:, 0]))
    without = model.decision_scores(kernel)
    assert np.allclose(model.decision_scores(kernel, f0), without + f0[:, 1] - f0[:, 0])
    assert model.predict(kernel, f0).tolist() == (without + f0[:, 1] - f0[:, 0] > 0).astype(int).tolist()
    assert np.allclose(model.predict_proba(kernel).sum(1), 1)


@pytest.mark.parametrize("kernel,y,match", [
    (np.zeros((4, 4, 3, 3)), [0, 1, 2, 0], "two classes only"),
    (np.zeros((4, 4)), [0, 1, 2, 0], "two classes"),
    (np.zeros((4, 3)), [0, 1, 1, 0], r"must be \[n, n\]"),
    (np.full((2, 2), np.nan), [0, 1], "NaN"),
])
def test_bad_input_is_refused_in_one_line(kernel, y, match):
    with pytest.raises(UserError, match=match) as caught:
        AsymmetricLSSVM().fit(kernel, y)
    assert "\n" not in str(caught.value)


def test_projections_of_both_sides_give_the_kernel_decision():
    """direction_weights' two columns, projected as `direction_plan` says (column 0 on the evaluation side's
    psi with phi-directions, column 1 on phi with psi-directions), give decision_function exactly."""
    phi, psi, y, n = _features(seed=2)
    f0 = np.random.default_rng(3).normal(size=(n + 5, 2))
    model = AsymmetricLSSVM(lam=0.2, mix=0.35).fit((phi[:n] @ psi[:n].T)[:, :, None, None], y, f0[:n])
    weights = model.direction_weights()  # [n, 1, 2]
    assert weights.shape == (n, 1, 2)
    target_direction = weights[:, 0, 0] @ phi[:n]  # Σ W_i phi(x_i), projected on psi(x): K(x_i, x)
    source_direction = weights[:, 0, 1] @ psi[:n]  # Σ W_i psi(x_i), projected on phi(x): K(x, x_i)
    projections = np.stack([psi[n:] @ target_direction, phi[n:] @ source_direction], axis=1)[:, None, :]
    expected = model.decision_function(phi[n:] @ psi[:n].T, f0[n:], flipped=phi[:n] @ psi[n:].T)
    assert np.allclose(model.decision_from_projections(projections, f0[n:]), expected, rtol=1e-12, atol=1e-12)
    assert (model.predict_from_projections(projections, f0[n:]) == expected.argmax(1)).all()


def test_one_output_kernels_are_the_logit_difference():
    """A [n, n, 1, 1] kernel is the difference kernel itself: as the [n, n] one, for AsK-LS and for KLR
    (whose [n, n, 2, 2] kernel with that difference kernel gives the same fit)."""
    from ntk_peft.solvers import KernelLogisticRegression

    phi, psi, y, n = _features(seed=4)
    kernel = phi[:n] @ phi[:n].T
    f0 = np.random.default_rng(5).normal(size=(n, 2))
    one = AsymmetricLSSVM(lam=0.1).fit(kernel[:, :, None, None], y, f0)
    plain = AsymmetricLSSVM(lam=0.1).fit(kernel, y, f0)
    assert np.array_equal(one.alpha_, plain.alpha_)
    split = np.zeros((n, n, 2, 2))  # outputs (-d/2, d/2): binary_kernel gives back the difference kernel
    split[..., 0, 0] = split[..., 1, 1] = kernel / 4
    split[..., 0, 1] = split[..., 1, 0] = -kernel / 4
    klr_one = KernelLogisticRegression(lam=0.05).fit(kernel[:, :, None, None], y, f0)
    klr_two = KernelLogisticRegression(lam=0.05).fit(split, y, f0)
    assert np.allclose(klr_one.fit_["alpha"], klr_two.fit_["alpha"], rtol=1e-10, atol=1e-12)
    assert np.allclose(klr_one.decision_function(kernel[:, :, None, None], f0),
                       klr_two.decision_function(split, f0), rtol=1e-10, atol=1e-12)
    weights = klr_one.direction_weights()
    assert weights.shape == (n, 1, 1)
    projections = np.einsum("ji,is->js", kernel, weights[:, 0, :])[:, None, :]
    assert np.allclose(klr_one.decision_from_projections(projections, f0), klr_one.decision_function(
        kernel[:, :, None, None], f0), rtol=1e-12, atol=1e-12)
    assert list(klr_one.classes_) == [0, 1]


@pytest.mark.parametrize("name", ["krr", "svm"])
def test_ridge_and_svm_take_one_output_difference_kernels(name):
    """KRR on the difference kernel regresses ±1 − (f0₁ − f0₀); the SVM sees the same scalar kernel as from
    the [n, n, 2, 2] kernel whose difference it is. Projections of direction_weights give the decision."""
    from ntk_peft.solvers import make_solver
    from ntk_peft.solvers.klr import binary_kernel

    phi, _, y, n = _features(seed=6)
    kernel = phi @ phi.T  # [n + m, n + m]
    f0 = np.random.default_rng(7).normal(size=(n + 5, 2))
    one = make_solver(name, 0.3).fit(kernel[:n, :n, None, None], y, f0[:n])
    eval_kernel = kernel[n:, :n, None, None]
    decision = one.decision_function(eval_kernel, f0[n:])
    if name == "krr":
        targets = 2.0 * y - 1.0 - (f0[:n, 1] - f0[:n, 0])
        alpha = np.linalg.solve(kernel[:n, :n] + 0.3 * np.eye(n), targets)
        shift = kernel[n:, :n] @ alpha + f0[n:, 1] - f0[n:, 0]
        assert np.allclose(decision[:, 1] - decision[:, 0], shift, rtol=1e-10, atol=1e-12)
    else:
        split = np.zeros((n, n, 2, 2))
        split[..., 0, 0] = split[..., 1, 1] = kernel[:n, :n] / 4
        split[..., 0, 1] = split[..., 1, 0] = -kernel[:n, :n] / 4
        assert np.allclose(binary_kernel(split), kernel[:n, :n])
        two = make_solver(name, 0.3).fit(split, y)
        assert np.allclose(decision, two.decision_function(
            np.stack([np.stack([eval_kernel[..., 0, 0] / 4, -eval_kernel[..., 0, 0] / 4], -1),
                      np.stack([-eval_kernel[..., 0, 0] / 4, eval_kernel[..., 0, 0] / 4], -1)], -2)), atol=1e-10)
    weights = one.direction_weights()
    assert weights.shape == (n, 1, 1)
    projections = np.einsum("ji,is->js", kernel[n:, :n], weights[:, 0, :])[:, None, :]
    assert np.allclose(one.decision_from_projections(projections, f0[n:]), decision, rtol=1e-10, atol=1e-12)

"""ΔW metrics on constructed matrices of known rank and spectrum, against numpy/scipy."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from ntk_peft.analysis import (
    compare_delta_w,
    delta_w_metrics,
    factored_singular_values,
    principal_angles,
    singular_values,
)


def _with_spectrum(m: int, n: int, sigma, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    u = scipy.linalg.qr(rng.standard_normal((m, m)))[0][:, : len(sigma)]
    v = scipy.linalg.qr(rng.standard_normal((n, n)))[0][:, : len(sigma)]
    return u @ np.diag(sigma) @ v.T


@pytest.mark.parametrize("shape", [(12, 12), (20, 7), (6, 15)])
def test_metrics_of_a_known_spectrum(shape):
    sigma = np.array([5.0, 3.0, 1.0, 1e-2, 2e-3])  # rank 5; 4 above 1e-3·σ_max = 5e-3
    matrix = _with_spectrum(*shape, sigma)
    metrics = delta_w_metrics(torch.from_numpy(matrix))
    np.testing.assert_allclose(singular_values(matrix)[:5], sigma, rtol=1e-12)
    assert metrics["rank_machine"] == 5 == np.linalg.matrix_rank(matrix)
    assert metrics["rank_relative"] == 4
    p = sigma / sigma.sum()
    assert metrics["effective_rank"] == pytest.approx(np.exp(-np.sum(p * np.log(p))), rel=1e-12)
    assert metrics["stable_rank"] == pytest.approx(np.sum(sigma ** 2) / 25.0, rel=1e-12)
    assert metrics["frobenius"] == pytest.approx(np.linalg.norm(matrix), rel=1e-12)
    assert metrics["sigma_max"] == pytest.approx(5.0, rel=1e-12)


def test_zero_and_rank_one_matrices():
    zero = delta_w_metrics(np.zeros((4, 3)))
    assert zero["rank_machine"] == zero["rank_relative"] == 0 and zero["effective_rank"] == 0.0
    one = delta_w_metrics(np.outer(np.arange(1.0, 5.0), np.ones(3)))
    assert one["rank_machine"] == 1 and one["effective_rank"] == pytest.approx(1.0)
    assert one["stable_rank"] == pytest.approx(1.0)


@pytest.mark.parametrize("m, r, n", [(30, 1, 12), (9, 3, 40), (16, 4, 16), (5, 7, 6), (6, 6, 20)])
def test_factored_singular_values_are_the_products_dense_svd(m, r, n):
    """The thin-QR core against a dense SVD of the product, including the zeros past rank r and the
    r ≥ min(m, n) fallback; float32 factors are multiplied in float64."""
    rng = np.random.default_rng(m * 100 + r)
    left, right = rng.standard_normal((m, r)), rng.standard_normal((r, n))
    dense = scipy.linalg.svdvals(left @ right)
    sigma = factored_singular_values(left, right)
    assert sigma.shape == (min(m, n),) and np.all(np.diff(sigma) <= 0)
    np.testing.assert_allclose(sigma, dense, rtol=0, atol=1e-12 * dense[0])
    if r < min(m, n):
        assert np.all(sigma[r:] == 0.0)
    single = factored_singular_values(torch.from_numpy(left).float(), torch.from_numpy(right).float())
    exact = scipy.linalg.svdvals(left.astype(np.float32).astype(np.float64) @ right.astype(np.float32).astype(np.float64))
    np.testing.assert_allclose(single, exact, rtol=0, atol=1e-12 * exact[0])


def test_factored_singular_values_of_a_zero_factor_and_bad_shapes():
    assert np.array_equal(factored_singular_values(np.zeros((8, 2)), np.ones((2, 5))), np.zeros(5))
    with pytest.raises(ValueError, match="do not multiply"):
        factored_singular_values(np.ones((8, 2)), np.ones((3, 5)))


def test_principal_angles_zero_for_one_column_space_and_right_angle_for_orthogonal():
    rng = np.random.default_rng(1)
    a = _with_spectrum(10, 8, [3.0, 2.0, 1.0], seed=2)
    same_space = a @ rng.standard_normal((8, 8))  # columns mix, the column space stays
    assert np.max(principal_angles(a, same_space)) < 1e-7
    basis = scipy.linalg.qr(rng.standard_normal((10, 10)))[0]
    left, right = basis[:, :3] @ rng.standard_normal((3, 6)), basis[:, 3:6] @ rng.standard_normal((3, 6))
    assert compare_delta_w(left, right, r=3)["max_principal_angle"] == pytest.approx(np.pi / 2, abs=1e-10)
    angles = principal_angles(left, basis[:, [0, 7]] @ rng.standard_normal((2, 6)))
    np.testing.assert_allclose(angles, [0.0, np.pi / 2], atol=1e-10)


def test_pairwise_comparisons_against_direct_formulas():
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((9, 9)), rng.standard_normal((9, 9))
    out = compare_delta_w(a, b, r=4)
    assert out["frobenius_distance"] == pytest.approx(np.sqrt(np.sum((a - b) ** 2)), rel=1e-12)
    assert out["cosine"] == pytest.approx(np.dot(a.ravel(), b.ravel()) / np.linalg.norm(a) / np.linalg.norm(b))
    sa, sb = np.linalg.svd(a, compute_uv=False), np.linalg.svd(b, compute_uv=False)
    assert out["singular_sq_diff"] == pytest.approx(np.sum((sa[:4] - sb[:4]) ** 2), rel=1e-10)
    ea, eb = np.linalg.eigvals(a), np.linalg.eigvals(b)
    def top(values):  # by modulus (10 digits), conjugate pairs by real then imaginary part
        return values[np.lexsort((values.imag, values.real, -np.round(np.abs(values), 10)))][:4]

    ea, eb = top(ea), top(eb)
    assert out["eigen_sq_diff"] == pytest.approx(np.sum(np.abs(ea - eb) ** 2), rel=1e-8)
    same = compare_delta_w(a, 2 * a)
    assert same["cosine"] == pytest.approx(1.0) and same["max_principal_angle"] < 1e-7
    assert compare_delta_w(a[:, :5], b[:, :5])["eigen_sq_diff"] is None  # rectangular: no eigenvalues
    with pytest.raises(ValueError, match="shapes differ"):
        compare_delta_w(a, b[:, :5])


def test_machine_rank_uses_the_dtype_the_update_was_computed_in():
    rng = np.random.default_rng(4)
    b, a = torch.from_numpy(rng.standard_normal((30, 2))), torch.from_numpy(rng.standard_normal((2, 20)))
    product32 = b.float() @ a.float()  # rank 2 up to float32 rounding
    assert delta_w_metrics(product32)["rank_machine"] == 2
    assert delta_w_metrics(product32.double())["rank_machine"] > 2  # float64 eps would count the rounding
    assert delta_w_metrics(b @ a)["rank_machine"] == 2

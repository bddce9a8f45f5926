"""Kernel comparison metrics against direct formulas."""

from __future__ import annotations

import numpy as np
import pytest

from ntk_peft.analysis import centered_alignment, effective_rank, eigenvalues, kernel_distance, relative_difference


def _kernel(seed, n=5, classes=2, features=7):
    jac = np.random.default_rng(seed).normal(size=(n, classes, features))
    return np.einsum("icp,jdp->ijcd", jac, jac)


@pytest.mark.parametrize("p", [1, 2])
def test_relative_difference_by_hand(p):
    a, b = _kernel(0), _kernel(1)
    fa = a.transpose(0, 2, 1, 3).reshape(10, 10)
    fb = b.transpose(0, 2, 1, 3).reshape(10, 10)
    norm = (lambda m: np.abs(m).sum()) if p == 1 else (lambda m: np.sqrt((m ** 2).sum()))
    assert relative_difference(a, b, p) == pytest.approx(norm(fa / norm(fa) - fb / norm(fb)), rel=1e-13)
    assert relative_difference(3.5 * a, a, p) == pytest.approx(0.0, abs=1e-14)  # scale-free


def test_alignment_and_spectrum():
    a = _kernel(2)
    assert centered_alignment(a, 2 * a) == pytest.approx(1.0, abs=1e-14)
    assert -1 <= centered_alignment(a, _kernel(3)) <= 1
    flat = a.transpose(0, 2, 1, 3).reshape(10, 10)
    np.testing.assert_allclose(eigenvalues(a), np.sort(np.linalg.svd(flat, compute_uv=False))[::-1], atol=1e-10)
    eye = np.eye(6).reshape(3, 2, 3, 2).transpose(0, 2, 1, 3)
    assert effective_rank(eye) == pytest.approx(6.0)
    rank_one = np.einsum("i,j->ij", np.ones(4), np.ones(4))[:, :, None, None]
    assert effective_rank(rank_one) == pytest.approx(1.0)


def test_kernel_distance_by_hand():
    a, b = _kernel(4), _kernel(5)
    fa = a.transpose(0, 2, 1, 3).reshape(10, 10)
    fb = b.transpose(0, 2, 1, 3).reshape(10, 10)
    assert kernel_distance(a, b) == pytest.approx(np.sqrt(((fa - fb) ** 2).sum() / (fa ** 2).sum()), rel=1e-13)
    assert kernel_distance(a, a) == 0.0
    assert kernel_distance(a, 1.5 * a) == pytest.approx(0.5, rel=1e-13)  # growth alone counts
    with pytest.raises(ValueError, match="different shapes"):
        kernel_distance(a, _kernel(6, n=4))

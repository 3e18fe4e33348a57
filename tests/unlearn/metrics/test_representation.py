"""Linear CKA: the sanity properties of docs/conventions.md#cka against independent computations."""

import pytest
import torch

from unlearn.metrics.representation import (
    LinearCKAAccumulator,
    hsic_unbiased,
    linear_cka,
    linear_cka_gram,
    minibatch_cka,
)


def _x(n=40, p=12, seed=0):
    return torch.randn(n, p, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_identity_and_invariances():
    X, Y = _x(), _x(p=7, seed=1)
    assert linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    Q, _ = torch.linalg.qr(_x(12, 12, seed=2))
    assert linear_cka(X @ Q * 3.5 + 2.0, Y) == pytest.approx(linear_cka(X, Y), abs=1e-12)  # orthogonal, scale, shift
    A = _x(12, 12, seed=3)  # a general invertible map changes it
    assert abs(linear_cka(X @ A, Y) - linear_cka(X, Y)) > 1e-3
    assert 0.0 <= linear_cka(X, Y) <= 1.0


def test_feature_form_equals_gram_form_and_hand_formula():
    X, Y = _x(), _x(p=7, seed=1)
    assert linear_cka(X, Y) == pytest.approx(linear_cka_gram(X, Y), abs=1e-12)
    # HSIC with explicit centring matrices, written out independently
    n = X.shape[0]
    H = torch.eye(n, dtype=torch.float64) - torch.full((n, n), 1.0 / n, dtype=torch.float64)
    K, L = X @ X.T, Y @ Y.T

    def hsic(a, b):
        return torch.trace(a @ H @ b @ H)

    assert linear_cka(X, Y) == pytest.approx(float(hsic(K, L) / (hsic(K, K) * hsic(L, L)).sqrt()), abs=1e-12)


def test_streaming_equals_one_shot_for_any_split():
    X, Y = _x(n=50) + 100.0, _x(n=50, p=5, seed=4)  # a large offset: the shift keeps it exact
    acc = LinearCKAAccumulator()
    for lo, hi in ((0, 3), (3, 20), (20, 21), (21, 50)):
        acc.update(X[lo:hi], Y[lo:hi])
    assert acc.value() == pytest.approx(linear_cka(X, Y), abs=1e-10)


def test_unbiased_hsic_and_minibatch():
    X, Y = _x(n=10), _x(n=10, p=6, seed=5)
    K, L = X @ X.T, Y @ Y.T
    # independent route: U-centring (Székely & Rizzo), <U(K), U(L)> = n(n-3) HSIC₁
    n = 10
    Kt, Lt = K.clone().fill_diagonal_(0), L.clone().fill_diagonal_(0)

    def u_centre(M):
        means = M.sum(0) / (n - 2)
        means = means - means.sum() / (2 * (n - 1))
        M = M - means[None, :] - means[:, None]
        return M.fill_diagonal_(0)

    want = (u_centre(Kt) * u_centre(Lt)).sum() / (n * (n - 3))
    assert float(hsic_unbiased(K, L)) == pytest.approx(float(want), rel=1e-10)
    # minibatch CKA over identical batches equals the per-batch value
    one = minibatch_cka([(X, Y)])
    assert minibatch_cka([(X, Y), (X, Y), (X, Y)]) == pytest.approx(one, abs=1e-12)
    with pytest.raises(ValueError):
        linear_cka(X, Y[:5])

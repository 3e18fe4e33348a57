"""Linear CKA: the sanity properties of docs/conventions.md#cka against independent computations."""

import pytest
import torch

from unlearn.metrics.representation import (
    LayerwiseCKA,
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


# ----------------------------------------------------------------------------------------------- unbiased, streaming
def _unbiased_gram_cka(X, Y):
    """One-shot unbiased CKA from n × n Gram matrices (the Song et al. formula in `hsic_unbiased`)."""
    K, L = X @ X.T, Y @ Y.T
    return float(hsic_unbiased(K, L) / (hsic_unbiased(K, K) * hsic_unbiased(L, L)).sqrt())


def _pair(n=60, p=12, q=7, seed=6):
    """Correlated features, so CKA is far from both 0 and 1."""
    X = _x(n, p, seed)
    Y = X[:, :q] * 0.7 + _x(n, q, seed + 1)
    return X, Y


SPLITS = ((0, 3), (3, 20), (20, 21), (21, 60))  # any batch sizes, including a single row


@pytest.mark.parametrize("unbiased", [False, True])
def test_streaming_accumulators_equal_one_shot(unbiased):
    X, Y = _pair()
    # references on the unshifted data (a Gram matrix of offset features loses digits to cancellation itself)
    want = _unbiased_gram_cka(X, Y) if unbiased else linear_cka_gram(X, Y)
    acc = LinearCKAAccumulator(unbiased=unbiased)
    for lo, hi in SPLITS:
        acc.update(X[lo:hi] + 100.0, Y[lo:hi] - 30.0)  # a large offset: the first-batch shift keeps it exact
    assert acc.n == 60
    assert acc.value() == pytest.approx(want, abs=1e-10)
    assert 0.1 < want < 0.9


def test_unbiased_differs_from_biased_and_is_shift_invariant():
    X, Y = _pair(n=12)
    assert abs(_unbiased_gram_cka(X, Y) - linear_cka(X, Y)) > 1e-3  # two estimators, not one
    # HSIC₁ with linear kernels ignores a constant shift (what lets the accumulator shift by the first batch)
    c = torch.linspace(-1.0, 2.0, X.shape[1], dtype=torch.float64)
    assert _unbiased_gram_cka(X + c, Y) == pytest.approx(_unbiased_gram_cka(X, Y), abs=1e-10)


def test_unbiased_accumulator_properties():
    X, Y = _pair()
    Q, _ = torch.linalg.qr(_x(12, 12, seed=8))
    acc = LinearCKAAccumulator(unbiased=True)
    acc.update(X, X)
    assert acc.value() == pytest.approx(1.0, abs=1e-12)
    ref = LinearCKAAccumulator(unbiased=True)
    ref.update(X, Y)
    rot = LinearCKAAccumulator(unbiased=True)
    rot.update(X @ Q * 0.25, Y * 7.0)  # orthogonal map and isotropic scaling
    assert rot.value() == pytest.approx(ref.value(), abs=1e-12)
    gen = LinearCKAAccumulator(unbiased=True)
    gen.update(X @ _x(12, 12, seed=9), Y)  # a general invertible map
    assert abs(gen.value() - ref.value()) > 1e-3
    small = LinearCKAAccumulator(unbiased=True)
    small.update(X[:3], Y[:3])
    with pytest.raises(ValueError, match="n >= 4"):
        small.value()


@pytest.mark.parametrize("unbiased", [False, True])
def test_layerwise_equals_per_layer_one_shot(unbiased):
    B, L = 40, 3
    X = torch.stack([_x(B, 6, seed=10 + layer) for layer in range(L)], 1)  # (B, L, d)
    Y = X * torch.tensor([1.0, 0.5, 0.0])[None, :, None] + torch.stack([_x(B, 6, seed=20 + k) for k in range(L)], 1)
    mask = torch.ones(B, dtype=torch.bool)
    mask[[2, 17, 30]] = False
    lw = LayerwiseCKA(L, unbiased=unbiased)
    for lo, hi in ((0, 9), (9, 10), (10, 40)):
        lw.update(X[lo:hi].float(), Y[lo:hi].float(), mask[lo:hi])  # float32 in, as hidden states come
    one = _unbiased_gram_cka if unbiased else linear_cka
    want = [one(X[mask, layer].float().double(), Y[mask, layer].float().double()) for layer in range(L)]
    assert lw.n == 37
    assert lw.values() == pytest.approx(want, abs=1e-10)
    assert want[0] > want[1] > want[2]  # the shared component shrinks layer by layer
    with pytest.raises(ValueError, match="expected"):
        lw.update(X[:, :2], Y[:, :2])


def test_minibatch_cka_ragged_last_batch():
    X, Y = _pair(n=50)
    full = [(X[i : i + 10], Y[i : i + 10]) for i in range(0, 40, 10)]
    ragged = [*full, (X[40:46], Y[40:46])]
    # "drop": the short last batch does not enter
    assert minibatch_cka(ragged) == pytest.approx(minibatch_cka(full), abs=1e-14)
    # "keep": the short batch's normalised HSIC₁ terms are added as they are — hand-summed here
    terms = [(hsic_unbiased(a @ a.T, b @ b.T), hsic_unbiased(a @ a.T, a @ a.T), hsic_unbiased(b @ b.T, b @ b.T))
             for a, b in ragged]  # fmt: skip
    kl, kk, ll = (sum(t[j] for t in terms) for j in range(3))
    assert minibatch_cka(ragged, ragged="keep") == pytest.approx(float(kl / (kk * ll).sqrt()), abs=1e-12)
    assert minibatch_cka(ragged, ragged="keep") != pytest.approx(minibatch_cka(full), abs=1e-6)
    with pytest.raises(ValueError):
        minibatch_cka([(X[:3], Y[:3])])

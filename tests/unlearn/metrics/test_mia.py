"""Tests of unlearn.metrics.mia against hand-worked values and independent implementations (sklearn, float64)."""

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from unlearn.metrics import all_metrics
from unlearn.metrics import mia as M

LN2 = math.log(2)


def test_loss_score():
    """-6 over 3 tokens -> average log-likelihood -2 (higher = more member-like)."""
    assert M.loss_score(-6.0, 3) == pytest.approx(-2.0)
    np.testing.assert_allclose(M.loss_score(torch.tensor([-6.0, -1.0]), torch.tensor([3, 4])), [-2.0, -0.25])


def test_zlib_score():
    """zlib.compress(b"abc") is 11 bytes (2-byte header, 5-byte fixed-Huffman block, 4-byte Adler-32), so
    the mean log-lik -2 gives -2/11; the summed -6 with n_tokens = 3 gives the same."""
    assert M.zlib_entropy("abc") == 11
    assert M.zlib_score(-2.0, "abc") == pytest.approx(-2 / 11)
    assert M.zlib_score(-6.0, "abc", n_tokens=3) == pytest.approx(-2 / 11)
    out = M.zlib_score(np.array([-2.0, -2.0]), ["abc", "abc" * 40])
    assert out[0] == pytest.approx(-2 / 11)
    assert -2 / 11 < out[1] < 0  # "abc" * 40 compresses to more than 11 bytes: same log-lik, score closer to 0


def test_min_k_score_hand_worked():
    """log-probs [-1, -5, -2, -4, -3]; k = 0.4 -> K = floor(2.0) = 2 lowest: -5, -4 -> -4.5;
    k = 0.1 -> K = max(1, 0) = 1 -> -5; k = 1 -> mean = -3. Three tokens with k = 0.4 -> K = 1."""
    lp = torch.tensor([-1.0, -5.0, -2.0, -4.0, -3.0])
    assert M.min_k_score(lp) == pytest.approx(-4.5)
    assert M.min_k_score(lp, k=0.1) == pytest.approx(-5.0)
    assert M.min_k_score(lp, k=1.0) == pytest.approx(-3.0)
    assert M.min_k_score(np.array([-1.0, -2.0, -0.5])) == pytest.approx(-2.0)
    with pytest.raises(ValueError):
        M.min_k_score(np.array([]))
    with pytest.raises(ValueError):
        M.min_k_score(lp, k=0.0)


def _five_token_example():
    """Rows of next-token probabilities (V = 3):
    A = [1/2, 1/4, 1/4]: log p in {-ln2, -2ln2} w.p. 1/2 each -> mu = -1.5 ln2, sigma = 0.5 ln2;
        target 0: z = (-ln2 + 1.5ln2) / (0.5ln2) = +1; target 1 or 2: z = -1.
    U = uniform: variance 0 -> clamped to 1e-6 -> sigma = 1e-3; z = (-ln3 + ln3) / 1e-3 = 0.
    D = [1, 0, 0] (logits 0, -inf, -inf): mu = 0 (0 * -inf counts 0), sigma = 1e-3, target 0: z = 0.
    Positions: A->0, A->1, A->2, U->1, D->0 give z = [1, -1, -1, 0, 0]."""
    A = torch.log(torch.tensor([0.5, 0.25, 0.25]))
    U = torch.zeros(3)
    D = torch.tensor([0.0, -float("inf"), -float("inf")])
    logits = torch.stack([A, A, A, U, D])
    targets = torch.tensor([0, 1, 2, 1, 0])
    return logits, targets


def test_min_k_stats_and_min_k_plus_plus_hand_worked():
    logits, targets = _five_token_example()
    lp, mu, sigma = M.min_k_stats_from_logits(logits, targets)
    assert lp.dtype == mu.dtype == sigma.dtype == torch.float32
    np.testing.assert_allclose(lp.numpy(), [-LN2, -2 * LN2, -2 * LN2, -math.log(3), 0.0], rtol=1e-6)
    np.testing.assert_allclose(mu.numpy(), [-1.5 * LN2] * 3 + [-math.log(3), 0.0], rtol=1e-6)
    np.testing.assert_allclose(sigma.numpy(), [0.5 * LN2] * 3 + [1e-3, 1e-3], rtol=1e-3)
    # z = [1, -1, -1, 0, 0]: k = 0.4 -> K = 2 -> -1; k = 0.6 -> K = 3 -> -2/3; k = 1 -> -1/5
    assert M.min_k_plus_plus_score(lp, mu, sigma) == pytest.approx(-1.0, abs=1e-4)
    assert M.min_k_plus_plus_score(lp, mu, sigma, k=0.6) == pytest.approx(-2 / 3, abs=1e-4)
    assert M.min_k_plus_plus_score(lp, mu, sigma, k=1.0) == pytest.approx(-0.2, abs=1e-3)


def test_min_k_stats_match_float64_reference():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 50, generator=g, dtype=torch.float64) * 3
    targets = torch.randint(0, 50, (7,), generator=g)
    # independent float64 reference, written from the definition with numpy
    x = logits.numpy()
    logp = x - x.max(1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(1, keepdims=True))
    p = np.exp(logp)
    mu_ref = (p * logp).sum(1)
    sd_ref = np.sqrt(np.maximum((p * logp**2).sum(1) - mu_ref**2, 1e-6))
    lp_ref = logp[np.arange(7), targets.numpy()]
    lp, mu, sigma = M.min_k_stats_from_logits(logits.to(torch.bfloat16).float(), targets)
    lp64, mu64, sigma64 = M.min_k_stats_from_logits(logits, targets)
    assert lp64.dtype == torch.float32  # computed in float32 even from float64 input
    np.testing.assert_allclose(lp64.numpy(), lp_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(mu64.numpy(), mu_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sigma64.numpy(), sd_ref, rtol=1e-5, atol=1e-5)
    z = (lp_ref - mu_ref) / sd_ref
    assert M.min_k_plus_plus_score(lp64, mu64, sigma64, k=0.4) == pytest.approx(np.sort(z)[:2].mean(), rel=1e-4)
    assert lp.shape == mu.shape == sigma.shape == (7,)


def test_min_k_stats_shape_errors():
    with pytest.raises(ValueError):
        M.min_k_stats_from_logits(torch.zeros(3, 4), torch.zeros(2, dtype=torch.long))


def test_mia_auc_hand_worked_and_orientation():
    """forget [3, 2] vs holdout [1, 2]: pairs (3>1) 1, (3>2) 1, (2>1) 1, (2=2) 1/2 -> 3.5 / 4 = 0.875.
    Forget all above holdout -> 1; all below -> 0."""
    assert M.mia_auc([3.0, 2.0], [1.0, 2.0]) == pytest.approx(0.875)
    assert M.mia_auc(torch.tensor([5.0, 6.0]), torch.tensor([1.0, 2.0, 3.0])) == 1.0
    assert M.mia_auc([1.0], [2.0]) == 0.0
    with pytest.raises(ValueError):
        M.mia_auc([], [1.0])
    with pytest.raises(ValueError):
        M.mia_auc([float("nan")], [1.0])


def test_mia_auc_matches_sklearn_with_ties():
    rng = np.random.default_rng(4)
    f = np.round(rng.normal(0.5, 1, 60), 1)  # rounding creates ties
    h = np.round(rng.normal(0.0, 1, 45), 1)
    expected = roc_auc_score(np.r_[np.ones(60), np.zeros(45)], np.r_[f, h])
    assert M.mia_auc(f, h) == pytest.approx(expected, rel=1e-12)
    # open-unlearning's orientation: forget labelled 0, loss-like score (= -ours) -> the same number
    ou = roc_auc_score(np.r_[np.zeros(60), np.ones(45)], -np.r_[f, h])
    assert M.mia_auc(f, h) == pytest.approx(ou, rel=1e-12)


def test_privleak_hand_worked():
    """Equal AUCs -> 0. Candidate AUC 1 with oracle 0.5 -> (0.5 - 1)/(1 - 0.5) * 100 = -100 (under-unlearning).
    Candidate 0.25 with oracle 0.5 -> (0.5 - 0.25)/0.5 * 100 = +50 (over-unlearning)."""
    assert M.privleak(0.6, 0.6) == pytest.approx(0.0, abs=1e-6)
    assert M.privleak(1.0, 0.5) == pytest.approx(-100.0)
    assert M.privleak(0.25, 0.5) == pytest.approx(50.0)


def test_privleak_equals_muse_formula_on_muse_auc():
    """MUSE: (AUC_M(unlearn) - AUC_M(retrain)) / AUC_M(retrain) * 100 with AUC_M = 1 - AUC_conv."""
    rng = np.random.default_rng(5)
    for c, o in rng.uniform(0.05, 0.95, (20, 2)):
        muse = ((1 - c) - (1 - o)) / (1 - o) * 100
        assert M.privleak(c, o) == pytest.approx(muse, rel=1e-8)


def test_registered_mia_metrics():
    m = all_metrics()
    for name in ("mia_loss_auc", "mia_zlib_auc", "mia_min_k_auc", "mia_min_k_plus_plus_auc", "privleak"):
        assert m[name].family == "mia" and m[name].direction == "oracle"
        assert len(m[name].description) > 40
    assert "MUSE" in m["mia_min_k_auc"].description and "open-unlearning" in m["mia_min_k_auc"].description

"""Tests of unlearn.metrics.logit against hand-worked values and independent implementations (scipy)."""

import math

import numpy as np
import pytest
import scipy.stats
import torch

from unlearn.metrics import all_metrics
from unlearn.metrics import logit as L

# ---------------------------------------------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------------------------------------------


def test_rouge_l_hand_worked():
    """reference "the cat sat on the mat" -> [the, cat, sat, on, the, mat] (6 tokens; "sat" has 3 letters, not
    stemmed); prediction "The cat was sitting on the red mat today." -> [the, cat, was, sit, on, the, red, mat,
    today] (9 tokens, "sitting" -> "sit"). LCS = [the, cat, on, the, mat] = 5.
    recall = 5/6, precision = 5/9, F1 = 2 (5/6)(5/9) / (5/6 + 5/9) = 2/3."""
    r, f = L.rouge_l("The cat was sitting on the red mat today.", "the cat sat on the mat")
    assert r == pytest.approx(5 / 6)
    assert f == pytest.approx(2 / 3)


def test_rouge_l_uses_stemmer_and_argument_order():
    """reference "The authors wrote books" -> [the, author, wrote, book] (stemmed), prediction "author writes book"
    -> [author, write, book]. LCS = [author, book] = 2: recall 2/4, precision 2/3, F1 = 2(1/2)(2/3)/(7/6) = 4/7.
    Swapping the arguments swaps recall and precision (recall 2/3)."""
    assert L.rouge_l("author writes book", "The authors wrote books") == pytest.approx((0.5, 4 / 7))
    assert L.rouge_l("The authors wrote books", "author writes book")[0] == pytest.approx(2 / 3)


def test_rouge_l_empty_and_identical():
    assert L.rouge_l("", "Paris") == (0.0, 0.0)
    assert L.rouge_l("Paris, France", "paris france") == pytest.approx((1.0, 1.0))


def test_rouge_l_fallback_matches_hand_values(monkeypatch):
    """Without rouge_score: same LCS formula, no stemming. "a b c d e" vs "a x c e": LCS [a, c, e] = 3,
    recall 3/5 (reference has 5 tokens), precision 3/4, F1 = 2 (3/5)(3/4) / (27/20) = 2/3."""
    monkeypatch.setattr(L, "_rouge_scorer", lambda: None)
    assert L.rouge_l("a x c e", "a b c d e") == pytest.approx((3 / 5, 2 / 3))
    assert L.rouge_l("", "a") == (0.0, 0.0)


def test_rouge_l_fallback_agrees_with_rouge_score_without_inflections(monkeypatch):
    pairs = [("the quick fox", "the fox is quick"), ("one two three four", "four three two one"), ("x", "y z")]
    with_pkg = np.array([L.rouge_l(p, r) for p, r in pairs])
    monkeypatch.setattr(L, "_rouge_scorer", lambda: None)
    np.testing.assert_allclose(np.array([L.rouge_l(p, r) for p, r in pairs]), with_pkg, rtol=1e-12)
    assert with_pkg[1] == pytest.approx([0.25, 0.25])  # "four three two one": LCS of a reversal is 1 token


# ---------------------------------------------------------------------------------------------------------------
# Probabilities and truth ratio
# ---------------------------------------------------------------------------------------------------------------


def test_length_normalised_prob():
    """exp(-6 / 3) = exp(-2) = 0.135335; exp(-1 / 1) = 0.367879."""
    assert L.length_normalised_prob(-6.0, 3) == pytest.approx(math.exp(-2))
    out = L.length_normalised_prob(np.array([-6.0, -1.0]), np.array([3, 1]))
    np.testing.assert_allclose(out, [0.1353352832, 0.3678794412])
    t = L.length_normalised_prob(torch.tensor([-6.0, -1.0]), torch.tensor([3, 1]))
    assert isinstance(t, torch.Tensor) and t.shape == (2,)
    np.testing.assert_allclose(t.numpy(), [0.1353352832, 0.3678794412], rtol=1e-6)


def test_normalised_prob_hand_worked():
    """correct: log p = -2 over 2 tokens -> p = e^-1 = 0.367879; perturbed: -4/2 and -6/3 -> e^-2 = 0.135335 each.
    prob = 0.367879 / (0.367879 + 2 * 0.135335) = 0.576117."""
    out = L.normalised_prob(np.array([-2.0]), np.array([2]), np.array([[-4.0, -6.0]]), np.array([[2, 3]]))
    assert out.shape == (1,)
    assert out[0] == pytest.approx(0.5761168847658291)


def test_normalised_prob_no_underflow_and_matches_direct_formula():
    """Per-token log-liks -2000, -2001, -2002 underflow exp() but the ratio is 1 / (1 + e^-1 + e^-2) = 0.665241."""
    out = L.normalised_prob(torch.tensor([-2000.0]), 1, torch.tensor([[-2001.0, -2002.0]]), 1)
    assert out[0] == pytest.approx(1 / (1 + math.exp(-1) + math.exp(-2)))
    rng = np.random.default_rng(0)
    c, cn = -rng.uniform(1, 30, 50), rng.integers(1, 20, 50)
    o, on = -rng.uniform(1, 30, (50, 3)), rng.integers(1, 20, (50, 3))
    pc, po = np.exp(c / cn), np.exp(o / on)
    np.testing.assert_allclose(L.normalised_prob(c, cn, o, on), pc / (pc + po.sum(1)), rtol=1e-12)


def test_truth_ratio_is_tofu_geometric_mean():
    """paraphrased: -3 over 3 tokens -> per-token -1; perturbed: -4/2 = -2 and -9/3 = -3, mean -2.5.
    R = exp(-2.5 - (-1)) = exp(-1.5) = 0.223130. (The paper's arithmetic mean would give
    ((e^-2 + e^-3)/2) / e^-1 = 0.251607, which must NOT be what we return.)"""
    R = L.truth_ratio(np.array([-3.0]), np.array([3]), np.array([[-4.0, -9.0]]), np.array([[2, 3]]))
    assert R[0] == pytest.approx(math.exp(-1.5))
    assert R[0] != pytest.approx(0.2516074, abs=1e-4)


def test_truth_ratio_scores_hand_worked():
    """forget: R = [0.5, 2, 1] -> min(R, 1/R) = [0.5, 0.5, 1] -> 2/3.
    utility: R = [0.5, 2, 0.25] -> max(0, 1 - R) = [0.5, 0, 0.75] -> 5/12."""
    assert L.forget_truth_ratio_score([0.5, 2.0, 1.0]) == pytest.approx(2 / 3)
    assert L.utility_truth_ratio_score(torch.tensor([0.5, 2.0, 0.25])) == pytest.approx(5 / 12)


# ---------------------------------------------------------------------------------------------------------------
# Forget quality and model utility
# ---------------------------------------------------------------------------------------------------------------


def test_forget_quality_hand_worked():
    """[1, 2, 3] vs [4, 5, 6]: complete separation, D = 1; the exact two-sided p-value is
    2 / C(6, 3) = 2 / 20 = 0.1 (only the two most extreme of the 20 equally likely splits reach D = 1)."""
    assert L.forget_quality([1.0, 2.0, 3.0], [4.0, 5.0, 6.0]) == pytest.approx(0.1)
    assert L.forget_quality_test([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])[1] == pytest.approx(1.0)
    assert L.forget_quality([1.0, 2.0, 3.0], [1.0, 2.0, 3.0]) == pytest.approx(1.0)


def test_forget_quality_matches_scipy_and_is_invariant_to_inversion():
    rng = np.random.default_rng(1)
    a, b = np.exp(rng.normal(0, 1, 300)), np.exp(rng.normal(0.3, 1.2, 280))
    assert L.forget_quality(a, b) == pytest.approx(scipy.stats.ks_2samp(a, b).pvalue, rel=1e-12)
    # TOFU feeds 1/R; the KS test is invariant under the monotone map R -> 1/R
    assert L.forget_quality(1 / a, 1 / b) == pytest.approx(L.forget_quality(a, b), rel=1e-9)
    assert L.forget_quality(torch.tensor(a), torch.tensor(b)) == pytest.approx(L.forget_quality(a, b))
    with pytest.raises(ValueError):
        L.forget_quality([], [1.0])


def test_model_utility_hand_worked_and_scipy():
    """hmean(1, 0.5, 0.25) = 3 / (1 + 2 + 4) = 3/7 = 0.428571."""
    assert L.model_utility({"a": 1.0, "b": 0.5, "c": 0.25}) == pytest.approx(3 / 7)
    assert L.model_utility({"a": 0.9, "b": 0.0}) == 0.0
    v = np.random.default_rng(2).uniform(0.05, 1, 9)
    assert L.model_utility({str(i): x for i, x in enumerate(v)}) == pytest.approx(scipy.stats.hmean(v))
    for bad in ({}, {"a": -0.1}, {"a": float("nan")}):
        with pytest.raises(ValueError):
            L.model_utility(bad)


# ---------------------------------------------------------------------------------------------------------------
# Exact match, exact memorization, extraction strength
# ---------------------------------------------------------------------------------------------------------------


def test_exact_match_acc():
    assert L.exact_match_acc(" Paris\n", "Paris") is True
    assert L.exact_match_acc("paris", "Paris") is False
    assert L.exact_match_acc("Paris.", "Paris") is False


def test_exact_memorization_hand_worked():
    """row 1: preds [5, 6, 7, 8], labels [-100, 6, 0, 8] -> scored 3 positions, hits 6 and 8 -> 2/3.
    row 2: preds [1, 2, 3, 4], labels [1, 2, 3, -100] -> 3/3 = 1. Mean = (2/3 + 1) / 2 = 5/6.
    row 3 (all -100) has no scored token and is dropped, as open-unlearning does."""
    preds = torch.tensor([[5, 6, 7, 8], [1, 2, 3, 4], [1, 1, 1, 1]])
    labels = torch.tensor([[-100, 6, 0, 8], [1, 2, 3, -100], [-100] * 4])
    assert L.exact_memorization(preds[0], labels[0]) == pytest.approx(2 / 3)
    assert L.exact_memorization(preds, labels) == pytest.approx(5 / 6)
    per = L.exact_memorization_per_example(preds, labels)
    assert per[:2] == pytest.approx([2 / 3, 1.0]) and np.isnan(per[2])
    # explicit mask: drop position 3 of row 1 too -> hits [6] of scored [6, 0] -> 1/2
    assert L.exact_memorization(preds[0], labels[0], mask=torch.tensor([1, 1, 1, 0])) == pytest.approx(0.5)
    # hits form: [T, F, T, T] -> 3/4
    assert L.exact_memorization(torch.tensor([True, False, True, True])) == pytest.approx(0.75)
    with pytest.raises(ValueError):
        L.exact_memorization(preds[0], labels[0, :3])


def _es_reference(preds, labels):
    """open-unlearning's loop, written out independently (no masks): k stops at n - 1 if nothing matches."""
    n = len(labels)
    for k in range(n):
        if list(preds[k:]) == list(labels[k:]):
            break
    return 1 - k / n


def test_extraction_strength_hand_worked():
    """labels [1, 2, 3, 4, 5] (n = 5):
    preds [1, 2, 3, 4, 5] -> k = 0 -> ES = 1;   preds [9, 2, 3, 4, 5] -> k = 1 -> 1 - 1/5 = 0.8;
    preds [1, 2, 9, 4, 5] -> k = 3 -> 0.4;      preds [1, 2, 3, 4, 9] -> k = 5 (empty suffix) -> 0,
    or 1/5 = 0.2 with match_open_unlearning (its loop ends at k = 4).
    With labels [-100, -100, 1, 2, 3] and preds [7, 7, 0, 2, 3]: scored [1, 2, 3] vs [0, 2, 3] -> k = 1 -> 2/3."""
    lab = [1, 2, 3, 4, 5]
    assert L.extraction_strength([1, 2, 3, 4, 5], lab) == pytest.approx(1.0)
    assert L.extraction_strength([9, 2, 3, 4, 5], lab) == pytest.approx(0.8)
    assert L.extraction_strength([1, 2, 9, 4, 5], lab) == pytest.approx(0.4)
    assert L.extraction_strength([1, 2, 3, 4, 9], lab) == pytest.approx(0.0)
    assert L.extraction_strength([1, 2, 3, 4, 9], lab, match_open_unlearning=True) == pytest.approx(0.2)
    assert L.extraction_strength(torch.tensor([7, 7, 0, 2, 3]), torch.tensor([-100, -100, 1, 2, 3])) == pytest.approx(
        2 / 3
    )
    batch_p = np.array([[9, 2, 3, 4, 5], [1, 2, 9, 4, 5]])
    batch_l = np.array([lab, lab])
    assert L.extraction_strength(batch_p, batch_l) == pytest.approx((0.8 + 0.4) / 2)


def test_extraction_strength_matches_open_unlearning_loop():
    rng = np.random.default_rng(3)
    for _ in range(200):
        n = int(rng.integers(1, 8))
        labels = rng.integers(0, 3, n)
        preds = rng.integers(0, 3, n)
        got = L.extraction_strength(preds, labels, match_open_unlearning=True)
        assert got == pytest.approx(_es_reference(preds, labels))


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------


def test_registered_metrics_and_directions():
    from unlearn.metrics import get_metric

    m = all_metrics()
    for s in ("forget", "retain", "world_facts", "arithmetic", "real_authors", "bio_only"):
        expected = "oracle" if s == "forget" else "higher"
        for suffix in (
            "acc",
            "prob",
            "rougeL_recall",
            "rougeL_f1",
            "truth_ratio",
            "para_acc",
            "para_prob",
            "para_rougeL_recall",
        ):
            info = get_metric(f"{s}_{suffix}")  # exact for forget, a {set}_... template for the others
            assert info.family == "logit" and info.direction == expected, info
            assert len(info.description) > 40 and info.range == "[0, 1]"
            assert "|" not in info.description  # it would break the markdown table in docs/metrics.md
    assert m["forget_quality"].direction == "higher"
    assert m["model_utility"].direction == "higher"
    assert m["forget_exact_memorization"].direction == "oracle"
    assert m["forget_extraction_strength"].direction == "oracle"


def test_write_metrics_doc(tmp_path):
    from unlearn.metrics import write_metrics_doc

    out = tmp_path / "metrics.md"
    write_metrics_doc(out)
    lines = out.read_text().splitlines()
    rows = [ln for ln in lines if ln.startswith("| `")]
    assert any(ln.startswith("| `forget_quality` | logit | higher |") for ln in rows)
    assert all(ln.count(" | ") == 4 for ln in rows if "| logit |" in ln or "| mia |" in ln)
    assert any(ln.startswith("| `{set}_acc` (set in retain, world_facts,") for ln in rows)  # templates, once

"""Probe and k-NN recoverability: accuracies on constructed data, Wilson intervals and chance by hand."""

import numpy as np
import pytest

from unlearn.metrics.probe import knn_accuracy, majority_chance, per_layer_probe, probe_accuracy, wilson_interval


def test_wilson_interval_hand_numbers():
    # 8 of 10: p = .8, z² = 3.841459; centre .8 + .192073, half 1.959964 sqrt(.016 + .0096036), den 1.384146
    lo, hi = wilson_interval(8, 10)
    assert (lo, hi) == pytest.approx((0.678457 / 1.384146, 1.305689 / 1.384146), abs=2e-6)
    assert (lo, hi) == pytest.approx((0.4902, 0.9433), abs=1e-4)  # the textbook table value
    # 0 of 20: lo = 0, hi = (z²/n) / (1 + z²/n)
    z2n = 1.959963984540054**2 / 20
    assert wilson_interval(0, 20) == pytest.approx((0.0, z2n / (1 + z2n)), abs=1e-12)
    assert wilson_interval(20, 20)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)


def test_chance_by_hand():
    assert majority_chance(list("aabbbc"), list("bacbd")) == pytest.approx(2 / 5)  # majority b; d unseen
    assert majority_chance(list("ba"), list("aab")) == pytest.approx(2 / 3)  # a tie goes to the first sorted, a


def _clusters(n, k, d, seed, spread=0.3):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(k, d)) * 3
    y = rng.integers(0, k, n)
    return centres[y] + spread * rng.normal(size=(n, d)), [f"ans{v}" for v in y]


def test_random_labels_stay_at_chance():
    rng = np.random.default_rng(0)
    Xtr, Xte = rng.normal(size=(600, 16)), rng.normal(size=(200, 16))
    ytr, yte = rng.integers(0, 4, 600), rng.integers(0, 4, 200)
    pr = probe_accuracy(Xtr, ytr, Xte, yte)
    assert pr["n"] == 200
    assert pr["lo"] <= 0.25 <= pr["hi"]  # 1/4: four balanced labels carry no information in the features
    assert pr["lo"] <= pr["chance"] <= pr["hi"]
    kn = knn_accuracy(Xtr, ytr, Xte, yte)
    assert kn["lo"] <= 0.25 <= kn["hi"]


def test_separable_data_and_unseen_labels():
    Xtr, ytr = _clusters(400, 6, 10, seed=1)
    Xte, yte = _clusters(49, 6, 10, seed=2)
    pr = probe_accuracy(Xtr, ytr, Xte, yte)
    assert pr["acc"] == 1.0 and pr["hi"] == 1.0 and pr["lo"] > 0.9
    assert pr["chance"] == pytest.approx(majority_chance(ytr, yte))
    assert knn_accuracy(Xtr, ytr, Xte, yte)["acc"] == 1.0
    # a test row whose label never occurs in training counts, as wrong
    Xte2, yte2 = np.vstack([Xte, Xte[:1]]), [*yte, "never-seen"]
    assert probe_accuracy(Xtr, ytr, Xte2, yte2)["acc"] == pytest.approx(49 / 50)
    assert knn_accuracy(Xtr, ytr, Xte2, yte2)["n"] == 50
    # a single training label: a constant predictor
    const = probe_accuracy(Xtr[:5], ["x"] * 5, Xte2[:4], ["x", "y", "x", "z"])
    assert const["acc"] == const["chance"] == 0.5


def test_knn_is_cosine_by_hand():
    Xtr, ytr = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]]), ["a", "b", "c"]
    Xte, yte = np.array([[2.0, 0.1], [0.1, 30.0], [-1.0, -0.2]]), ["a", "b", "a"]
    # angles, not lengths: the nearest are a, b, c; the last prediction is wrong
    assert knn_accuracy(Xtr, ytr, Xte, yte, k=1)["acc"] == pytest.approx(2 / 3)
    # training rows of different lengths: (1, .9) is 42° from a = (10, 0) and 48° from b = (0, 1), but 9.04 from a
    # and 1.005 from b — cosine says a, Euclidean b
    Xtr2, q = np.array([[10.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.9]])
    assert knn_accuracy(Xtr2, ["a", "b"], q, ["a"], k=1)["acc"] == 1.0
    assert knn_accuracy(Xtr2, ["a", "b"], q, ["a"], k=1, metric="euclidean")["acc"] == 0.0


def test_per_layer_probe_matches_single_calls():
    rng = np.random.default_rng(3)
    Xtr, ytr = _clusters(300, 5, 8, seed=4)
    Xte, yte = _clusters(60, 5, 8, seed=5)
    # layer 0: noise; layer 1: the clusters
    Str = np.stack([rng.normal(size=Xtr.shape), Xtr], 1).astype(np.float32)
    Ste = np.stack([rng.normal(size=Xte.shape), Xte], 1).astype(np.float32)
    rows = per_layer_probe(Str, ytr, Ste, yte)
    assert [r["layer"] for r in rows] == [0, 1]
    assert rows[1]["acc"] == 1.0 and rows[1]["knn_acc"] == 1.0 and rows[0]["acc"] < 0.5
    for layer in (0, 1):
        pr = probe_accuracy(Str[:, layer], ytr, Ste[:, layer], yte)
        kn = knn_accuracy(Str[:, layer], ytr, Ste[:, layer], yte)
        assert {k: rows[layer][k] for k in pr} == pr
        assert (rows[layer]["knn_acc"], rows[layer]["knn_lo"], rows[layer]["knn_hi"]) == (
            kn["acc"],
            kn["lo"],
            kn["hi"],
        )
    assert "knn_acc" not in per_layer_probe(Str, ytr, Ste, yte, knn_k=None)[0]

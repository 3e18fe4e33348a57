"""Recoverability of forgotten answers from frozen hidden states: linear probe and k-NN accuracy.

If unlearning only suppresses an answer at the output while the representation still encodes it, a classifier on
the model's frozen hidden states recovers the answer. A concept is linearly erased when no linear classifier beats
a constant predictor (Belrose et al. 2023, LEACE, https://arxiv.org/abs/2306.03819) — hence ``chance`` below; Kim,
Cha & Kim 2025 (https://arxiv.org/abs/2503.06991, https://github.com/yongwookim1/UUEF) evaluate unlearning by k-NN on
frozen features. Both classifiers are fit on one set of (state, label) rows — e.g. retain records and their answers
— and scored on another — the forget records.

* `probe_accuracy` / `fit_probe`: multinomial logistic regression (scikit-learn ``LogisticRegression``, L-BFGS,
  C = 1, tolerance 1e-3, at most 500 iterations; on hidden states it stops after a few dozen) on features
  standardised with the training rows' mean and standard deviation.
* `knn_accuracy`: ``KNeighborsClassifier(n_neighbors=k, metric="cosine")``, as UUEF.

Every accuracy comes with a 95% Wilson score interval (Wilson 1927) over the ``n`` test rows. A test row whose
label never occurs in the training rows cannot be predicted by either classifier and counts as wrong: the
accuracy measures what is recoverable from the training label set, not the share of solvable rows. ``chance`` is
the accuracy, on the test rows, of always predicting the training rows' most frequent label (ties: the label that
sorts first) — the level a probe that learned nothing from the features reaches.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Sequence

import numpy as np

Z95 = 1.959963984540054  # standard normal 97.5% quantile
# L-BFGS tolerance. Measured on the shipped TinyFacts target (1,280 x 192 training states, 193 answers, last block):
# tol 1e-4 stops after 130 iterations (1.76 s, forget accuracy 0.531), 1e-3 after 33 (0.37 s, 0.550): the same
# accuracy within its 95% interval (+-0.08) at a fifth of the cost, which the 15 s per-model budget needs.
_TOL = 1e-3


def wilson_interval(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval for k successes of n: (p + z²/2n ± z sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)."""
    if n <= 0:
        raise ValueError("an accuracy needs at least one test row")
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    den = 1 + z * z / n
    return max(0.0, (centre - half) / den), min(1.0, (centre + half) / den)


def _np(X) -> np.ndarray:
    X = X.detach().cpu().numpy() if hasattr(X, "detach") else np.asarray(X)
    return X.reshape(X.shape[0], -1).astype(np.float64)


def _labels(y) -> np.ndarray:
    return np.asarray([str(v) for v in y], dtype=object)


def _result(pred: np.ndarray, test_y: np.ndarray) -> dict:
    n = len(test_y)
    k = int((pred == test_y).sum())
    lo, hi = wilson_interval(k, n)
    return {"acc": k / n, "lo": lo, "hi": hi, "n": n}


def majority_chance(train_y: Sequence, test_y: Sequence) -> float:
    """Accuracy on ``test_y`` of always predicting ``train_y``'s most frequent label (ties: first in sort order)."""
    train_y, test_y = _labels(train_y), _labels(test_y)
    if len(test_y) == 0 or len(train_y) == 0:
        raise ValueError("chance needs training and test labels")
    counts = Counter(train_y.tolist())
    top = max(sorted(counts), key=lambda c: counts[c])  # max keeps the first maximal label of the sorted list
    return float((test_y == top).mean())


def fit_probe(train_X, train_y: Sequence, seed: int = 0):
    """Fit the linear probe once; returns ``predict(test_X) -> labels`` (one fit serves several test sets)."""
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    Xtr, ytr = _np(train_X), _labels(train_y)
    if len(Xtr) != len(ytr):
        raise ValueError("features and labels differ in length")
    mu, sd = Xtr.mean(0), Xtr.std(0)
    sd[sd == 0] = 1.0  # constant features stay constant (zero) instead of dividing by zero
    # float32 halves L-BFGS's time (the loss/gradient matmuls dominate) and hidden states are float32 anyway
    Xtr = ((Xtr - mu) / sd).astype(np.float32)
    if len(set(ytr.tolist())) == 1:

        def predict(X):
            return np.full(len(_np(X)), ytr[0], dtype=object)

        return predict
    clf = LogisticRegression(C=1.0, max_iter=500, tol=_TOL, random_state=seed)
    with threadpool_limits(1), warnings.catch_warnings():  # numpy's + scipy's BLAS pools thrash: 13x slower
        warnings.filterwarnings("ignore", "The number of unique classes", UserWarning)  # many answers: intended
        clf.fit(Xtr, ytr)

    def predict(X):
        with threadpool_limits(1):
            return clf.predict(((_np(X) - mu) / sd).astype(np.float32))

    return predict


def probe_accuracy(train_X, train_y: Sequence, test_X, test_y: Sequence, seed: int = 0) -> dict:
    """Linear-probe accuracy: {acc, lo, hi (95% Wilson), chance, n}. X (n, ...) features (rows flattened), y any
    hashable labels (compared as strings). A single training label makes the probe a constant predictor."""
    Xte, yte = _np(test_X), _labels(test_y)
    if len(Xte) != len(yte):
        raise ValueError("features and labels differ in length")
    pred = fit_probe(train_X, train_y, seed)(Xte)
    return {**_result(pred, yte), "chance": majority_chance(_labels(train_y), yte)}


def knn_accuracy(train_X, train_y: Sequence, test_X, test_y: Sequence, k: int = 5, metric: str = "cosine") -> dict:
    """k-NN accuracy (scikit-learn, majority vote of the ``k`` nearest training rows): {acc, lo, hi, n}."""
    from sklearn.neighbors import KNeighborsClassifier

    Xtr, Xte = _np(train_X), _np(test_X)
    ytr, yte = _labels(train_y), _labels(test_y)
    if len(Xtr) != len(ytr) or len(Xte) != len(yte):
        raise ValueError("features and labels differ in length")
    from threadpoolctl import threadpool_limits

    clf = KNeighborsClassifier(n_neighbors=min(k, len(Xtr)), metric=metric, algorithm="brute")
    with threadpool_limits(1), warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The number of unique classes", UserWarning)
        return _result(clf.fit(Xtr, ytr).predict(Xte), yte)


def per_layer_probe(
    train_states,
    train_y: Sequence,
    test_states,
    test_y: Sequence,
    seed: int = 0,
    knn_k: int | None = 5,
    knn_metric: str = "cosine",
) -> list[dict]:
    """Probe (and, unless ``knn_k`` is None, k-NN) per layer of (n, L, d) states. One dict per layer:
    ``{layer, acc, lo, hi, chance, n}`` of the probe, plus ``knn_acc, knn_lo, knn_hi`` when k-NN runs."""
    if train_states.shape[1] != test_states.shape[1]:
        raise ValueError(f"different layer counts: {train_states.shape[1]} and {test_states.shape[1]}")
    out = []
    for layer in range(train_states.shape[1]):
        row = {"layer": layer, **probe_accuracy(train_states[:, layer], train_y, test_states[:, layer], test_y, seed)}
        if knn_k is not None:
            kn = knn_accuracy(train_states[:, layer], train_y, test_states[:, layer], test_y, knn_k, knn_metric)
            row.update(knn_acc=kn["acc"], knn_lo=kn["lo"], knn_hi=kn["hi"])
        out.append(row)
    return out

"""Membership-inference metrics (family ``mia``): LOSS, zlib, Min-K% and Min-K%++ scores, ROC AUC and PrivLeak.

Orientation (docs/conventions.md#mia): every score here is oriented so that a HIGHER score means
"looks more like a member" (training data). open-unlearning and MUSE use the opposite sign (their scores are
losses: higher = less member-like); each function says how it relates to theirs. AUCs are always
``AUC_conv`` = P(score of a random forget item > score of a random holdout item) (ties count 1/2): 0.5 = the
attack cannot tell forget from holdout, 1 = the forget set still looks like training data.

Only numpy is imported at module import time; torch and scipy are imported inside the functions that need them.
"""

from __future__ import annotations

import zlib

import numpy as np

from unlearn.metrics import register_metric

__all__ = [
    "loss_score",
    "zlib_score",
    "zlib_entropy",
    "min_k_score",
    "min_k_plus_plus_score",
    "min_k_stats_from_logits",
    "mia_auc",
    "privleak",
]


def _np(x) -> np.ndarray:
    """Any tensor / array / list / scalar -> float64 numpy array (torch tensors are detached and moved to CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _scalar_or_array(x: np.ndarray):
    return float(x) if x.ndim == 0 else x


# ---------------------------------------------------------------------------------------------------------------
# Scores (higher = more member-like)
# ---------------------------------------------------------------------------------------------------------------


def loss_score(seq_logp, n):
    """LOSS attack (Yeom et al. 2018): the average per-token log-likelihood ``seq_logp / n = -avg_loss``.

    open-unlearning's ``mia_loss`` score is ``avg_loss`` (the negation of this).

    Args:
        seq_logp: summed log-probs of the scored tokens, scalar or (N,).
        n: number of scored tokens, broadcastable.

    Returns:
        float or (N,) float64.
    """
    return _scalar_or_array(_np(seq_logp) / _np(n))


def zlib_entropy(text: str) -> int:
    """zlib "entropy" of a text: ``len(zlib.compress(text.encode("utf-8")))`` in bytes (default level)."""
    return len(zlib.compress(text.encode("utf-8")))


def zlib_score(seq_logp, text, n_tokens=None):
    """zlib attack (Carlini et al. 2021): log-likelihood divided by the text's zlib entropy.

    ``score = ll / zlib_entropy(text)`` with ``ll = seq_logp / n_tokens`` when ``n_tokens`` is given, else
    ``ll = seq_logp`` as passed. open-unlearning (``mia/zlib.py``) and MUSE ("PPL/zlib") use the *mean* token loss:
    ``avg_loss / zlib``; their score is the negation of ours when ``ll`` is the mean log-lik, so pass the mean
    log-lik, or the summed one together with ``n_tokens``, to match them.

    Args:
        seq_logp: log-likelihood, scalar or (N,).
        text: the scored text, str or a sequence of N strings.
        n_tokens: optional token counts, broadcastable.

    Returns:
        float or (N,) float64.
    """
    ll = _np(seq_logp)
    if n_tokens is not None:
        ll = ll / _np(n_tokens)
    z = zlib_entropy(text) if isinstance(text, str) else np.array([zlib_entropy(t) for t in text], dtype=np.float64)
    return _scalar_or_array(ll / z)


def _lowest_k_mean(values: np.ndarray, k: float) -> float:
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"expected a non-empty 1-D sequence of per-token values, got shape {values.shape}")
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    K = max(1, int(values.size * k))  # open-unlearning: max(1, floor(k * |T|))
    return float(np.sort(values)[:K].mean())


def min_k_score(token_logps, k: float = 0.4) -> float:
    """Min-K% Prob (Shi et al. 2024): mean of the lowest ``K = max(1, floor(k * T))`` token log-probs.

    ``score = (1/K) sum of the K smallest l_t``, ``l_t = log p(x_t | x_<t)`` over the T scored positions.
    open-unlearning's ``mia_min_k`` (and MUSE's Min-40%) report the negation. k = 0.4 as in MUSE's PrivLeak.

    Args:
        token_logps: (T,) per-token log-probs of one text (tensor or array).
        k: fraction of tokens kept.

    Returns:
        float (higher = more member-like).
    """
    return _lowest_k_mean(_np(token_logps), k)


def min_k_plus_plus_score(token_logps, mu, sigma, k: float = 0.4) -> float:
    """Min-K%++ (Zhang et al. 2024): mean of the lowest K per-token z-scores.

    ``z_t = (l_t - mu_t) / sigma_t`` with ``mu_t = E_{z~p(.|x_<t)}[log p(z|x_<t)]`` (negative entropy) and
    ``sigma_t`` the standard deviation of ``log p(z|x_<t)`` under the same distribution (see
    :func:`min_k_stats_from_logits`); ``score = (1/K) sum of the K smallest z_t``, ``K = max(1, floor(k * T))``.
    open-unlearning's ``mia_min_k_plus_plus`` reports the negation; the Min-K%++ repo uses this sign.

    Args:
        token_logps: (T,) per-token log-probs ``l_t``.
        mu: (T,) expected log-prob per position.
        sigma: (T,) standard deviation per position (> 0).
        k: fraction of positions kept.

    Returns:
        float (higher = more member-like).
    """
    z = (_np(token_logps) - _np(mu)) / _np(sigma)
    return _lowest_k_mean(z, k)


def min_k_stats_from_logits(logits, targets, min_var: float = 1e-6):
    """Per-position inputs of Min-K% / Min-K%++ from next-token logits, computed in float32.

    With ``log p = log_softmax(logits)`` over the vocabulary::

        token_logp_t = log p(targets_t)
        mu_t         = sum_v p_v log p_v
        sigma_t      = sqrt(max(sum_v p_v (log p_v)^2 - mu_t^2, min_var))

    (open-unlearning clamps the variance at 1e-6 before the square root.) Terms with ``p_v = 0`` count 0.

    Args:
        logits: (N, V) logits at the N scored positions (already shifted: row t predicts ``targets[t]``).
        targets: (N,) target token ids.
        min_var: lower clamp of the variance.

    Returns:
        ``(token_logp, mu, sigma)``, three (N,) float32 torch tensors on the logits' device.
    """
    import torch

    logits = torch.as_tensor(logits)
    targets = torch.as_tensor(targets, device=logits.device).long()
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"expected logits (N, V) and targets (N,), got {tuple(logits.shape)} and {tuple(targets.shape)}"
        )
    logp = torch.log_softmax(logits.float(), dim=-1)  # (N, V) float32
    p = logp.exp()
    safe = torch.where(p > 0, logp, torch.zeros_like(logp))  # 0 * -inf -> 0
    mu = (p * safe).sum(-1)  # (N,)
    var = (p * safe.square()).sum(-1) - mu.square()
    sigma = var.clamp_min(min_var).sqrt()
    token_logp = logp.gather(-1, targets[:, None]).squeeze(-1)
    return token_logp, mu, sigma


# ---------------------------------------------------------------------------------------------------------------
# AUC and PrivLeak
# ---------------------------------------------------------------------------------------------------------------


def mia_auc(forget_scores, holdout_scores) -> float:
    """ROC AUC of an attack with the forget set as the positive (member) class: ``AUC_conv``.

    ``AUC = P(s_f > s_h) + P(s_f = s_h) / 2`` over forget items f and holdout items h (Mann-Whitney U / (n_f n_h),
    average ranks for ties) = ``sklearn.metrics.roc_auc_score([1]*n_f + [0]*n_h, scores)``. With our scores
    (higher = member): 0.5 = indistinguishable, 1 = the forget set still looks like training data, < 0.5 = the
    forget set looks *less* familiar than unseen data. open-unlearning labels forget 0 and feeds loss-like
    scores, which gives the same number; MUSE's AUC is ``1 - AUC_conv``.

    Args:
        forget_scores: (n_f,) member-likeness scores of forget items.
        holdout_scores: (n_h,) scores of holdout (never trained on) items.

    Returns:
        AUC in [0, 1].
    """
    from scipy.stats import rankdata

    f, h = _np(forget_scores).ravel(), _np(holdout_scores).ravel()
    if f.size == 0 or h.size == 0:
        raise ValueError("mia_auc needs at least one forget and one holdout score")
    if not (np.all(np.isfinite(f)) and np.all(np.isfinite(h))):
        raise ValueError("mia_auc got non-finite scores")
    ranks = rankdata(np.concatenate([f, h]))  # average ranks, 1-based
    u = ranks[: f.size].sum() - f.size * (f.size + 1) / 2
    return float(u / (f.size * h.size))


def privleak(auc_candidate: float, auc_oracle: float) -> float:
    """MUSE's PrivLeak in percent, from our conventional AUCs.

    MUSE: ``PrivLeak = (AUC_M(unlearn) - AUC_M(retrain)) / AUC_M(retrain) * 100`` with MUSE's AUC
    ``AUC_M = 1 - AUC_conv`` (forget labelled as the non-member class). In our orientation this is::

        PrivLeak = (AUC_conv(oracle) - AUC_conv(candidate)) / (1 - AUC_conv(oracle)) * 100

    exactly what open-unlearning's ``privleak`` computes (it adds 1e-10 to the denominator; so do we). 0 = the
    candidate leaks as much as the retrain oracle (ideal); large negative = under-unlearning (e.g. candidate AUC 1,
    oracle 0.5 -> -100); large positive = over-unlearning (forget data looks less familiar than unseen data).

    Args:
        auc_candidate: ``AUC_conv`` (see :func:`mia_auc`) of the evaluated model.
        auc_oracle: ``AUC_conv`` of the retain-only oracle (open-unlearning falls back to 0.5 without one).

    Returns:
        PrivLeak in percent.
    """
    return float((auc_oracle - auc_candidate) / (1.0 - auc_oracle + 1e-10) * 100.0)


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------

_AUC_NOTE = (
    "ROC AUC with forget as the positive class and member-likeness as the score (0.5 = forget indistinguishable "
    "from holdout, 1 = forget still looks like training data). Same number as open-unlearning's mia_* agg_value; "
    "MUSE's AUC is 1 minus this. Best when closest to the retain-only oracle's AUC."
)

for _name, _what in (
    ("mia_loss_auc", "LOSS attack (average token log-likelihood)"),
    ("mia_zlib_auc", "zlib attack (mean token log-likelihood / zlib-compressed length in bytes)"),
    ("mia_min_k_auc", "Min-K% Prob attack (mean of the lowest 40% answer-token log-probs, EOS not counted)"),
    (
        "mia_min_k_plus_plus_auc",
        "Min-K%++ attack (mean of the lowest 40% answer-token z-scores (log p - mu) / sigma, EOS not counted)",
    ),
):
    _on = "on forget vs holdout answers" + (" (MUSE: its privleak texts)" if _name == "mia_min_k_auc" else "")
    register_metric(_name, "mia", "oracle", f"{_what} {_on}: {_AUC_NOTE}", "[0, 1]")

register_metric(
    "privleak",
    "mia",
    "oracle",
    "MUSE PrivLeak (%) of the Min-K% (k=0.4) attack: (AUC_oracle - AUC) / (1 - AUC_oracle) * 100 in the forget-"
    "positive AUC convention, = MUSE's (AUC_M - AUC_M,retrain) / AUC_M,retrain * 100 with AUC_M = 1 - AUC. "
    "Best closest to 0; negative = under-unlearning, positive = over-unlearning.",
    "[-100, +inf)",
)

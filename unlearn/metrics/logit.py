"""Logit- and generation-based metrics (family ``logit``): TOFU's probability, ROUGE, truth ratio, forget quality
and model utility, plus exact match, exact memorization and extraction strength (open-unlearning / MUSE).

Everything here is a pure function of numbers the evaluator already computed (summed answer log-probs, token
counts, generated strings, greedy token ids). Conventions:

* ``seq_logp`` is the *summed* log-probability of an answer's tokens given the question, ``log P(a|q)``, and
  ``n`` its number of scored tokens, so ``seq_logp / n = -avg_loss`` in TOFU's logs. Passing ``seq_logp =
  -avg_loss`` with ``n = 1`` is equivalent (that is how :mod:`unlearn.tofu_aggregate` feeds TOFU's logs).
* Per-example results are float64 numpy arrays; inputs may be torch tensors (any dtype/device), numpy arrays,
  lists or scalars.

The module imports only numpy at import time (the registry imports every family module); scipy, torch and
rouge_score are imported inside the functions that need them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache

import numpy as np

from unlearn.metrics import register_metric

__all__ = [
    "rouge_l",
    "length_normalised_prob",
    "normalised_prob",
    "truth_ratio",
    "forget_truth_ratio_score",
    "utility_truth_ratio_score",
    "forget_quality",
    "forget_quality_test",
    "model_utility",
    "exact_match_acc",
    "exact_memorization",
    "exact_memorization_per_example",
    "extraction_strength",
    "extraction_strength_per_example",
    "SETS",
]


def _np(x) -> np.ndarray:
    """Any tensor / array / list / scalar -> float64 numpy array (torch tensors are detached and moved to CPU)."""
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _np_int(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ---------------------------------------------------------------------------------------------------------------
# ROUGE-L
# ---------------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _rouge_scorer():
    try:
        from rouge_score import rouge_scorer
    except ImportError:  # pragma: no cover - rouge_score ships with lm_eval, which the suite pins
        return None
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def _simple_tokens(text: str) -> list[str]:
    """rouge_score's default tokenisation without stemming: lowercase, non-alphanumerics become spaces."""
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).split()


def _lcs_length(a: list[str], b: list[str]) -> int:
    """Length of the longest common subsequence of two token lists (O(len(a) * len(b)) dynamic programme)."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(prediction: str, reference: str) -> tuple[float, float]:
    """ROUGE-L (recall, F1) of a generated answer against the reference answer, as TOFU computes it.

    TOFU and open-unlearning call ``RougeScorer(["rougeL"], use_stemmer=True).score(reference, generation)``:
    both strings are lower-cased, every non-alphanumeric character becomes a separator, tokens longer than three
    characters are Porter-stemmed, and with ``L = |LCS(pred_tokens, ref_tokens)|``::

        recall    = L / |ref_tokens|
        precision = L / |pred_tokens|
        f1        = 2 * precision * recall / (precision + recall)      (0 when L == 0)

    TOFU reports the recall (``rougeL_recall``), MUSE the F1. If ``rouge_score`` is not importable, the same
    formula runs on the tokenisation above *without* stemming (small differences on inflected words).

    Args:
        prediction: the model's generated answer (decoded new tokens only).
        reference: the ground-truth answer.

    Returns:
        ``(recall, f1)``, both in [0, 1].
    """
    scorer = _rouge_scorer()
    if scorer is not None:
        s = scorer.score(reference, prediction)["rougeL"]
        return float(s.recall), float(s.fmeasure)
    pred, ref = _simple_tokens(prediction), _simple_tokens(reference)
    lcs = _lcs_length(pred, ref)
    if lcs == 0:
        return 0.0, 0.0
    recall, precision = lcs / len(ref), lcs / len(pred)
    return recall, 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------------------------
# Probabilities and truth ratio
# ---------------------------------------------------------------------------------------------------------------


def length_normalised_prob(seq_logp, n_tokens):
    """Length-normalised answer probability ``P(a|q)^(1/|a|) = exp(seq_logp / n_tokens)`` (TOFU's "Prob.").

    TOFU reports the mean of this over the forget and retain sets (``exp(-avg_gt_loss)`` in its logs).

    Args:
        seq_logp: summed answer log-probs, any shape; a torch tensor gives a torch tensor back.
        n_tokens: scored answer tokens, broadcastable to ``seq_logp``.

    Returns:
        Same shape (and, for tensors, type) as ``seq_logp``; values in [0, 1].
    """
    if hasattr(seq_logp, "detach"):
        return (seq_logp / n_tokens).exp()
    out = np.exp(_np(seq_logp) / _np(n_tokens))
    return float(out) if out.ndim == 0 else out


def normalised_prob(correct_logp, correct_n, option_logps, option_ns) -> np.ndarray:
    """TOFU's normalised probability on Real Authors / World Facts, per example.

    With ``p(a) = P(a|q)^(1/|a|)`` (length-normalised)::

        prob_i = p(correct_i) / (p(correct_i) + sum_k p(perturbed_ik))

    i.e. the correct answer's share among the correct and the K perturbed (wrong) options (TOFU
    ``get_model_utility``; open-unlearning ``probability_w_options``, which adds 1e-10 to the denominator). It is
    computed as a softmax over the per-token log-likelihoods, so very small probabilities do not underflow.

    Args:
        correct_logp: (N,) summed log-probs of the correct answer.
        correct_n: (N,) its token counts (or a scalar).
        option_logps: (N, K) summed log-probs of the perturbed (wrong) answers only; the correct answer is added.
        option_ns: (N, K) their token counts (or broadcastable).

    Returns:
        (N,) float64 in [0, 1]; TOFU reports the mean.
    """
    c = _np(correct_logp) / _np(correct_n)  # (N,) per-token log-lik of the correct answer
    o = _np(option_logps) / _np(option_ns)  # (N, K)
    if o.ndim == 1:
        o = o[:, None]
    allv = np.concatenate([c[:, None], o], axis=1)  # (N, 1+K)
    m = allv.max(axis=1, keepdims=True)
    return np.exp(c - m[:, 0]) / np.exp(allv - m).sum(axis=1)


def truth_ratio(para_logp, para_n, pert_logps, pert_ns) -> np.ndarray:
    """Per-example truth ratio R, exactly as TOFU's code computes it.

    The paper defines ``R = mean_k P(pert_k|q)^(1/|pert_k|) / P(para|q)^(1/|para|)`` (arithmetic mean). TOFU's
    code (``aggregate_eval_stat.py``; open-unlearning ``truth_ratio``) instead averages the perturbed answers'
    *average losses*, i.e. takes the geometric mean of their length-normalised probabilities::

        R = exp( mean_k(pert_logp_k / pert_n_k) - para_logp / para_n )
          = exp( avg_paraphrased_loss - mean_k average_perturb_loss_k )

    which is what this returns (it equals the ``truth_ratio`` field of TOFU's eval logs). R < 1: the model
    prefers the (paraphrased) correct answer; R > 1: it prefers wrong answers. TOFU uses the paraphrased answer
    on the forget/retain sets and the original answer on Real Authors / World Facts (which have no paraphrase).

    Args:
        para_logp: (N,) summed log-probs of the paraphrased (or original) correct answer.
        para_n: (N,) its token counts.
        pert_logps: (N, K) summed log-probs of the K perturbed answers.
        pert_ns: (N, K) their token counts.

    Returns:
        (N,) float64, R > 0.
    """
    para = _np(para_logp) / _np(para_n)  # (N,) per-token log-lik
    pert = _np(pert_logps) / _np(pert_ns)  # (N, K)
    if pert.ndim == 1:
        pert = pert[:, None]
    return np.exp(pert.mean(axis=1) - para)


def forget_truth_ratio_score(R) -> float:
    """Forget-set truth-ratio score ``mean_i min(R_i, 1/R_i)`` (TOFU ``aggregate_eval_stat.py``: "closer to 1 is
    better"). 1 means correct and wrong answers are equally likely, as for a model that never saw the data."""
    r = _np(R)
    return float(np.mean(np.minimum(r, 1.0 / r)))


def utility_truth_ratio_score(R) -> float:
    """Retain / Real Authors / World Facts truth-ratio score ``mean_i max(0, 1 - R_i)`` (TOFU: "true is better").
    TOFU writes it as ``max(0, 1 - 1/s)`` with ``s = exp(perturbed - paraphrased loss) = 1/R``: the same number."""
    r = _np(R)
    return float(np.mean(np.maximum(0.0, 1.0 - r)))


def forget_quality_test(candidate_stats, oracle_stats) -> tuple[float, float]:
    """Two-sample KS test of per-example forget-set truth ratios: ``(p-value, KS statistic)``.

    See :func:`forget_quality`.
    """
    from scipy.stats import ks_2samp

    a, b = _np(candidate_stats).ravel(), _np(oracle_stats).ravel()
    if a.size == 0 or b.size == 0:
        raise ValueError("forget_quality needs at least one statistic per model")
    res = ks_2samp(a, b)
    return float(res.pvalue), float(res.statistic)


def forget_quality(candidate_stats, oracle_stats) -> float:
    """TOFU's forget quality: the p-value of ``scipy.stats.ks_2samp`` (two-sided, ``method="auto"``) between the
    candidate's and the retain-only oracle's per-example forget-set truth ratios.

    TOFU feeds ``exp(mean perturbed avg-loss - paraphrased avg-loss)``, i.e. ``1/R`` of :func:`truth_ratio`; the
    KS statistic and p-value are invariant under any strictly monotone map applied to both samples, so passing
    ``R`` (as the suite does) or ``1/R`` gives the same number. Close to 1: the candidate's truth-ratio
    distribution is indistinguishable from the oracle's (higher is better).

    Args:
        candidate_stats: (N,) per-example truth ratios of the evaluated model on the forget set.
        oracle_stats: (M,) the same statistic for the retain-only oracle on the same forget set.

    Returns:
        p-value in [0, 1].
    """
    return forget_quality_test(candidate_stats, oracle_stats)[0]


def model_utility(values: Mapping[str, float]) -> float:
    """TOFU's model utility: the harmonic mean of the given metric values (``scipy.stats.hmean``).

    TOFU uses 9 numbers, {Prob., ROUGE-L recall, truth-ratio score} x {retain, Real Authors, World Facts}. The
    harmonic mean of non-negative numbers is 0 as soon as one is 0 (returned directly, no division by zero).

    Args:
        values: metric name -> value, each >= 0 (only the values are used).

    Returns:
        ``len(v) / sum(1 / v_i)``, or 0.0 if any value is 0.

    Raises:
        ValueError: empty input, or a negative or non-finite value.
    """
    v = np.array([float(x) for x in values.values()], dtype=np.float64)
    if v.size == 0:
        raise ValueError("model_utility needs at least one value")
    if not np.all(np.isfinite(v)) or np.any(v < 0):
        bad = {k: x for k, x in values.items() if not np.isfinite(float(x)) or float(x) < 0}
        raise ValueError(f"model_utility needs finite non-negative values, got {bad}")
    if np.any(v == 0):
        return 0.0
    return float(v.size / np.sum(1.0 / v))


# ---------------------------------------------------------------------------------------------------------------
# Exact match, exact memorization, extraction strength
# ---------------------------------------------------------------------------------------------------------------


def exact_match_acc(prediction: str, reference: str) -> bool:
    """The suite's ``{s}_acc``: the generated answer equals the reference after stripping surrounding whitespace
    (case- and punctuation-sensitive)."""
    return prediction.strip() == reference.strip()


def _valid_mask(label_ids: np.ndarray, mask, ignore_index: int) -> np.ndarray:
    valid = label_ids != ignore_index
    if mask is not None:
        valid &= _np_int(mask).astype(bool)
    return valid


def exact_memorization_per_example(pred_ids, label_ids=None, mask=None, ignore_index: int = -100) -> np.ndarray:
    """Per-example exact memorization (see :func:`exact_memorization`); NaN for an example with no scored token.

    Returns:
        (B,) float64 (B = 1 for 1-D input).
    """
    p = _np_int(pred_ids)
    if label_ids is None:  # p holds the per-token hits already
        hits = p.astype(bool)
        valid = np.ones_like(hits) if mask is None else _np_int(mask).astype(bool)
    else:
        lab = _np_int(label_ids)
        if p.shape != lab.shape:
            raise ValueError(f"pred_ids {p.shape} and label_ids {lab.shape} must have the same shape")
        valid = _valid_mask(lab, mask, ignore_index)
        hits = p == lab
    hits, valid = np.atleast_2d(hits), np.atleast_2d(valid)  # (B, T)
    n = valid.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, (hits & valid).sum(axis=1) / n, np.nan)


def exact_memorization(pred_ids, label_ids=None, mask=None, ignore_index: int = -100) -> float:
    """Exact memorization (MUSE / open-unlearning ``exact_memorization``): the share of answer tokens whose
    teacher-forced greedy prediction equals the label, averaged over examples.

    Per example: ``EM = (1/|T|) sum_{t in T} [argmax_v p(v | x_<t) == x_t]``, T = scored (answer) positions.
    The caller aligns predictions with labels (``pred_ids[t] = logits[t-1].argmax()``, ``label_ids[t] = x_t``).

    Args:
        pred_ids: (T,) or (B, T) greedy next-token ids aligned with ``label_ids``; or, when ``label_ids`` is None,
            a boolean/0-1 tensor of per-token hits.
        label_ids: (T,) or (B, T) label ids; positions equal to ``ignore_index`` are not scored.
        mask: optional (T,) / (B, T) 0/1 mask of scored positions (combined with ``ignore_index``).
        ignore_index: label value of unscored positions (Hugging Face's -100).

    Returns:
        Mean over examples with at least one scored token (open-unlearning drops the others); NaN if none.
    """
    em = exact_memorization_per_example(pred_ids, label_ids, mask, ignore_index)
    em = em[~np.isnan(em)]
    return float(em.mean()) if em.size else float("nan")


def extraction_strength_per_example(
    pred_ids, label_ids, mask=None, ignore_index: int = -100, match_open_unlearning: bool = False
) -> np.ndarray:
    """Per-example extraction strength (see :func:`extraction_strength`).

    Returns:
        (B,) float64 (B = 1 for 1-D input); 0 for an example with no scored token (as open-unlearning).
    """
    p, lab = np.atleast_2d(_np_int(pred_ids)), np.atleast_2d(_np_int(label_ids))
    if p.shape != lab.shape:
        raise ValueError(f"pred_ids {p.shape} and label_ids {lab.shape} must have the same shape")
    valid = _valid_mask(lab, None if mask is None else np.atleast_2d(_np_int(mask)), ignore_index)
    out = np.zeros(p.shape[0])
    for i in range(p.shape[0]):
        hits = p[i][valid[i]] == lab[i][valid[i]]  # (n,) over scored positions only
        n = hits.size
        if n == 0:
            continue
        # suffix_ok[k] = all(hits[k:]); the smallest k with a fully correct suffix is n - (trailing run of hits)
        trailing = n if hits.all() else int(np.argmin(hits[::-1]))
        k = n - trailing
        if match_open_unlearning and k == n:
            k = n - 1  # open-unlearning's loop leaves k = n - 1 when no suffix matches
        out[i] = 1.0 - k / n
    return out


def extraction_strength(
    pred_ids, label_ids, mask=None, ignore_index: int = -100, match_open_unlearning: bool = False
) -> float:
    """Extraction strength (Carlini et al.; open-unlearning ``extraction_strength``), averaged over examples.

    Per example with n scored answer tokens, teacher-forced greedy predictions ``ŷ`` and labels ``y``::

        ES = 1 - k / n,   k = min{ k in 0..n : ŷ[k:] == y[k:] }

    so ES = 1 when the whole answer is predicted, (n - k)/n when only the last n - k tokens are, and 0 when even
    the last token is wrong (k = n, empty suffix). open-unlearning's loop stops at k = n - 1 in that last case and
    reports 1/n instead; ``match_open_unlearning=True`` reproduces that.

    Args:
        pred_ids: (T,) or (B, T) greedy next-token ids aligned with ``label_ids``.
        label_ids: (T,) or (B, T); ``ignore_index`` positions (and ``mask == 0``) are dropped before the suffix
            test, as open-unlearning scores only labelled positions.
        mask: optional 0/1 mask of scored positions.
        ignore_index: label value of unscored positions.
        match_open_unlearning: reproduce open-unlearning's 1/n for a fully wrong suffix.

    Returns:
        Mean ES over examples (an example without scored tokens counts 0, as in open-unlearning).
    """
    return float(
        extraction_strength_per_example(pred_ids, label_ids, mask, ignore_index, match_open_unlearning).mean()
    )


# ---------------------------------------------------------------------------------------------------------------
# Registry
# ---------------------------------------------------------------------------------------------------------------

# The evaluation sets per-set metrics are reported on. ``forget`` is scored against the oracle; the others are
# knowledge the model should keep. TOFU's utility sets (world_facts, arithmetic, real_authors) use the original
# answer and TOFU's normalised probability; bio_only holds entities learned from biographies only (TinyFacts v2).
KEEP_SETS = ("retain", "world_facts", "arithmetic", "real_authors", "bio_only")
OPTION_SETS = ("world_facts", "arithmetic", "real_authors")
SETS = ("forget", *KEEP_SETS)

_FORGET_TAIL = " Best when closest to the retain-only oracle's value (lower than the target's)."
_KEEP_TAIL = " Higher is better (knowledge the model should keep)."
_SET_NOTE = (" {set}: retain = the retain evaluation subset, world_facts / arithmetic / real_authors = utility sets, "
             "bio_only = entities whose facts were trained from biographies only.")  # fmt: skip
_PROB = "the length-normalised answer probability exp(mean answer-token log-prob) = P(a given q)^(1/len(a))"
_NORM_PROB = ("TOFU's normalised probability p(a) / (p(a) + sum over perturbed answers a' of p(a')), "
              "p(x) = exp(mean answer-token log-prob of x given the question)")  # fmt: skip


def _register_all() -> None:
    """One registration per metric: ``forget_*`` exactly (direction oracle), ``{set}_*`` as templates."""
    keep = {"set": KEEP_SETS}
    for q, qtext in (("", "original question"), ("_para", "paraphrased question")):
        acc = ("Exact-match accuracy on {where}: share of examples whose greedy answer to the " + qtext +
               " equals the reference after stripping whitespace; mean over examples.")  # fmt: skip
        rouge = ("ROUGE-L recall (rouge_score, Porter stemmer) of the greedy answer to the " + qtext +
                 " against the reference answer, mean over {where} (TOFU's ROUGE).")  # fmt: skip
        register_metric(f"forget{q}_acc", "logit", "oracle", acc.format(where="the forget set") + _FORGET_TAIL,
                        "[0, 1]")  # fmt: skip
        register_metric(f"{{set}}{q}_acc", "logit", "higher", acc.format(where="{set}") + _KEEP_TAIL + _SET_NOTE,
                        "[0, 1]", keep)  # fmt: skip
        register_metric(f"forget{q}_prob", "logit", "oracle",
                        f"Mean over the forget set of {_PROB}, the question being the {qtext}.{_FORGET_TAIL}",
                        "[0, 1]")  # fmt: skip
        register_metric(f"{{set}}{q}_prob", "logit", "higher",
                        f"Mean over {{set}} of {_PROB} ({_NORM_PROB} on world_facts / arithmetic / real_authors), "
                        f"the question being the {qtext}.{_KEEP_TAIL}{_SET_NOTE}", "[0, 1]", keep)  # fmt: skip
        register_metric(f"forget{q}_rougeL_recall", "logit", "oracle",
                        rouge.format(where="the forget set") + _FORGET_TAIL, "[0, 1]")  # fmt: skip
        register_metric(f"{{set}}{q}_rougeL_recall", "logit", "higher",
                        rouge.format(where="{set}") + _KEEP_TAIL + _SET_NOTE, "[0, 1]", keep)  # fmt: skip
    f1 = ("ROUGE-L F1 (rouge_score, Porter stemmer) of the greedy answer against the reference, mean over {where} "
          "(MUSE's KnowMem/VerbMem flavour).")  # fmt: skip
    register_metric("forget_rougeL_f1", "logit", "oracle", f1.format(where="the forget set") + _FORGET_TAIL,
                    "[0, 1]")  # fmt: skip
    register_metric("{set}_rougeL_f1", "logit", "higher", f1.format(where="{set}") + _KEEP_TAIL + _SET_NOTE,
                    "[0, 1]", keep)  # fmt: skip
    register_metric(
        "forget_truth_ratio", "logit", "oracle",
        "Truth-ratio score on the forget set: mean over examples of min(R, 1/R), R = exp(mean perturbed per-token "
        "log-lik - paraphrased per-token log-lik) (TOFU's code: geometric mean over perturbed answers). Best when "
        "closest to the retain-only oracle's value.", "[0, 1]",
    )  # fmt: skip
    register_metric(
        "{set}_truth_ratio", "logit", "higher",
        "Truth-ratio score on {set}: mean over examples of max(0, 1 - R), R = exp(mean perturbed per-token log-lik "
        "- correct (paraphrased where available, the original answer on TOFU's utility sets) per-token log-lik) "
        "(TOFU). Higher is better: correct answers preferred over perturbed ones." + _SET_NOTE, "[0, 1]", keep,
    )  # fmt: skip

    register_metric(
        "forget_quality",
        "logit",
        "higher",
        "TOFU forget quality: p-value of a two-sample KS test (scipy.stats.ks_2samp) between the per-example "
        "forget-set truth ratios R of the evaluated model and of the retain-only oracle. 1 = indistinguishable "
        "from the oracle; tiny values = the forget set is still known (or distorted).",
        "[0, 1]",
    )
    register_metric(
        "model_utility",
        "logit",
        "higher",
        "TOFU model utility: harmonic mean of {prob, rougeL_recall, truth_ratio} on the retain and utility sets "
        "(TOFU: retain, Real Authors, World Facts; the suite: retain, world_facts, arithmetic). 0 if any is 0.",
        "[0, 1]",
    )
    register_metric(
        "forget_exact_memorization",
        "logit",
        "oracle",
        "Exact memorization on the forget set (MUSE / open-unlearning): share of the answer's own tokens (EOS not "
        "counted) whose teacher-forced greedy prediction equals the label, mean over examples. Best when closest to "
        "the oracle.",
        "[0, 1]",
    )
    register_metric(
        "forget_extraction_strength",
        "logit",
        "oracle",
        "Extraction strength on the forget set (Carlini et al.; open-unlearning): 1 - k/n with k in 0..n the smallest "
        "offset from which the teacher-forced greedy answer suffix equals the label suffix (n answer tokens, EOS not "
        "counted; 0 when the last token is wrong), mean over examples. Best when closest to the oracle.",
        "[0, 1]",
    )


_register_all()

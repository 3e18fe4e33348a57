"""TOFU's aggregate figures (forget quality, model utility and their components) from per-example eval logs.

Input: TOFU's ``eval_log_aggregated.json`` (what locuslab/tofu's ``evaluate_util.py`` writes and ships under
``data/ft_epoch5_*/eval_results/ds_size300/``): top-level keys ``eval_log.json`` (retain set),
``eval_log_forget.json`` (forget set), ``eval_real_author_wo_options.json`` and
``eval_real_world_wo_options.json``; under each, per-example values keyed by index: ``avg_gt_loss``,
``avg_paraphrased_loss``, ``average_perturb_loss`` (a list per example) and ``rougeL_recall``.

The figures follow TOFU's ``aggregate_eval_stat.py`` (docs/conventions.md#tofu-metrics), computed with the suite's own
metric functions (:mod:`unlearn.metrics.logit`), each log's average losses being per-token log-likelihoods
``-avg_loss`` with one "token":

* Prob.: retain/forget ``mean exp(-avg_gt_loss)``; Real Authors / World Facts the normalised probability
  ``exp(-gt) / (exp(-gt) + sum_k exp(-pert_k))``.
* ROUGE: mean ``rougeL_recall``.
* Truth ratio: ``R = exp(avg_paraphrased_loss - mean_k average_perturb_loss_k)``; forget ``mean min(R, 1/R)``,
  the others ``mean max(0, 1 - R)``.
* Model utility: harmonic mean of the 9 non-forget numbers.
* Forget quality: KS-test p-value between the candidate's and the retain model's forget-set R.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from unlearn.errors import UnlearnError
from unlearn.metrics.logit import (
    forget_quality_test,
    forget_truth_ratio_score,
    length_normalised_prob,
    model_utility,
    normalised_prob,
    truth_ratio,
    utility_truth_ratio_score,
)

# TOFU log file -> (our set name, TOFU's display name)
TASKS = {
    "eval_log.json": ("retain", "Retain"),
    "eval_real_author_wo_options.json": ("real_authors", "Real Authors"),
    "eval_real_world_wo_options.json": ("world_facts", "Real World"),
    "eval_log_forget.json": ("forget", "Forget"),
}
FIELDS = ("avg_gt_loss", "avg_paraphrased_loss", "average_perturb_loss", "rougeL_recall")
UTILITY_SETS = ("retain", "real_authors", "world_facts")
COMPONENTS = ("prob", "rougeL_recall", "truth_ratio")
TOFU_METRIC = {"prob": "Prob.", "rougeL_recall": "ROUGE", "truth_ratio": "Truth Ratio"}


def _field(task: dict, task_name: str, field: str, keys: list, label: str) -> np.ndarray:
    values = task.get(field)
    if values is None:
        raise UnlearnError(f"{label}: {task_name} has no {field!r}; expected TOFU's per-example fields {FIELDS}")
    if isinstance(values, list):
        values = {str(i): v for i, v in enumerate(values)}
    if not isinstance(values, dict) or set(map(str, values)) != set(keys):
        raise UnlearnError(f"{label}: {task_name}/{field} is not keyed by the same example indices as avg_gt_loss")
    values = {str(k): v for k, v in values.items()}
    try:
        arr = np.array([values[k] for k in keys], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise UnlearnError(f"{label}: {task_name}/{field} is not numeric or ragged ({e})") from None
    if arr.size == 0 or not np.all(np.isfinite(arr)):
        raise UnlearnError(f"{label}: {task_name}/{field} is empty or has non-finite values")
    return arr


def _arrays(log, label: str) -> dict[str, dict[str, np.ndarray]]:
    """Validate one TOFU log and return ``{set name: {field: array}}`` in the log's example order."""
    if not isinstance(log, dict):
        raise UnlearnError(f"{label}: expected a JSON object with keys {sorted(TASKS)}, got {type(log).__name__}")
    missing = [t for t in TASKS if t not in log]
    if missing:
        raise UnlearnError(f"{label}: not a TOFU eval_log_aggregated.json (missing {', '.join(missing)})")
    out = {}
    for task_name, (set_name, _) in TASKS.items():
        task = log[task_name]
        if not isinstance(task, dict) or not isinstance(task.get("avg_gt_loss"), (dict, list)):
            raise UnlearnError(f"{label}: {task_name} has no per-example 'avg_gt_loss'")
        gt = task["avg_gt_loss"]
        keys = list(map(str, gt)) if isinstance(gt, dict) else [str(i) for i in range(len(gt))]
        arrs = {f: _field(task, task_name, f, keys, label) for f in FIELDS}
        if arrs["average_perturb_loss"].ndim != 2:
            raise UnlearnError(f"{label}: {task_name}/average_perturb_loss must be a list of losses per example")
        out[set_name] = arrs
    return out


def _components(arrs: dict[str, dict[str, np.ndarray]]) -> tuple[dict[str, float], np.ndarray]:
    """TOFU's 12 numbers ``{set}_{component}`` and the forget-set per-example truth ratios."""
    res: dict[str, float] = {}
    forget_R = None
    for set_name, a in arrs.items():
        gt_ll, para_ll, pert_ll = -a["avg_gt_loss"], -a["avg_paraphrased_loss"], -a["average_perturb_loss"]
        if set_name in ("retain", "forget"):
            prob = float(np.mean(length_normalised_prob(gt_ll, 1.0)))
        else:
            prob = float(np.mean(normalised_prob(gt_ll, 1.0, pert_ll, 1.0)))
        R = truth_ratio(para_ll, 1.0, pert_ll, 1.0)  # (N,)
        if set_name == "forget":
            forget_R = R
            tr = forget_truth_ratio_score(R)
        else:
            tr = utility_truth_ratio_score(R)
        res[f"{set_name}_prob"] = prob
        res[f"{set_name}_rougeL_recall"] = float(np.mean(a["rougeL_recall"]))
        res[f"{set_name}_truth_ratio"] = tr
    return res, forget_R


def utility_components(log: dict, label: str = "log") -> dict[str, float]:
    """TOFU's per-set numbers and model utility of one model's log (no forget quality)."""
    comps, _ = _components(_arrays(log, label))
    comps["model_utility"] = model_utility({f"{s}_{c}": comps[f"{s}_{c}"] for s in UTILITY_SETS for c in COMPONENTS})
    return comps


def aggregate(candidate: dict, retain: dict) -> dict[str, float]:
    """TOFU's aggregate evaluation of ``candidate`` against the retain-only model ``retain``.

    Args:
        candidate: the evaluated model's ``eval_log_aggregated.json`` content (already parsed).
        retain: the retain-only model's log (same format; only its forget-set truth ratios and, for reference,
            its model utility are used).

    Returns:
        ``forget_quality`` (KS p-value), ``forget_ks_statistic``, ``model_utility`` (candidate),
        ``retain_model_utility`` (the retain model's own utility, for reference) and the candidate's 12
        components ``{retain,real_authors,world_facts,forget}_{prob,rougeL_recall,truth_ratio}``.

    Raises:
        UnlearnError: a log that is not in TOFU's format.
    """
    cand_arrs, ret_arrs = _arrays(candidate, "candidate"), _arrays(retain, "retain")
    comps, cand_R = _components(cand_arrs)
    ret_comps, ret_R = _components(ret_arrs)
    fq, ks = forget_quality_test(cand_R, ret_R)

    def mu(c):
        return model_utility({f"{s}_{k}": c[f"{s}_{k}"] for s in UTILITY_SETS for k in COMPONENTS})

    return {
        "forget_quality": fq,
        "forget_ks_statistic": ks,
        "model_utility": mu(comps),
        "retain_model_utility": mu(ret_comps),
        **comps,
    }


def load_log(path: str | Path, label: str) -> dict:
    """Read a TOFU log from disk; a missing file or invalid JSON is an `UnlearnError`."""
    p = Path(path)
    if not p.is_file():
        raise UnlearnError(f"{label} log not found: {p}")
    try:
        with p.open(encoding="utf-8") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UnlearnError(f"{label} log {p} is not valid JSON ({e.__class__.__name__}: {e})") from None


def format_table(result: dict[str, float]) -> str:
    """A small fixed-width table of the aggregate figures with TOFU's names."""
    lines = [f"{'metric':<28}{'TOFU name':<26}{'value':>12}", "-" * 66]
    lines.append(f"{'forget_quality':<28}{'Forget Quality':<26}{result['forget_quality']:>12.4g}")
    lines.append(f"{'model_utility':<28}{'Model Utility':<26}{result['model_utility']:>12.4f}")
    lines.append(f"{'retain_model_utility':<28}{'(retain model utility)':<26}{result['retain_model_utility']:>12.4f}")
    for set_name, tofu_set in ((s, d) for s, d in TASKS.values()):
        for c in COMPONENTS:
            key = f"{set_name}_{c}"
            lines.append(f"{key:<28}{TOFU_METRIC[c] + ' ' + tofu_set:<26}{result[key]:>12.4f}")
    return "\n".join(lines)

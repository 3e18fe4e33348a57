"""Path dependence of unlearning (family ``path``): how much the outcome of one fixed unlearning procedure depends
on the order in which the model learned its training stages.

Reference: Yu, He, Goyal, Arora, "On the Impossibility of Retrain Equivalence in Machine Unlearning",
https://arxiv.org/abs/2510.16629 (code: https://github.com/princeton-pli/impossibility-unlearning). Formulas,
directions and edge cases are written out in docs/path-dependence.md ("Statistics").

Input: a long *trajectory* table with one row per (method, seed, path, step) and the columns

* ``path`` (str), the label of a training order; ``position`` (int), the 1-based position of the forget stage in
  that order (the largest position is the most recent stage, learned just before unlearning);
* ``seed`` (int), ``method`` (str), ``step`` (int, 0 = before unlearning);
* metric columns: ``forget_ll`` (mean per-token log-prob of the forget answers, ``f``), ``para_ll`` (the same on
  paraphrased questions, ``g``), optionally ``alt_ll`` (alternative continuations, ``a``) and utility columns
  (``u``, e.g. ``retain_ll``, ``arith_acc``), the names being the caller's.

Everything here is a pure function of those numbers (numpy, pandas, scipy; no torch, no methods, no training).
The module imports only numpy at import time, because the registry imports every family module; pandas and scipy
are imported inside the functions.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from unlearn.metrics import METRICS, register_metric

__all__ = [
    "path_scores",
    "cross_path",
    "divergence",
    "retrain_distance",
    "summarize",
    "icc1",
    "json_ready",
]

KEYS = ("method", "seed", "path")  # one unlearning run = one (method, seed, path)

# ---------------------------------------------------------------------------------------------------------------
# Registry: per-path scores (one per method, seed, path) and cross-path statistics (one per method, or per
# method and seed). ``{u}`` ranges over the caller's utility columns, so it is left open.
_P = "path"
register_metric("fs", _P, "higher", "forget score FS = f(0) - f(T), f = mean per-token log-prob of the forget "
                "answers (higher = more forgetting, the paper's Table-1 convention)", "(-inf, inf)")  # fmt: skip
register_metric("slope", _P, "lower", "OLS slope of f(t) against the step over the first t_early logged points "
                "(nats per token per step; more negative = faster early forgetting)", "(-inf, inf)")  # fmt: skip
register_metric("t50", _P, "lower", "first logged step with f(0) - f(t) >= 0.5 * max over paths of FS (same method "
                "and seed); None (infinite) if never reached", "[0, inf]")  # fmt: skip
register_metric("auc", _P, "higher", "normalised forgetting area: mean over logged steps (step 0 included) of "
                "f(0) - f(t)", "(-inf, inf)")  # fmt: skip
register_metric("depth", _P, "higher", "depth ratio (g(0) - g(T)) / (f(0) - f(T)), g = paraphrase log-lik: about 1 "
                "deep forgetting, about 0 superficial", "(-inf, inf)")  # fmt: skip
register_metric("du_{u}", _P, "higher", "utility change u(T) - u(0) over unlearning for utility column u (negative "
                "= utility lost)", "(-inf, inf)")  # fmt: skip
register_metric("tradeoff_{u}", _P, "higher", "forgetting per unit of utility moved: FS / |u(T) - u(0)|",
                "(-inf, inf)")  # fmt: skip
register_metric("f0", _P, "none", "f(0): forget log-lik before unlearning", "(-inf, 0]")
register_metric("fT", _P, "none", "f(T): forget log-lik at the last logged step", "(-inf, 0]")
register_metric("n_paths", _P, "none", "number of paths compared", "[1, inf)")
register_metric("n_seeds", _P, "none", "number of seeds (replicates of the whole experiment)", "[1, inf)")
register_metric("icc_boot_n", _P, "none", "bootstrap resamples kept for the ICC's CI (those with >= 2 distinct seeds)",
                "[0, inf)")  # fmt: skip
register_metric("alt_shift", _P, "none", "sign of a(T) - a(0), a = log-lik of alternative continuations (+1: "
                "alternatives gained mass)", "{-1, 0, 1}")  # fmt: skip
register_metric("alt_cross", _P, "none", "whether the order of alternative and forget log-lik flipped between step 0 "
                "and T (sign of a - f changed)", "{0, 1}")  # fmt: skip
register_metric("gap_fs", _P, "lower", "max - min over paths of FS (per method and seed; lower = less path "
                "dependent)", "[0, inf)")  # fmt: skip
register_metric("gap_du_{u}", _P, "lower", "max - min over paths of the utility change u(T) - u(0)", "[0, inf)")
register_metric("recency", _P, "none", "FS of the most recent forget stage < min FS of the other paths (the paper's "
                "recency effect)", "{0, 1}")  # fmt: skip
register_metric("recency_margin", _P, "none", "min over the other paths of FS minus FS of the most recent path "
                "(> 0: recency holds)", "(-inf, inf)")  # fmt: skip
register_metric("recency_frac", _P, "none", "share of (method, seed) runs in which the recency effect holds",
                "[0, 1]")  # fmt: skip
register_metric("init_spearman", _P, "none", "Spearman correlation of f(0) and FS across paths (initial-state "
                "confound: near +-1 weakens a path claim)", "[-1, 1]")  # fmt: skip
register_metric("tau_{across}", _P, "none", "mean pairwise Kendall tau-b between path rankings by FS, across "
                "methods or seeds (predictability of the path effect)", "[-1, 1]",
                values={"across": ("methods", "seeds")})  # fmt: skip
register_metric("spearman_{across}", _P, "none", "mean pairwise Spearman correlation between path rankings by FS, "
                "across methods or seeds", "[-1, 1]", values={"across": ("methods", "seeds")})  # fmt: skip
register_metric("anova_f", _P, "lower", "one-way ANOVA F of FS with the path as the factor and seeds as "
                "replicates (needs >= 2 seeds)", "[0, inf)")  # fmt: skip
register_metric("anova_p", _P, "none", "p-value of the path ANOVA F test (scipy.stats.f_oneway)", "[0, 1]")
register_metric("icc", _P, "lower", "ICC(1) of FS with the path as the group: (MSB - MSW) / (MSB + (k0 - 1) MSW); "
                "share of FS variance due to the path rather than the seed (can be < 0)", "(-inf, 1]")  # fmt: skip
register_metric("icc_ci_{end}", _P, "none", "percentile bootstrap 95% CI of the ICC, seeds resampled with "
                "replacement", "(-inf, 1]", values={"end": ("low", "high")})  # fmt: skip
register_metric("div_b", _P, "lower", "slope b of the least-squares fit log D(t) = a + b t, D = mean pairwise "
                "prediction distance between paths (per step; > 0: exponential divergence)",
                "(-inf, inf)")  # fmt: skip
register_metric("div_rho", _P, "lower", "e^b - 1, the per-step divergence growth rate (analogue of rho*)",
                "(-1, inf)")  # fmt: skip
register_metric("div_r2", _P, "none", "r^2 of the log D(t) linear fit", "[0, 1]")
register_metric("div_amplification", _P, "lower", "A(T) = D(T) / D(0), amplification of the path divergence by "
                "unlearning", "[0, inf)")  # fmt: skip
register_metric("retrain_spread", _P, "lower", "max - min over paths of the distance to the retrained reference "
                "(1/m) sum_i ||Pred_p(x_i) - Pred_r(x_i)||^2", "[0, inf)")  # fmt: skip

# metrics.json of `unlearn paths eval`: each method's cross-path scalars as ``<method>_<stat>`` (same meaning and
# direction as the statistic itself; the per-seed and per-path details stay in the summary JSON)
PER_METHOD_STATS = ("n_seeds", "n_paths", "gap_fs", "gap_du_{u}", "recency_frac", "init_spearman", "tau_{across}",
                    "spearman_{across}", "anova_f", "anova_p", "icc", "icc_ci_{end}", "icc_boot_n", "div_b",
                    "div_rho", "div_r2", "div_amplification", "retrain_spread")  # fmt: skip
for _s in PER_METHOD_STATS:
    _base = METRICS[_s]
    register_metric("{method}_" + _s, _P, _base.direction, f"per method: {_base.description}", _base.range,
                    _base.values)  # fmt: skip


# ---------------------------------------------------------------------------------------------------------------
# Per-path scores


def _ols_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y on x: sum (x - x_bar)(y - y_bar) / sum (x - x_bar)^2 (NaN for < 2 distinct x)."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 2 or np.ptp(x) == 0:
        return math.nan
    xc = x - x.mean()
    return float(xc @ (y - y.mean()) / (xc @ xc))


def _ratio(num: float, den: float) -> float:
    """num / den with num / 0 = +-inf and 0 / 0 = NaN (the IEEE rules, without numpy's warnings)."""
    if den == 0:
        return math.nan if num == 0 or not math.isfinite(num) else math.copysign(math.inf, num)
    return num / den


def _ends(values: np.ndarray) -> tuple[float, float]:
    """First and last finite value of a series (utilities may be logged at fewer steps than the log-liks)."""
    ok = np.flatnonzero(np.isfinite(values))
    if len(ok) == 0:
        return math.nan, math.nan
    return float(values[ok[0]]), float(values[ok[-1]])


def _check(traj, columns) -> None:
    missing = [c for c in (*KEYS, "position", "step", *columns) if c not in traj.columns]
    if missing:
        raise ValueError(f"trajectory table lacks column(s) {missing}; it has {list(traj.columns)}")
    dup = traj.duplicated([*KEYS, "step"])
    if dup.any():
        raise ValueError(f"{int(dup.sum())} duplicated (method, seed, path, step) rows in the trajectory table")


def path_scores(
    traj,
    forget: str = "forget_ll",
    para: str | None = "para_ll",
    alt: str | None = None,
    utilities: Sequence[str] = ("retain_ll", "arith_acc"),
    t_early: int = 5,
):
    """Per-path unlearning scores, one row per (method, seed, path).

    With f the forget log-lik, g the paraphrase log-lik, a the alternative log-lik and u a utility, all logged at
    steps t = 0 (before unlearning), ..., T (the last logged step):

    * ``fs`` = f(0) - f(T), the forget score (higher = more forgetting).
    * ``slope`` = OLS slope of f(t) on t over the first ``t_early`` logged points (step 0 included).
    * ``t50`` = first logged t with f(0) - f(t) >= 0.5 * max_q FS_q, the max over the paths q of the same method
      and seed; ``inf`` if never reached, and ``inf`` when no path forgets at all (max_q FS_q <= 0: there is
      nothing to reach half of).
    * ``auc`` = mean over the logged t (step 0 included) of f(0) - f(t); a normalised area when steps are evenly
      spaced.
    * ``depth`` = (g(0) - g(T)) / (f(0) - f(T)) (NaN when FS = 0).
    * per utility u: ``du_<u>`` = u(T) - u(0) and ``tradeoff_<u>`` = FS / |du_<u>| (+-inf when du = 0 and FS != 0).
      u(0) and u(T) are its first and last *logged* (finite) values, so an expensive utility may be logged at
      fewer steps.
    * with ``alt``: ``alt_shift`` = sign(a(T) - a(0)) and ``alt_cross`` = whether sign(a - f) at T differs from
      the sign at step 0 (the alternative and the forget answer swapped places).

    Args:
        traj (pandas.DataFrame): the trajectory table (see the module docstring).
        forget, para, alt (str): column names of f, g and a (``para`` / ``alt`` None: no depth / mass-shift keys).
        utilities (sequence of str): utility column names.
        t_early (int): number of logged points the early slope uses.

    Returns:
        pandas.DataFrame: ``method, seed, path, position, f0, fT, fs, slope, t50, auc, [depth], [du_<u>,
        tradeoff_<u>]..., [alt_shift, alt_cross]``.
    """
    import pandas as pd

    cols = [forget, *([para] if para else []), *([alt] if alt else []), *utilities]
    _check(traj, cols)
    if t_early < 2:
        raise ValueError(f"t_early must be >= 2 logged points for a slope, got {t_early}")
    rows = []
    for (method, seed, path), grp in traj.groupby(list(KEYS), sort=True):
        grp = grp.sort_values("step")
        steps = grp["step"].to_numpy(dtype=np.float64)
        if steps[0] != 0:
            raise ValueError(
                f"{method}/{seed}/{path}: the first logged step is {steps[0]:g}, not 0 (before unlearning)"
            )
        if grp["position"].nunique() != 1:
            raise ValueError(f"{method}/{seed}/{path}: the forget stage's position changes across rows")
        f = grp[forget].to_numpy(dtype=np.float64)
        row = {"method": method, "seed": seed, "path": path, "position": int(grp["position"].iloc[0])}
        row["f0"], row["fT"] = f[0], f[-1]
        row["fs"] = f[0] - f[-1]
        row["slope"] = _ols_slope(steps[:t_early], f[:t_early])
        row["auc"] = float(np.mean(f[0] - f))
        row["_steps"], row["_drop"] = steps, f[0] - f  # for t50, which needs the other paths' FS first
        if para:
            g = grp[para].to_numpy(dtype=np.float64)
            # no forgetting, no depth: the ratio is undefined (not +-inf) when FS = 0
            row["depth"] = (g[0] - g[-1]) / row["fs"] if row["fs"] != 0 else math.nan
        for u in utilities:
            u0, uT = _ends(grp[u].to_numpy(dtype=np.float64))
            row[f"du_{u}"] = uT - u0
            row[f"tradeoff_{u}"] = _ratio(row["fs"], abs(uT - u0))
        if alt:
            a = grp[alt].to_numpy(dtype=np.float64)
            row["alt_shift"] = float(np.sign(a[-1] - a[0]))
            row["alt_cross"] = bool(np.sign(a[-1] - f[-1]) != np.sign(a[0] - f[0]))
        rows.append(row)
    out = pd.DataFrame(rows)
    # t50 against the best path of the same (method, seed): "how long until half of the best forgetting"
    best = out.groupby(["method", "seed"])["fs"].transform("max")
    t50 = []
    for steps, drop, b in zip(out["_steps"], out["_drop"], best):
        hit = np.flatnonzero(drop >= 0.5 * b) if b > 0 else []
        t50.append(float(steps[hit[0]]) if len(hit) else math.inf)
    out.insert(out.columns.get_loc("auc"), "t50", t50)
    return out.drop(columns=["_steps", "_drop"])


# ---------------------------------------------------------------------------------------------------------------
# Cross-path statistics


def icc1(groups: Sequence[Sequence[float]]) -> dict:
    """One-way ANOVA and ICC(1) of observations grouped by path.

    With a groups of sizes n_i (N in all), group means y_i and grand mean y:
    MSB = sum_i n_i (y_i - y)^2 / (a - 1), MSW = sum_i sum_j (y_ij - y_i)^2 / (N - a), F = MSB / MSW and
    ICC(1) = (MSB - MSW) / (MSB + (k0 - 1) MSW), k0 = (N - sum_i n_i^2 / N) / (a - 1) (= n for balanced groups).
    This is sigma_b^2 / (sigma_b^2 + sigma_w^2) with the ANOVA estimates sigma_w^2 = MSW and sigma_b^2 =
    (MSB - MSW) / k0, so it is negative when the seeds vary more than the paths.

    Returns:
        dict: ``msb, msw, f, p, icc`` (NaN where undefined: fewer than 2 groups, no replicate, MSB = MSW = 0).
    """
    from scipy import stats

    groups = [np.asarray(g, dtype=np.float64) for g in groups]
    groups = [g[np.isfinite(g)] for g in groups]
    groups = [g for g in groups if len(g)]
    a, n = len(groups), np.array([len(g) for g in groups])
    nan = {"msb": math.nan, "msw": math.nan, "f": math.nan, "p": math.nan, "icc": math.nan}
    if a < 2 or n.sum() <= a:
        return nan
    big_n = n.sum()
    grand = np.concatenate(groups).mean()
    msb = sum(len(g) * (g.mean() - grand) ** 2 for g in groups) / (a - 1)
    msw = sum(((g - g.mean()) ** 2).sum() for g in groups) / (big_n - a)
    k0 = (big_n - (n**2).sum() / big_n) / (a - 1)
    den = msb + (k0 - 1) * msw
    icc = (msb - msw) / den if den > 0 else math.nan
    if msw > 0:
        f, p = stats.f_oneway(*groups)
        f, p = float(f), float(p)
    else:  # no seed noise at all: F is infinite when paths differ, undefined otherwise
        f, p = (math.inf, 0.0) if msb > 0 else (math.nan, math.nan)
    return {"msb": float(msb), "msw": float(msw), "f": f, "p": p, "icc": float(icc)}


def _mean_pairwise(vectors: Sequence, fn) -> float:
    """Mean over pairs of rankings of fn(x, y)[0] (Kendall / Spearman), skipping undefined (constant) pairs."""
    vals = []
    for x, y in itertools.combinations(vectors, 2):
        ok = np.isfinite(x) & np.isfinite(y)
        if ok.sum() < 2:
            continue
        r = fn(x[ok], y[ok])[0]
        if np.isfinite(r):
            vals.append(float(r))
    return float(np.mean(vals)) if vals else math.nan


def _rankings(scores, group: str, across: str) -> list[list[np.ndarray]]:
    """FS vectors over the shared paths, for each value of ``group``, one per value of ``across``."""
    out = []
    for _, sub in scores.groupby(group):
        wide = sub.pivot(index="path", columns=across, values="fs").dropna()
        if wide.shape[1] >= 2 and wide.shape[0] >= 2:
            out.append([wide[c].to_numpy(dtype=np.float64) for c in wide.columns])
    return out


def cross_path(
    traj,
    scores,
    metrics: Sequence[str] | None = None,
    utilities: Sequence[str] = ("retain_ll", "arith_acc"),
    forget: str = "forget_ll",
    n_boot: int = 1000,
    boot_seed: int = 0,
) -> dict:
    """Cross-path statistics of a trajectory table and its `path_scores`.

    * ``spread``: per (method, seed, step, metric) over the paths logged there: ``R`` = max_p - min_p and ``SD``
      (sample SD, ddof = 1; NaN for one path), with ``n_paths``.
    * ``per_seed`` (one row per method and seed): ``gap_fs`` = max_p FS - min_p FS, ``gap_du_<u>`` the same for the
      utility change, ``recency`` = FS_last < min_{p != last} FS_p with ``last`` the path of largest position and
      ``recency_margin`` = min_{p != last} FS_p - FS_last (None when the largest position is shared), and
      ``init_spearman`` = Spearman(f_p(0), FS_p) across paths.
    * ``per_method``: means over seeds of the gaps; ``recency_frac``; ``tau_seeds`` / ``spearman_seeds`` (mean
      over seed pairs of Kendall tau-b / Spearman between the seeds' path rankings by FS); with >= 2 seeds the
      path ANOVA of FS (``anova_f``, ``anova_p``) and ``icc`` (`icc1`) with a percentile bootstrap 95% CI
      (``icc_ci_low``, ``icc_ci_high``): ``n_boot`` resamples of the seeds with replacement (the same resampled
      seeds for every path, since a seed is one replicate of the whole experiment), numpy ``default_rng(boot_seed)``;
      resamples with a single distinct seed are dropped, ``icc_boot_n`` counts those kept.
    * ``overall``: ``recency_frac`` over all (method, seed) and ``tau_methods`` / ``spearman_methods`` (mean over
      seeds of the mean over method pairs).

    Args:
        traj (pandas.DataFrame): the trajectory table.
        scores (pandas.DataFrame): `path_scores(traj, ...)`.
        metrics (sequence of str): columns of ``traj`` to spread (default: ``forget`` and ``utilities`` present).
        utilities (sequence of str): utility names, for the ``gap_du_<u>`` keys.
        forget (str): the forget column (for ``metrics``' default).
        n_boot (int): bootstrap resamples for the ICC's CI (0: no CI).
        boot_seed (int): seed of the bootstrap's generator.

    Returns:
        dict: ``spread`` (DataFrame), ``per_seed`` (DataFrame), ``per_method`` (dict method -> dict), ``overall``
        (dict).
    """
    import pandas as pd
    from scipy import stats

    metrics = list(metrics) if metrics is not None else [c for c in (forget, *utilities) if c in traj.columns]
    _check(traj, metrics)
    long = traj.melt(id_vars=["method", "seed", "step", "path"], value_vars=metrics, var_name="metric").dropna()
    spread = (
        long.groupby(["method", "seed", "step", "metric"])["value"]
        .agg(n_paths="count", R=lambda v: v.max() - v.min(), SD=lambda v: v.std(ddof=1))
        .reset_index()
    )

    per_seed = []
    for (method, seed), sub in scores.groupby(["method", "seed"], sort=True):
        row = {"method": method, "seed": seed, "n_paths": len(sub), "gap_fs": float(np.ptp(sub["fs"]))}
        for u in utilities:
            if f"du_{u}" in sub:
                row[f"gap_du_{u}"] = float(sub[f"du_{u}"].max() - sub[f"du_{u}"].min())
        last = sub["position"] == sub["position"].max()
        if last.sum() == 1 and len(sub) >= 2:
            margin = float(sub.loc[~last, "fs"].min() - sub.loc[last, "fs"].iloc[0])
            row["recency"], row["recency_margin"] = bool(margin > 0), margin
        else:  # no single most-recent path (shared positions, or one path): the flag is undefined
            row["recency"], row["recency_margin"] = None, math.nan
        rho = stats.spearmanr(sub["f0"], sub["fs"])[0] if len(sub) >= 2 else math.nan
        row["init_spearman"] = float(rho)
        per_seed.append(row)
    per_seed = pd.DataFrame(per_seed)

    def frac(flags) -> float:
        flags = [f for f in flags if f is not None and not (isinstance(f, float) and math.isnan(f))]
        return float(np.mean(flags)) if flags else math.nan

    per_method = {}
    for method, sub in per_seed.groupby("method", sort=True):
        res = {"n_seeds": int(len(sub)), "n_paths": int(sub["n_paths"].max())}
        for c in [c for c in sub.columns if c.startswith("gap_")]:
            res[c] = float(sub[c].mean())
        res["recency_frac"] = frac(sub["recency"])
        res["init_spearman"] = float(sub["init_spearman"].mean())
        ranks = _rankings(scores[scores["method"] == method], "method", "seed")
        res["tau_seeds"] = _mean_pairwise(ranks[0], stats.kendalltau) if ranks else math.nan
        res["spearman_seeds"] = _mean_pairwise(ranks[0], stats.spearmanr) if ranks else math.nan
        wide = scores[scores["method"] == method].pivot(index="path", columns="seed", values="fs")
        # the keys are always there (NaN, i.e. null in JSON, with one seed) so that readers need no key checks
        res.update(anova_f=math.nan, anova_p=math.nan, icc=math.nan, icc_ci_low=math.nan, icc_ci_high=math.nan)
        if wide.shape[1] >= 2:
            a = icc1([row.to_numpy() for _, row in wide.iterrows()])
            res.update(anova_f=a["f"], anova_p=a["p"], icc=a["icc"])
            if n_boot > 0:
                rng = np.random.default_rng(boot_seed)
                fs = wide.to_numpy(dtype=np.float64)  # (paths, seeds)
                boot = []
                for _ in range(n_boot):
                    cols = rng.integers(0, fs.shape[1], fs.shape[1])
                    # a resample that drew one distinct seed has no seed noise at all (MSW = 0, ICC = 1 by
                    # construction); it says nothing about the ratio, so it is dropped rather than counted
                    boot.append(icc1(list(fs[:, cols]))["icc"] if len(set(cols)) > 1 else math.nan)
                boot = np.asarray(boot)
                boot = boot[np.isfinite(boot)]
                lo, hi = np.percentile(boot, [2.5, 97.5]) if len(boot) else (math.nan, math.nan)
                res.update(icc_ci_low=float(lo), icc_ci_high=float(hi), icc_boot_n=int(len(boot)))
        per_method[method] = res

    by_seed = _rankings(scores, "seed", "method")
    overall = {
        "recency_frac": frac(per_seed["recency"]),
        "tau_methods": _nanmean([_mean_pairwise(v, stats.kendalltau) for v in by_seed]),
        "spearman_methods": _nanmean([_mean_pairwise(v, stats.spearmanr) for v in by_seed]),
    }
    return {"spread": spread, "per_seed": per_seed, "per_method": per_method, "overall": overall}


def _nanmean(values) -> float:
    values = [v for v in values if math.isfinite(v)]
    return float(np.mean(values)) if values else math.nan


# ---------------------------------------------------------------------------------------------------------------
# Prediction divergence between paths (the retrain-equivalence distance)


def _sq_dist(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Per step, (1/m) sum_i ||p_i - q_i||^2 of (n_steps, m[, h]) arrays (the examples on axis 1)."""
    diff = p - q
    return (diff**2).reshape(diff.shape[0], -1).sum(axis=1) / diff.shape[1]


def divergence(preds: Mapping[str, np.ndarray], steps: Sequence[float]) -> dict:
    """How fast the predictions of different paths move apart during unlearning (one method and seed).

    With Pred_p(t) in R^{m x h} the predictions of path p at logged step t on m fixed probes (h = 1 for one
    number per probe, e.g. the mean per-token log-prob of a fixed continuation):

    * D(t) = mean over path pairs {p, q} of (1/m) sum_i ||Pred_p(t)_i - Pred_q(t)_i||^2, the retrain-equivalence
      distance d of the paper between two paths;
    * A(t) = D(t) / D(0) (None when D(0) = 0);
    * the least-squares fit log D(t) = a + b t over the steps with D(t) > 0, its r^2, and e^b - 1 (per step, the
      analogue of rho*: Theorem 3.1 gives growth (1 + rho*)^{2t}, so e^b - 1 ~ (1 + rho*)^2 - 1 in the toy model).

    Args:
        preds (mapping str -> array): path -> (n_steps, m) or (n_steps, m, h) predictions, rows in ``steps`` order.
        steps (sequence of float): the logged steps (step 0 first).

    Returns:
        dict: ``steps, D, A`` (lists), ``a, b, rho, r2, n_fit, n_pairs``.
    """
    steps = np.asarray(steps, dtype=np.float64)
    arrs = {p: np.asarray(v, dtype=np.float64) for p, v in preds.items()}
    if len(arrs) < 2:
        raise ValueError(f"divergence needs >= 2 paths, got {list(arrs)}")
    for p, v in arrs.items():
        if v.ndim < 2 or v.shape[0] != len(steps):
            raise ValueError(f"path {p!r}: predictions of shape {v.shape}, expected ({len(steps)}, m[, h])")
    pairs = list(itertools.combinations(sorted(arrs), 2))
    d = np.mean([_sq_dist(arrs[p], arrs[q]) for p, q in pairs], axis=0)
    amp = d / d[0] if d[0] > 0 else np.full_like(d, math.nan)
    ok = d > 0
    a = b = r2 = math.nan
    if ok.sum() >= 2 and np.ptp(steps[ok]) > 0:
        x, y = steps[ok], np.log(d[ok])
        b = _ols_slope(x, y)
        a = float(y.mean() - b * x.mean())
        ss_tot = ((y - y.mean()) ** 2).sum()
        r2 = float(1 - ((y - a - b * x) ** 2).sum() / ss_tot) if ss_tot > 0 else math.nan
    return {
        "steps": steps.tolist(),
        "D": d.tolist(),
        "A": amp.tolist(),
        "a": a,
        "b": b,
        "rho": math.expm1(b) if math.isfinite(b) else math.nan,
        "r2": r2,
        "n_fit": int(ok.sum()),
        "n_pairs": len(pairs),
    }


def retrain_distance(final_preds: Mapping[str, np.ndarray], retrain_pred: np.ndarray) -> dict:
    """Distance of every path's final predictions to a retrained reference, d_p = (1/m) sum_i ||Pred_p - Pred_r||^2
    on (m,) or (m, h) predictions, and their spread max_p d_p - min_p d_p: the part of the retrain-equivalence gap
    that one path-oblivious procedure cannot close for every path at once.

    Returns:
        dict: ``per_path`` (path -> d_p), ``min``, ``max``, ``spread``.
    """
    ref = np.asarray(retrain_pred, dtype=np.float64)
    per = {}
    for p, v in sorted(final_preds.items()):
        v = np.asarray(v, dtype=np.float64)
        if v.shape != ref.shape:
            raise ValueError(f"path {p!r}: predictions of shape {v.shape}, the reference's are {ref.shape}")
        per[p] = float(((v - ref) ** 2).sum() / ref.shape[0])
    vals = list(per.values())
    return {"per_path": per, "min": min(vals), "max": max(vals), "spread": max(vals) - min(vals)}


# ---------------------------------------------------------------------------------------------------------------
# Summary


def json_ready(obj):
    """Nested dicts / lists / DataFrames / numpy scalars -> plain JSON values; NaN and +-inf become None (a t50
    of None means never reached), numpy bools become bools and non-string keys strings."""
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        return [json_ready(r) for r in obj.to_dict(orient="records")]
    if isinstance(obj, Mapping):
        return {str(k): json_ready(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, np.ndarray)):
        return [json_ready(v) for v in obj]
    if obj is None or isinstance(obj, (bool, np.bool_)):
        return None if obj is None else bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return float(obj) if math.isfinite(obj) else None
    return obj


def summarize(
    traj,
    preds: Mapping | None = None,
    pred_steps: Sequence[float] | None = None,
    retrain_pred=None,
    forget: str = "forget_ll",
    para: str | None = "para_ll",
    alt: str | None = None,
    utilities: Sequence[str] = ("retain_ll", "arith_acc"),
    t_early: int = 5,
    n_boot: int = 1000,
    boot_seed: int = 0,
) -> dict:
    """Everything above as one JSON-ready dict (``path_dependence_summary.json``).

    Args:
        traj (pandas.DataFrame): the trajectory table.
        preds (mapping, optional): method -> seed -> path -> (n_steps, m[, h]) predictions at ``pred_steps``, for
            `divergence`; the last row of each is the path's final prediction for `retrain_distance`.
        pred_steps (sequence of float): the steps of the rows of ``preds``.
        retrain_pred (array or mapping seed -> array, optional): (m[, h]) predictions of the retrained reference
            (one for all seeds, or one per seed).
        forget, para, alt, utilities, t_early: as in `path_scores`.
        n_boot, boot_seed: as in `cross_path`.

    Returns:
        dict: ``settings``, ``scores`` (one record per method, seed, path), ``per_seed``, ``per_method`` (with
        ``divergence`` / ``retrain`` per seed and the means ``div_b``, ``div_rho``, ``div_r2``,
        ``div_amplification``, ``retrain_spread`` when ``preds`` is given), ``overall`` and ``spread``; no NaN
        or infinity (None instead).
    """
    scores = path_scores(traj, forget=forget, para=para, alt=alt, utilities=utilities, t_early=t_early)
    metrics = [c for c in (forget, para, alt, *utilities) if c]
    cross = cross_path(traj, scores, metrics, utilities=utilities, forget=forget, n_boot=n_boot, boot_seed=boot_seed)
    per_method = cross["per_method"]
    if preds is not None:
        if pred_steps is None:
            raise ValueError("preds given without pred_steps")
        for method, by_seed in preds.items():
            divs, rets = {}, {}
            for seed, by_path in by_seed.items():
                divs[seed] = divergence(by_path, pred_steps)
                ref = retrain_pred.get(seed) if isinstance(retrain_pred, Mapping) else retrain_pred
                if ref is not None:
                    rets[seed] = retrain_distance({p: np.asarray(v)[-1] for p, v in by_path.items()}, ref)
            res = per_method.setdefault(method, {})
            res["divergence"] = divs
            res["div_b"] = _nanmean([v["b"] for v in divs.values()])
            res["div_rho"] = _nanmean([v["rho"] for v in divs.values()])
            res["div_r2"] = _nanmean([v["r2"] for v in divs.values()])
            res["div_amplification"] = _nanmean([v["A"][-1] for v in divs.values()])
            if rets:
                res["retrain"] = rets
                res["retrain_spread"] = _nanmean([v["spread"] for v in rets.values()])
    return json_ready(
        {
            "settings": {"forget": forget, "para": para, "alt": alt, "utilities": list(utilities), "t_early": t_early,
                         "n_boot": n_boot, "boot_seed": boot_seed, "icc": "ICC(1) from one-way ANOVA mean squares"},
            "scores": scores,
            "per_seed": cross["per_seed"],
            "per_method": per_method,
            "overall": cross["overall"],
            "spread": cross["spread"],
        }
    )  # fmt: skip

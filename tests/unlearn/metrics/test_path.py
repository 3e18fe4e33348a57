"""Path-dependence statistics against numbers worked out by hand on tiny hand-built trajectories.

Run: PYTHONPATH=. python -m pytest -q tests/unlearn/metrics/test_path.py
"""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from unlearn.metrics import lookup
from unlearn.metrics.path import cross_path, divergence, icc1, json_ready, path_scores, retrain_distance, summarize

NAN = float("nan")


def one_seed_traj() -> pd.DataFrame:
    """Method ga, seed 0, three paths, steps 0..3; p3 holds the forget stage last (position 3).

    forget_ll   p1: -1, -2, -3, -4      FS = 3    drops 0, 1, 2, 3        auc = 6/4 = 1.5
                p2: -1.5, -1.5, -2.5, -3.5  FS = 2  drops 0, 0, 1, 2      auc = 3/4 = 0.75
                p3: -0.5, -0.5, -0.5, -1    FS = 0.5  drops 0, 0, 0, 0.5  auc = 0.5/4 = 0.125
    para_ll     p1: -1 -> -2.5 (depth 1.5 / 3 = 0.5); p2: -2 -> -2 (depth 0); p3: -1 -> -2 (depth 1 / 0.5 = 2)
    retain_ll   p1: -0.5 -> -1.5 (du -1, tradeoff 3); p2: flat (du 0, tradeoff inf);
                p3: -0.2, NaN, NaN, -0.4 (logged at the ends only: du -0.2, tradeoff 0.5 / 0.2 = 2.5)
    alt_ll      p1: -2 -> -1 (shift +1; a - f goes -1 -> +3: crossed); p2: -3 -> -3.6 (shift -1; a - f: -1.5 -> -0.1,
                no cross); p3: -2 flat (shift 0; a - f: -1.5 -> -1, no cross)
    """
    f = {"p1": [-1, -2, -3, -4], "p2": [-1.5, -1.5, -2.5, -3.5], "p3": [-0.5, -0.5, -0.5, -1]}
    g = {"p1": [-1, -1.5, -2, -2.5], "p2": [-2, -2, -2, -2], "p3": [-1, -1.2, -1.5, -2]}
    u = {"p1": [-0.5, -0.8, -1.2, -1.5], "p2": [-0.5] * 4, "p3": [-0.2, NAN, NAN, -0.4]}
    a = {"p1": [-2, -1.5, -1.2, -1], "p2": [-3, -3.2, -3.4, -3.6], "p3": [-2] * 4}
    rows = []
    for pos, p in enumerate(["p1", "p2", "p3"], 1):
        for t in range(4):
            rows.append(dict(path=p, position=pos, seed=0, method="ga", step=t, forget_ll=f[p][t], para_ll=g[p][t],
                             retain_ll=u[p][t], alt_ll=a[p][t]))  # fmt: skip
    return pd.DataFrame(rows)


def fs_traj(fs: dict) -> pd.DataFrame:
    """Two-step trajectories with given forget scores: fs[(method, seed)] = {path: FS}; f(0) = -0.1 * (position - 1)
    so that f(0) is not constant across paths, f(1) = f(0) - FS. Path a is position 1, b 2, c 3 (the last)."""
    rows = []
    for (method, seed), by_path in fs.items():
        for p, v in by_path.items():
            pos = "abc".index(p) + 1
            f0 = -0.1 * (pos - 1)
            for t, f in ((0, f0), (1, f0 - v)):
                rows.append(dict(path=p, position=pos, seed=seed, method=method, step=t, forget_ll=f))
    return pd.DataFrame(rows)


# FS tables for the cross-path statistics (see the tests for the hand computations)
FS = {
    ("ga", 0): {"a": 1.0, "b": 4.0, "c": 7.0},
    ("ga", 1): {"a": 3.0, "b": 6.0, "c": 8.0},
    ("npo", 0): {"a": 5.0, "b": 1.0, "c": 3.0},
    ("npo", 1): {"a": 2.0, "b": 1.0, "c": 0.5},
}


@pytest.fixture(scope="module")
def scores():
    return path_scores(one_seed_traj(), alt="alt_ll", utilities=("retain_ll",), t_early=3).set_index("path")


def test_forget_score_auc_and_slope(scores):
    assert scores["fs"].to_dict() == {"p1": 3.0, "p2": 2.0, "p3": 0.5}
    assert scores["auc"].to_dict() == {"p1": 1.5, "p2": 0.75, "p3": 0.125}
    # p2 over steps 0, 1, 2 (t_early = 3): x - x_bar = -1, 0, 1; y = -1.5, -1.5, -2.5, y_bar = -11/6,
    # y - y_bar = 1/3, 1/3, -2/3; slope = (-1/3 + 0 - 2/3) / 2 = -0.5. p1 is a line of slope -1; p3 flat.
    assert scores["slope"].to_numpy() == pytest.approx([-1.0, -0.5, 0.0], abs=1e-15)


def test_t50_against_the_best_path_and_never(scores):
    """Threshold 0.5 * max FS = 1.5: p1's drops 0, 1, 2, 3 reach it at step 2, p2's 0, 0, 1, 2 at step 3, p3 never."""
    assert scores["t50"].to_dict() == {"p1": 2.0, "p2": 3.0, "p3": math.inf}


def test_t50_is_inf_when_no_path_forgets():
    traj = fs_traj({("ga", 0): {"a": 0.0, "b": -1.0}})  # nothing forgets: no "half of the best" to reach
    assert (path_scores(traj, para=None, utilities=())["t50"] == math.inf).all()


def test_depth_utility_and_tradeoff(scores):
    assert scores["depth"].to_dict() == {"p1": 0.5, "p2": 0.0, "p3": 2.0}
    assert scores["du_retain_ll"].to_numpy() == pytest.approx([-1.0, 0.0, -0.2], abs=1e-15)
    assert scores["tradeoff_retain_ll"].to_numpy() == pytest.approx([3.0, math.inf, 2.5])


def test_alternative_mass_shift_and_crossing(scores):
    assert scores["alt_shift"].to_dict() == {"p1": 1.0, "p2": -1.0, "p3": 0.0}
    assert scores["alt_cross"].to_dict() == {"p1": True, "p2": False, "p3": False}


def test_spread_by_hand():
    """forget_ll at step 0: -1, -1.5, -0.5: R = 1, SD (ddof 1) = 0.5. At step 3: -4, -3.5, -1: mean -17/6,
    squared deviations 49/36 + 16/36 + 121/36 = 186/36, SD = sqrt(93/36); R = 3."""
    traj = one_seed_traj()
    sc = path_scores(traj, utilities=("retain_ll",))
    sp = cross_path(traj, sc, utilities=("retain_ll",))["spread"]
    f = sp[sp["metric"] == "forget_ll"].set_index("step")
    assert f.loc[0, "R"] == 1.0 and f.loc[0, "SD"] == pytest.approx(0.5)
    assert f.loc[3, "R"] == 3.0 and f.loc[3, "SD"] == pytest.approx(math.sqrt(93 / 36))
    u = sp[sp["metric"] == "retain_ll"].set_index("step")
    assert u.loc[1, "n_paths"] == 2 and u.loc[1, "R"] == pytest.approx(0.3)  # p3 not logged at step 1


def test_gaps_recency_and_initial_state_confound():
    """One seed: gap_fs = 3 - 0.5 = 2.5; p3 (last) has FS 0.5 < min(3, 2) = 2: recency, margin 1.5.
    Spearman(f0, FS): f0 = -1, -1.5, -0.5 ranks 2, 1, 3; FS ranks 3, 2, 1; d = -1, -1, 2, sum d^2 = 6,
    rho = 1 - 6 * 6 / (3 * (9 - 1)) = -0.5. gap_du_retain_ll = 0 - (-1) = 1."""
    traj = one_seed_traj()
    out = cross_path(traj, path_scores(traj, utilities=("retain_ll",)), utilities=("retain_ll",))
    row = out["per_seed"].iloc[0]
    assert row["gap_fs"] == 2.5 and row["gap_du_retain_ll"] == pytest.approx(1.0)
    assert bool(row["recency"]) and row["recency_margin"] == 1.5
    assert row["init_spearman"] == pytest.approx(-0.5)
    assert out["overall"]["recency_frac"] == 1.0


def test_recency_over_methods_and_seeds():
    """c is the last path. ga/0: 7 vs min(1, 4): no (margin 1 - 7 = -6); ga/1: 8 vs 3: no (-5); npo/0: 3 vs 1: no
    (-2); npo/1: 0.5 vs min(2, 1) = 1: yes (0.5). Fractions: ga 0, npo 1/2, overall 1/4."""
    traj = fs_traj(FS)
    out = cross_path(traj, path_scores(traj, para=None, utilities=()), utilities=(), n_boot=0)
    ps = out["per_seed"].set_index(["method", "seed"])
    assert ps["recency_margin"].to_dict() == pytest.approx(
        {("ga", 0): -6.0, ("ga", 1): -5.0, ("npo", 0): -2.0, ("npo", 1): 0.5}
    )
    assert out["per_method"]["ga"]["recency_frac"] == 0.0 and out["per_method"]["npo"]["recency_frac"] == 0.5
    assert out["overall"]["recency_frac"] == 0.25
    assert out["per_method"]["ga"]["gap_fs"] == 5.5 and out["per_method"]["npo"]["gap_fs"] == 2.75


def test_recency_undefined_when_the_last_position_is_shared():
    traj = fs_traj({("ga", 0): {"a": 1.0, "b": 2.0}})
    traj["position"] = 1  # e.g. a user's checkpoints with no known stage order
    out = cross_path(traj, path_scores(traj, para=None, utilities=()), utilities=())
    assert out["per_seed"]["recency"].iloc[0] is None and math.isnan(out["overall"]["recency_frac"])


def test_rank_stability_by_hand_count():
    """Kendall tau by counting concordant (C) and discordant (D) pairs over (a, b), (a, c), (b, c):
    ga seeds: (1, 4, 7) vs (3, 6, 8): C C C, tau 1, Spearman 1.
    npo seeds: (5, 1, 3) vs (2, 1, 0.5): C C D, tau 1/3; ranks (3, 1, 2) vs (3, 2, 1), sum d^2 = 2, Spearman 0.5.
    methods, seed 0: ga (1, 4, 7) vs npo (5, 1, 3): D D C, tau -1/3; Spearman 1 - 6 * 6 / 24 = -0.5.
    methods, seed 1: ga (3, 6, 8) vs npo (2, 1, 0.5): D D D, tau -1; Spearman -1.
    Means over seeds: tau_methods = -2/3, spearman_methods = -0.75."""
    traj = fs_traj(FS)
    out = cross_path(traj, path_scores(traj, para=None, utilities=()), utilities=(), n_boot=0)
    assert out["per_method"]["ga"]["tau_seeds"] == pytest.approx(1.0)
    assert out["per_method"]["npo"]["tau_seeds"] == pytest.approx(1 / 3)
    assert out["per_method"]["npo"]["spearman_seeds"] == pytest.approx(0.5)
    assert out["overall"]["tau_methods"] == pytest.approx(-2 / 3)
    assert out["overall"]["spearman_methods"] == pytest.approx(-0.75)
    assert stats.kendalltau([5, 1, 3], [2, 1, 0.5])[0] == pytest.approx(1 / 3)  # scipy agrees with the hand count


def test_anova_and_icc_by_hand():
    """ga: a = (1, 3), b = (4, 6), c = (7, 8); group means 2, 5, 7.5; grand mean 29/6.
    SSB = 2 * [(2 - 29/6)^2 + (5 - 29/6)^2 + (7.5 - 29/6)^2] = 2 * (289 + 1 + 256) / 36 = 91/3, MSB = 91/6;
    SSW = 2 + 2 + 0.5 = 4.5, MSW = 4.5 / 3 = 3/2; F = 91/9. ICC(1), k0 = 2: (91/6 - 9/6) / (91/6 + 9/6) = 0.82.
    p: for an F(2, d2) variable P(F > x) = (1 + 2x / d2)^(-d2/2), here (1 + 182/27)^(-3/2)."""
    a = icc1([[1, 3], [4, 6], [7, 8]])
    assert a["msb"] == pytest.approx(91 / 6) and a["msw"] == pytest.approx(1.5)
    assert a["f"] == pytest.approx(91 / 9) and a["icc"] == pytest.approx(0.82)
    assert a["p"] == pytest.approx((1 + 182 / 27) ** -1.5)
    traj = fs_traj(FS)
    res = cross_path(traj, path_scores(traj, para=None, utilities=()), utilities=())["per_method"]["ga"]
    assert res["anova_f"] == pytest.approx(91 / 9) and res["icc"] == pytest.approx(0.82)
    # two seeds: the only resamples with two distinct seeds are (0, 1) and (1, 0), both giving the point estimate
    assert res["icc_ci_low"] == pytest.approx(0.82) and res["icc_ci_high"] == pytest.approx(0.82)
    assert 0 < res["icc_boot_n"] < 1000


def test_icc_unbalanced_and_negative():
    """Unbalanced groups (1, 2) and (3, 4, 5, 6): N = 6, a = 2, k0 = (6 - (4 + 16) / 6) / 1 = 8/3;
    means 1.5 and 4.5, grand 3.5: SSB = 2 * 4 + 4 * 1 = 12 = MSB; SSW = 0.5 + 5 = 5.5, MSW = 5.5 / 4 = 11/8;
    ICC = (12 - 11/8) / (12 + (8/3 - 1) * 11/8) = (85/8) / (12 + 55/24) = 255/343.
    Seeds that vary more than the paths give a negative ICC: (0, 10), (1, 9): MSB = 0, ICC = -1."""
    assert icc1([[1, 2], [3, 4, 5, 6]])["icc"] == pytest.approx(255 / 343)
    assert icc1([[0, 10], [1, 9]])["icc"] == pytest.approx(-1.0)
    assert math.isnan(icc1([[1.0], [2.0]])["icc"])  # no replicate: no within-path variance to compare with


def test_bootstrap_is_seeded():
    fs = {("ga", s): {"a": 1.0 + s, "b": 4.0 - s, "c": 7.0 + 0.5 * s} for s in range(4)}
    traj = fs_traj(fs)
    sc = path_scores(traj, para=None, utilities=())
    one = cross_path(traj, sc, utilities=(), n_boot=200, boot_seed=3)["per_method"]["ga"]
    two = cross_path(traj, sc, utilities=(), n_boot=200, boot_seed=3)["per_method"]["ga"]
    other = cross_path(traj, sc, utilities=(), n_boot=200, boot_seed=4)["per_method"]["ga"]
    assert one["icc_ci_low"] == two["icc_ci_low"] and one["icc_ci_high"] == two["icc_ci_high"]
    assert one["icc_ci_low"] < one["icc_ci_high"]
    assert (one["icc_ci_low"], one["icc_ci_high"]) != (other["icc_ci_low"], other["icc_ci_high"])


def divergence_preds():
    """m = 2 probes, steps 0, 1, 2: p = 0; q = (c, c); r = (c, -c) with c = 1, 2, 4.
    Pairs at c: pq (c^2 + c^2) / 2 = c^2, pr c^2, qr (0 + 4c^2) / 2 = 2c^2: D = 4c^2 / 3 = 4/3 * 4^t."""
    c = np.array([1.0, 2.0, 4.0])[:, None]
    return {"p": np.zeros((3, 2)), "q": np.hstack([c, c]), "r": np.hstack([c, -c])}


def test_divergence_by_hand():
    out = divergence(divergence_preds(), [0, 1, 2])
    assert out["D"] == pytest.approx([4 / 3, 16 / 3, 64 / 3])
    assert out["A"] == pytest.approx([1, 4, 16])
    # log D = log(4/3) + t log 4 exactly: b = log 4, e^b - 1 = 3, r^2 = 1
    assert out["b"] == pytest.approx(math.log(4)) and out["rho"] == pytest.approx(3.0)
    assert out["a"] == pytest.approx(math.log(4 / 3)) and out["r2"] == pytest.approx(1.0)
    assert out["n_pairs"] == 3


def test_divergence_reduction_is_mean_over_probes_and_pairs():
    """A sum over probes (or over pairs) instead of the mean would double (or triple) D; vector predictions
    (m = 1, h = 2) use the squared norm per probe: ||(1, 1) - 0||^2 = 2."""
    d0 = divergence(divergence_preds(), [0, 1, 2])["D"][0]
    assert d0 != pytest.approx(2 * 4 / 3) and d0 != pytest.approx(4.0)
    vec = divergence({"x": np.zeros((1, 1, 2)), "y": np.ones((1, 1, 2))}, [0])
    assert vec["D"] == [2.0] and math.isnan(vec["b"])  # one step: nothing to fit


def test_divergence_from_identical_start():
    out = divergence({"p": np.array([[0.0], [1.0]]), "q": np.array([[0.0], [2.0]])}, [0, 1])
    assert out["D"] == [0.0, 1.0] and all(math.isnan(a) for a in out["A"]) and out["n_fit"] == 1


def test_retrain_distance_by_hand():
    """ref (1, 1): p (0, 0) -> (1 + 1) / 2 = 1; q (4, 4) -> (9 + 9) / 2 = 9; spread 8."""
    out = retrain_distance({"p": np.zeros(2), "q": np.full(2, 4.0)}, np.ones(2))
    assert out["per_path"] == {"p": 1.0, "q": 9.0} and out["spread"] == 8.0


def test_summary_is_strict_json_and_every_key_is_registered():
    traj = one_seed_traj()
    traj2 = traj.assign(seed=1, forget_ll=traj["forget_ll"] * 1.1)
    traj = pd.concat([traj, traj2, traj.assign(method="npo")], ignore_index=True)
    preds = {m: {s: divergence_preds() for s in (0, 1)} for m in ("ga", "npo")}
    out = summarize(traj, preds=preds, pred_steps=[0, 1, 2], retrain_pred=np.ones(2), alt="alt_ll",
                    utilities=("retain_ll",), n_boot=50)  # fmt: skip
    text = json.dumps(out, allow_nan=False)  # raises on NaN / inf
    back = json.loads(text)
    rec = {(r["method"], r["seed"], r["path"]): r for r in back["scores"]}
    assert rec[("ga", 0, "p3")]["t50"] is None  # never reached (inf) is written as null
    assert back["per_method"]["ga"]["div_rho"] == pytest.approx(3.0)
    assert back["per_method"]["ga"]["retrain_spread"] == pytest.approx(
        retrain_distance({"p": np.zeros(2), "q": np.full(2, 4.0), "r": np.array([4.0, -4.0])}, np.ones(2))["spread"]
    )
    ids = {"method", "seed", "path", "position", "divergence", "retrain"}
    keys = set(back["overall"]) | set().union(*back["scores"]) | set().union(*back["per_seed"])
    keys |= set().union(*back["per_method"].values())
    unregistered = [k for k in keys - ids if lookup(k) is None or lookup(k).family != "path"]
    assert not unregistered


def test_json_ready_conversions():
    out = json_ready({1: np.float64("nan"), "b": np.array([1.0, np.inf]), "c": np.bool_(True), "d": np.int64(3)})
    assert out == {"1": None, "b": [1.0, None], "c": True, "d": 3}


def test_bad_inputs_raise():
    traj = one_seed_traj()
    with pytest.raises(ValueError, match="lacks column"):
        path_scores(traj.drop(columns="para_ll"))
    with pytest.raises(ValueError, match="not 0"):
        path_scores(traj[traj["step"] > 0], utilities=("retain_ll",))
    with pytest.raises(ValueError, match="duplicated"):
        path_scores(pd.concat([traj, traj.iloc[:1]]), utilities=("retain_ll",))
    with pytest.raises(ValueError, match=">= 2 paths"):
        divergence({"p": np.zeros((2, 2))}, [0, 1])


def test_depth_undefined_without_forgetting():
    traj = fs_traj({("ga", 0): {"a": 0.0, "b": 1.0}}).assign(para_ll=lambda t: -t["step"] * 1.0)
    sc = path_scores(traj, utilities=()).set_index("path")
    assert math.isnan(sc.loc["a", "depth"]) and sc.loc["b", "depth"] == 1.0


def test_one_seed_has_null_noise_statistics():
    traj = one_seed_traj()
    out = cross_path(traj, path_scores(traj, utilities=("retain_ll",)), utilities=("retain_ll",))["per_method"]["ga"]
    assert all(math.isnan(out[k]) for k in ("anova_f", "anova_p", "icc", "icc_ci_low", "icc_ci_high", "tau_seeds"))

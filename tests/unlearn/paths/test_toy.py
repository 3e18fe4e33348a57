"""The toy linear model of path-dependent unlearning: the lemma to float64 precision, the invariant orthogonal part,
Theorem 3.1's bound and growth rate, and that the two orders really differ.

Run: PYTHONPATH=. python -m pytest -q tests/unlearn/paths/test_toy.py
"""

from __future__ import annotations

import numpy as np
import pytest

from unlearn.metrics.path import divergence
from unlearn.paths.toy import (
    ToyConfig,
    forget_operator,
    forget_projector,
    ga_trajectory,
    make_data,
    prox_stage,
    run_toy,
    toy_experiment,
    train_order,
)


@pytest.fixture(scope="module", params=["A", "B"])
def res(request):
    return toy_experiment(ToyConfig(forget_stage=request.param))


def test_prox_stage_is_the_minimiser():
    """The closed form zeroes the gradient 2 X^T (X theta - y) + 2 mu (theta - theta_prev) of the stage objective."""
    rng = np.random.default_rng(1)
    X, y, prev = rng.standard_normal((5, 12)), rng.standard_normal(5), rng.standard_normal(12)
    theta = prox_stage(prev, X, y, mu=0.7)
    grad = 2 * X.T @ (X @ theta - y) + 2 * 0.7 * (theta - prev)
    assert np.abs(grad).max() < 1e-12


def test_ga_step_by_hand():
    """One step on a 1 x 2 forget set: X_U = [1, 2], y_U = 1, theta = 0, eta = 0.5, k = 1:
    residual = X_U theta - y = -1, theta_1 = 0 + (2 * 0.5 / 1) * X_U^T * (-1) = [-1, -2]."""
    out = ga_trajectory(np.zeros(2), np.array([[1.0, 2.0]]), np.array([1.0]), eta=0.5, steps=1)
    np.testing.assert_allclose(out[1], [-1.0, -2.0], rtol=0, atol=0)


def test_orders_differ_and_forget_rows_belong_to_the_stage():
    cfg = ToyConfig()
    data = make_data(cfg)
    ab, ba = train_order(data, "AB", cfg.mu), train_order(data, "BA", cfg.mu)
    assert np.linalg.norm(ab - ba) > 0.1 * np.linalg.norm(ab)  # AB != BA, not by rounding
    np.testing.assert_array_equal(data.X_U, data.X_A[: cfg.k])
    data_b = make_data(ToyConfig(forget_stage="B"))
    np.testing.assert_array_equal(data_b.X_U, data_b.X_B[: cfg.k])


def test_lemma_holds_to_float64_precision(res):
    """Delta theta_t (two GA recursions, subtracted) = (I + M_U)^t Delta theta_0 (eigendecomposition), relative
    error ~1e-14 here, over growth of ~2 orders of magnitude in ||Delta theta_t||."""
    err = np.linalg.norm(res["delta"] - res["lemma"], axis=1) / np.linalg.norm(res["lemma"], axis=1)
    assert err.max() < 1e-10
    assert np.linalg.norm(res["lemma"][-1]) > 10 * np.linalg.norm(res["lemma"][0])


def test_a_wrong_lemma_fails(res):
    """The same check distinguishes the lemma from a wrong sign ((I - M_U)^t, gradient *descent*)."""
    lam, V = np.linalg.eigh(res["M_U"])
    wrong = ((1 - lam) ** (len(res["delta"]) - 1) * (V.T @ res["delta"][0])) @ V.T
    err = np.linalg.norm(res["delta"][-1] - wrong) / np.linalg.norm(res["delta"][-1])
    assert err > 0.5


def test_orthogonal_component_never_changes(res):
    """(I - P_U) Delta theta_t = (I - P_U) Delta theta_0 for every t, since M_U (I - P_U) = 0."""
    P = res["P_U"]
    orth = res["delta"] - res["delta"] @ P  # rows: (I - P_U) delta_t (P_U is symmetric)
    assert np.abs(orth - orth[0]).max() < 1e-10 * np.linalg.norm(orth[0])
    assert np.linalg.norm(orth[0]) > 0.1  # non-trivial: the orders differ off the forget span too
    assert np.abs(res["M_U"] @ (np.eye(len(P)) - P)).max() < 1e-12


def test_theorem_bound_holds_from_t0(res):
    """d(t) >= sigma_U^2 ||P_U Delta theta_0||^2 (1 + rho*)^{2t} / (4m) for every t >= t0, with t0 from the proof
    (reached within the run), while the bound itself grows by orders of magnitude."""
    t0 = res["t0"]
    assert t0 is not None and t0 < len(res["d"]) // 2
    assert np.all(res["d"][t0:] >= res["bound"][t0:])
    assert res["bound"][-1] > 100 * res["bound"][t0]
    assert 0 < res["rho_star"] <= res["lam_max"] + 1e-15 and res["sigma_u"] > 0


def test_log_d_grows_at_least_at_the_theorem_rate(res):
    """Late in the run log d(t) is linear in t with slope between 2 log(1 + rho*) and 2 log(1 + lam_max) (the rate of
    the top eigen-direction, which dominates asymptotically); the pure-statistics `divergence` on Pred = X_test theta
    returns the same D(t) and a slope in the same range."""
    steps = np.arange(len(res["d"]))
    late = steps >= len(steps) // 2
    slope, _ = np.polyfit(steps[late], np.log(res["d"][late]), 1)
    assert 2 * np.log1p(res["rho_star"]) <= slope <= 2 * np.log1p(res["lam_max"]) + 1e-9
    X_test = res["data"].X_test
    div = divergence({"AB": res["theta_AB"] @ X_test.T, "BA": res["theta_BA"] @ X_test.T}, steps)
    np.testing.assert_allclose(div["D"], res["d"], rtol=1e-12)
    late_div = divergence(
        {"AB": res["theta_AB"][late] @ X_test.T, "BA": res["theta_BA"][late] @ X_test.T}, steps[late]
    )
    assert late_div["b"] == pytest.approx(slope, rel=1e-9) and late_div["r2"] > 0.99
    assert late_div["rho"] >= (1 + res["rho_star"]) ** 2 - 1


def test_operator_and_projector_by_hand():
    """X_U = [[1, 0, 0], [0, 2, 0]], eta = 0.25, k = 2: M_U = (2 * 0.25 / 2) X_U^T X_U = diag(0.25, 1, 0); P_U =
    diag(1, 1, 0)."""
    X_U = np.array([[1.0, 0, 0], [0, 2.0, 0]])
    np.testing.assert_allclose(forget_operator(X_U, 0.25), np.diag([0.25, 1.0, 0.0]), atol=1e-15)
    np.testing.assert_allclose(forget_projector(X_U), np.diag([1.0, 1.0, 0.0]), atol=1e-15)


def test_run_toy_table():
    df = run_toy(ToyConfig(steps=20))
    assert list(df.columns) == ["step", "d", "bound", "lemma_error", "log_d"]
    assert len(df) == 21 and df["lemma_error"].max() < 1e-10 and (df["d"] > 0).all()


def test_corollary_no_single_procedure_is_retrain_equivalent_for_both(res):
    """From Corollary 1's t* on, at least one of the two unlearned models is farther than eps from the retrained
    model (d is a squared distance, so d(AB, BA) > 4 eps rules out both being within eps of it), while at step 0
    both are within eps: the same GA run cannot be retrain-equivalent for both histories."""
    from unlearn.paths.toy import corollary_step, prediction_distance, retrain_theta

    cfg, data = res["cfg"], res["data"]
    theta_r = retrain_theta(data, cfg)
    d_ab = prediction_distance(res["theta_AB"], theta_r, data.X_test)
    d_ba = prediction_distance(res["theta_BA"], theta_r, data.X_test)
    eps = 1.1 * max(d_ab[0], d_ba[0])  # both start eps-close to the retrained model
    t_star = corollary_step(eps, res["sigma_u"], res["proj_norm2"], res["rho_star"], cfg.m, res["t0"])
    assert res["t0"] <= t_star < len(d_ab)
    assert np.all(np.maximum(d_ab, d_ba)[t_star:] > eps)
    assert np.all(res["bound"][t_star:] >= 4 * eps)

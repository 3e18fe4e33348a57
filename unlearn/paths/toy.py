"""The toy linear model of path-dependent unlearning: two-stage proximal ridge regression, then gradient ascent on a
forget set, in float64 numpy.

Reference: Yu, He, Goyal, Arora, "On the Impossibility of Retrain Equivalence in Machine Unlearning",
https://arxiv.org/abs/2510.16629, Lemma and Theorem 3.1; docs/path-dependence.md ("Toy linear model") walks
through the statements and what the tests check.

Setting. theta in R^d, d larger than the number of rows, so each stage has many exact fits and the one reached
depends on where training starts. Stage S = (X, y) moves theta_prev to

    theta = argmin ||X theta - y||^2 + mu ||theta - theta_prev||^2 = (X^T X + mu I)^{-1} (X^T y + mu theta_prev),

from theta_0 = 0; the orders AB and BA give theta_AB and theta_BA. The forget set S_U = (X_U, y_U) is k rows of one
stage (``ToyConfig.forget_stage``). Gradient-ascent unlearning on it,

    theta_t = theta_{t-1} + eta * grad (1/k) ||X_U theta - y_U||^2
            = theta_{t-1} + (2 eta / k) X_U^T (X_U theta_{t-1} - y_U),

is affine in theta with the same linear part for both paths, so the difference Delta theta_t = theta_AB^(t) -
theta_BA^(t) obeys the lemma Delta theta_t = (I + M_U)^t Delta theta_0 with M_U = (2 eta / k) X_U^T X_U: the part of
Delta theta_0 in the row span of X_U is amplified every step, the orthogonal part never changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass
class ToyConfig:
    d: int = 200  # parameters; > 2 * n_stage, so both stages together are still under-determined
    k: int = 10  # forget rows, full row rank (k < d); part of the forget stage's n_stage rows
    m: int = 50  # test inputs for the prediction distance; m >= k gives sigma_U > 0 almost surely
    n_stage: int = 40  # rows per stage
    mu: float = 1.0  # proximal weight: comparable to the rows' squared norm (~1), so each stage only partly
    # overwrites the previous one and the order leaves a trace
    eta: float = 0.1  # GA step; with unit-norm rows the eigenvalues of M_U are about 2 eta / k * (1 +- sqrt(k/d))^2,
    # i.e. 0.01-0.03 per step: small enough for the exponential regime to be reached slowly and seen
    steps: int = 300  # GA steps; (1 + rho*)^(2t) grows by a few orders of magnitude over them
    noise: float = 0.1  # label noise SD, so the two stages disagree and no single theta fits both exactly
    forget_stage: str = "A"  # which stage holds the forget rows (its first k rows); the lemma holds either way
    seed: int = 0


@dataclass
class ToyData:
    X_A: np.ndarray  # (n_stage, d)
    y_A: np.ndarray  # (n_stage,)
    X_B: np.ndarray
    y_B: np.ndarray
    X_U: np.ndarray  # (k, d), rows of the forget stage
    y_U: np.ndarray  # (k,)
    X_test: np.ndarray  # (m, d)


def make_data(cfg: ToyConfig) -> ToyData:
    """Gaussian rows scaled by 1/sqrt(d) (unit squared norm on average); stage B's labels come from a different
    teacher than stage A's, so the stages conflict and their order matters."""
    if cfg.forget_stage not in ("A", "B"):
        raise ValueError(f"forget_stage must be 'A' or 'B', got {cfg.forget_stage!r}")
    if not 0 < cfg.k <= cfg.n_stage:
        raise ValueError(f"k must be in 1..n_stage={cfg.n_stage}, got {cfg.k}")
    rng = np.random.default_rng(cfg.seed)
    X_A, X_B, X_test = (rng.standard_normal((n, cfg.d)) / math.sqrt(cfg.d) for n in (cfg.n_stage, cfg.n_stage, cfg.m))
    w_A, w_B = rng.standard_normal(cfg.d), rng.standard_normal(cfg.d)
    y_A = X_A @ w_A + cfg.noise * rng.standard_normal(cfg.n_stage)
    y_B = X_B @ w_B + cfg.noise * rng.standard_normal(cfg.n_stage)
    X_U, y_U = (X_A[: cfg.k], y_A[: cfg.k]) if cfg.forget_stage == "A" else (X_B[: cfg.k], y_B[: cfg.k])
    return ToyData(X_A, y_A, X_B, y_B, X_U.copy(), y_U.copy(), X_test)


def prox_stage(theta_prev: np.ndarray, X: np.ndarray, y: np.ndarray, mu: float) -> np.ndarray:
    """argmin_theta ||X theta - y||^2 + mu ||theta - theta_prev||^2 = (X^T X + mu I)^{-1} (X^T y + mu theta_prev)."""
    d = X.shape[1]
    return np.linalg.solve(X.T @ X + mu * np.eye(d), X.T @ y + mu * theta_prev)


def train_order(data: ToyData, order: str, mu: float) -> np.ndarray:
    """theta after the stages in ``order`` ("AB" or "BA"), each one proximal step from the previous, theta_0 = 0."""
    stages = {"A": (data.X_A, data.y_A), "B": (data.X_B, data.y_B)}
    theta = np.zeros(data.X_A.shape[1])
    for s in order:
        theta = prox_stage(theta, *stages[s], mu)
    return theta


def ga_trajectory(theta0: np.ndarray, X_U: np.ndarray, y_U: np.ndarray, eta: float, steps: int) -> np.ndarray:
    """(steps + 1, d): theta_t = theta_{t-1} + (2 eta / k) X_U^T (X_U theta_{t-1} - y_U), the gradient-ascent
    step on the forget loss (1/k) ||X_U theta - y_U||^2, row 0 = theta0."""
    k = X_U.shape[0]
    out = np.empty((steps + 1, theta0.shape[0]))
    out[0] = theta0
    for t in range(1, steps + 1):
        out[t] = out[t - 1] + (2 * eta / k) * (X_U.T @ (X_U @ out[t - 1] - y_U))
    return out


def forget_operator(X_U: np.ndarray, eta: float) -> np.ndarray:
    """M_U = (2 eta / k) X_U^T X_U (d x d, symmetric PSD of rank k)."""
    return (2 * eta / X_U.shape[0]) * (X_U.T @ X_U)


def forget_projector(X_U: np.ndarray) -> np.ndarray:
    """P_U = X_U^T (X_U X_U^T)^{-1} X_U, the orthogonal projector on the row span of X_U."""
    return X_U.T @ np.linalg.solve(X_U @ X_U.T, X_U)


def lemma_prediction(delta0: np.ndarray, M_U: np.ndarray, steps: int) -> np.ndarray:
    """(steps + 1, d): (I + M_U)^t delta0 for t = 0..steps, through the eigendecomposition M_U = V diag(lam) V^T,
    so (I + M_U)^t = V diag((1 + lam)^t) V^T; a computation independent of the GA recursion it is checked against."""
    lam, V = np.linalg.eigh(M_U)
    coef = V.T @ delta0  # (d,)
    t = np.arange(steps + 1)[:, None]
    return ((1 + lam[None, :]) ** t * coef[None, :]) @ V.T


def rho_star(delta0: np.ndarray, M_U: np.ndarray, P_U: np.ndarray) -> float:
    """rho* = <P_U delta0, M_U P_U delta0> / ||P_U delta0||^2, the Rayleigh quotient of M_U at the forget-span part
    of the initial difference (between the smallest and largest non-zero eigenvalue of M_U)."""
    v = P_U @ delta0
    return float(v @ M_U @ v / (v @ v))


def sigma_u(X_test: np.ndarray, P_U: np.ndarray, k: int) -> float:
    """sigma_U = sigma_min(X_test P_U) on the forget span: the k-th largest singular value (X_test P_U has rank k;
    the other d - k are 0), so ||X_test P_U v|| >= sigma_U ||P_U v|| for every v."""
    s = np.linalg.svd(X_test @ P_U, compute_uv=False)
    return float(s[k - 1])


def prediction_distance(theta_a: np.ndarray, theta_b: np.ndarray, X_test: np.ndarray) -> np.ndarray:
    """d(theta_a, theta_b) = (1/m) ||X_test (theta_a - theta_b)||^2 for one pair of (d,) or per row of (T, d) arrays,
    the retrain-equivalence distance with Pred(theta, x) = x^T theta."""
    diff = (np.atleast_2d(theta_a) - np.atleast_2d(theta_b)) @ X_test.T  # (T, m)
    out = (diff**2).sum(axis=1) / X_test.shape[0]
    return out if np.ndim(theta_a) > 1 else out[0]


def theorem_bound(t, sigma: float, proj_norm2: float, rho: float, m: int):
    """Theorem 3.1's lower bound sigma_U^2 ||P_U Delta theta_0||^2 (1 + rho*)^{2t} / (4m), valid for t >= t_0."""
    return sigma**2 * proj_norm2 * (1 + rho) ** (2 * np.asarray(t, dtype=np.float64)) / (4 * m)


def corollary_step(eps: float, sigma: float, proj_norm2: float, rho: float, m: int, t0: int) -> int:
    """Corollary 1: from
    t* = max(t0, ceil([log(16 m eps) - log(sigma_U^2 ||P_U Delta theta_0||^2)] / (2 log(1 + rho*))))
    on, the bound exceeds 4 eps, so d(theta_AB, theta_BA) > 4 eps and, sqrt(d) being a distance, at least one of
    the two unlearned models is farther than eps from any reference, the retrained model included."""
    t = (math.log(16 * m * eps) - math.log(sigma**2 * proj_norm2)) / (2 * math.log1p(rho))
    return max(t0, math.ceil(t))


def retrain_theta(data: ToyData, cfg: ToyConfig) -> np.ndarray:
    """The retrained reference: the same two proximal stages in the order AB from theta_0 = 0, with the forget rows
    taken out of their stage."""
    keep = slice(cfg.k, None)
    X_A, y_A = (data.X_A[keep], data.y_A[keep]) if cfg.forget_stage == "A" else (data.X_A, data.y_A)
    X_B, y_B = (data.X_B[keep], data.y_B[keep]) if cfg.forget_stage == "B" else (data.X_B, data.y_B)
    retain = ToyData(X_A, y_A, X_B, y_B, data.X_U, data.y_U, data.X_test)
    return train_order(retain, "AB", cfg.mu)


def toy_experiment(cfg: ToyConfig) -> dict:
    """Train AB and BA, unlearn both with GA, and return everything the lemma and the theorem speak about.

    Returns:
        dict: ``theta_AB, theta_BA`` (steps + 1, d) trajectories, ``delta`` (their difference), ``lemma``
        ((I + M_U)^t delta_0), ``M_U, P_U, rho_star, sigma_u, proj_norm2`` (||P_U delta_0||^2), ``lam_max`` (the
        largest eigenvalue of M_U), ``d`` (steps + 1,) prediction distances, ``bound`` (theorem_bound per step),
        ``t0`` (first step from which sigma_U ||P_U delta_t|| >= 2 ||X_test (I - P_U) delta_0||, where the proof's
        triangle inequality gives d(t) >= the bound), ``data`` and ``cfg``.
    """
    data = make_data(cfg)
    ab, ba = train_order(data, "AB", cfg.mu), train_order(data, "BA", cfg.mu)
    traj_ab = ga_trajectory(ab, data.X_U, data.y_U, cfg.eta, cfg.steps)
    traj_ba = ga_trajectory(ba, data.X_U, data.y_U, cfg.eta, cfg.steps)
    delta = traj_ab - traj_ba
    M_U, P_U = forget_operator(data.X_U, cfg.eta), forget_projector(data.X_U)
    lemma = lemma_prediction(delta[0], M_U, cfg.steps)
    rho, sig = rho_star(delta[0], M_U, P_U), sigma_u(data.X_test, P_U, cfg.k)
    proj_norm2 = float(np.sum((P_U @ delta[0]) ** 2))
    steps = np.arange(cfg.steps + 1)
    # t0 of the proof: ||X_test delta_t|| >= sigma_U ||P_U delta_t|| - ||X_test (I - P_U) delta_0||, at least half of
    # the first term once it is twice the second (constant) one; and ||P_U delta_t|| >= (1 + rho*)^t ||P_U delta_0||
    grow = sig * np.linalg.norm(delta @ P_U, axis=1)  # P_U symmetric: rows of delta @ P_U = P_U delta_t
    const = np.linalg.norm(data.X_test @ (delta[0] - P_U @ delta[0]))
    reached = np.flatnonzero(grow >= 2 * const)
    return {
        "theta_AB": traj_ab,
        "theta_BA": traj_ba,
        "delta": delta,
        "lemma": lemma,
        "M_U": M_U,
        "P_U": P_U,
        "rho_star": rho,
        "sigma_u": sig,
        "proj_norm2": proj_norm2,
        "lam_max": float(np.linalg.eigvalsh(M_U)[-1]),
        "d": prediction_distance(traj_ab, traj_ba, data.X_test),
        "bound": theorem_bound(steps, sig, proj_norm2, rho, cfg.m),
        "t0": int(reached[0]) if len(reached) else None,
        "data": data,
        "cfg": cfg,
    }


def run_toy(cfg: ToyConfig | None = None):
    """The toy run as a table for a figure: one row per GA step with ``step``, ``d`` (prediction distance between
    the AB and BA models), ``bound`` (Theorem 3.1's lower bound), ``lemma_error`` (||delta_t - (I + M_U)^t
    delta_0|| / ||(I + M_U)^t delta_0||) and ``log_d``."""
    import pandas as pd

    res = toy_experiment(cfg or ToyConfig())
    err = np.linalg.norm(res["delta"] - res["lemma"], axis=1) / np.linalg.norm(res["lemma"], axis=1)
    return pd.DataFrame(
        {
            "step": np.arange(len(res["d"])),
            "d": res["d"],
            "bound": res["bound"],
            "lemma_error": err,
            "log_d": np.log(res["d"]),
        }
    )


def write_toy(cfg: ToyConfig, out):
    """``unlearn paths toy``: `run_toy`'s table as ``toy.csv`` and a figure ``toy.png`` (d(t) and the theorem's
    bound on a log scale; the lemma's relative error) in ``out``."""
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from unlearn.workflow import check_out_dir

    out = check_out_dir(Path(out))
    out.mkdir(parents=True, exist_ok=True)
    df = run_toy(cfg)
    df.to_csv(out / "toy.csv", index=False, float_format="%.8g")
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.6))
    a.semilogy(df["step"], df["d"], label="d(AB, BA): mean squared prediction gap")
    a.semilogy(df["step"], df["bound"], "--", label="Theorem 3.1 lower bound")
    a.set_xlabel("gradient-ascent step t")
    a.set_ylabel("distance (squared prediction units)")
    a.legend(fontsize=8)
    a.grid(alpha=0.3)
    b.semilogy(df["step"], df["lemma_error"].clip(lower=1e-17))
    b.set_xlabel("gradient-ascent step t")
    b.set_ylabel("relative error of the lemma (I + M_U)^t")
    b.grid(alpha=0.3)
    fig.suptitle(f"two-stage linear model, d={cfg.d}, k={cfg.k}, m={cfg.m}, mu={cfg.mu}, eta={cfg.eta}", fontsize=9)
    fig.tight_layout()
    fig.savefig(out / "toy.png", dpi=120)
    plt.close(fig)
    return out

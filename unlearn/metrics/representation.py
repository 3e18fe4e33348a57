"""Representation similarity: linear CKA, exact and streaming (docs/conventions.md#cka).

Model-agnostic: the functions take feature matrices X (n, p), Y (n, q) of two models on the same n inputs
(UNet activations of an original vs an edited diffusion model; LLM hidden states of an unlearned model vs the
original or the retrain oracle). Kornblith et al. 2019 (https://arxiv.org/abs/1905.00414):

    CKA_lin(X, Y) = ‖ỸᵀX̃‖_F² / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F),   X̃, Ỹ column-centred

The streaming accumulators compute the same value over any batch split in one pass (float64, shifted by the
first batch's mean against cancellation), in feature space — O(p² + q² + pq) memory whatever n: the biased CKA
above (`LinearCKAAccumulator`) and CKA built on the unbiased HSIC₁ of Song et al. 2012
(https://jmlr.org/papers/v13/song12a.html; ``unbiased=True``), whose Gram sums are rewritten as feature sums.
`LayerwiseCKA` runs one of them per layer of (B, L, d) hidden states at once. The Gram-form HSIC₁ and the
minibatch CKA of Nguyen, Raghu & Kornblith 2021 (https://arxiv.org/abs/2010.15327; reference code
google-research ``do_wide_and_deep_networks_learn_the_same_things``) are for features too wide for feature form.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from unlearn.metrics import register_metric

if TYPE_CHECKING:
    import torch

register_metric("cka_forget", "representation", "lower", "linear CKA of internal activations, original vs "
                "unlearned, on forget inputs (1 = representation unchanged)", "[0, 1]")  # fmt: skip
register_metric("cka_retain", "representation", "higher", "linear CKA of internal activations, original vs "
                "unlearned, on retain inputs", "[0, 1]")  # fmt: skip


def _centre(X: torch.Tensor) -> torch.Tensor:
    X = X.reshape(X.shape[0], -1).double()
    return X - X.mean(0, keepdim=True)


def linear_cka(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Feature form, O(n p q): X (n, ...), Y (n, ...) are flattened per row. Returns CKA in [0, 1]."""
    if X.shape[0] != Y.shape[0] or X.shape[0] < 2:
        raise ValueError(f"CKA needs the same n >= 2 rows on both sides, got {X.shape[0]} and {Y.shape[0]}")
    X, Y = _centre(X), _centre(Y)
    den = (X.T @ X).norm() * (Y.T @ Y).norm()
    return float((Y.T @ X).norm() ** 2 / den) if den > 0 else float("nan")


def linear_cka_gram(X: torch.Tensor, Y: torch.Tensor) -> float:
    """Gram form tr(KHLH) / sqrt(tr(KHKH) tr(LHLH)), O(n² (p + q)); equal to `linear_cka`."""
    import torch

    X, Y = X.reshape(X.shape[0], -1).double(), Y.reshape(Y.shape[0], -1).double()
    n = X.shape[0]
    H = torch.eye(n, dtype=torch.float64) - 1.0 / n
    K, L = H @ X @ X.T @ H, H @ Y @ Y.T @ H  # centred Gram matrices (n, n)
    return float((K * L).sum() / ((K * K).sum() * (L * L).sum()).sqrt())


def hsic_unbiased(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """HSIC₁(K, L) of Song et al. 2012 for Gram matrices (n, n), n >= 4."""
    import torch

    n = K.shape[0]
    if n < 4:
        raise ValueError("unbiased HSIC needs n >= 4")
    K, L = K.double().clone(), L.double().clone()
    K.fill_diagonal_(0)
    L.fill_diagonal_(0)
    one = torch.ones(n, 1, dtype=torch.float64)
    t1 = (K * L).sum()
    t2 = (one.T @ K @ one) * (one.T @ L @ one) / ((n - 1) * (n - 2))
    t3 = 2.0 / (n - 2) * (one.T @ K @ L @ one)
    return ((t1 + t2 - t3) / (n * (n - 3))).squeeze()


def minibatch_cka(batches, ragged: str = "drop") -> float:
    """Nguyen et al. minibatch CKA: ΣHSIC₁(K,L) / sqrt(ΣHSIC₁(K,K) ΣHSIC₁(L,L)) over (X_i, Y_i) batches.

    The estimator is defined for equal-size batches (the reference code sums U-centred inner products without
    HSIC₁'s 1/(n(n-3)), which cancels only then). ``ragged="drop"`` (default) skips every batch whose size differs
    from the first one's — a DataLoader's short last batch — so the value matches the reference's for
    ``drop_last=True``. ``ragged="keep"`` sums every batch of n >= 4: each HSIC₁ here is normalised, hence an
    unbiased estimate on its own, so a short batch adds a noisier but unbiased term.
    """
    if ragged not in ("drop", "keep"):
        raise ValueError(f"ragged must be 'drop' or 'keep', got {ragged!r}")
    kl = kk = ll = 0.0
    size, used = None, 0
    for X, Y in batches:
        size = X.shape[0] if size is None else size
        if (ragged == "drop" and X.shape[0] != size) or X.shape[0] < 4:
            continue
        X, Y = X.reshape(X.shape[0], -1).double(), Y.reshape(Y.shape[0], -1).double()
        K, L = X @ X.T, Y @ Y.T
        kl, kk, ll = kl + hsic_unbiased(K, L), kk + hsic_unbiased(K, K), ll + hsic_unbiased(L, L)
        used += 1
    if not used:
        raise ValueError("minibatch CKA needs at least one batch of n >= 4 rows")
    return float(kl / (kk * ll).sqrt())


class _Moments:
    """Float64 sums over a stream of paired rows, for G feature pairs at once (G = layers).

    X (n, G, p), Y (n, G, q) rows are shifted by the first batch's means (both CKA forms ignore a constant shift;
    it limits cancellation in S - s sᵀ/n), then accumulated: n, s_x = Σx (G, p), s_y, S_xy = Σ y xᵀ (G, q, p),
    S_xx, S_yy. ``unbiased`` also accumulates, with aᵢ = ‖xᵢ‖², bᵢ = ‖yᵢ‖²: Σaᵢbᵢ, Σaᵢ, Σbᵢ, Σaᵢ², Σbᵢ² (G,),
    Σbᵢxᵢ, Σaᵢxᵢ (G, p), Σaᵢyᵢ, Σbᵢyᵢ (G, q): everything HSIC₁'s three Gram sums need in feature space.
    """

    def __init__(self, unbiased: bool):
        self.unbiased = unbiased
        self.n = 0
        self.shift_x = self.shift_y = None

    def update(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"CKA needs the same rows on both sides, got {X.shape[0]} and {Y.shape[0]}")
        if X.shape[0] == 0:
            return
        X, Y = X.double().transpose(0, 1), Y.double().transpose(0, 1)  # (G, n, p), (G, n, q)
        if self.shift_x is None:
            self.shift_x, self.shift_y = X.mean(1, keepdim=True), Y.mean(1, keepdim=True)
        X, Y = X - self.shift_x, Y - self.shift_y
        s = {
            "sx": X.sum(1), "sy": Y.sum(1),
            "sxy": Y.transpose(1, 2) @ X, "sxx": X.transpose(1, 2) @ X, "syy": Y.transpose(1, 2) @ Y,
        }  # fmt: skip
        if self.unbiased:
            a, b = (X * X).sum(2), (Y * Y).sum(2)  # (G, n) squared norms: the Gram diagonals
            s.update(
                ab=(a * b).sum(1), a=a.sum(1), b=b.sum(1), aa=(a * a).sum(1), bb=(b * b).sum(1),
                bx=(b[:, :, None] * X).sum(1), ax=(a[:, :, None] * X).sum(1),
                ay=(a[:, :, None] * Y).sum(1), by=(b[:, :, None] * Y).sum(1),
            )  # fmt: skip
        if self.n == 0:
            self.__dict__.update(s)
        else:
            for k, v in s.items():
                getattr(self, k).add_(v)
        self.n += X.shape[1]

    def biased(self) -> torch.Tensor:
        """Biased linear CKA (G,): ‖C_xy‖_F² / (‖C_xx‖_F ‖C_yy‖_F), C = S - s sᵀ/n."""
        import torch

        if self.n < 2:
            raise ValueError(f"CKA needs n >= 2 rows, got {self.n}")
        n = self.n

        def cov(S, u, v):
            return S - u[:, :, None] * v[:, None, :] / n

        nxy = cov(self.sxy, self.sy, self.sx).square().sum((1, 2))
        nxx = cov(self.sxx, self.sx, self.sx).square().sum((1, 2)).sqrt()
        nyy = cov(self.syy, self.sy, self.sy).square().sum((1, 2)).sqrt()
        den = nxx * nyy
        return torch.where(den > 0, nxy / den, torch.full_like(den, float("nan")))

    def hsic1(self, which: str) -> torch.Tensor:
        """HSIC₁ (G,) of Song et al. 2012 from the sums: ``which`` in ("xy", "xx", "yy")."""
        # rows u (p-dim, kernel K) and v (q-dim, kernel L): S = Σ v uᵀ (G, q, p), su = Σu, sv = Σv, au = Σ‖u‖²,
        # bv = Σ‖v‖², ab = Σ‖u‖²‖v‖², wu = Σ‖vᵢ‖² uᵢ (G, p), wv = Σ‖uᵢ‖² vᵢ (G, q)
        if which == "xy":
            S, su, sv, au, bv, ab, wu, wv = self.sxy, self.sx, self.sy, self.a, self.b, self.ab, self.bx, self.ay
        elif which == "xx":
            S, su, sv, au, bv, ab, wu, wv = self.sxx, self.sx, self.sx, self.a, self.a, self.aa, self.ax, self.ax
        else:
            S, su, sv, au, bv, ab, wu, wv = self.syy, self.sy, self.sy, self.b, self.b, self.bb, self.by, self.by
        n = self.n
        tr = S.square().sum((1, 2)) - ab  # tr(K̃L̃)
        k1 = su.square().sum(1) - au  # 1ᵀK̃1
        l1 = sv.square().sum(1) - bv  # 1ᵀL̃1
        kl1 = (sv[:, None, :] @ S @ su[:, :, None]).reshape(-1) - (su * wu).sum(1) - (sv * wv).sum(1) + ab  # 1ᵀK̃L̃1
        return (tr + k1 * l1 / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * kl1) / (n * (n - 3))

    def unbiased_cka(self) -> torch.Tensor:
        """HSIC₁(X, Y) / sqrt(HSIC₁(X, X) HSIC₁(Y, Y)) (G,); NaN where a self-HSIC₁ estimate is <= 0."""
        import torch

        if self.n < 4:
            raise ValueError(f"unbiased HSIC needs n >= 4 rows, got {self.n}")
        den = self.hsic1("xx") * self.hsic1("yy")
        return torch.where(
            den > 0, self.hsic1("xy") / den.clamp_min(1e-300).sqrt(), torch.full_like(den, float("nan"))
        )


class LinearCKAAccumulator:
    """Exact linear CKA over a stream of (X_b, Y_b) batches (any batch sizes), in one pass.

    ``unbiased=False``: Kornblith et al.'s biased CKA of the whole dataset, from n, Σx, Σy, Σyxᵀ, Σxxᵀ, Σyyᵀ:
    ``CKA = ‖C_xy‖_F² / (‖C_xx‖_F ‖C_yy‖_F)``, ``C_xy = Σyxᵀ - Σy Σxᵀ / n``.

    ``unbiased=True``: CKA from the unbiased HSIC₁ (Song et al. 2012) of the whole dataset — the quantity
    Nguyen et al. 2021's minibatch CKA estimates — computed in feature space without an n × n Gram matrix. With
    ``K = XXᵀ``, ``L = YYᵀ``, tilde = zero diagonal, aᵢ = ‖xᵢ‖², bᵢ = ‖yᵢ‖², S_xy = Σ xᵢyᵢᵀ:
    ``tr(K̃L̃) = ‖S_xy‖_F² - Σaᵢbᵢ``, ``1ᵀK̃1 = ‖Σx‖² - Σaᵢ``, ``1ᵀL̃1 = ‖Σy‖² - Σbᵢ``,
    ``1ᵀK̃L̃1 = Σxᵀ S_xy Σy - Σxᵀ(Σbᵢxᵢ) - Σyᵀ(Σaᵢyᵢ) + Σaᵢbᵢ``, then
    ``HSIC₁ = [tr(K̃L̃) + 1ᵀK̃1 1ᵀL̃1 / ((n-1)(n-2)) - 2/(n-2) 1ᵀK̃L̃1] / (n(n-3))``. HSIC₁ with a linear kernel
    is invariant to a constant shift of the features (U-centring removes row and column constants), so the same
    first-batch shift applies. Memory O(p² + q² + pq) float64, whatever n.
    """

    def __init__(self, unbiased: bool = False):
        self.unbiased = unbiased
        self._m = _Moments(unbiased)

    @property
    def n(self) -> int:
        return self._m.n

    def update(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        """X (B, ...), Y (B, ...): rows of the two models on the same B inputs, flattened per row."""
        self._m.update(X.reshape(X.shape[0], 1, -1), Y.reshape(Y.shape[0], 1, -1))

    def value(self) -> float:
        return float((self._m.unbiased_cka() if self.unbiased else self._m.biased())[0])


class LayerwiseCKA:
    """Per-layer linear CKA between two models' hidden states, streamed: ``update(X (B, L, d), Y (B, L, d))``.

    One `LinearCKAAccumulator` per layer, computed as batched (L, d, d) products; memory 3 L d² float64 (plus
    vectors), on the device of the first batch — e.g. 4 layers × 192-d: 3.5 MB; 32 layers × 4096-d: 13 GB, where a
    subset of layers should be passed instead. ``mask`` (B,) bool keeps only valid rows.
    """

    def __init__(self, n_layers: int, unbiased: bool = False):
        self.n_layers = n_layers
        self.unbiased = unbiased
        self._m = _Moments(unbiased)

    @property
    def n(self) -> int:
        return self._m.n

    def update(self, X: torch.Tensor, Y: torch.Tensor, mask: torch.Tensor | None = None) -> None:
        if X.ndim != 3 or Y.ndim != 3 or X.shape[1] != self.n_layers or Y.shape[1] != self.n_layers:
            raise ValueError(f"expected (B, {self.n_layers}, d) states, got {tuple(X.shape)} and {tuple(Y.shape)}")
        if mask is not None:
            X, Y = X[mask], Y[mask]
        self._m.update(X, Y)

    def values(self) -> list[float]:
        return (self._m.unbiased_cka() if self.unbiased else self._m.biased()).tolist()

"""Representation similarity: linear CKA, exact and streaming (docs/conventions.md#cka).

Model-agnostic: the functions take feature matrices X (n, p), Y (n, q) of two models on the same n inputs
(UNet activations of an original vs an edited diffusion model; LLM hidden states of an unlearned model vs the
original or the retrain oracle). Kornblith et al. 2019 (https://arxiv.org/abs/1905.00414):

    CKA_lin(X, Y) = ‖ỸᵀX̃‖_F² / (‖X̃ᵀX̃‖_F ‖ỸᵀỸ‖_F),   X̃, Ỹ column-centred

The streaming accumulator computes the same value over any batch split in one pass (float64, shifted by the
first batch's mean against cancellation). The unbiased HSIC₁ (Song et al. 2012) and minibatch CKA of Nguyen,
Raghu & Kornblith 2021 are here for Gram-form use on very wide features.
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


def minibatch_cka(batches) -> float:
    """Nguyen et al. minibatch CKA over equal-size (X_i, Y_i) batches: ΣHSIC₁(K,L) / sqrt(ΣHSIC₁(K,K) ΣHSIC₁(L,L))."""
    kl = kk = ll = 0.0
    for X, Y in batches:
        X, Y = X.reshape(X.shape[0], -1).double(), Y.reshape(Y.shape[0], -1).double()
        K, L = X @ X.T, Y @ Y.T
        kl, kk, ll = kl + hsic_unbiased(K, L), kk + hsic_unbiased(K, K), ll + hsic_unbiased(L, L)
    return float(kl / (kk * ll).sqrt())


class LinearCKAAccumulator:
    """Exact biased linear CKA over a stream of (X_b, Y_b) batches: accumulate n, Σx, Σy, ΣxyᵀΣxxᵀ, Σyyᵀ."""

    def __init__(self):
        self.n = 0
        self.shift_x = self.shift_y = None

    def update(self, X: torch.Tensor, Y: torch.Tensor) -> None:
        import torch

        X, Y = X.reshape(X.shape[0], -1).double(), Y.reshape(Y.shape[0], -1).double()
        if self.shift_x is None:  # CKA is shift-invariant: remove the first batch's mean against cancellation
            self.shift_x, self.shift_y = X.mean(0), Y.mean(0)
            p, q = X.shape[1], Y.shape[1]
            z = torch.zeros
            self.sx, self.sy = z(p, dtype=torch.float64), z(q, dtype=torch.float64)
            self.sxy, self.sxx, self.syy = (z(a, b, dtype=torch.float64) for a, b in ((q, p), (p, p), (q, q)))
        X, Y = X - self.shift_x, Y - self.shift_y
        self.n += X.shape[0]
        self.sx += X.sum(0)
        self.sy += Y.sum(0)
        self.sxy += Y.T @ X
        self.sxx += X.T @ X
        self.syy += Y.T @ Y

    def value(self) -> float:
        import torch

        n = self.n
        cxy = self.sxy - torch.outer(self.sy, self.sx) / n
        cxx = self.sxx - torch.outer(self.sx, self.sx) / n
        cyy = self.syy - torch.outer(self.sy, self.sy) / n
        return float(cxy.norm() ** 2 / (cxx.norm() * cyy.norm()))

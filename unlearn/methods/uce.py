"""UCE: Unified Concept Editing (Gandikota et al., WACV 2024, https://arxiv.org/abs/2308.14761).

Closed-form edit of every cross-attention key/value projection W (d_out, d) of the UNet: with erased rows c_i
(targets v*_i), preserved rows c_j and the anchor λ to the old weights, the minimiser of
η Σ_E ‖W c_i − v*_i‖² + ρ Σ_P ‖W c_j − W_old c_j‖² + λ ‖W − W_old‖² is

    W_new = (λ W_old + η Σ_E v*_i c_iᵀ + ρ Σ_P W_old c_j c_jᵀ) (λ I + η Σ_E c_i c_iᵀ + ρ Σ_P c_j c_jᵀ)⁻¹  (Eq. 3, code)

with the ``replace`` target v*_i = W_old g_i (g_i: the guide concept's token row aligned with c_i). Because
the targets are W_old times an embedding, the left factor is W_old A with one d x d matrix A shared by all
layers: W_new = W_old (A B⁻¹), and A B⁻¹ = I + (rank n_e). So the whole edit is one Gram matrix, one d x d
Cholesky solve and one rank-n_e update per layer — not 32 inversions (benchmarks/speed/uce_edit.py).

Token rows (the c's): ``tail`` = old UCE (``train-scripts/train_erase.py``): the last concept token through the
end of the sequence, concept and guide trimmed to equal length; ``last`` = new UCE: the last subject token only;
``all`` = every row. Preserve prompts contribute all rows (``last``: the last token). Defaults are old UCE's.

Registered as the closed-form diffusion edit ``uce``: ``apply(target, erase, cfg, preserve, on_round=None)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from unlearn.errors import UnlearnError
from unlearn.methods import register_edit
from unlearn.targets.diffusion import cross_attention_kv, encode_prompts


@dataclass
class UCEConfig:
    erase_scale: float = 1.0  # η: weight of the erase rows (code default)
    preserve_scale: float | None = None  # ρ; None = old UCE's max(0.1, 1/|P|) with '' always in P
    lamb: float = 0.5  # λ: Tikhonov anchor to W_old (old UCE hard-codes 0.5)
    guide: str = ""  # guide concept: '' = unconditional (nudity / objects), "art" for artists
    tokens: Literal["tail", "last", "all"] = "tail"  # which token rows of a concept prompt are edited
    preserve: list[str] | None = field(default=None)  # None: the caller's preserve set (TinyShapes: the other words)

    # λ > 0 keeps the d x d system positive definite (the Cholesky solve in uce_lowrank)
    RANGES: ClassVar[dict[str, str]] = {"erase_scale": ">= 0", "preserve_scale": ">= 0", "lamb": "> 0"}


def uce_closed_form(W: torch.Tensor, C_e, V_e, C_p, lamb: float, eta: float, rho: float) -> torch.Tensor:
    """One matrix, arbitrary targets: W (o, d), C_e (n_e, d) with targets V_e (n_e, o), C_p (n_p, d) -> (o, d).

    Used for the ``tensor`` technique / debiasing and as the reference the fast path is tested against.
    """
    d = W.shape[1]
    left = lamb * W + eta * V_e.T @ C_e + rho * W @ (C_p.T @ C_p)  # (o, d)
    right = lamb * torch.eye(d, dtype=W.dtype, device=W.device) + eta * C_e.T @ C_e + rho * C_p.T @ C_p  # (d, d)
    return torch.linalg.solve(right, left.T).T  # right is symmetric: (left right⁻¹)ᵀ = right⁻¹ leftᵀ


def uce_lowrank(C_e, C_g, C_p, lamb: float, eta: float, rho: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(U (d, n_e), V (d, n_e)) with W_new = W_old (I + U Vᵀ) for ``replace`` targets v*_i = W_old g_i.

    With B = λI + ηC_eᵀC_e + ρG_p and A = B + η(C_g − C_e)ᵀC_e, the shared map A B⁻¹ = I + η(C_g − C_e)ᵀ C_e B⁻¹:
    a rank-n_e update, so each layer costs O(d_out d n_e) instead of O(d_out d²). C_e, C_g: (n_e, d) erased rows
    and their aligned guide rows; C_p: (n_p, d) preserved rows. The Gram matrix is formed once in the input
    dtype; the d x d solve runs in fp64 (Cholesky: B is symmetric positive definite for λ > 0).
    """
    d = C_e.shape[1]
    G = eta * C_e.T @ C_e + rho * C_p.T @ C_p  # (d, d): the preserve Gram matrix, formed once for all layers
    B = G.double() + lamb * torch.eye(d, dtype=torch.float64, device=C_e.device)
    V = torch.cholesky_solve(C_e.T.double(), torch.linalg.cholesky(B))  # (d, n_e) = B⁻¹ C_eᵀ
    U = eta * (C_g - C_e).T.double()  # (d, n_e)
    return U, V


def uce_transform(C_e, C_g, C_p, lamb: float, eta: float, rho: float) -> torch.Tensor:
    """The shared d x d map T = A B⁻¹ (fp64): W_new = W_old T for every layer (see `uce_lowrank`)."""
    U, V = uce_lowrank(C_e, C_g, C_p, lamb, eta, rho)
    return torch.eye(U.shape[0], dtype=torch.float64, device=U.device) + U @ V.T


@torch.no_grad()
def uce_edit_(layers: list[torch.nn.Linear], C_e, C_g, C_p, lamb: float, eta: float, rho: float) -> torch.Tensor:
    """Apply the replace-target UCE edit in place to every layer (all share the same text rows).

    Returns the applied d x d map T (fp64), so callers can track the composite edit W_now = W_orig T_1 T_2 ...
    """
    U, V = uce_lowrank(C_e, C_g, C_p, lamb, eta, rho)
    dt = layers[0].weight.dtype
    W = torch.cat([lin.weight for lin in layers])  # (Σ d_out, d): one tall GEMM beats 32 skinny ones
    if 2 * U.shape[1] < U.shape[0]:  # low rank pays off: W += (W U) Vᵀ
        W = W + (W @ U.to(dt)) @ V.T.to(dt)
    else:
        W = W @ (torch.eye(U.shape[0], dtype=torch.float64, device=U.device) + U @ V.T).to(dt)
    for lin, w in zip(layers, W.split([lin.weight.shape[0] for lin in layers])):
        lin.weight.copy_(w)
    return torch.eye(U.shape[0], dtype=torch.float64, device=U.device) + U @ V.T


@torch.no_grad()
def token_rows(target, prompt: str, rule: str) -> tuple[torch.Tensor, int]:
    """(rows (k, d), index of the last subject token) of one prompt's text embedding under ``rule``."""
    tok = target.tokenizer
    n = int(tok([prompt], padding="max_length", max_length=tok.model_max_length, truncation=True,
                return_tensors="pt").attention_mask[0].sum())  # fmt: skip
    emb = encode_prompts(target, [prompt])[0]  # (T, d)
    last = max(n - 2, 0)  # the token before [EOS] ([BOS] for the empty prompt)
    if rule == "all":
        return emb, last
    if rule == "last":
        return emb[last : last + 1], last
    if rule == "tail":
        return emb[last:], last
    raise UnlearnError(f"unknown token rule {rule!r}; valid: all, last, tail")


def edit_rows(target, concepts: list[str], guide: str, preserve: list[str], rule: str):
    """Stack (C_e, C_g, C_p) for ``concepts`` -> ``guide`` with ``preserve``, aligned as old/new UCE do."""
    ce, cg = [], []
    g_all, g_last = token_rows(target, guide, "all")
    for c in concepts:
        e_all, e_last = token_rows(target, c, "all")
        if rule == "tail":  # old UCE: both from their last token to the end, trimmed to the same length
            far = max(e_last, g_last)
            T = e_all.shape[0]
            ce.append(e_all[e_last : T - (far - e_last)])
            cg.append(g_all[g_last : T - (far - g_last)])
        elif rule == "last":
            ce.append(e_all[e_last : e_last + 1])
            cg.append(g_all[g_last : g_last + 1])
        else:
            ce.append(e_all)
            cg.append(g_all)
    prule = "last" if rule == "last" else "all"
    cp = [token_rows(target, p, prule)[0] for p in preserve]
    d = g_all.shape[1]
    C_p = torch.cat(cp) if cp else g_all.new_zeros(0, d)
    return torch.cat(ce), torch.cat(cg), C_p


@register_edit("uce", UCEConfig, "Unified Concept Editing: closed-form cross-attention K/V edit (Gandikota 2024)")
def apply(target, erase: list[str], cfg: UCEConfig, preserve: list[str], on_round=None) -> dict:
    """Erase the prompts ``erase`` from ``target.unet`` in place, keeping ``preserve`` (``cfg.preserve`` replaces it
    when set); returns timing and the scales used. UCE has no rounds: ``on_round`` is accepted and never called."""
    t0 = time.perf_counter()
    P = list(dict.fromkeys(["", *(cfg.preserve if cfg.preserve is not None else preserve)]))  # '' always in P
    rho = cfg.preserve_scale if cfg.preserve_scale is not None else max(0.1, 1 / len(P))
    C_e, C_g, C_p = edit_rows(target, erase, cfg.guide, P, cfg.tokens)
    t1 = time.perf_counter()
    T = uce_edit_([m for _, m in cross_attention_kv(target.unet)], C_e, C_g, C_p, cfg.lamb, cfg.erase_scale, rho)
    t2 = time.perf_counter()
    return {"edit_seconds": t2 - t1, "encode_seconds": t1 - t0, "preserve_scale": rho, "n_preserve": len(P),
            "transform": T}  # fmt: skip

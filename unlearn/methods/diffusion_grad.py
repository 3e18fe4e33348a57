"""Gradient unlearning on text-to-image diffusion targets: GA (+ retain descent) and NPO on denoising losses.

The LLM methods carried over to diffusion, with the per-sample log-likelihood of a caption/image pair replaced by
minus its denoising loss — the ELBO up to constants and weights, as in Diffusion-DPO (Wallace et al. 2023,
https://arxiv.org/abs/2311.12908, Eq. 14):

    log p_θ(x | c)  :=  −mse_θ = −‖f_θ(x_t, t, c) − target(x_0, ε, t)‖²      (target = ε or v, the prediction type)

* ``ga``:   L = −Σ_f mse_θ / n_f + α · Σ_r mse_θ / n_r                   (α = 0: plain gradient ascent)
* ``npo``:  L = npo_loss(−mse_θ, −mse_ref, β, n_f) + α · Σ_r mse_θ / n_r   (Zhang et al. 2024, Eq. 3; npo_loss from
                                                                         unlearn.methods.npo, ref = the frozen model)

n_f, n_r are the step's forget / retain pair counts (``ctx.norm``), so micro-batches would add up to the step's loss.
Forget pairs are (images the *original* model draws for the erased concept's prompts, those prompts); retain pairs
the same for other prompts — so the methods need no dataset and run on any pipeline. The task
(`unlearn/diffusion_train.py`) draws (t, ε) and runs the UNet: ``ctx.policy(pairs)`` is the trainable UNet's
per-sample mse (B,), ``ctx.reference(pairs)`` the frozen copy's at the same (t, ε), so the NPO log-ratio is paired.
Only the cross-attention K/V projections train by default (as ESD-x), which keeps the edit local and comparable
with UCE/RECE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from unlearn.methods import register_method
from unlearn.methods.npo import npo_loss
from unlearn.targets.diffusion import cross_attention_kv


@dataclass
class DiffusionGAConfig:
    retain_weight: float = 1.0  # α: weight of the retain denoising loss (GradDiff-style); 0 = pure gradient ascent
    params: Literal["xattn_kv", "unet"] = "xattn_kv"  # which UNet parameters train

    RANGES: ClassVar[dict[str, str]] = {"retain_weight": ">= 0"}


@dataclass
class DiffusionNPOConfig:
    beta: float = 5.0  # NPO β on the per-sample −mse (mse is O(0.01-1), so β ≫ the LLM default 0.1)
    retain_weight: float = 1.0  # α: weight of the retain denoising loss; 0 = plain NPO
    params: Literal["xattn_kv", "unet"] = "xattn_kv"  # which UNet parameters train

    RANGES: ClassVar[dict[str, str]] = {"beta": "> 0", "retain_weight": ">= 0"}


def ga_loss(forget_mse: torch.Tensor, retain_mse: torch.Tensor | None, alpha: float, n_forget: float,
            n_retain: float) -> torch.Tensor:  # fmt: skip
    """−Σ forget mse / n_forget + α Σ retain mse / n_retain: ascend the forget denoising loss, descend the retain one.

    ``forget_mse`` (B_f,), ``retain_mse`` (B_r,) or None: per-sample denoising losses; n_*: the step's pair counts.
    """
    loss = -forget_mse.sum() / n_forget
    return loss if retain_mse is None else loss + alpha * retain_mse.sum() / n_retain


def diffusion_npo_loss(forget_mse, ref_forget_mse, retain_mse, alpha: float, beta: float, n_forget: float,
                       n_retain: float) -> torch.Tensor:  # fmt: skip
    """NPO with logp := −mse per sample (B_f,) against the frozen model's, plus α Σ retain mse / n_retain."""
    loss = npo_loss(-forget_mse, -ref_forget_mse, beta, n_forget)
    return loss if retain_mse is None else loss + alpha * retain_mse.sum() / n_retain


def trainable(unet, cfg) -> list[tuple[str, torch.nn.Parameter]]:
    """The trained parameters: every cross-attention K/V weight (``xattn_kv``, the default) or the whole UNet."""
    if cfg.params == "unet":
        return list(unet.named_parameters())
    return [(f"{name}.weight", m.weight) for name, m in cross_attention_kv(unet)]


def _retain_mse(ctx, batch: dict, alpha: float) -> torch.Tensor | None:
    return ctx.policy(batch["retain"]) if alpha > 0 and batch.get("retain") is not None else None


def _logs(f_mse: torch.Tensor, r_mse: torch.Tensor | None, norm: dict) -> dict:
    logs = {"forget_mse": f_mse.detach().sum() / norm["forget_seqs"]}
    if r_mse is not None:
        logs["retain_mse"] = r_mse.detach().sum() / norm["retain_seqs"]
    return logs


@register_method("ga", DiffusionGAConfig, "Gradient ascent on the forget denoising loss + retain descent",
                 kind="diffusion", trainable=trainable)  # fmt: skip
def ga_step(ctx, batch: dict, cfg: DiffusionGAConfig):
    f_mse = ctx.policy(batch["forget"])  # (B,)
    r_mse = _retain_mse(ctx, batch, cfg.retain_weight)
    n = ctx.norm
    return ga_loss(f_mse, r_mse, cfg.retain_weight, n["forget_seqs"], n["retain_seqs"]), _logs(f_mse, r_mse, n)


@register_method("npo", DiffusionNPOConfig, "Negative Preference Optimization on denoising losses + retain descent",
                 kind="diffusion", trainable=trainable, needs_reference=lambda cfg: True)  # fmt: skip
def npo_step(ctx, batch: dict, cfg: DiffusionNPOConfig):
    f_mse = ctx.policy(batch["forget"])  # (B,)
    r_mse = _retain_mse(ctx, batch, cfg.retain_weight)
    ref_mse = ctx.reference(batch["forget"])  # (B,) no grad, same (t, ε)
    n = ctx.norm
    loss = diffusion_npo_loss(f_mse, ref_mse, r_mse, cfg.retain_weight, cfg.beta, n["forget_seqs"], n["retain_seqs"])
    return loss, _logs(f_mse, r_mse, n)

"""Gradient unlearning on text-to-image diffusion targets: GA (+ retain descent) and NPO on denoising losses.

The LLM methods carried over to diffusion (algorithms.md §1-2), with the per-sample log-likelihood of a
caption/image pair replaced by minus its denoising loss — the ELBO up to constants and weights, as in
Diffusion-DPO (Wallace et al. 2023, https://arxiv.org/abs/2311.12908, Eq. 14):

    log p_θ(x | c)  :=  −‖f_θ(x_t, t, c) − target(x_0, ε, t)‖²      (target = ε or v, the model's prediction type)

* GA:   L = −mean_f mse_θ + α · mean_r mse_θ                     (α = 0: plain gradient ascent)
* NPO:  L = npo_loss(−mse_θ, −mse_ref, β) + α · mean_r mse_θ     (Zhang et al. 2024, Eq. 3; npo_loss from
                                                                  unlearn.methods.npo, ref = the frozen model)

Forget pairs are (images the *original* model draws for the erased concept's prompts, those prompts); retain
pairs the same for other prompts — so the method needs no dataset and runs on any pipeline. Both models see
identical (t, ε) per sample so the NPO log-ratio is paired. Only the cross-attention K/V projections train by
default (as ESD-x), which keeps the edit local and comparable with UCE/RECE.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Literal

import torch


@dataclass
class DiffusionGradConfig:
    loss: Literal["ga", "npo"] = "ga"  # which forget objective
    steps: int = 60  # optimizer steps
    lr: float = 1e-3  # AdamW learning rate (only the K/V projections move by default)
    batch_size: int = 16  # forget pairs per step (and as many retain pairs when α > 0)
    retain_weight: float = 1.0  # α: weight of the retain denoising loss (GradDiff-style); 0 = pure GA / NPO
    beta: float = 5.0  # NPO β on the per-sample −mse (mse is O(0.01-1), so β ≫ 0.1 of the LLM default)
    params: Literal["xattn_kv", "unet"] = "xattn_kv"  # which UNet parameters train
    seed: int = 0  # (t, ε, batch order) stream


def denoise_mse(unet, sched, x0: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, noise: torch.Tensor):
    """Per-sample denoising loss (B,) for latents x0 (B, C, H, W), text embeddings cond (B, T, d)."""
    pred = unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=cond).sample
    target = noise if sched.config.prediction_type == "epsilon" else sched.get_velocity(x0, noise, t)
    return (pred - target).pow(2).mean(dim=(1, 2, 3))


def ga_loss(forget_mse: torch.Tensor, retain_mse: torch.Tensor | None, alpha: float) -> torch.Tensor:
    """−mean(forget mse) + α mean(retain mse): ascend the forget denoising loss, descend the retain one."""
    loss = -forget_mse.mean()
    return loss if retain_mse is None else loss + alpha * retain_mse.mean()


def diffusion_npo_loss(forget_mse, ref_forget_mse, retain_mse, alpha: float, beta: float) -> torch.Tensor:
    """NPO with logp := −mse (per sample) against the frozen model, plus α · retain mse."""
    from unlearn.methods.npo import npo_loss  # the LLM loss, shared: one definition of NPO in the suite

    loss = npo_loss(-forget_mse, -ref_forget_mse, beta)
    return loss if retain_mse is None else loss + alpha * retain_mse.mean()


def trainable(unet, which: str) -> list[torch.nn.Parameter]:
    from unlearn.targets.diffusion import cross_attention_kv

    unet.requires_grad_(which == "unet")
    if which == "unet":
        return list(unet.parameters())
    params = [m.weight for _, m in cross_attention_kv(unet)]
    for p in params:
        p.requires_grad_(True)
    return params


def apply(target, forget: tuple, retain: tuple | None, cfg: DiffusionGradConfig, progress: bool = True) -> dict:
    """Unlearn in place. ``forget`` / ``retain`` = (x0 (N, C, H, W), cond (N, T, d)) pairs; returns a trace."""
    import copy

    from diffusers import DDPMScheduler
    from tqdm.auto import tqdm

    sched = DDPMScheduler.from_config(target.scheduler_config)
    unet = target.unet
    ref = copy.deepcopy(unet).requires_grad_(False) if cfg.loss == "npo" else None
    params = trainable(unet, cfg.params)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg.seed)
    use_retain = retain is not None and cfg.retain_weight > 0
    trace, t0 = [], time.perf_counter()
    unet.train()
    for step in tqdm(range(cfg.steps), desc=f"{cfg.loss} (diffusion)", disable=not progress, leave=False):
        fi = torch.randint(0, forget[0].shape[0], (cfg.batch_size,), generator=g)
        x0, cond = forget[0][fi], forget[1][fi]
        t = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch_size,), generator=g)
        noise = torch.randn(x0.shape, generator=g)
        f_mse = denoise_mse(unet, sched, x0, cond, t, noise)
        r_mse = None
        if use_retain:
            ri = torch.randint(0, retain[0].shape[0], (cfg.batch_size,), generator=g)
            rt = torch.randint(0, sched.config.num_train_timesteps, (cfg.batch_size,), generator=g)
            rx = retain[0][ri]
            r_mse = denoise_mse(unet, sched, rx, retain[1][ri], rt, torch.randn(rx.shape, generator=g))
        if cfg.loss == "npo":
            with torch.no_grad():
                ref_mse = denoise_mse(ref, sched, x0, cond, t, noise)
            loss = diffusion_npo_loss(f_mse, ref_mse, r_mse, cfg.retain_weight, cfg.beta)
        else:
            loss = ga_loss(f_mse, r_mse, cfg.retain_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        trace.append({"step": step, "loss": loss.item(), "forget_mse": f_mse.mean().item(),
                      "retain_mse": None if r_mse is None else r_mse.mean().item()})  # fmt: skip
    unet.eval().requires_grad_(False)
    return {"edit_seconds": time.perf_counter() - t0, "trace": trace}

"""DoCo: concept domain correction + concept-preserving gradient (Wu, Zhou, Shi, Lin, Li, Chen, Lin, Li, Zhao;
AAAI 2025, https://arxiv.org/abs/2405.15304; code https://github.com/yongliang-wu/DoCo).

**Domain correction.** At a noisy x_t of a concept image, the trained model's clean-sample prediction for the
concept prompt, x̂0_θ(x_t, c), and the frozen original's for the anchor prompt, x̂0_θ*(x_t, c_a), are told apart by a
discriminator D (a PatchGAN with its own Adam optimizer); the model is trained to fool it, which aligns the output
domain of c with that of c_a — for every prompt whose images land in that domain, not only the training prompts.
With D's logits and the reference code's labels (anchor = 0, concept = 1):

    L_D   = BCE(D(x̂0_θ*(x_t, c_a)), 0) + BCE(D(sg[x̂0_θ(x_t, c)]), 1)
    L_adv = BCE(D(x̂0_θ(x_t, c)), 0)

**Concept-preserving gradient.** With g_u = ∇L_adv and g_p = ∇L_p, L_p the denoising loss on retain pairs (the
code's prior-preservation images), the part of g_u that conflicts with g_p is removed:

    g̃_u = g_u − λ (g_u · g_p / ‖g_p‖²) g_p   if g_u · g_p < 0,   else g_u

per parameter tensor, as the code does; with λ = 1 the projected g̃_u has no negative component along g_p
(g̃_u · g_p = 0 where they conflicted). The reference's ``adjust_gradient`` uses the unit vectors instead,
g_u − λ cos(g_u, g_p) ĝ_p, after clipping both gradients to norm 1 (``surgery_form="code"``); that only equals
the projection when ‖g_u‖ = 1. The applied gradient is g̃_u + w g_p; the code's surgery branch applies g̃_u alone
(w = 0).

Anchor prompts: the forget pair's prompt with the concept word replaced by ``anchor`` ("" drops the word). The code
trains only D for ``warm_up`` steps before the UNet moves (README: 1000 of 2000 for styles); D is updated every step.
Order within a step: D first on this step's (detached) predictions, then the UNet against the updated D (the code
updates the UNet against the previous D, then D); the loop's optimizer step must come after the step function.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from unlearn.diffusion_train import swap_concept
from unlearn.errors import UnlearnError
from unlearn.methods import register_method


@dataclass
class DoCoConfig:
    anchor: str = ""  # c_a: "" = the pair's prompt without the concept word (code: a super-class, "painting")
    warmup_steps: int = 10  # D-only steps before the UNet moves (code --warm_up; README 1000 of 2000 steps; ours
    #                         10 of the 60 TinyShapes steps, where D separates the domains within a few steps)
    d_lr: float = 5e-4  # D's Adam rate: the README commands' --dlr 0.0005 (the argparse default 1e-2 is unused)
    d_width: int = 64  # channels of D's first block, doubled per block (code: 64-128-256-512)
    surgery: bool = True  # the concept-preserving gradient (README: --gradient_clip on every command)
    surgery_form: Literal["paper", "code"] = "paper"  # the paper's exact projection or the code's unit-vector form
    surgery_lambda: float = 1.0  # λ: share of the conflicting component removed (code --lambda_ 1)
    preserve_weight: float = 0.0  # w: g_p added to the update (0 = the code's surgery branch applies g̃_u only)
    params: Literal["xattn_kv", "unet"] = "xattn_kv"  # code --parameter_group cross-attn = attn2 to_k / to_v

    RANGES: ClassVar[dict[str, str]] = {
        "warmup_steps": ">= 0", "d_lr": "> 0", "d_width": ">= 1", "surgery_lambda": ">= 0", "preserve_weight": ">= 0",
    }  # fmt: skip


class PatchDiscriminator(torch.nn.Module):
    """The code's PatchGAN (conv 4x4 stride 2 blocks, BatchNorm after the first, LeakyReLU 0.2, a 1-channel conv
    head), with as many blocks as the input side allows: 4 for SD latents (64 -> 4), 2 for TinyShapes (16 -> 4).
    Input (B, C, H, W) -> patch logits (B, 1, h, w). ``updates`` counts D's optimizer steps (for the warm-up; a
    buffer, so checkpoints carry it)."""

    def __init__(self, channels: int, size: int, width: int = 64):
        super().__init__()
        n_blocks = max(1, min(4, int(math.log2(max(size, 8))) - 2))
        layers, c = [], channels
        for i in range(n_blocks):
            out = width * 2**i
            layers.append(torch.nn.Conv2d(c, out, 4, stride=2, padding=1))
            if i > 0:
                layers.append(torch.nn.BatchNorm2d(out))
            layers.append(torch.nn.LeakyReLU(0.2))
            c = out
        layers.append(torch.nn.Conv2d(c, 1, 3, padding=1))
        self.model = torch.nn.Sequential(*layers)
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def discriminator_loss(logits_anchor: torch.Tensor, logits_concept: torch.Tensor) -> torch.Tensor:
    """L_D = BCE(logits_anchor, 0) + BCE(logits_concept, 1), each the mean over its patch logits (B, 1, h, w)."""
    return F.binary_cross_entropy_with_logits(logits_anchor, torch.zeros_like(logits_anchor)) + (
        F.binary_cross_entropy_with_logits(logits_concept, torch.ones_like(logits_concept))
    )


def adversarial_loss(logits_concept: torch.Tensor) -> torch.Tensor:
    """L_adv = BCE(D(x̂0_θ(x_t, c)), 0): the concept's outputs labelled as the anchor's (mean over patch logits)."""
    return F.binary_cross_entropy_with_logits(logits_concept, torch.zeros_like(logits_concept))


def concept_preserving_grad(g_u: torch.Tensor, g_p: torch.Tensor, lam: float = 1.0, form: str = "paper"):
    """g̃_u for one parameter tensor: g_u − λ (g_u·g_p/‖g_p‖²) g_p where g_u·g_p < 0 (``paper``), or the code's
    g_u − λ cos(g_u, g_p) g_p/‖g_p‖ (``code``); g_u unchanged where they do not conflict or g_p = 0."""
    dot = torch.dot(g_u.flatten().double(), g_p.flatten().double())
    pp = torch.dot(g_p.flatten().double(), g_p.flatten().double())
    if dot >= 0 or pp == 0:
        return g_u
    if form == "paper":
        coef = lam * dot / pp
    elif form == "code":
        coef = lam * dot / (g_u.double().norm() + 1e-8) / (pp.sqrt() + 1e-8) / (pp.sqrt() + 1e-8)
    else:
        raise UnlearnError(f"doco: unknown surgery form {form!r}; valid: paper, code")
    return g_u - coef.to(g_u.dtype) * g_p


def _clip(gs: list[torch.Tensor], max_norm: float = 1.0) -> list[torch.Tensor]:
    norm = torch.stack([g.double().norm() for g in gs]).norm()
    scale = min(1.0, max_norm / (float(norm) + 1e-6))
    return [g * scale for g in gs]


def transform_grads(grads: dict, cfg: DoCoConfig) -> list[torch.Tensor]:
    """The applied gradient per trained tensor: g̃_u + w g_p (``surgery``) or g_u + w g_p; ``grads`` holds the
    per-loss gradient lists ``unlearn`` and ``preserve`` (missing = zeros). The code form clips both to norm 1
    first, as the reference's ``norm_grad`` does."""
    g_u, g_p = grads["unlearn"], grads.get("preserve")
    if g_p is None:
        return list(g_u)
    if cfg.surgery and cfg.surgery_form == "code":
        g_u, g_p = _clip(g_u), _clip(g_p)
    out = []
    for gu, gp in zip(g_u, g_p):
        gu = concept_preserving_grad(gu, gp, cfg.surgery_lambda, cfg.surgery_form) if cfg.surgery else gu
        out.append(gu + cfg.preserve_weight * gp if cfg.preserve_weight else gu)
    return out


def trainable(unet, cfg: DoCoConfig) -> list[tuple[str, torch.nn.Parameter]]:
    if cfg.params == "unet":
        return list(unet.named_parameters())
    return [(n, p) for n, p in unet.named_parameters() if n.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]


def make_aux(unet, cfg: DoCoConfig, device) -> dict:
    """D on the UNet's output space (out_channels x sample_size²) and its Adam (betas 0.5, 0.999 as the code)."""
    disc = PatchDiscriminator(unet.config.out_channels, unet.config.sample_size, cfg.d_width).to(device).train()
    return {"disc": disc, "disc_opt": torch.optim.Adam(disc.parameters(), lr=cfg.d_lr, betas=(0.5, 0.999))}


@register_method("doco", DoCoConfig, "DoCo: adversarial concept-domain correction toward an anchor + "
                 "concept-preserving gradient surgery (Wu 2025)", kind="diffusion", trainable=trainable,
                 needs_reference=lambda cfg: True, make_aux=make_aux, transform_grads=transform_grads)  # fmt: skip
def doco_step(ctx, batch: dict, cfg: DoCoConfig):
    f, disc, opt = batch["forget"], ctx.aux["disc"], ctx.aux["disc_opt"]
    if "prompt" not in f:
        raise UnlearnError("doco: the forget pairs need their prompts (to build the anchor prompts)")
    anchor = ctx.encode([swap_concept(p, ctx.concept, cfg.anchor) for p in f["prompt"]])  # (B, T, d)
    x0_anchor = ctx.predict(f, anchor, reference=True, space="x0")  # (B, C, H, W) frozen, no grad
    x0_concept = ctx.predict(f, space="x0")  # (B, C, H, W) trained, conditioned on the concept prompt
    # D's own step on detached predictions; its parameters never enter the UNet's gradient
    disc.requires_grad_(True)
    opt.zero_grad(set_to_none=True)
    loss_d = discriminator_loss(disc(x0_anchor), disc(x0_concept.detach()))
    loss_d.backward()
    opt.step()
    disc.updates += 1
    disc.requires_grad_(False)  # the adversarial forward below builds a graph to the UNet only
    if int(disc.updates) <= cfg.warmup_steps:
        loss_adv = 0.0 * x0_concept.sum()  # warm-up: D alone learns; the UNet gets a zero gradient
    else:
        loss_adv = adversarial_loss(disc(x0_concept))
    losses, logs = {"unlearn": loss_adv}, {"loss_d": loss_d.detach(), "loss_adv": loss_adv.detach()}
    if batch.get("retain") is not None:
        r = ctx.policy(batch["retain"])  # (B,) denoising loss on retain pairs: the preservation loss L_p
        losses["preserve"] = r.sum() / ctx.norm["retain_seqs"]
        logs["retain_mse"] = losses["preserve"].detach()
    return losses, logs

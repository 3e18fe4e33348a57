"""All but One: surgical concept erasing with model preservation (Hong, Lee, Woo; AAAI 2024,
https://arxiv.org/abs/2312.12807). No official code has been released that we could find (searched GitHub code
and the web for the title and authors, December 2026); this module follows the paper's description.

Classifier-free guidance splits a conditional prediction into the unconditional score and a classifier-guidance
term, ε(x_t, c) = ε(x_t, ∅) + [ε(x_t, c) − ε(x_t, ∅)] with ∇ log p(c | x_t) ∝ −[ε(x_t, c) − ε(x_t, ∅)] / σ_t.
All-but-One edits only the guidance term — it is moved onto the guidance of a user-chosen alternative concept
c_alt (the frozen original's) — while the unconditional score is held where it was:

    L_erase = ‖[ε_θ(x_t, c) − ε_θ(x_t, ∅)] − [ε_θ*(x_t, c_alt) − ε_θ*(x_t, ∅)]‖²
    L_keep  = ‖ε_θ(x_t, ∅) − ε_θ*(x_t, ∅)‖²
    L       = L_erase + λ L_keep

Unlike ESD, whose target also moves the unconditional branch along (its teacher subtracts guidance from
ε*(x_t, ∅) and every parameter is shared by both branches), the unconditional score is an explicit constraint, so
samples without the concept — and the base every guided sample starts from — stay the original's. With
``alternative=""`` the pair's prompt loses the concept word (c_alt = the rest of the prompt); a word (``square``)
replaces it. Everything runs in the model's prediction space (ε or v), like `unlearn.methods.esd`: the guidance
difference is linear, so it means the same in either.

What we chose where the paper leaves room (no code to check against): x_t is q(x_t | x0) of the forget pairs (images
the original drew for the concept's prompts); λ = 1; only the cross-attention blocks train by default, since the
guidance term is what the text enters through (``params="unet"`` trains everything).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch

from unlearn.diffusion_train import swap_concept
from unlearn.errors import UnlearnError
from unlearn.methods import register_method


@dataclass
class AllButOneConfig:
    alternative: str = ""  # c_alt: "" = the pair's prompt without the concept word; a word replaces it (paper: user)
    keep_weight: float = 1.0  # λ: weight of the unconditional-drift constraint (ours: the paper gives no number)
    params: Literal["xattn", "xattn_kv", "unet"] = "xattn"  # trained parameters: attn2 blocks (ours), K/V, all

    RANGES: ClassVar[dict[str, str]] = {"keep_weight": ">= 0"}


def all_but_one_loss(pred_c, pred_u, ref_alt, ref_u, keep_weight: float, n_forget: float):
    """(L, L_erase, L_keep) for predictions (B, C, H, W): ``pred_c`` = ε_θ(x_t, c), ``pred_u`` = ε_θ(x_t, ∅) from the
    trained model, ``ref_alt`` = ε*(x_t, c_alt), ``ref_u`` = ε*(x_t, ∅) from the frozen one (no grad).

    L_erase = Σ_b mean_{C,H,W} ((pred_c − pred_u) − (ref_alt − ref_u))² / n_forget,
    L_keep  = Σ_b mean_{C,H,W} (pred_u − ref_u)² / n_forget,  L = L_erase + λ L_keep.
    """
    ref_alt, ref_u = ref_alt.detach(), ref_u.detach()
    erase = ((pred_c - pred_u) - (ref_alt - ref_u)).pow(2).mean(dim=(1, 2, 3)).sum() / n_forget
    keep = (pred_u - ref_u).pow(2).mean(dim=(1, 2, 3)).sum() / n_forget
    return erase + keep_weight * keep, erase, keep


def trainable(unet, cfg: AllButOneConfig) -> list[tuple[str, torch.nn.Parameter]]:
    if cfg.params == "unet":
        return list(unet.named_parameters())
    if cfg.params == "xattn_kv":
        return [(n, p) for n, p in unet.named_parameters() if n.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))]
    return [(n, p) for n, p in unet.named_parameters() if ".attn2." in f".{n}"]


@register_method("all_but_one", AllButOneConfig, "All but One: move the guidance term onto an alternative concept, "
                 "unconditional score held (Hong 2024)", kind="diffusion", trainable=trainable,
                 needs_reference=lambda cfg: True)  # fmt: skip
def all_but_one_step(ctx, batch: dict, cfg: AllButOneConfig):
    f = batch["forget"]
    if "prompt" not in f:
        raise UnlearnError("all_but_one: the forget pairs need their prompts (to build the alternative prompts)")
    n = len(f["x0"])
    uncond = ctx.encode([""] * n)  # (B, T, d)
    alt = ctx.encode([swap_concept(p, ctx.concept, cfg.alternative) for p in f["prompt"]])  # (B, T, d)
    ref_alt = ctx.predict(f, alt, reference=True)  # (B, C, H, W)
    ref_u = ctx.predict(f, uncond, reference=True)
    pred_c = ctx.predict(f)  # conditioned on the pair's own prompt (the concept)
    pred_u = ctx.predict(f, uncond)
    loss, erase, keep = all_but_one_loss(pred_c, pred_u, ref_alt, ref_u, cfg.keep_weight, ctx.norm["forget_seqs"])
    return loss, {"erase_loss": erase.detach(), "keep_loss": keep.detach()}

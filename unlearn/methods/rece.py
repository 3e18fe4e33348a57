"""RECE: Reliable and Efficient Concept Erasure (Gong et al., ECCV 2024, https://arxiv.org/abs/2407.12383).

Starting from a UCE-erased UNet, each round:

1. finds, in closed form, the text embedding c' that makes the *edited* cross-attention K/V layers W_l reproduce
   what the *original* layers W⁰_l computed for the erased concept's embedding c (all T token rows):

       c' = argmin Σ_l ‖W_l c' − W⁰_l c‖² + λ_r ‖c'‖²  =  (λ_r I + Σ_l W_lᵀ W_l)⁻¹ (Σ_l W_lᵀ W⁰_l) c    (Eq. 8,
       the code's ``close_form_emb_regzero``: ridge toward zero keeps c' small, so erasing it disturbs less);

2. erases c' with the UCE ``replace`` edit on the *current* weights: targets W_cur g (guide rows, all T),
   preserve rows with their current values, anchor λ W_cur (λ = 0.1, ρ = 0.1, η = 1 in the released scripts).

Step 1's closed form, `unlearn.targets.diffusion.adversarial_embedding`, is shared with the erasure metrics, which
run it as an attack against any edited model; here the rounds use its O(d³) form `adversarial_embedding_gram`.
Registered as the closed-form diffusion edit ``rece``: ``apply(target, erase, cfg, preserve, on_round=None)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from unlearn.methods import register_edit
from unlearn.methods.uce import UCEConfig, uce_edit_
from unlearn.methods.uce import apply as uce_apply
from unlearn.targets.diffusion import adversarial_embedding, cross_attention_kv, encode_prompts


@dataclass
class RECEConfig:
    rounds: int = 1  # epochs E (objects: 1; nudity: 3); the TinyShapes table reports rounds 1..3
    reg: float = 1e-3  # λ_r, ridge on c' (objects hard for UCE, artists: 1e-3; nudity / easy objects: 0.1)
    lamb: float = 0.1  # λ of the RECE edit (README "λ1")
    preserve_scale: float = 0.1  # ρ of the RECE edit (README "λ2")
    erase_scale: float = 1.0  # η
    guide: str = ""  # guide concept, as in UCE
    preserve: list[str] | None = None  # None: the caller's preserve set; used by the UCE start and every round
    uce: UCEConfig = field(default_factory=UCEConfig)  # the UCE edit RECE starts from
    # which round the erase workflow keeps: "validation" = the reference's rule (train_object.py: lowest target
    # accuracy on validation prompts among rounds beating UCE with others' accuracy within 0.1; unlearn.erase
    # .best_round), "last" = the last round; the edit itself ignores it (selection needs the classifier)
    select: Literal["validation", "last"] = "validation"

    RANGES: ClassVar[dict[str, str]] = {
        "rounds": ">= 0", "reg": "> 0", "lamb": "> 0", "preserve_scale": ">= 0", "erase_scale": ">= 0",
    }  # fmt: skip


def adversarial_embedding_gram(G0: torch.Tensor, T: torch.Tensor, C: torch.Tensor, reg: float) -> torch.Tensor:
    """`adversarial_embedding` when every layer is W_l = W⁰_l T (all UCE/RECE edits share one d x d map):
    Σ WᵀW = Tᵀ G⁰ T and Σ WᵀW⁰ = Tᵀ G⁰ with G⁰ = Σ W⁰ᵀW⁰ formed once, so a round costs O(d³), not O(Σ d_out d²)."""
    d = C.shape[-1]
    TG = T.T @ G0  # (d, d) fp64
    M = torch.linalg.solve(reg * torch.eye(d, dtype=torch.float64, device=C.device) + TG @ T, TG)
    return (C.double() @ M.T).to(C.dtype)


@register_edit("rece", RECEConfig, "Reliable and Efficient Concept Erasure: UCE + closed-form adversarial rounds "
               "(Gong 2024)")  # fmt: skip
def apply(target, erase: list[str], cfg: RECEConfig, preserve: list[str], on_round=None) -> dict:
    """UCE, then ``cfg.rounds`` RECE rounds, in place, keeping ``preserve`` (``cfg.preserve`` replaces it when set).
    ``on_round(k, info)`` is called after each round (round 0 = UCE) so a workflow can evaluate every round; the
    edit time excludes it."""
    preserve = cfg.preserve if cfg.preserve is not None else preserve
    layers = [m for _, m in cross_attention_kv(target.unet)]
    t0 = time.perf_counter()
    W_all = torch.cat([m.weight.detach() for m in layers])  # (Σ d_out, d)
    G0 = (W_all.T @ W_all).double()  # Σ W⁰ᵀW⁰ (d, d), formed once
    del W_all
    edit_s = time.perf_counter() - t0
    info = {"uce": uce_apply(target, erase, cfg.uce, preserve)}
    T = info["uce"].pop("transform")  # W_now = W⁰ T: tracked instead of re-reading 32 matrices each round
    edit_s += info["uce"]["edit_seconds"]
    if on_round is not None:
        on_round(0, info)
    C = encode_prompts(target, erase)  # (k, T, d): all T rows of each erased prompt
    guide = encode_prompts(target, [cfg.guide])[0].repeat(len(erase), 1)  # (k*T, d) aligned with the c' rows
    C_p = encode_prompts(target, list(dict.fromkeys(["", *preserve]))).flatten(0, 1)  # (|P|*T, d) preserve rows
    info["rounds"] = []
    for r in range(1, cfg.rounds + 1):
        t0 = time.perf_counter()
        adv = torch.cat([adversarial_embedding_gram(G0, T, c, cfg.reg) for c in C])  # (k*T, d)
        T = T @ uce_edit_(layers, adv, guide, C_p, cfg.lamb, cfg.erase_scale, cfg.preserve_scale)
        dt = time.perf_counter() - t0
        edit_s += dt
        info["rounds"].append({"round": r, "edit_seconds": dt, "adv_norm": adv.norm(dim=-1).mean().item()})
        if on_round is not None:
            on_round(r, info)
    info["edit_seconds"] = edit_s
    return info


# adversarial_embedding is re-exported: the general (any W, W⁰) form next to the fast one used by the rounds
__all__ = ["RECEConfig", "apply", "adversarial_embedding", "adversarial_embedding_gram"]

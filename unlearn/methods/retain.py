"""Retain-term variants shared by GradDiff, NPO and SimNPO: none, NLL, or KL to the frozen reference.

``retain=nll``: token-mean NLL of the retain answers (TOFU's GradDiff / NPO+RT term; docs/conventions.md#retain-terms).
``retain=kl``: forward KL(p_ref || p_theta) at retain *answer* positions, token-mean (our default, masked).
``retain=kl_unmasked``: the reference implementations' term (TOFU, NPO repo, open-unlearning): the same KL
averaged over all B*T positions including prompt and padding (``kl_div(..., reduction="batchmean")`` after
flattening) — kept as a named option to reproduce their numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

RETAIN_KINDS = ("none", "nll", "kl", "kl_unmasked")


def nll_term(retain_logp: torch.Tensor, total_tokens: float) -> torch.Tensor:
    """-sum(log p(answer tokens)) / total_tokens. (B,) -> scalar"""
    return -retain_logp.sum() / total_tokens


def kl_term(ref_logits: torch.Tensor, logits: torch.Tensor, total_positions: float) -> torch.Tensor:
    """sum_positions KL(p_ref || p_theta) / total_positions. (N, V), (N, V) -> scalar

    KL(p||q) = sum_v p_v (log p_v - log q_v), computed in float32. Zero when the two models agree.
    """
    lp = F.log_softmax(logits.float(), dim=-1)
    lr = F.log_softmax(ref_logits.float(), dim=-1)
    return F.kl_div(lp, lr, log_target=True, reduction="sum") / total_positions


def retain_term(kind: str, ctx, batch: dict, out: dict | None) -> tuple[torch.Tensor, dict]:
    """The retain term of ``kind`` on the retain ``batch``; ``out`` is the policy's output on it (None for none)."""
    if kind == "none":
        return torch.zeros(()), {}
    logs = {"retain_logp": out["seq_logp"].detach().sum() / ctx.norm["retain_tokens"]}
    if kind == "nll":
        return nll_term(out["seq_logp"], ctx.norm["retain_tokens"]), logs
    full = kind == "kl_unmasked"
    with torch.no_grad():
        ref = ctx.reference(batch, full_logits=full)
    if full:  # every position of the padded (B, T) batch: the reference code's batchmean
        total = ctx.norm["retain_seqs"] * batch["input_ids"].shape[1]
        T = batch["input_ids"].shape[1]
        loss = kl_term(ref["full_logits"].flatten(0, 1), out["full_logits"][:, :T].flatten(0, 1), total)
    else:
        loss = kl_term(ref["logits"], out["logits"], ctx.norm["retain_tokens"])
    return loss, logs


def policy_outputs(ctx, batch: dict, kind: str) -> tuple[dict, dict | None]:
    """Forget and retain outputs of the trainable model, in ONE forward pass when a retain term is used."""
    if kind == "none":
        return ctx.policy(batch["forget"]), None
    return ctx.policy(batch["forget"], batch["retain"], full_logits=kind == "kl_unmasked")

"""UNDIAL: self-distillation with adjusted logits (Dong, Lin, Belinkov, Feng 2025, NAACL;
https://arxiv.org/abs/2402.10052).

At every forget *answer* position t the frozen pre-unlearning model's logits ``z_t^ref`` (V,) are adjusted by
lowering the true next token's logit by ``beta``, and the student is distilled towards the resulting distribution::

    q_t = softmax(z_t^ref - beta * onehot(y_t))                       (adjusted-logit target, no gradient)
    L_UNDIAL = (1 / N_forget) * sum_t CE(q_t, p_theta(. | x, y_<t))
             = -(1 / N_forget) * sum_t sum_v q_t[v] log p_theta(v | x, y_<t)

``N_forget`` is the global number of forget answer tokens of the optimizer step (``ctx.norm["forget_tokens"]``), so
micro-batches and processes sum to the one-process loss. Only the true token's probability mass is moved (to the
other tokens, in proportion to the reference's own probabilities); the target never changes during training, so
the loss is bounded below by the entropy of ``q_t`` and cannot diverge the way gradient ascent does. At
``beta = 0`` and theta = ref the loss is the reference's mean entropy and its gradient is zero.

Deliberate disagreement with open-unlearning (``src/trainer/unlearn/undial.py``): there the loss is the mean over
*all* B*(T-1) positions (prompt and padding included, each distilled towards its own adjusted teacher), and the
one-hot mask is built by indexing the vocabulary with the raw labels, so a ``-100`` label lowers vocabulary entry
``V - 100`` (negative indexing) at every prompt/padding position. Here only answer positions enter (the logits
``ctx.policy`` / ``ctx.reference`` return), with their true next tokens; no unmasked variant is offered.
Defaults follow open-unlearning (community/methods/UNDIAL): beta 10, retain weight 0 (the paper uses no retain
set); ``retain`` picks one of the shared retain terms (`unlearn.methods.retain`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from unlearn.methods import register_method
from unlearn.methods.retain import policy_outputs, retain_term
from unlearn.targets.llm import IGNORE


@dataclass
class UNDIALConfig:
    beta: float = 10.0  # logit reduction of the true token (open-unlearning default; the paper tries 3, 10, 30)
    forget_weight: float = 1.0  # weight on the distillation term (open-unlearning gamma)
    retain_weight: float = 0.0  # weight on the retain term (open-unlearning alpha = 0: the paper has no retain set)
    retain: Literal["none", "nll", "kl", "kl_unmasked"] = "none"  # retain-term variant (unlearn.methods.retain)

    RANGES: ClassVar[dict[str, str]] = {"beta": "> 0", "forget_weight": ">= 0", "retain_weight": ">= 0"}


def adjusted_target(ref_logits: torch.Tensor, targets: torch.Tensor, beta: float) -> torch.Tensor:
    """``q = softmax(z_ref - beta * onehot(y))`` in float32, without gradient. (N, V), (N,) -> (N, V)"""
    z = ref_logits.detach().float().clone()
    z[torch.arange(z.shape[0], device=z.device), targets] -= beta
    return torch.softmax(z, dim=-1)


def undial_loss(
    student_logits: torch.Tensor,
    ref_logits: torch.Tensor,
    targets: torch.Tensor,
    beta: float,
    n_tokens: float | None = None,
) -> torch.Tensor:
    """UNDIAL loss (https://arxiv.org/abs/2402.10052): ``sum_t CE(softmax(z_t^ref - beta e_{y_t}), p_theta,t) / n``.

    ``-(1/n) sum_t sum_v q_t[v] log softmax(student_logits_t)[v]`` with ``q_t = softmax(ref_logits_t - beta *
    onehot(targets_t))``, computed in float32; the target carries no gradient.

    Args:
        student_logits: (N, V) the trainable model's logits at forget answer positions.
        ref_logits: (N, V) the frozen reference's logits at the same positions.
        targets: (N,) the true next token at each position (never -100: answer positions only).
        beta: how much the true token's logit is lowered (>= 0; 0 is plain self-distillation).
        n_tokens: normaliser (answer tokens in the global batch); defaults to N (the token mean).
    """
    n = student_logits.shape[0] if n_tokens is None else n_tokens
    q = adjusted_target(ref_logits, targets, beta)
    logp = F.log_softmax(student_logits.float(), dim=-1)
    return -(q * logp).sum() / n


def answer_targets(batch: dict) -> torch.Tensor:
    """The next tokens the answer-position logits predict: ``labels[:, 1:][labels[:, 1:] != -100]`` (N,)."""
    labels = batch["labels"][:, 1:]
    return labels[labels != IGNORE]


@register_method(
    "undial",
    UNDIALConfig,
    "UNDIAL: self-distillation towards the reference with the true token's logit lowered by beta",
    needs_reference=lambda cfg: True,
)
def step(ctx, batch: dict, cfg: UNDIALConfig):
    out, out_r = policy_outputs(ctx, batch, cfg.retain)
    ref = ctx.reference(batch["forget"])  # no grad, frozen pre-unlearning model
    targets = answer_targets(batch["forget"]).to(out["logits"].device)
    if targets.shape[0] != out["logits"].shape[0] or ref["logits"].shape != out["logits"].shape:
        raise ValueError(
            f"undial: {targets.shape[0]} answer targets, policy logits {tuple(out['logits'].shape)}, "
            f"reference logits {tuple(ref['logits'].shape)}"
        )
    ref_logits = ref["logits"].to(out["logits"].device)
    loss = cfg.forget_weight * undial_loss(out["logits"], ref_logits, targets, cfg.beta, ctx.norm["forget_tokens"])
    with torch.no_grad():
        p_true = torch.softmax(out["logits"].float(), -1).gather(-1, targets[:, None]).sum()
    logs = {
        "forget_logp": out["seq_logp"].detach().sum() / ctx.norm["forget_tokens"],
        "forget_p_true": p_true / ctx.norm["forget_tokens"],  # mean probability of the true answer token
    }
    r, rlogs = retain_term(cfg.retain, ctx, batch["retain"], out_r)
    logs.update(rlogs, retain_loss=r.detach())
    return loss + cfg.retain_weight * r.to(loss.device), logs

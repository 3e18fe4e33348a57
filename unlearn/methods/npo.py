"""NPO: Negative Preference Optimization (Zhang, Lin, Bai, Mei 2024, https://arxiv.org/abs/2404.05868).

Per forget example the log-ratio ``r = log pi_theta(y|x) - log pi_ref(y|x)`` with *sequence-sum* log-probs over
answer tokens, and (paper Eq. 3 = code on TOFU; docs/conventions.md#npo)::

    L_NPO = -(2/beta) * mean_b log sigmoid(-beta * r_b)

Gradient: ``E[2 sigma(beta r) * grad log pi_theta]`` — GA weighted by ``w = 2 sigma(beta r)``, which is 1 at
theta = ref and falls to 0 as the forget likelihood drops. At theta = ref, ``L = (2/beta) log 2``.
The reference is the model *before* unlearning (never the oracle). Its forget log-probs do not change during
training, so the loop computes them once and caches them (one forward pass per step saved).
Default retain term: NLL with weight 1 (open-unlearning's NPO default, "NPO+RT"); ``retain=none`` is plain NPO.
The MUSE code's raw-logit variant (docs/conventions.md#npo) is deliberately not implemented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from unlearn.methods import register_method
from unlearn.methods.retain import policy_outputs, retain_term


@dataclass
class NPOConfig:
    beta: float = 0.1  # inverse temperature (paper and open-unlearning TOFU default)
    forget_weight: float = 1.0  # weight on the NPO term (open-unlearning gamma)
    retain_weight: float = 1.0  # weight on the retain term (open-unlearning alpha)
    retain: Literal["none", "nll", "kl", "kl_unmasked"] = "nll"  # retain-term variant

    RANGES: ClassVar[dict[str, str]] = {"beta": "> 0", "forget_weight": ">= 0", "retain_weight": ">= 0"}


def npo_loss(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float, n_seqs: float | None = None) -> torch.Tensor:
    """``-(2/beta) * sum_b logsigmoid(-beta (logp_b - ref_logp_b)) / n_seqs``.

    Args:
        logp: (B,) sequence log-likelihoods under the model being unlearned.
        ref_logp: (B,) the same under the frozen reference.
        beta: inverse temperature.
        n_seqs: normaliser (sequences in the global batch); defaults to B (the mean).
    """
    n = logp.shape[0] if n_seqs is None else n_seqs
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp.to(logp.dtype))).sum() / n


def npo_weight(logp: torch.Tensor, ref_logp: torch.Tensor, beta: float) -> torch.Tensor:
    """The per-example gradient weight ``2 sigma(beta r)`` relative to GA on the sequence log-prob. (B,)"""
    return 2 * torch.sigmoid(beta * (logp - ref_logp))


@register_method(
    "npo",
    NPOConfig,
    "Negative Preference Optimization + retain NLL (NPO+RT)",
    reference_logps=lambda cfg: True,  # the forget log-ratio reads the cached reference log-probs
    needs_reference=lambda cfg: cfg.retain.startswith("kl"),  # a frozen copy only for the KL retain terms
)
def step(ctx, batch: dict, cfg: NPOConfig):
    out, out_r = policy_outputs(ctx, batch, cfg.retain)
    ref = ctx.ref_forget_logp(batch["forget_idx"]).to(out["seq_logp"].device)  # (B,) cached, no grad
    loss = cfg.forget_weight * npo_loss(out["seq_logp"], ref, cfg.beta, ctx.norm["forget_seqs"])
    logs = {
        "forget_logp": out["seq_logp"].detach().sum() / ctx.norm["forget_tokens"],
        "npo_weight": npo_weight(out["seq_logp"].detach(), ref, cfg.beta).sum() / ctx.norm["forget_seqs"],
    }
    r, rlogs = retain_term(cfg.retain, ctx, batch["retain"], out_r)
    logs.update(rlogs, retain_loss=r.detach())
    return loss + cfg.retain_weight * r.to(loss.device), logs

"""SimNPO (Fan et al. 2024, "Simplicity Prevails", https://arxiv.org/abs/2410.07163).

Reference-free, length-normalised NPO (docs/conventions.md#simnpo). Code form (Unlearn-Simple TOFU, open-unlearning)::

    a_b = -log pi_theta(y_b|x_b) / |y_b| - margin
    L_f = -(2/beta) * mean_b log sigmoid(beta * a_b)
    L   = forget_weight * L_f + retain_weight * NLL_mean(retain)

Margin convention: ``margin`` is the *code's* g (open-unlearning ``delta``, Unlearn-Simple TOFU ``gamma``);
the paper's gamma equals ``beta * margin``. With the TOFU default margin 0 they coincide.
Defaults per split follow Unlearn-Simple's TOFU configs (forget05: beta 2.5, forget_weight 0.1375;
forget10: beta 4.5, forget_weight 0.125; retain weight 1). forget01 has no published value (UNVERIFIED): we use
the forget10 setting, as open-unlearning's default does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from unlearn.methods import register_method
from unlearn.methods.retain import policy_outputs, retain_term

SPLIT_DEFAULTS = {
    "forget05": {"beta": 2.5, "forget_weight": 0.1375},
    "forget10": {"beta": 4.5, "forget_weight": 0.125},
    "forget01": {"beta": 4.5, "forget_weight": 0.125},  # UNVERIFIED: not in the reference repo
}


@dataclass
class SimNPOConfig:
    beta: float = 4.5  # inverse temperature (TOFU forget10; see SPLIT_DEFAULTS)
    forget_weight: float = 0.125  # weight on the SimNPO term (TOFU forget10 npo_coeff)
    retain_weight: float = 1.0  # weight on the retain term (grad_diff_coeff)
    margin: float = 0.0  # code-form margin g = paper gamma / beta
    retain: Literal["none", "nll", "kl", "kl_unmasked"] = "nll"  # retain-term variant

    RANGES: ClassVar[dict[str, str]] = {
        "beta": "> 0", "forget_weight": ">= 0", "retain_weight": ">= 0", "margin": "any",
    }  # fmt: skip


def simnpo_loss(
    logp: torch.Tensor, n_tokens: torch.Tensor, beta: float, margin: float = 0.0, n_seqs: float | None = None
) -> torch.Tensor:
    """``-(2/beta) * sum_b logsigmoid(beta * (-logp_b/|y_b| - margin)) / n_seqs``. (B,), (B,) -> scalar"""
    n = logp.shape[0] if n_seqs is None else n_seqs
    a = -logp / n_tokens.to(logp.dtype) - margin
    return -(2.0 / beta) * F.logsigmoid(beta * a).sum() / n


@register_method(
    "simnpo",
    SimNPOConfig,
    "SimNPO: reference-free length-normalised NPO + retain NLL",
    needs_reference=lambda cfg: cfg.retain.startswith("kl"),
)
def step(ctx, batch: dict, cfg: SimNPOConfig):
    out, out_r = policy_outputs(ctx, batch, cfg.retain)
    loss = cfg.forget_weight * simnpo_loss(
        out["seq_logp"], out["n_tokens"], cfg.beta, cfg.margin, ctx.norm["forget_seqs"]
    )
    logs = {"forget_logp": out["seq_logp"].detach().sum() / ctx.norm["forget_tokens"]}
    r, rlogs = retain_term(cfg.retain, ctx, batch["retain"], out_r)
    logs.update(rlogs, retain_loss=r.detach())
    return loss + cfg.retain_weight * r.to(loss.device), logs

"""Gradient Difference (GradDiff): GA on the forget set plus a retain term.

TOFU ``grad_diff`` / open-unlearning ``GradDiff`` (docs/conventions.md#graddiff):
``L = forget_weight * (-NLL_mean(forget)) + retain_weight * R`` with R the retain NLL (default), or KL to the
frozen pre-unlearning model (``retain=kl``; TOFU's "KL" method is ``retain=kl_unmasked``). Two separate forward
passes, each with its own token mean. open-unlearning names the weights ``gamma`` (forget) and ``alpha``
(retain); we use explicit names.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from unlearn.methods import register_method
from unlearn.methods.ga import ga_loss
from unlearn.methods.retain import policy_outputs, retain_term


@dataclass
class GradDiffConfig:
    forget_weight: float = 1.0  # weight on the ascent term (open-unlearning gamma = 1)
    retain_weight: float = 1.0  # weight on the retain term (open-unlearning alpha = 1)
    retain: Literal["none", "nll", "kl", "kl_unmasked"] = "nll"  # retain-term variant

    RANGES: ClassVar[dict[str, str]] = {"forget_weight": ">= 0", "retain_weight": ">= 0"}


@register_method(
    "graddiff",
    GradDiffConfig,
    "GA on forget + retain NLL/KL (TOFU grad_diff)",
    needs_reference=lambda cfg: cfg.retain.startswith("kl"),
)
def step(ctx, batch: dict, cfg: GradDiffConfig):
    out, out_r = policy_outputs(ctx, batch, cfg.retain)
    loss = cfg.forget_weight * ga_loss(out["seq_logp"], ctx.norm["forget_tokens"])
    logs = {"forget_logp": out["seq_logp"].detach().sum() / ctx.norm["forget_tokens"]}
    r, rlogs = retain_term(cfg.retain, ctx, batch["retain"], out_r)
    logs.update(rlogs, retain_loss=r.detach())
    return loss + cfg.retain_weight * r.to(loss.device), logs

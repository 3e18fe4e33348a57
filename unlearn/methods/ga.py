"""Gradient Ascent (GA): ascend the language-modelling loss of the forget answers.

TOFU (Maini et al. 2024, https://arxiv.org/abs/2401.06121) and open-unlearning ``GradAscent``:
``L = -NLL_mean(forget batch)`` where ``NLL_mean`` is the token mean over every answer token of the batch
(docs/conventions.md#ga). Retain data is loaded by the loop but unused. With ``retain != none`` this is GradDiff;
use ``--method graddiff`` for that.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from unlearn.errors import unknown_name
from unlearn.methods import register_method


@dataclass
class GAConfig:
    forget_weight: float = 1.0  # scale of the ascent term (TOFU: 1)
    # all: every parameter; head: only the untied LM head and the final norm -- the "last-layer-only" unlearning
    # that Kim et al. 2025 (https://arxiv.org/abs/2503.06991) show fools logit metrics (docs/evaluators/)
    params: str = "all"

    RANGES: ClassVar[dict[str, str]] = {"forget_weight": ">= 0"}


def trainable(model, cfg: GAConfig):
    """The parameters ``cfg.params`` selects (None entries: the loop's default, every parameter)."""
    if cfg.params == "all":
        return [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if cfg.params == "head":
        from unlearn.targets.arch import arch

        return arch(model).head_params()
    raise unknown_name("ga params", cfg.params, ("all", "head"))


def ga_loss(forget_logp: torch.Tensor, total_tokens: float | torch.Tensor) -> torch.Tensor:
    """Negative token-mean NLL of the forget answers: ``sum_b log p(y_b|x_b) / sum_b |y_b|``.

    Minimising it ascends the forget NLL. ``forget_logp`` (B,) holds per-sequence *summed* answer log-probs;
    ``total_tokens`` is the number of answer tokens of the whole (global) batch, so that micro-batches add up.
    """
    return forget_logp.sum() / total_tokens


@register_method("ga", GAConfig, "Gradient ascent on the forget set (token-mean NLL, TOFU)", trainable=trainable)
def step(ctx, batch: dict, cfg: GAConfig):
    out = ctx.policy(batch["forget"])
    loss = cfg.forget_weight * ga_loss(out["seq_logp"], ctx.norm["forget_tokens"])
    return loss, {"forget_logp": out["seq_logp"].detach().sum() / ctx.norm["forget_tokens"]}

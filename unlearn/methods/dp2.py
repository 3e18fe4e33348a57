"""DP2Unlearning: serve a deletion request by fine-tuning a differentially private base on the retained data only.

Al Mahmud, Jebreel, Domingo-Ferrer, Sanchez 2025, "DP2Unlearning: An Efficient and Guaranteed Unlearning Framework
for LLMs", https://arxiv.org/abs/2504.13774 (code: https://github.com/tamimalmahmud/DP2Unlearning). The base
``A(D)`` is trained once with (epsilon, delta)-DP (`unlearn.targets.dp_build`); unlearning is ``F(A(D))`` with F =
non-private fine-tuning on the retain split. F reads no forget example, so by post-processing F(A(D)) is as close to
F(A(D \\ D_f)) as A(D) is to A(D \\ D_f): (eps, delta) when the forget set is one privacy unit, group privacy
(k eps, k e^((k-1) eps) delta) for k units. With ``privacy_unit=entity`` a TOFU-style deletion of k entities costs
k units; with ``record`` (the reference code's unit) it costs every record of those entities (~32 each here).

The loss is the token-mean NLL of the retain answers (the fine-tuning objective of the oracle's training):

    L(theta) = -(1 / N_tok) sum_{(x, y) in B_r} sum_t log p_theta(y_t | x, y_<t)

The budget is the retain set; by default the run takes ``steps_fraction`` (0.5, the paper's "about half of
retraining": 5 of 10 epochs for Phi-1.5, 3 of 6 for Llama-2) of the retain-only oracle's optimizer steps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch

from unlearn.errors import UnlearnError
from unlearn.methods import register_method


@dataclass
class DP2Config:
    epsilon: float = 1.0  # the base's target epsilon (presets 0.5, 1, 5, 10, inf); inf = non-private base
    privacy_unit: Literal["record", "entity"] = "entity"  # record | entity: the unit the base's guarantee protects
    delta: float = 1e-5  # the base's target delta (must be < 1/N for N units)
    steps_fraction: float = 0.5  # of the oracle's optimizer steps, when --set epochs is not given

    RANGES: ClassVar[dict[str, str]] = {"epsilon": "inf ok; > 0", "delta": "> 0; < 1", "steps_fraction": "> 0"}


def retain_nll(retain_logp: torch.Tensor, total_tokens: float) -> torch.Tensor:
    """-sum(log p(retain answer tokens)) / total_tokens over the whole optimizer step. (B,) -> scalar"""
    return -retain_logp.sum() / total_tokens


def run_label(cfg: DP2Config) -> str:
    """``dp2+entity-eps1``, ``dp2+record-eps0.5``, ``dp2+epsinf``: runs of different bases never share a folder."""
    return f"dp2+{_dcfg(cfg).label()}"


def _dcfg(cfg: DP2Config, bcfg=None):
    from unlearn.targets.build import get_preset
    from unlearn.targets.dp_build import dp_recipe

    d = dp_recipe(bcfg or get_preset("default"), cfg.epsilon, cfg.privacy_unit, cfg.delta)
    d.check()
    return d


def start_from(cfg: DP2Config, tcfg, ctx: dict) -> tuple[str, dict]:
    """Build (or reuse) the DP base and return (its directory, {"dp_card", "retrain_steps"}: what the run's
    ``dp_*`` keys are computed from, `unlearn.metrics.privacy.dp_metrics`); sets ``tcfg.epochs`` to
    ``steps_fraction`` of the oracle's steps unless the user set it.

    ``ctx``: ``build`` (the TinyFacts BuildConfig), ``split``, ``target`` (target dir, for the tokenizer), ``oracle``
    (the oracle dir, whose card gives its step count), ``user_keys`` (keys set by --set / --config), ``log``. The
    returned ``retain`` records (the oracle's training set) replace the loop's retain set.
    """
    from unlearn.store import read_json
    from unlearn.targets.dp_build import build_dp_base

    if ctx.get("build") is None:
        raise UnlearnError("dp2 trains its own DP base and needs the embedded TinyFacts target (--model tiny)")
    from unlearn.data.tinyfacts import generate, training_set

    bcfg = ctx["build"]
    dcfg = _dcfg(cfg, bcfg)
    oracle_steps = read_json(Path(ctx["oracle"]) / "card.json")["steps"]
    # the retained data D \ D_f: what the retain-only oracle trains on (retain QA in the trained phrasings, retain
    # and bio-only biographies, world facts, the skill), not the retain QA split alone, which alone would overwrite
    # the skill and world facts (measured: world facts 1.00 -> 0.04, arithmetic 0.90 -> 0.57 from the epsilon=inf base)
    retain = training_set(generate(bcfg.data), ctx["split"], bcfg.arithmetic_repeat, bcfg.world_repeat)
    retain = [{k: v for k, v in r.items() if k != "group"} for r in retain]
    if "epochs" not in ctx["user_keys"]:
        steps = max(1, round(cfg.steps_fraction * oracle_steps))
        spe = math.ceil(len(retain) / tcfg.batch_size)  # the loop's steps per epoch
        tcfg.epochs = steps / spe
        if math.ceil(tcfg.epochs * spe) > steps:  # float rounding must not add a step
            tcfg.epochs = math.nextafter(tcfg.epochs, 0.0)
    d = build_dp_base(ctx["build"], dcfg, ctx["target"], progress=ctx.get("progress", True), log=ctx["log"])
    return str(d), {"dp_card": read_json(d / "card.json"), "retrain_steps": oracle_steps, "retain": retain}


@register_method(
    "dp2",
    DP2Config,
    "DP2Unlearning: fine-tune an (epsilon, delta)-DP base on the retain split only",
    budget="retain",
    run_label=run_label,
    label_keys=("epsilon", "privacy_unit"),
    start_from=start_from,
)
def step(ctx, batch, cfg: DP2Config):
    out = ctx.policy(batch["retain"])  # the forget batch is never read
    loss = retain_nll(out["seq_logp"], ctx.norm["retain_tokens"])
    return loss, {"retain_logp": out["seq_logp"].detach().sum() / ctx.norm["retain_tokens"]}

"""Refusal methods: train the model to answer forget questions with "I don't know" (TOFU, Maini et al. 2024,
https://arxiv.org/abs/2401.06121, github.com/locuslab/tofu; open-unlearning's IdkNLL / IdkDPO).

Each forget record ``(x, y_f)`` gets one refusal ``y_idk`` drawn uniformly from the IdK set (TOFU's
``data/idontknow.jsonl``, shipped as ``unlearn/assets/idontknow.jsonl``), seeded by the run seed (`forget_targets`);
the loop tokenizes ``(x, y_idk)`` and hands it to the step as ``batch["forget_alt"]``, row for row with the forget
batch. (TOFU redraws the refusal every time an example is loaded; here it is fixed per record and run.)

**IdkNLL** (TOFU's ``idk`` loss)::

    L = gamma * NLL_mean(y_idk | x) + alpha * R(retain)

gradient *descent* on the refusals; token-mean NLL over the global batch's refusal tokens (``ctx.norm``).
TOFU averages the refusal and retain tokens together (one ``outputs.loss`` over the concatenated batch); we use the
sum of two token means (as this package's GradDiff does), weighting the two sets equally whatever their lengths.

**IdkDPO** (open-unlearning's ``DPO`` trainer, ``configs/trainer/DPO.yaml`` +
``configs/experiment/unlearn/tofu/idk.yaml``), with sequence-sum log-probs and the frozen pre-unlearning model as
reference::

    h_b = beta * [(log pi_theta - log pi_ref)(y_idk | x) - (log pi_theta - log pi_ref)(y_f | x)]
    L   = -(2/beta) * mean_b log sigmoid(h_b) + alpha * NLL_mean(retain)

beta = 0.1, alpha = gamma = 1. At theta = ref every ``h_b = 0`` and the forget term is exactly ``(2/beta) log 2``.
TOFU's own ``dpo`` branch uses ``-mean log sigmoid(h)`` (no 2/beta, no retain term) and, as written, passes an
undefined ``labels`` to the forget log-probs (it crashes); the NPO repo fixed it and added the 2/beta factor.
We implement the open-unlearning form (docs/methods/idk.md).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F

from unlearn.errors import UnlearnError
from unlearn.methods import register_method
from unlearn.methods.retain import retain_term

RetainKind = Literal["none", "nll", "kl", "kl_unmasked"]


def package_idk_path() -> Path:
    """The shipped IdK set: TOFU's 100 refusals (MIT licence), one ``{"answer": ...}`` JSON object per line."""
    return Path(__file__).resolve().parent.parent / "assets" / "idontknow.jsonl"


def load_idk(path: str | Path | None = None) -> list[str]:
    """The refusal answers in ``path`` (default: the shipped set).

    Two formats: JSON Lines, one ``{"answer": "..."}`` object (or a JSON string) per line, when the first non-blank
    line starts with ``{`` or ``"``; otherwise TOFU's original plain text, one answer per line. Blank lines are
    skipped. A missing, empty or malformed file raises a one-line UnlearnError.
    """
    p = Path(path) if path else package_idk_path()
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UnlearnError(f"idk_file {str(p)!r}: cannot read it ({type(e).__name__})") from None
    lines = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    if not lines:
        raise UnlearnError(f"idk_file {str(p)!r}: no answers (the file is empty)")
    if lines[0][1][0] not in '{"':
        return [ln for _, ln in lines]  # TOFU's plain-text format
    out = []
    for i, ln in lines:
        try:
            obj = json.loads(ln)
        except json.JSONDecodeError:
            raise UnlearnError(f'idk_file {str(p)!r}: line {i} is not JSON (expected {{"answer": "..."}})') from None
        ans = obj.get("answer") if isinstance(obj, dict) else obj
        if not isinstance(ans, str) or not ans.strip():
            raise UnlearnError(f'idk_file {str(p)!r}: line {i} has no non-empty string "answer"')
        out.append(ans.strip())
    return out


def draw_idk(n: int, answers: list[str], seed: int) -> list[str]:
    """``n`` answers drawn uniformly with replacement from ``answers``, deterministic in ``seed``."""
    rng = random.Random(seed)
    return [answers[rng.randrange(len(answers))] for _ in range(n)]


def forget_targets(forget_records: list[dict], cfg, seed: int) -> list[str]:
    """One refusal per forget record, from ``cfg.idk_file`` (or the shipped set), seeded by the run seed."""
    return draw_idk(len(forget_records), load_idk(cfg.idk_file or None), seed)


# ----------------------------------------------------------------------------------------------- configs
@dataclass
class IdkNLLConfig:
    forget_weight: float = 1.0  # weight on the refusal NLL (open-unlearning gamma; TOFU: 1)
    retain_weight: float = 1.0  # weight on the retain term (open-unlearning alpha; TOFU: 1)
    retain: RetainKind = "nll"  # retain-term variant (TOFU: NLL)
    idk_file: str = ""  # refusal answers (JSONL {"answer": ...} or plain lines); "" = TOFU's 100 shipped ones

    RANGES: ClassVar[dict[str, str]] = {"forget_weight": ">= 0", "retain_weight": ">= 0"}


@dataclass
class IdkDPOConfig:
    beta: float = 0.1  # inverse temperature (open-unlearning DPO.yaml and TOFU: 0.1)
    forget_weight: float = 1.0  # weight on the DPO term (open-unlearning gamma)
    retain_weight: float = 1.0  # weight on the retain term (open-unlearning alpha; TOFU's dpo: none, i.e. 0)
    retain: RetainKind = "nll"  # retain-term variant (open-unlearning: NLL)
    idk_file: str = ""  # refusal answers (JSONL {"answer": ...} or plain lines); "" = TOFU's 100 shipped ones

    RANGES: ClassVar[dict[str, str]] = {"beta": "> 0", "forget_weight": ">= 0", "retain_weight": ">= 0"}


# ----------------------------------------------------------------------------------------------- pure losses
def idk_nll_loss(idk_logp: torch.Tensor, n_tokens: float) -> torch.Tensor:
    """``-sum_b log pi_theta(y_idk_b | x_b) / n_tokens``: the token-mean NLL of the refusals (TOFU ``idk``).

    Args:
        idk_logp: (B,) sequence-sum log-probs of the refusal answers.
        n_tokens: the normaliser, refusal answer tokens in the global batch.
    """
    return -idk_logp.sum() / n_tokens


def idk_dpo_loss(
    logp_idk: torch.Tensor,
    ref_idk: torch.Tensor,
    logp_f: torch.Tensor,
    ref_f: torch.Tensor,
    beta: float,
    n_seqs: float | None = None,
) -> torch.Tensor:
    """``-(2/beta) * sum_b log sigmoid(beta [(logp_idk - ref_idk) - (logp_f - ref_f)]_b) / n_seqs``.

    DPO (Rafailov et al. 2023, https://arxiv.org/abs/2305.18290) with the refusal as the preferred answer and the
    forget answer as the rejected one, in open-unlearning's scaling (the 2/beta factor; TOFU's original has none).
    At theta = ref it is exactly ``(2/beta) log 2``.

    Args:
        logp_idk, ref_idk: (B,) sequence-sum log-probs of y_idk under the model and the frozen reference.
        logp_f, ref_f: (B,) the same for the forget answers y_f.
        beta: inverse temperature.
        n_seqs: normaliser (sequences in the global batch); defaults to B (the mean).
    """
    n = logp_idk.shape[0] if n_seqs is None else n_seqs
    h = (logp_idk - ref_idk.to(logp_idk.dtype)) - (logp_f - ref_f.to(logp_f.dtype))
    return -(2.0 / beta) * F.logsigmoid(beta * h).sum() / n


# ----------------------------------------------------------------------------------------------- steps
def _retain(ctx, batch, cfg, out_r) -> tuple[torch.Tensor, dict]:
    r, rlogs = retain_term(cfg.retain, ctx, batch["retain"], out_r)
    return r, {**rlogs, "retain_loss": r.detach()}


@register_method(
    "idknll",
    IdkNLLConfig,
    "TOFU's IdK: gradient descent on 'I don't know' answers to forget questions + retain NLL",
    forget_targets=forget_targets,
    needs_reference=lambda cfg: cfg.retain in ("kl", "kl_unmasked"),
)
def idknll_step(ctx, batch: dict, cfg: IdkNLLConfig):
    if cfg.retain == "none":
        out_a, out_r = ctx.policy(batch["forget_alt"]), None
    else:
        out_a, out_r = ctx.policy(batch["forget_alt"], batch["retain"], full_logits=cfg.retain == "kl_unmasked")
    loss = cfg.forget_weight * idk_nll_loss(out_a["seq_logp"], ctx.norm["forget_alt_tokens"])
    logs = {"idk_logp": out_a["seq_logp"].detach().sum() / ctx.norm["forget_alt_tokens"]}
    r, rlogs = _retain(ctx, batch, cfg, out_r)
    logs.update(rlogs)
    return loss + cfg.retain_weight * r.to(loss.device), logs


@register_method(
    "idkdpo",
    IdkDPOConfig,
    "IdK-DPO: prefer 'I don't know' over the forget answer (DPO vs the frozen model) + retain NLL",
    forget_targets=forget_targets,
    reference_logps=lambda cfg: True,  # ref_forget_logp: cached
    needs_reference=lambda cfg: True,  # the alternate answers' reference log-probs come from the frozen copy
)
def idkdpo_step(ctx, batch: dict, cfg: IdkDPOConfig):
    full = cfg.retain == "kl_unmasked"
    if cfg.retain == "none":
        (out_a, out_f), out_r = ctx.policy(batch["forget_alt"], batch["forget"]), None
    else:
        out_a, out_f, out_r = ctx.policy(batch["forget_alt"], batch["forget"], batch["retain"], full_logits=full)
    ref_f = ctx.ref_forget_logp(batch["forget_idx"]).to(out_f["seq_logp"].device)  # (B,) cached, no grad
    ref_a = ctx.reference(batch["forget_alt"])["seq_logp"].detach().to(out_a["seq_logp"].device)  # (B,)
    la, lf = out_a["seq_logp"], out_f["seq_logp"]
    loss = cfg.forget_weight * idk_dpo_loss(la, ref_a, lf, ref_f, cfg.beta, ctx.norm["forget_seqs"])
    logs = {
        "forget_logp": lf.detach().sum() / ctx.norm["forget_tokens"],
        "idk_logp": la.detach().sum() / ctx.norm["forget_alt_tokens"],
        "dpo_margin": ((la.detach() - ref_a) - (lf.detach() - ref_f)).sum() / ctx.norm["forget_seqs"],
    }
    r, rlogs = _retain(ctx, batch, cfg, out_r)
    logs.update(rlogs)
    return loss + cfg.retain_weight * r.to(loss.device), logs

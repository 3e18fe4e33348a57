"""Every LLM method's ``step(ctx, batch, cfg)`` pinned to hand-worked numbers (docs/conventions.md#ga, #npo, #simnpo).

The fake context's counts all differ, so a wrong normaliser changes the number: this micro-batch holds 2 forget and
2 retain sequences with 1 + 3 = 4 forget and 2 + 5 = 7 retain answer tokens, while the *global* step (``ctx.norm``)
has 6 forget sequences with 15 answer tokens and 6 retain sequences with 21 answer tokens (the retain batch is
T = 4 positions long, so the unmasked KL averages over 6 * 4 = 24 positions).

Policy outputs:  forget ``seq_logp`` = (-3, -6), ``n_tokens`` = (1, 3), forget_idx = (1, 3);
                 retain ``seq_logp`` = (-1.5, -5.5), ``n_tokens`` = (2, 5).
Cached reference forget log-probs: ``ref_forget_logp((1, 3))`` = (-2, -6), so r = logp - ref = (-1, 0).
Retain KL (2 classes): policy and reference agree everywhere except one position, where p_ref = (1/2, 1/2) and
p_theta = (3/4, 1/4): KL(p_ref || p_theta) = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.1438410 (the reverse direction,
KL(p_theta || p_ref), would be 0.1308121). Retain terms with weight 3:
    nll          3 * 7/21          = 1.0
    kl           3 * 0.1438410/21  = 0.0205487   (answer positions, global retain tokens)
    kl_unmasked  3 * 0.1438410/24  = 0.0179801   (all B*T positions of the global retain batch)
"""

from __future__ import annotations

import math

import pytest
import torch

from unlearn.methods.ga import GAConfig
from unlearn.methods.ga import step as ga_step
from unlearn.methods.graddiff import GradDiffConfig
from unlearn.methods.graddiff import step as graddiff_step
from unlearn.methods.npo import NPOConfig
from unlearn.methods.npo import step as npo_step
from unlearn.methods.simnpo import SimNPOConfig
from unlearn.methods.simnpo import step as simnpo_step

NORM = {"forget_seqs": 6.0, "forget_tokens": 15.0, "retain_seqs": 6.0, "retain_tokens": 21.0}
KL = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)  # 0.1438410
RW = 3.0  # retain weight used throughout
RETAIN = {"none": 0.0, "nll": RW * 7 / 21, "kl": RW * KL / 21, "kl_unmasked": RW * KL / 24}
KINDS = tuple(RETAIN)


class FakeCtx:
    """The loop's StepContext with fixed outputs (see the module docstring); records every call."""

    def __init__(self):
        self.norm = dict(NORM)
        self.policy_calls: list[tuple[int, bool]] = []
        self.reference_calls: list[bool] = []
        self.ref_idx: list[list[int]] = []
        self.ref_table = torch.tensor([0.0, -2.0, -9.0, -6.0])  # cached reference log-probs of forget items 0..3
        self.f = {"seq_logp": torch.tensor([-3.0, -6.0], requires_grad=True), "n_tokens": torch.tensor([1, 3])}
        # retain answer positions: 2 + 5 = 7 rows; the policy differs from the reference at row 3 only
        logits = torch.zeros(7, 2)
        logits[3, 0] = math.log(3.0)
        # full logits: the policy ran on forget + retain padded together (T = 5), the retain batch is T = 4 long;
        # it differs from the reference at (b=1, t=0) inside the retain length, and at t=4, which must be ignored
        full = torch.zeros(2, 5, 2)
        full[1, 0, 0] = math.log(3.0)
        full[0, 4, 0] = 5.0
        self.r = {
            "seq_logp": torch.tensor([-1.5, -5.5], requires_grad=True),
            "n_tokens": torch.tensor([2, 5]),
            "logits": logits.requires_grad_(),
            "row": torch.tensor([0, 0, 1, 1, 1, 1, 1]),
            "full_logits": full.requires_grad_(),
        }

    def policy(self, *batches, full_logits=False):
        self.policy_calls.append((len(batches), full_logits))
        f = {**self.f, "logits": torch.zeros(4, 2), "row": torch.tensor([0, 1, 1, 1]), "full_logits": None}
        if len(batches) == 1:
            return f
        r = {**self.r, "full_logits": self.r["full_logits"] if full_logits else None}
        return f, r

    def reference(self, batch, full_logits=False):
        self.reference_calls.append(full_logits)
        return {
            "seq_logp": torch.tensor([-1.0, -5.0]),
            "n_tokens": torch.tensor([2, 5]),
            "logits": torch.zeros(7, 2),
            "row": torch.tensor([0, 0, 1, 1, 1, 1, 1]),
            "full_logits": torch.zeros(2, 4, 2) if full_logits else None,
        }

    def ref_forget_logp(self, idx):
        self.ref_idx.append(idx.tolist())
        return self.ref_table[idx]


def _batch():
    retain = {
        "input_ids": torch.ones(2, 4, dtype=torch.long),
        "attention_mask": torch.ones(2, 4, dtype=torch.long),
        "labels": torch.ones(2, 4, dtype=torch.long),
    }
    forget = {k: v.clone() for k, v in retain.items()}
    return {"forget": forget, "retain": retain, "forget_idx": torch.tensor([1, 3])}


def _check_retain(ctx: FakeCtx, kind: str, logs: dict) -> None:
    """The retain term's value in the logs, its gradient, and one forward pass of the policy."""
    assert ctx.policy_calls == ([(1, False)] if kind == "none" else [(2, kind == "kl_unmasked")])
    assert ctx.reference_calls == ([kind == "kl_unmasked"] if kind.startswith("kl") else [])
    if kind == "none":
        return
    assert math.isclose(float(logs["retain_loss"]), RETAIN[kind] / RW, rel_tol=1e-6)
    assert math.isclose(float(logs["retain_logp"]), -7 / 21, rel_tol=1e-6)
    g_seq, g_lg, g_full = (ctx.r[k].grad for k in ("seq_logp", "logits", "full_logits"))
    if kind == "nll":  # d(RW * -sum(logp)/21)/dlogp = -RW/21 each
        assert torch.allclose(g_seq, torch.full((2,), -RW / 21))
        return
    # d KL(p_ref || softmax(z)) / dz = softmax(z) - p_ref = (3/4, 1/4) - (1/2, 1/2) at the differing position
    assert g_seq is None or torch.count_nonzero(g_seq) == 0
    if kind == "kl":
        expect = torch.zeros(7, 2)
        expect[3] = torch.tensor([0.25, -0.25]) * RW / 21
        assert torch.allclose(g_lg, expect, atol=1e-7)
    else:
        expect = torch.zeros(2, 5, 2)
        expect[1, 0] = torch.tensor([0.25, -0.25]) * RW / 24
        assert torch.allclose(g_full, expect, atol=1e-7)


def test_ga_step_token_mean_over_global_forget_tokens():
    """forget_weight 2: L = 2 * (-3 - 6) / 15 = -1.2 (by the 6 global sequences it would be -3, by the 4 local
    tokens -4.5); dL/dlogp_b = 2/15; the log is the token-mean log-prob -9/15 = -0.6."""
    ctx = FakeCtx()
    loss, logs = ga_step(ctx, _batch(), GAConfig(forget_weight=2.0))
    assert math.isclose(loss.item(), -1.2, rel_tol=1e-6)
    assert math.isclose(float(logs["forget_logp"]), -0.6, rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(ctx.f["seq_logp"].grad, torch.full((2,), 2 / 15))
    assert ctx.policy_calls == [(1, False)] and ctx.reference_calls == []


@pytest.mark.parametrize("kind", KINDS)
def test_graddiff_step(kind):
    """forget_weight 2, retain_weight 3: L = -1.2 + retain term (module docstring):
    none -1.2, nll -0.2, kl -1.1794513, kl_unmasked -1.1820199."""
    ctx = FakeCtx()
    loss, logs = graddiff_step(ctx, _batch(), GradDiffConfig(forget_weight=2.0, retain_weight=RW, retain=kind))
    assert math.isclose(loss.item(), -1.2 + RETAIN[kind], rel_tol=1e-6)
    assert math.isclose(float(logs["forget_logp"]), -0.6, rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(ctx.f["seq_logp"].grad, torch.full((2,), 2 / 15))
    _check_retain(ctx, kind, logs)


@pytest.mark.parametrize("kind", KINDS)
def test_npo_step(kind):
    """beta 0.5, forget_weight 2, r = (-1, 0) from the cached reference of forget items (1, 3):
    L_NPO = -(2/0.5) (logsigmoid(0.5) + logsigmoid(0)) / 6 = -4 (-0.4740770 - 0.6931472) / 6 = 0.7781494 (mean over
    the 6 global forget *sequences*; over the 15 tokens it would be 0.3112598), times 2: 1.5562989, plus the retain
    term. dL/dlogp_b = 2 * (2/6) sigma(beta r_b) = (2/3)(0.3775407, 0.5) = (0.2516938, 0.3333333).
    Logged NPO weight: sum_b 2 sigma(beta r_b) / 6 = (0.7550813 + 1) / 6 = 0.2925136."""
    ctx = FakeCtx()
    cfg = NPOConfig(beta=0.5, forget_weight=2.0, retain_weight=RW, retain=kind)
    loss, logs = npo_step(ctx, _batch(), cfg)
    assert ctx.ref_idx == [[1, 3]]  # the reference of *these* forget examples
    assert math.isclose(loss.item(), 1.5562989 + RETAIN[kind], rel_tol=1e-6)
    assert math.isclose(float(logs["npo_weight"]), 0.2925136, rel_tol=1e-6)
    assert math.isclose(float(logs["forget_logp"]), -0.6, rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(ctx.f["seq_logp"].grad, torch.tensor([0.2516938, 1 / 3]), atol=1e-7)
    _check_retain(ctx, kind, logs)


def test_npo_step_at_the_reference_is_two_over_beta_log_two():
    """theta = ref (r = 0 for both): L = -(2/beta) * 2 logsigmoid(0) / 6 = (2/0.5)(2/6) log 2 = 0.9241962 (the
    micro-batch is 2 of the step's 6 sequences); gradient weight 2 sigma(0) = 1, so dL/dlogp_b = 1/6 each: GA on the
    sequence log-prob averaged over the step's 6 sequences."""
    ctx = FakeCtx()
    ctx.ref_table = torch.tensor([0.0, -3.0, 0.0, -6.0])
    loss, logs = npo_step(ctx, _batch(), NPOConfig(beta=0.5, forget_weight=1.0, retain="none"))
    assert math.isclose(loss.item(), 4 * (2 / 6) * math.log(2), rel_tol=1e-6)
    assert math.isclose(float(logs["npo_weight"]), 2 / 6, rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(ctx.f["seq_logp"].grad, torch.full((2,), 1 / 6))


@pytest.mark.parametrize("kind", KINDS)
def test_simnpo_step(kind):
    """beta 0.5, margin 0.5, forget_weight 0.5; per-sequence length-normalised NLL -logp/|y| = (3/1, 6/3) = (3, 2),
    a = (2.5, 1.5), beta a = (1.25, 0.75), logsigmoid = (-0.2519291, -0.3868710);
    L_f = -(2/0.5)(-0.6388001) / 6 = 0.4258667 (over the 6 global sequences), times 0.5: 0.2129334, plus the retain
    term. dL/dlogp_b = 0.5 (2/6) sigma(-beta a_b) / |y_b| = (0.0371167, 0.0178234)."""
    ctx = FakeCtx()
    cfg = SimNPOConfig(beta=0.5, forget_weight=0.5, retain_weight=RW, margin=0.5, retain=kind)
    loss, logs = simnpo_step(ctx, _batch(), cfg)
    assert math.isclose(loss.item(), 0.2129334 + RETAIN[kind], rel_tol=1e-6)
    assert math.isclose(float(logs["forget_logp"]), -0.6, rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(ctx.f["seq_logp"].grad, torch.tensor([0.0371167, 0.0178234]), atol=1e-7)
    _check_retain(ctx, kind, logs)
    assert ctx.ref_idx == []  # reference-free


def test_simnpo_margin_is_the_code_form_and_matches_the_paper_gamma():
    """Paper form -(2/beta) log sigma(-(beta/|y|) log pi - gamma) with gamma = beta * margin, computed directly."""
    ctx = FakeCtx()
    beta, margin = 0.5, 0.5
    loss, _ = simnpo_step(ctx, _batch(), SimNPOConfig(beta=beta, forget_weight=1.0, margin=margin, retain="none"))
    logp, n = (-3.0, -6.0), (1, 3)
    paper = sum(-(2 / beta) * -math.log1p(math.exp(-(-(beta / k) * lp - beta * margin))) for lp, k in zip(logp, n))
    assert math.isclose(loss.item(), paper / 6, rel_tol=1e-6)

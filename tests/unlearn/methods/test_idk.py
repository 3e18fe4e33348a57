"""IdkNLL / IdkDPO (TOFU's refusal methods, docs/methods/idk.md) pinned to hand-worked numbers, the IdK set's
loading and seeded draw, and a short run on the session's tiny model that makes the refusals more likely."""

from __future__ import annotations

import copy
import json
import math
from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from unlearn.config import TrainConfig
from unlearn.errors import UnlearnError
from unlearn.methods import get_method
from unlearn.methods.idk import (
    IdkDPOConfig,
    IdkNLLConfig,
    draw_idk,
    forget_targets,
    idk_dpo_loss,
    idk_nll_loss,
    idkdpo_step,
    idknll_step,
    load_idk,
    package_idk_path,
)
from unlearn.targets.llm import PromptFormat, SequenceLogProbs, collate, encode_qa
from unlearn.train import unlearn_model

SILENT = lambda *a, **k: None  # noqa: E731
LOG2 = math.log(2)
# h = beta [(logp_idk - ref_idk) - (logp_f - ref_f)] with beta = 0.5 for the two hand-worked examples below:
#   (-4, -6, -3, -2): h = 0.5 (2 - (-1)) = 1.5;   log sigmoid(1.5)  = -log(1 + e^-1.5) = -0.2014133
#   (-10, -9, -2, -2): h = 0.5 (-1 - 0) = -0.5;   log sigmoid(-0.5) = -log(1 + e^0.5)  = -0.9740770
LS_A, LS_B = -0.2014133, -0.9740770


# ----------------------------------------------------------------------------------------------- pure losses
def test_dpo_at_reference_is_two_over_beta_log_two():
    """theta = ref: both log-ratios are 0, h = 0, log sigmoid(0) = -log 2: L = (2/beta) log 2 = 20 log 2 = 13.862944
    for beta = 0.1, whatever the log-probs."""
    la, lf = torch.tensor([-3.0, -11.5, -0.5]), torch.tensor([-2.0, -1.25, -7.0])
    assert math.isclose(idk_dpo_loss(la, la.clone(), lf, lf.clone(), beta=0.1).item(), 20 * LOG2, rel_tol=1e-6)
    assert math.isclose(idk_dpo_loss(la, la.clone(), lf, lf.clone(), beta=2.0).item(), LOG2, rel_tol=1e-6)


def test_dpo_hand_worked_value_and_normaliser():
    """One example, h = 1.5: L = -(2/0.5)(-0.2014133) = 0.8056531. Both examples with the global normaliser 4:
    L = -(2/0.5)(-0.2014133 - 0.9740770)/4 = 1.1754903 (by the local B = 2 it would be 2.3509805)."""
    one = idk_dpo_loss(torch.tensor([-4.0]), torch.tensor([-6.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), 0.5)
    assert math.isclose(one.item(), -4 * LS_A, rel_tol=1e-6)
    assert math.isclose(one.item(), 0.8056531, rel_tol=1e-6)
    la, ra = torch.tensor([-4.0, -10.0]), torch.tensor([-6.0, -9.0])
    lf, rf = torch.tensor([-3.0, -2.0]), torch.tensor([-2.0, -2.0])
    assert math.isclose(idk_dpo_loss(la, ra, lf, rf, 0.5, n_seqs=4).item(), 1.1754903, rel_tol=1e-6)
    assert math.isclose(idk_dpo_loss(la, ra, lf, rf, 0.5).item(), 2.3509805, rel_tol=1e-6)


def test_dpo_gradient_raises_idk_and_lowers_forget():
    """dL/dlogp_idk_b = -(2/n) sigma(-h_b) < 0 and dL/dlogp_f_b = +(2/n) sigma(-h_b) > 0: descent raises the refusal's
    log-prob and lowers the forget answer's. n = 4: sigma(-1.5) = 0.1824255, sigma(0.5) = 0.6224593, so the
    gradients are -/+ (0.0912128, 0.3112297). Checked again through a free-logit model: one SGD step moves both
    sequence log-probs the right way."""
    la = torch.tensor([-4.0, -10.0], requires_grad=True)
    lf = torch.tensor([-3.0, -2.0], requires_grad=True)
    idk_dpo_loss(la, torch.tensor([-6.0, -9.0]), lf, torch.tensor([-2.0, -2.0]), 0.5, n_seqs=4).backward()
    expect = torch.tensor([0.0912128, 0.3112297])
    assert torch.allclose(la.grad, -expect, atol=1e-6) and torch.allclose(lf.grad, expect, atol=1e-6)

    g = torch.Generator().manual_seed(0)
    theta = torch.randn(2, 3, 6, generator=g, requires_grad=True)  # free logits (B, T, V)
    y_idk, y_f = torch.randint(0, 6, (2, 3), generator=g), torch.randint(0, 6, (2, 3), generator=g)
    y_f[y_f == y_idk] = (y_idk[y_f == y_idk] + 1) % 6  # the two answers differ at every position

    def seq(t, y):
        return torch.log_softmax(t, -1).gather(-1, y[..., None]).squeeze(-1).sum(-1)

    ref_a, ref_f = seq(theta.detach(), y_idk), seq(theta.detach(), y_f)
    idk_dpo_loss(seq(theta, y_idk), ref_a, seq(theta, y_f), ref_f, beta=0.1).backward()
    with torch.no_grad():
        new = theta - 0.5 * theta.grad
        assert (seq(new, y_idk) > ref_a).all() and (seq(new, y_f) < ref_f).all()


def test_nll_is_token_mean_of_the_refusals_computed_independently(tiny):
    """idk_nll_loss on SequenceLogProbs' sums equals cross_entropy(mean) over the refusal tokens, computed from the
    raw logits with the shift by hand; and the global normaliser divides the sum."""
    tok, model, splits = tiny
    recs = splits["forget10"][:5]
    answers = draw_idk(len(recs), load_idk(), seed=0)
    b = collate([encode_qa(tok, PromptFormat(), r["question"], a) for r, a in zip(recs, answers)], tok.pad_token_id)
    with torch.no_grad():
        out = SequenceLogProbs(model)(**b)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
    ce = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), b["labels"][:, 1:].flatten(), ignore_index=-100)
    n = int((b["labels"][:, 1:] != -100).sum())
    assert int(out["n_tokens"].sum()) == n
    assert math.isclose(idk_nll_loss(out["seq_logp"], n).item(), ce.item(), rel_tol=1e-5)
    assert math.isclose(idk_nll_loss(out["seq_logp"], 2 * n).item(), ce.item() / 2, rel_tol=1e-5)


# ----------------------------------------------------------------------------------------------- steps
class FakeCtx:
    """A StepContext with fixed outputs per named batch. This micro-batch: 2 forget rows; the global step
    (``norm``): 4 forget / refusal sequences, 15 forget and 9 refusal answer tokens, 21 retain tokens."""

    def __init__(self):
        self.norm = {"forget_seqs": 4.0, "forget_tokens": 15.0, "retain_seqs": 4.0, "retain_tokens": 21.0,
                     "forget_alt_seqs": 4.0, "forget_alt_tokens": 9.0}  # fmt: skip
        self.out = {
            "alt": {"seq_logp": torch.tensor([-4.0, -10.0], requires_grad=True)},
            "forget": {"seq_logp": torch.tensor([-3.0, -2.0], requires_grad=True)},
            "retain": {"seq_logp": torch.tensor([-1.5, -5.5], requires_grad=True)},
        }
        self.ref = {"alt": torch.tensor([-6.0, -9.0])}
        self.policy_calls, self.reference_calls = [], []

    def policy(self, *batches, full_logits=False):
        self.policy_calls.append(tuple(b["name"] for b in batches))
        outs = [self.out[b["name"]] for b in batches]
        return outs[0] if len(outs) == 1 else outs

    def reference(self, batch, full_logits=False):
        self.reference_calls.append(batch["name"])
        return {"seq_logp": self.ref[batch["name"]]}

    def ref_forget_logp(self, idx):
        return torch.tensor([0.0, -2.0, -9.0, -2.0])[idx]


BATCH = {"forget": {"name": "forget"}, "retain": {"name": "retain"}, "forget_alt": {"name": "alt"},
         "forget_idx": torch.tensor([1, 3])}  # fmt: skip


def test_idkdpo_step_at_reference_is_two_over_beta_log_two():
    """Retain weight 0 and the policy equal to the reference on both answers: h = 0 for the 2 rows; with 2 global
    sequences the step's loss is exactly (2/0.1) log 2."""
    ctx = FakeCtx()
    ctx.norm["forget_seqs"] = 2.0
    ctx.ref["alt"] = ctx.out["alt"]["seq_logp"].detach().clone()
    ctx.ref_forget_logp = lambda idx: ctx.out["forget"]["seq_logp"].detach().clone()
    loss, _ = idkdpo_step(ctx, BATCH, IdkDPOConfig(retain_weight=0.0))
    assert math.isclose(loss.item(), 20 * LOG2, rel_tol=1e-6)


def test_idkdpo_step_hand_worked():
    """beta 0.5, forget weight 2, retain NLL weight 3: L = 2 * 1.1754903 + 3 * 7/21 = 3.3509805; one policy pass
    over (refusal, forget, retain), one reference pass over the refusals (the forget one is cached)."""
    ctx = FakeCtx()
    loss, logs = idkdpo_step(ctx, BATCH, IdkDPOConfig(beta=0.5, forget_weight=2.0, retain_weight=3.0))
    assert math.isclose(loss.item(), 2 * 1.1754903 + 1.0, rel_tol=1e-6)
    assert ctx.policy_calls == [("alt", "forget", "retain")] and ctx.reference_calls == ["alt"]
    assert math.isclose(float(logs["idk_logp"]), -14 / 9, rel_tol=1e-6)
    assert math.isclose(float(logs["forget_logp"]), -5 / 15, rel_tol=1e-6)
    assert math.isclose(float(logs["dpo_margin"]), (3.0 - 1.0) / 4, rel_tol=1e-6)  # margins 3 and -1
    loss.backward()
    assert (ctx.out["alt"]["seq_logp"].grad < 0).all() and (ctx.out["forget"]["seq_logp"].grad > 0).all()
    assert torch.allclose(ctx.out["retain"]["seq_logp"].grad, torch.full((2,), -3 / 21))
    ctx2 = FakeCtx()
    idkdpo_step(ctx2, BATCH, IdkDPOConfig(retain="none"))
    assert ctx2.policy_calls == [("alt", "forget")]


def test_idknll_step_hand_worked():
    """Forget weight 2, retain NLL weight 3: L = 2 * 14/9 + 3 * 7/21 = 4.1111111 (refusal tokens 9 global, not the
    forget set's 15); gradient descent on the refusals: dL/dlogp_idk = -2/9 each; no reference is needed."""
    ctx = FakeCtx()
    loss, logs = idknll_step(ctx, BATCH, IdkNLLConfig(forget_weight=2.0, retain_weight=3.0))
    assert math.isclose(loss.item(), 28 / 9 + 1.0, rel_tol=1e-6)
    assert ctx.policy_calls == [("alt", "retain")] and ctx.reference_calls == []
    loss.backward()
    assert torch.allclose(ctx.out["alt"]["seq_logp"].grad, torch.full((2,), -2 / 9))
    assert ctx.out["forget"]["seq_logp"].grad is None  # the true answers are not trained on
    assert not get_method("idknll").needs_reference(IdkNLLConfig())
    assert get_method("idkdpo").needs_reference(IdkDPOConfig())


# ----------------------------------------------------------------------------------------------- the IdK set
def test_shipped_set_is_tofus_hundred():
    answers = load_idk()
    assert len(answers) == 100 == len(set(answers))
    assert answers[0] == "I'm not certain about that." and answers[-1] == "I'm not sure I can help with that."
    for line in package_idk_path().read_text().splitlines():
        assert set(json.loads(line)) == {"answer"}


def test_forget_targets_seeded_uniform_and_from_the_file(tmp_path):
    recs = [{"question": f"q{i}", "answer": "a"} for i in range(60)]
    a0, b0, a1 = (forget_targets(recs, IdkNLLConfig(), s) for s in (0, 0, 1))
    assert a0 == b0 and a0 != a1 and len(a0) == 60
    assert set(a0) <= set(load_idk())
    counts = Counter(draw_idk(20000, load_idk(), seed=3))  # uniform: 200 expected each, sd ~14
    assert len(counts) == 100 and 130 < min(counts.values()) and max(counts.values()) < 270
    p = tmp_path / "mine.jsonl"
    p.write_text('{"answer": "No idea."}\n\n{"answer": "Cannot say."}\n')
    assert set(forget_targets(recs, IdkDPOConfig(idk_file=str(p)), 0)) == {"No idea.", "Cannot say."}
    plain = tmp_path / "tofu_format.jsonl"  # TOFU's original: plain lines
    plain.write_text("I'm not sure.\nNo clue.\n")
    assert load_idk(plain) == ["I'm not sure.", "No clue."]


@pytest.mark.parametrize(
    "content, match",
    [(None, "cannot read"), ("", "empty"), ("\n  \n", "empty"),
     ('{"answer": "ok"}\n{"answer": \n', "line 2 is not JSON"),
     ('{"answer": "ok"}\n{"text": "x"}\n', 'line 2 has no non-empty string "answer"'), ('{"answer": ""}\n', "line 1")],
)  # fmt: skip
def test_bad_idk_file_is_a_one_line_error(tmp_path, content, match):
    p = tmp_path / "idk.jsonl"
    if content is not None:
        p.write_text(content)
    with pytest.raises(UnlearnError, match=match) as e:
        forget_targets([{"question": "q", "answer": "a"}], IdkNLLConfig(idk_file=str(p)), 0)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------- training
def _idk_nll(model, tok, recs, answers) -> float:
    b = collate([encode_qa(tok, PromptFormat(), r["question"], a) for r, a in zip(recs, answers)], tok.pad_token_id)
    with torch.no_grad():
        out = SequenceLogProbs(model)(**b)
    return float(-out["seq_logp"].sum() / out["n_tokens"].sum())


@pytest.mark.parametrize("name, cfg", [("idknll", IdkNLLConfig()), ("idkdpo", IdkDPOConfig(beta=1.0))])
def test_short_run_makes_the_refusals_likelier(tiny, name, cfg):
    """A few steps on the tiny model lower the NLL of the run's own refusals (same seed) on the forget questions."""
    tok, model, splits = tiny
    forget, retain = splits["forget10"][:8], splits["retain90"][:8]
    tcfg = TrainConfig(lr=3e-3, epochs=4, batch_size=4, warmup_epochs=0, precision="fp32")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out, summary = unlearn_model(copy.deepcopy(model), tok, PromptFormat(), forget, retain, get_method(name),
                                     cfg, tcfg, 0, None, progress=False, log=SILENT)  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    answers = forget_targets(forget, cfg, 0)
    before, after = _idk_nll(model, tok, forget, answers), _idk_nll(out, tok, forget, answers)
    assert after < 0.8 * before, (before, after)

"""UNDIAL pinned to hand-worked numbers (unlearn/methods/undial.py; docs/methods/undial.md).

V = 3 example used throughout:
    reference logits z = (ln 2, 0, 0), true token y = 0, beta = ln 4:
        z - beta e_0 = (ln 2 - ln 4, 0, 0) = (ln 1/2, 0, 0) -> exp (1/2, 1, 1), sum 5/2 -> q = (0.2, 0.4, 0.4)
        (unadjusted p_ref = (0.5, 0.25, 0.25): the true token's mass 0.5 -> 0.2, the rest keeps its 1:1 ratio).
    student logits s = (0, 0, ln 2) -> p = (1/4, 1/4, 1/2), log p = (-ln 4, -ln 4, -ln 2):
        CE(q, p) = 0.2 ln 4 + 0.4 ln 4 + 0.4 ln 2 = 1.6 ln 2 = 1.1090355;  dCE/ds = p - q = (0.05, -0.15, 0.1).
Second row: z = (3, 0, 0), y = 0, beta = 3 -> q = (1/3, 1/3, 1/3); student = z -> log p_0 = 3 - ln(e^3 + 2),
    log p_1 = log p_2 = -ln(e^3 + 2): CE = ln(e^3 + 2) - 1 = 2.0949230.
"""

from __future__ import annotations

import copy
import math

import torch

from unlearn.config import TrainConfig
from unlearn.methods import get_method
from unlearn.methods.undial import UNDIALConfig, adjusted_target, answer_targets, undial_loss
from unlearn.methods.undial import step as undial_step
from unlearn.targets.llm import PromptFormat, SequenceLogProbs, collate, encode_qa
from unlearn.train import unlearn_model

SILENT = lambda *a, **k: None  # noqa: E731
LN2, LN4 = math.log(2), math.log(4)
CE1 = 1.6 * LN2  # 1.1090355
CE2 = math.log(math.exp(3) + 2) - 1  # 2.0949230


def _rows():
    ref = torch.tensor([[LN2, 0.0, 0.0], [3.0, 0.0, 0.0]])
    student = torch.tensor([[0.0, 0.0, LN2], [3.0, 0.0, 0.0]])
    return student, ref, torch.tensor([0, 0])


def test_adjusted_target_lowers_the_true_logit_by_beta():
    ref = torch.tensor([[LN2, 0.0, 0.0]])
    before = ref.clone()
    assert torch.allclose(adjusted_target(ref, torch.tensor([0]), LN4), torch.tensor([[0.2, 0.4, 0.4]]))
    # the true token is the one lowered: y = 1 gives exp(ln 2, -ln 4, 0) = (2, 1/4, 1) / 3.25
    assert torch.allclose(adjusted_target(ref, torch.tensor([1]), LN4), torch.tensor([[2.0, 0.25, 1.0]]) / 3.25)
    assert torch.allclose(
        adjusted_target(torch.tensor([[3.0, 0.0, 0.0]]), torch.tensor([0]), 3.0), torch.ones(1, 3) / 3
    )
    assert torch.allclose(adjusted_target(ref, torch.tensor([0]), 0.0), torch.tensor([[0.5, 0.25, 0.25]]))
    assert torch.equal(ref, before)  # the reference logits are not modified in place


def test_loss_is_the_hand_computed_cross_entropy_and_gradient():
    """Row 1 with beta = ln 4: 1.1090355, gradient (p - q) = (0.05, -0.15, 0.1); the rows' mean with their own
    beta each is not expressible with one beta, so row 2 (beta = 3) is checked on its own: 2.0949230."""
    student, ref, y = _rows()
    s1 = student[:1].clone().requires_grad_()
    loss = undial_loss(s1, ref[:1], y[:1], LN4)
    assert math.isclose(loss.item(), CE1, rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(s1.grad, torch.tensor([[0.05, -0.15, 0.1]]), atol=1e-6)
    assert math.isclose(undial_loss(student[1:], ref[1:], y[1:], 3.0).item(), CE2, rel_tol=1e-6)
    # beta = 3 on both rows: row 1's target is softmax(ln 2 - 3, 0, 0) = (2e^-3, 1, 1) / (2e^-3 + 2)
    q1 = torch.tensor([2 * math.exp(-3), 1.0, 1.0]) / (2 * math.exp(-3) + 2)
    ce1 = -(q1 * torch.tensor([-LN4, -LN4, -LN2])).sum().item()
    assert math.isclose(undial_loss(student, ref, y, 3.0).item(), (ce1 + CE2) / 2, rel_tol=1e-6)
    # bf16 logits are computed in float32
    assert undial_loss(student.bfloat16(), ref.bfloat16(), y, 3.0).dtype == torch.float32


def test_beta_zero_at_reference_is_the_entropy_with_zero_gradient():
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(5, 7, generator=g) * 2
    y = torch.randint(0, 7, (5,), generator=g)
    student = ref.clone().requires_grad_()
    loss = undial_loss(student, ref, y, 0.0)
    p = torch.softmax(ref, -1)
    entropy = -(p * torch.log(p)).sum(-1).mean()
    assert math.isclose(loss.item(), entropy.item(), rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(student.grad, torch.zeros_like(ref), atol=1e-7)
    # with beta > 0 the same point has a gradient that lowers the true tokens' logits: d/dz_y = p_y - q_y > 0
    s = ref.clone().requires_grad_()
    undial_loss(s, ref, y, 10.0).backward()
    assert (s.grad[torch.arange(5), y] > 0).all()


def test_global_token_normaliser_two_micro_batches_sum_to_one():
    g = torch.Generator().manual_seed(1)
    student = torch.randn(6, 5, generator=g, requires_grad=True)
    ref = torch.randn(6, 5, generator=g)
    y = torch.randint(0, 5, (6,), generator=g)
    whole = undial_loss(student, ref, y, 10.0)
    (g_whole,) = torch.autograd.grad(whole, student)
    parts = undial_loss(student[:2], ref[:2], y[:2], 10.0, n_tokens=6) + undial_loss(
        student[2:], ref[2:], y[2:], 10.0, n_tokens=6
    )
    (g_parts,) = torch.autograd.grad(parts, student)
    assert math.isclose(parts.item(), whole.item(), rel_tol=1e-6)
    assert torch.allclose(g_parts, g_whole, atol=1e-7)
    # the local mean of the first micro-batch would be 3x its share
    share = undial_loss(student[:2], ref[:2], y[:2], 10.0, n_tokens=6)
    assert math.isclose(undial_loss(student[:2], ref[:2], y[:2], 10.0).item(), 3 * share.item(), rel_tol=1e-6)


# ------------------------------------------------------------------------------------------- the step
V = 128  # > 100, so that open-unlearning's label -100 indexes a real vocabulary entry (V - 100 = 28)


class FullLogitsCtx:
    """StepContext over fixed full (B, T, V) logits: policy / reference return them at answer positions only,
    as SequenceLogProbs does (position t predicts token t+1; (row, position) order)."""

    def __init__(self, student_full, ref_full, norm):
        self.student_full, self.ref_full, self.norm = student_full, ref_full, norm
        self.reference_calls = 0

    @staticmethod
    def _select(full, batch):
        mask = batch["labels"][:, 1:] != -100
        lp = torch.log_softmax(full[:, :-1][mask].float(), -1)
        tg = batch["labels"][:, 1:][mask]
        row = torch.arange(mask.shape[0])[:, None].expand_as(mask)[mask]
        seq = torch.zeros(mask.shape[0]).index_add(0, row, lp.gather(-1, tg[:, None]).squeeze(-1))
        return {"logits": full[:, :-1][mask], "row": row, "seq_logp": seq, "n_tokens": mask.sum(1)}

    def policy(self, *batches, full_logits=False):
        assert len(batches) == 1
        return self._select(self.student_full, batches[0])

    def reference(self, batch, full_logits=False):
        self.reference_calls += 1
        with torch.no_grad():
            return self._select(self.ref_full, batch)


def _batch():
    """Two rows, T = 6: row 0 prompt (3 tokens) + answer (3), row 1 prompt (2) + answer (2) + 2 padding."""
    ids = torch.tensor([[5, 6, 7, 40, 41, 42], [8, 9, 50, 51, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 40, 41, 42], [-100, -100, 50, 51, -100, -100]])
    attn = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    forget = {"input_ids": ids, "attention_mask": attn, "labels": labels}
    return {"forget": forget, "retain": {k: v.clone() for k, v in forget.items()}, "forget_idx": torch.tensor([0, 1])}


def _ou_loss(student_full, ref_full, labels, beta):
    """open-unlearning's compute_undial_loss: every shifted position, one-hot built from the raw labels."""
    sl, s, t = labels[:, 1:], student_full[:, :-1], ref_full[:, :-1]
    mask = torch.zeros_like(t)
    mask[torch.arange(t.shape[0]).view(-1, 1, 1), torch.arange(t.shape[1]).view(1, -1, 1), sl.unsqueeze(-1)] = 1.0
    soft = torch.softmax(t - mask * beta, -1)
    return torch.nn.functional.cross_entropy(s.reshape(-1, V), soft.reshape(-1, V)), mask


def test_step_uses_answer_positions_only_and_the_global_token_count():
    """Answer targets: row 0 predicts 40, 41, 42 from positions 2, 3, 4; row 1 predicts 50, 51 from positions 1, 2.
    The step's loss is the per-token CE of those 5 positions divided by the global 20 forget tokens; changing the
    logits at prompt-only or padding positions (row 0 t = 0, 1, 5; row 1 t = 0, 3, 4, 5) changes nothing."""
    g = torch.Generator().manual_seed(2)
    sf, rf = torch.randn(2, 6, V, generator=g), torch.randn(2, 6, V, generator=g)
    batch = _batch()
    assert answer_targets(batch["forget"]).tolist() == [40, 41, 42, 50, 51]
    cfg = UNDIALConfig(beta=10.0)
    norm = {"forget_seqs": 8.0, "forget_tokens": 20.0, "retain_seqs": 8.0, "retain_tokens": 20.0}
    ctx = FullLogitsCtx(sf.clone().requires_grad_(), rf, norm)
    loss, logs = undial_step(ctx, batch, cfg)
    pos = [(0, 2, 40), (0, 3, 41), (0, 4, 42), (1, 1, 50), (1, 2, 51)]
    expect = 0.0
    for b, t, y in pos:
        z = rf[b, t].clone()
        z[y] -= 10.0
        expect += -(torch.softmax(z, -1) * torch.log_softmax(sf[b, t], -1)).sum().item()
    assert math.isclose(loss.item(), expect / 20, rel_tol=1e-5)
    assert ctx.reference_calls == 1 and float(logs["retain_loss"]) == 0.0
    loss.backward()
    answer = torch.zeros(2, 6, dtype=torch.bool)
    for b, t, _ in pos:
        answer[b, t] = True
    assert ctx.student_full.grad[~answer].abs().max() == 0  # no prompt / padding position gets a gradient
    # prompt and padding logits (student and reference) are never read
    sf2, rf2 = sf.clone(), rf.clone()
    sf2[~answer] += 5 * torch.randn(int((~answer).sum()), V, generator=g)
    rf2[~answer] -= 5 * torch.randn(int((~answer).sum()), V, generator=g)
    loss2, _ = undial_step(FullLogitsCtx(sf2, rf2, norm), batch, cfg)
    assert math.isclose(loss2.item(), loss.item(), rel_tol=1e-6)
    # open-unlearning's version reads them (and lowers vocab entry V - 100 at every -100 label position)
    ou, mask = _ou_loss(sf, rf, batch["forget"]["labels"], 10.0)
    ou2, _ = _ou_loss(sf2, rf2, batch["forget"]["labels"], 10.0)
    assert mask[0, 0, V - 100] == 1 and mask[1, 4, V - 100] == 1 and mask[0, 2, 40] == 1
    assert not math.isclose(ou.item(), ou2.item(), rel_tol=1e-3)


def test_step_adds_the_weighted_retain_nll():
    """retain = nll, weight 3: + 3 * (-sum retain seq_logp) / retain_tokens on top of the forget term."""
    g = torch.Generator().manual_seed(3)
    sf, rf = torch.randn(2, 6, V, generator=g), torch.randn(2, 6, V, generator=g)
    batch = _batch()
    norm = {"forget_seqs": 2.0, "forget_tokens": 5.0, "retain_seqs": 2.0, "retain_tokens": 5.0}

    class Ctx(FullLogitsCtx):
        def policy(self, *batches, full_logits=False):
            return tuple(self._select(self.student_full, b) for b in batches)

    ctx = Ctx(sf, rf, norm)
    base, _ = undial_step(FullLogitsCtx(sf, rf, norm), batch, UNDIALConfig(beta=3.0))
    loss, logs = undial_step(ctx, batch, UNDIALConfig(beta=3.0, retain="nll", retain_weight=3.0))
    nll = -ctx._select(sf, batch["retain"])["seq_logp"].sum().item() / 5
    assert math.isclose(float(logs["retain_loss"]), nll, rel_tol=1e-6)
    assert math.isclose(loss.item(), base.item() + 3 * nll, rel_tol=1e-6)


def test_registered_with_defaults():
    spec = get_method("undial")
    assert spec.kind == "llm" and spec.config_cls is UNDIALConfig and spec.needs_reference(UNDIALConfig())
    cfg = UNDIALConfig()
    assert (cfg.beta, cfg.retain, cfg.retain_weight, cfg.forget_weight) == (10.0, "none", 0.0, 1.0)
    assert UNDIALConfig.RANGES["beta"] == "> 0"


# ------------------------------------------------------------------------------------------- a short run
def _forget_nll(model, tok, recs) -> float:
    b = collate([encode_qa(tok, PromptFormat(), r["question"], r["answer"]) for r in recs], tok.pad_token_id)
    with torch.no_grad():
        out = SequenceLogProbs(model)(**b)
    return float(-out["seq_logp"].sum() / out["n_tokens"].sum())


def test_short_run_lowers_the_forget_log_likelihood(tiny):
    tok, model, splits = tiny
    forget = splits["forget10"][:8]
    tcfg = TrainConfig(lr=1e-2, epochs=3, batch_size=4, warmup_epochs=0, precision="fp32")
    out, _ = unlearn_model(copy.deepcopy(model), tok, PromptFormat(), forget, splits["retain90"][:8],
                           get_method("undial"), UNDIALConfig(beta=10.0), tcfg, 0, None, progress=False,
                           log=SILENT)  # fmt: skip
    before, after = _forget_nll(model, tok, forget), _forget_nll(out, tok, forget)
    assert after > before + 1.0, (before, after)  # the forget answers' NLL rises (log-likelihood falls)

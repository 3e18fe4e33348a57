"""The training loop's numbers, not only its direction: LR schedule multipliers (warm-up included), the sampler's
epoch coverage and retain draws, the applied learning rate, gradient clipping, micro-batch accumulation, a simulated
two-process step, and checkpoint/resume state. Tiny random Llamas built here under fixed seeds (no training beyond
a few steps); the whole file runs in seconds on one CPU thread."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections import Counter

import numpy as np
import pytest
import torch

from unlearn.config import TrainConfig
from unlearn.methods import get_method
from unlearn.targets.llm import IGNORE, PromptFormat, collate, sequence_logps
from unlearn.train import lr_lambda, optimizer_step, setup, step_indices, total_steps, train_step, unlearn_model

VOCAB = 40
SILENT = lambda *a, **k: None  # noqa: E731


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only contend
    yield
    torch.set_num_threads(threads)


def cfg32(**kw) -> TrainConfig:
    """A TrainConfig in float32 also on a GPU (no bf16 autocast): the tolerances below are float32's."""
    return TrainConfig(precision="fp32", **kw)


def tiny_lm(seed: int = 0, vocab: int = VOCAB):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    conf = LlamaConfig(
        vocab_size=vocab,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    return LlamaForCausalLM(conf)


def qa_items(n: int, seed: int) -> list[tuple[list[int], list[int]]]:
    """n (ids, labels) pairs of unequal lengths: a 2-4 token prompt (label -100) and a 1-4 token answer."""
    g = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        p, a = int(g.integers(2, 5)), int(g.integers(1, 5))
        ids = g.integers(1, VOCAB, p + a).tolist()
        out.append((ids, [IGNORE] * p + ids[p:]))
    return out


def n_answer(items) -> int:
    """Answer tokens that get a log-prob: labels != -100 after the one-position shift."""
    return sum(sum(x != IGNORE for x in lab[1:]) for _, lab in items)


def grads(loop) -> torch.Tensor:
    return torch.cat([p.grad.flatten() for p in loop.params])


def one_step(model, method: str, f, r, tcfg: TrainConfig, accelerator=None, perturb: float = 0.0, **mkw):
    """setup + train_step on the global batch (f, r); returns (result, loop).

    ``perturb``: after setup (which copies the reference and caches its forget log-probs), add seeded noise of this
    scale to the trainable weights, so that KL terms, NPO log-ratios and their gradients are not at their zero /
    symmetric initial values.
    """
    spec = get_method(method)
    loop = setup(copy.deepcopy(model), f, spec, spec.config_cls(**mkw), tcfg, 0, 1, 1, accelerator, SILENT)
    if perturb:
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            for p in loop.params:
                p.add_(perturb * torch.randn(p.shape, generator=g))
    return train_step(loop, f, r, list(range(len(f)))), loop


# ----------------------------------------------------------------------------------------------- schedule
def test_total_steps():
    """ceil(n_forget / batch) steps per epoch; ceil(epochs * spe) steps, at least 1."""
    assert total_steps(4, cfg32(batch_size=2, epochs=3)) == (2, 6)
    assert total_steps(5, cfg32(batch_size=2, epochs=1.5)) == (3, 5)  # ceil(4.5)
    assert total_steps(3, cfg32(batch_size=8, epochs=0.1)) == (1, 1)


@pytest.mark.parametrize(
    ("warmup", "schedule", "expected"),
    [
        # warm = 2 steps: s/warm = 0, 1/2; then (total - s)/(total - warm) = 4/4, 3/4, 2/4, 1/4
        (1.0, "linear", [0.0, 1 / 2, 1.0, 3 / 4, 2 / 4, 1 / 4, 0.0]),
        (1.0, "constant", [0.0, 1 / 2, 1.0, 1.0, 1.0, 1.0, 1.0]),
        (0.0, "linear", [1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0]),
        (0.5, "linear", [0.0, 1.0, 4 / 5, 3 / 5, 2 / 5, 1 / 5, 0.0]),  # warm = round(0.5 * 2) = 1
    ],
)
def test_lr_multipliers(warmup, schedule, expected):
    """spe = 2, total = 6 (4 forget examples, batch 2, 3 epochs), worked by hand: warm-up rises as s/warm from 0 to
    exactly 1 at the first decay step (Hugging Face's formula), decay reaches 0 at total."""
    cfg = cfg32(batch_size=2, epochs=3, warmup_epochs=warmup, schedule=schedule)
    spe, total = total_steps(4, cfg)
    f = lr_lambda(cfg, spe, total)
    assert [f(s) for s in range(total + 1)] == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize(("n", "batch", "epochs", "warmup"), [(4, 2, 3, 1.0), (10, 3, 2.5, 0.7), (7, 7, 5, 0.0),
                                                              (32, 4, 10, 1.0), (5, 1, 1, 3.0)])  # fmt: skip
@pytest.mark.parametrize("schedule", ["linear", "constant"])
def test_lr_matches_transformers_schedules(n, batch, epochs, warmup, schedule):
    """The LR the optimizer holds at every step equals that of transformers' own get_linear_schedule_with_warmup /
    get_constant_schedule_with_warmup (open-unlearning's schedules) for the same warm-up and total steps, including
    a warm-up longer than the run (5 steps, 15 warm-up steps)."""
    from transformers import get_constant_schedule_with_warmup, get_linear_schedule_with_warmup

    cfg = cfg32(lr=1.0, batch_size=batch, epochs=epochs, warmup_epochs=warmup, schedule=schedule)
    spe, total = total_steps(n, cfg)
    warm = int(round(warmup * spe))
    ours = torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.zeros(1)], lr=1.0), lr_lambda(cfg, spe, total))
    opt = torch.optim.SGD([torch.zeros(1)], lr=1.0)
    hf = (get_linear_schedule_with_warmup(opt, warm, total) if schedule == "linear"
          else get_constant_schedule_with_warmup(opt, warm))  # fmt: skip
    got, want = [], []
    for _ in range(total):
        got.append(ours.get_last_lr()[0])
        want.append(hf.get_last_lr()[0])
        ours.optimizer.step(), ours.step(), opt.step(), hf.step()
    assert got == pytest.approx(want, abs=1e-15)


def test_optimizer_applies_the_scheduled_lr_from_the_first_step():
    """Through setup's optimizer and scheduler: the LR the optimizer holds at each of the 6 steps is lr times the
    multipliers above, so the warmed-up first step moves no weight (LR 0, weight decay 0); without warm-up the first
    AdamW update moves weights by exactly lr (Adam's first step is lr * g/|g| elementwise), so a scheduler stepped
    too early (5/6 lr) shows."""
    f, r = qa_items(4, 1), qa_items(4, 3)
    spec = get_method("ga")
    for warmup, first in ((1.0, 0.0), (0.0, 1e-2)):
        cfg = cfg32(lr=1e-2, batch_size=2, epochs=3, warmup_epochs=warmup, weight_decay=0.0, max_grad_norm=0)
        spe, total = total_steps(len(f), cfg)
        loop = setup(tiny_lm(), f, spec, spec.config_cls(), cfg, 0, spe, total, None, SILENT)
        lrs, moved = [], None
        for s in range(total):
            fi, ri = step_indices(s, len(f), len(r), cfg.batch_size, seed=0)
            before = [p.detach().clone() for p in loop.params]
            train_step(loop, [f[i] for i in fi], [r[i] for i in ri], fi)
            lrs.append(loop.opt.param_groups[0]["lr"])
            optimizer_step(loop)
            if s == 0:
                moved = max(float((p.detach() - b).abs().max()) for p, b in zip(loop.params, before))
        mult = lr_lambda(cfg, spe, total)
        assert lrs == pytest.approx([1e-2 * mult(s) for s in range(total)], rel=1e-9, abs=1e-15)
        assert moved == pytest.approx(first, rel=1e-4, abs=1e-12)
    assert lrs[0] == 1e-2  # the no-warm-up run: full rate from the first step


# ----------------------------------------------------------------------------------------------- sampler
@pytest.mark.parametrize(("n_forget", "batch"), [(10, 4), (8, 4), (5, 1), (3, 8)])
def test_every_epoch_covers_each_forget_example_once(n_forget, batch):
    """Over the ceil(n/batch) steps of an epoch the forget indices are a permutation of range(n); batches are full
    except the last; epochs are shuffled differently; the same (seed, step) always gives the same batch."""
    spe = math.ceil(n_forget / batch)
    orders = []
    for epoch in range(4):
        steps = [step_indices(epoch * spe + j, n_forget, 7, batch, seed=3)[0] for j in range(spe)]
        assert [len(s) for s in steps] == [min(batch, n_forget - j * batch) for j in range(spe)]
        flat = [i for s in steps for i in s]
        assert sorted(flat) == list(range(n_forget)), (epoch, steps)
        orders.append(flat)
    if n_forget > 3:
        assert any(o != orders[0] for o in orders[1:])  # reshuffled per epoch
        other = [i for j in range(spe) for i in step_indices(j, n_forget, 7, batch, seed=4)[0]]
        assert other != orders[0]  # depends on the seed
    for s in range(3 * spe):
        assert step_indices(s, n_forget, 7, batch, seed=3) == step_indices(s, n_forget, 7, batch, seed=3)


def test_retain_draws_uniform_with_replacement_and_deterministic():
    """One retain index per forget index, in range, drawn with replacement (4 draws from 3 must repeat), uniform
    over many steps (each of 5 indices 20% +- 2%), fresh per step, and a pure function of (seed, step)."""
    for s in range(20):
        f, r = step_indices(s, 10, 3, 4, seed=0)
        assert len(r) == len(f) and all(0 <= i < 3 for i in r)
        if len(r) == 4:
            assert len(set(r)) < 4
    draws = [step_indices(s, 8, 5, 4, seed=1)[1] for s in range(2000)]
    counts = Counter(i for d in draws for i in d)
    assert set(counts) == set(range(5))
    assert all(abs(c / 8000 - 0.2) < 0.02 for c in counts.values()), counts
    assert len({tuple(d) for d in draws[:50]}) > 40  # not the same draw every step
    assert draws[7] == step_indices(7, 8, 5, 4, seed=1)[1]
    assert [step_indices(s, 8, 5, 4, seed=2)[1] for s in range(20)] != draws[:20]


# ----------------------------------------------------------------------------------------------- one step
def test_gradient_clipping_rescales_to_max_grad_norm():
    """``grad_norm`` is the norm before clipping (the same as without clipping); after train_step the gradients are
    the unclipped ones times max_grad_norm / grad_norm, i.e. their norm is exactly max_grad_norm."""
    model, f, r = tiny_lm(), qa_items(4, 1), qa_items(4, 3)
    free, loop_free = one_step(model, "graddiff", f, r, cfg32(batch_size=4, max_grad_norm=0))
    g_free = grads(loop_free)
    assert free["grad_norm"] == pytest.approx(float(g_free.norm()), rel=1e-5)
    assert free["grad_norm"] > 0.05
    clip, loop_clip = one_step(model, "graddiff", f, r, cfg32(batch_size=4, max_grad_norm=0.01))
    assert clip["grad_norm"] == pytest.approx(free["grad_norm"], rel=1e-5)
    assert float(grads(loop_clip).norm()) == pytest.approx(0.01, rel=1e-4)
    assert torch.allclose(grads(loop_clip), g_free * (0.01 / free["grad_norm"]), rtol=1e-4, atol=1e-9)
    big, loop_big = one_step(model, "graddiff", f, r, cfg32(batch_size=4, max_grad_norm=1e6))
    assert torch.allclose(grads(loop_big), g_free, rtol=1e-5, atol=1e-9)  # below the threshold: untouched


@pytest.mark.parametrize(
    ("method", "retain"), [("ga", None), ("npo", "nll"), ("simnpo", "kl"), ("graddiff", "kl_unmasked")]
)
def test_micro_batches_of_one_equal_the_whole_batch(method, retain):
    """micro_batch_size=1 (5 forward/backward passes, sorted by length) gives the same loss, token count and
    gradient as the whole batch in one pass (weights moved off the reference, so KL and NPO terms are non-zero)."""
    model, f, r = tiny_lm(), qa_items(5, 1), qa_items(5, 3)
    mkw = {"beta": 0.5} if method in ("npo", "simnpo") else {}
    mkw.update({} if retain is None else {"retain": retain})
    kw = {"perturb": 0.05, **mkw}
    whole, lw = one_step(model, method, f, r, cfg32(batch_size=5, max_grad_norm=0), **kw)
    ones, lo = one_step(model, method, f, r, cfg32(batch_size=5, micro_batch_size=1, max_grad_norm=0), **kw)
    assert abs(whole["loss"]) > 1e-3 and (retain is None or whole["retain_loss"] > 1e-4)
    assert lo.micro == 1 and lw.micro == 5
    assert ones["loss"] == pytest.approx(whole["loss"], rel=1e-5)
    assert ones["tokens"] == whole["tokens"]
    assert torch.allclose(grads(lo), grads(lw), rtol=1e-4, atol=1e-7)


def test_step_loss_and_tokens_are_the_global_token_and_sequence_means():
    """The loop's normalisers, checked against an independent forward pass of the same model:
    GA: loss = sum_b logp_b / sum_b |y_b| over the 5 forget examples; tokens = real forget tokens only.
    NPO + NLL at initialisation (theta = ref): loss = (2/beta) log 2 + (-sum logp_r / sum |y_r|); tokens = forget +
    retain real tokens."""
    model, f, r = tiny_lm(), qa_items(5, 1), qa_items(5, 3)
    with torch.no_grad():
        seq_f, n_f = sequence_logps(model, collate(f, 0))
        seq_r, n_r = sequence_logps(model, collate(r, 0))
    assert int(n_f.sum()) == n_answer(f) == 13 and int(n_r.sum()) == n_answer(r) == 7  # different normalisers
    res, _ = one_step(model, "ga", f, r, cfg32(batch_size=5, micro_batch_size=2, max_grad_norm=0))
    assert res["loss"] == pytest.approx(float(seq_f.sum() / n_f.sum()), rel=1e-5)
    assert res["forget_logp"] == pytest.approx(float(seq_f.sum() / n_f.sum()), rel=1e-5)
    assert res["tokens"] == sum(len(ids) for ids, _ in f)
    cfg = cfg32(batch_size=5, micro_batch_size=2, max_grad_norm=0)
    res, _ = one_step(model, "npo", f, r, cfg, beta=0.5, retain="nll")
    nll = float(-seq_r.sum() / n_r.sum())
    assert res["loss"] == pytest.approx(4 * math.log(2) + nll, rel=1e-5)
    assert res["retain_loss"] == pytest.approx(nll, rel=1e-5)
    assert res["npo_weight"] == pytest.approx(1.0, rel=1e-5)
    assert res["tokens"] == sum(len(ids) for ids, _ in f + r)


class FakeAccelerator:
    """Rank ``rank`` of a simulated ``world``-process run: the real one-process accelerator underneath, reporting
    the world size and rank; ``reduce`` is the identity (the test sums the ranks itself) and ``backward`` records
    the loss it is given."""

    def __init__(self, rank: int, world: int):
        from accelerate import Accelerator

        self._acc = Accelerator()
        self.num_processes, self.process_index, self.is_main_process = world, rank, rank == 0
        self.backward_losses: list[float] = []

    def backward(self, loss):
        self.backward_losses.append(float(loss.detach()))
        loss.backward()

    def reduce(self, tensor, reduction="sum"):
        return tensor

    def __getattr__(self, name):
        return getattr(self._acc, name)


@pytest.mark.parametrize("method", ["ga", "npo"])
@pytest.mark.parametrize("n", [4, 3, 1])
def test_two_process_shares_average_to_the_one_process_gradient(method, n):
    """World size 2: each rank takes a contiguous share of the global batch (4 -> 2 + 2, 3 -> 2 + 1, 1 -> 1 + a
    weight-0 dummy) and backpropagates its share's loss, normalised by the *global* counts, times W = 2. DDP
    averages the two gradients: that average must equal the one-process gradient (and the two shares' losses add up
    to the one-process loss). Dropping the factor W halves the average; overlapping shares double-count."""
    model, f, r = tiny_lm(), qa_items(n, 1), qa_items(n, 3)
    cfg = cfg32(batch_size=n, max_grad_norm=0)
    one, l1 = one_step(model, method, f, r, cfg, perturb=0.05)
    shares, gs, losses = [], [], []
    for rank in (0, 1):
        acc = FakeAccelerator(rank, 2)
        res, loop = one_step(model, method, f, r, cfg, accelerator=acc, perturb=0.05)
        shares.append(acc.backward_losses)
        gs.append(grads(loop))
        losses.append(res["loss"])
    assert torch.allclose((gs[0] + gs[1]) / 2, grads(l1), rtol=1e-4, atol=1e-7)
    assert sum(losses) == pytest.approx(one["loss"], rel=1e-5)
    if n == 1:  # rank 1 has nothing: it runs one example with weight 0 so that DDP's all-reduce still meets
        assert shares[1] == [0.0] and torch.count_nonzero(gs[1]) == 0
    else:  # each share's loss (over its micro-batches) goes to backward multiplied by the world size
        assert sum(shares[0]) == pytest.approx(2 * losses[0], rel=1e-6)
        assert sum(shares[1]) == pytest.approx(2 * losses[1], rel=1e-6)


# ----------------------------------------------------------------------------------------------- resume
def word_tokenizer(words: list[str]):
    """A whitespace word-level tokenizer: <pad> 0, <unk> 1, </s> 2, then ``words``."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<unk>", "</s>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>", eos_token="</s>")


class Stop(Exception):
    pass


def test_checkpoint_then_resume_gives_identical_weights(tmp_path):
    """NPO, 6 steps (3 per epoch, 1 warm-up epoch, clipping on), checkpoint every 2. Run B dies in its 4th step
    (after the step-2 checkpoint and an uncheckpointed 3rd step); the same call again resumes from step 2 and ends
    with the weights, per-step losses and LRs of the uninterrupted run A (optimizer moments, scheduler position,
    step counter and data order all restored)."""
    words = [f"w{i}" for i in range(30)]
    tok = word_tokenizer(["Question", "Answer", ":", *words])
    g = np.random.default_rng(0)

    def rec():
        return {"question": " ".join(g.choice(words, 3)), "answer": " ".join(g.choice(words, int(g.integers(1, 4))))}

    forget, retain = [rec() for _ in range(6)], [rec() for _ in range(5)]
    model = tiny_lm(vocab=len(tok))
    spec = get_method("npo")
    tcfg = cfg32(lr=1e-2, epochs=2, batch_size=2, warmup_epochs=1.0, checkpoint_every=2, max_grad_norm=1.0)
    mcfg = spec.config_cls(beta=0.5)

    def run(rdir, method=spec):
        out, _ = unlearn_model(
            copy.deepcopy(model), tok, PromptFormat(), forget, retain, method, mcfg, tcfg, 0, rdir, progress=False,
            log=logs.append,
        )  # fmt: skip
        return out

    logs: list[str] = []
    a = run(tmp_path / "a")
    calls = []

    def dying_step(ctx, batch, cfg):
        calls.append(1)
        if len(calls) == 4:
            raise Stop
        return spec.step(ctx, batch, cfg)

    with pytest.raises(Stop):
        run(tmp_path / "b", dataclasses.replace(spec, step=dying_step))
    assert json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())["step"] == 2
    logs.clear()
    b = run(tmp_path / "b")
    assert any("resuming from step 2" in m for m in logs), logs
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.allclose(sa[k], sb[k], rtol=0, atol=1e-7), k
    assert any(not torch.equal(v, model.state_dict()[k]) for k, v in sa.items())  # it did train

    def trace(d):
        rows = [json.loads(x) for x in (d / "trace.jsonl").read_text().splitlines()]
        return [(r["step"], r["loss"], r["lr"]) for r in rows if "loss" in r]

    ta, tb = trace(tmp_path / "a"), trace(tmp_path / "b")
    # the trace records the rate each step applied: warm-up 0/3, 1/3, 2/3 then linear decay 3/3, 2/3, 1/3 (x lr)
    f = lr_lambda(tcfg, 3, 6)
    assert [lr for _, _, lr in ta] == pytest.approx([1e-2 * f(s) for s in range(6)], rel=1e-12)
    assert [lr for _, _, lr in ta] == pytest.approx([1e-2 * m for m in (0, 1 / 3, 2 / 3, 1, 2 / 3, 1 / 3)])
    assert [s for s, _, _ in tb] == list(range(1, 7))
    for (sa_, la, lra), (sb_, lb, lrb) in zip(ta, tb):
        assert sa_ == sb_ and la == pytest.approx(lb, rel=1e-6) and lra == pytest.approx(lrb, rel=1e-9)

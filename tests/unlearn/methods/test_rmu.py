"""RMU pinned to hand-worked numbers (docs/methods/rmu.md): the masked MSE, the retain term, the global normaliser
(micro-batches add up through the real loop), the trained parameters, the direction u, and a short run on the
tiny target that moves only the chosen down-projections and pulls the forget states towards c*u."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from unlearn.config import TrainConfig
from unlearn.errors import UnlearnError
from unlearn.methods import get_method
from unlearn.methods.rmu import RMUConfig, masked_sq, rmu_loss, steer_direction
from unlearn.methods.rmu import step as rmu_step
from unlearn.methods.rmu import trainable as rmu_trainable
from unlearn.targets.arch import arch
from unlearn.targets.llm import PromptFormat, collate, encode_record
from unlearn.train import setup, train_step, unlearn_model

from ..test_train_values import SILENT, n_answer, qa_items, tiny_lm


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: more threads only contend
    yield
    torch.set_num_threads(threads)


# h (1, 3, 2) with the third position padding; u = (0.6, 0.8), c = 5, so c*u = (3, 4):
#   t=0: ((1-3)² + (2-4)²)/2 = (4 + 4)/2  = 4
#   t=1: ((3-3)² + (0-4)²)/2 = (0 + 16)/2 = 8
#   t=2: ((5-3)² + (5-4)²)/2 = (4 + 1)/2  = 2.5   (padding)
# masked mean (4 + 8)/2 = 6; padding-inclusive (the reference's mse_loss) (4 + 8 + 2.5)/3 = 4.8333333
H = torch.tensor([[[1.0, 2.0], [3.0, 0.0], [5.0, 5.0]]])
MASK = torch.tensor([[True, True, False]])
U = torch.tensor([0.6, 0.8])


def test_masked_mse_by_hand_excludes_padding():
    loss, forget, retain = rmu_loss(H, MASK, H, H.clone(), MASK, U, 5.0, 100.0, 2.0, 2.0)
    assert math.isclose(forget.item(), 6.0, rel_tol=1e-6)
    assert math.isclose(loss.item(), 6.0, rel_tol=1e-6)  # h_r == h_r_ref: the retain term is exactly 0
    assert retain.item() == 0.0
    everywhere = torch.ones_like(MASK)
    _, padded, _ = rmu_loss(H, everywhere, H, H, everywhere, U, 5.0, 1.0, 3.0, 3.0)
    assert math.isclose(padded.item(), 14.5 / 3, rel_tol=1e-6)  # 4.8333: the padding-inclusive number differs
    ref_code = torch.nn.functional.mse_loss(H, (5.0 * U).expand_as(H))  # the reference's loss, padding included
    assert math.isclose(ref_code.item(), 14.5 / 3, rel_tol=1e-6)


def test_retain_term_by_hand():
    """h_r = H, h_r_ref = 0, every position: ((1+4)/2 + (9+0)/2 + (25+25)/2)/3 = (2.5 + 4.5 + 25)/3 = 32/3; with
    alpha = 3 it adds 32 to the forget term 6 (n_f = 2): 38."""
    allpos = torch.ones_like(MASK)
    loss, forget, retain = rmu_loss(H, MASK, H, torch.zeros_like(H), allpos, U, 5.0, 3.0, 2.0, 3.0)
    assert math.isclose(retain.item(), 32 / 3, rel_tol=1e-6)
    assert math.isclose(loss.item(), 38.0, rel_tol=1e-6)
    g = torch.zeros_like(H, requires_grad=True)
    rmu_loss(H, MASK, H + g, H, allpos, U, 5.0, 3.0, 2.0, 3.0)[0].backward()
    assert torch.count_nonzero(g.grad) == 0  # at h_r = h_r_ref the retain term has zero gradient too


def test_micro_batches_sum_to_the_one_batch_loss_pure():
    g = torch.Generator().manual_seed(0)
    hf, hr, hr0 = (torch.randn(4, 5, 3, generator=g) for _ in range(3))
    mf, mr = torch.rand(4, 5, generator=g) > 0.4, torch.rand(4, 5, generator=g) > 0.3
    u = steer_direction(3, 1)
    nf, nr = float(mf.sum()), float(mr.sum())
    whole = rmu_loss(hf, mf, hr, hr0, mr, u, 2.0, 7.0, nf, nr)[0]
    halves = (slice(0, 1), slice(1, 4))
    parts = sum(rmu_loss(hf[s], mf[s], hr[s], hr0[s], mr[s], u, 2.0, 7.0, nf, nr)[0] for s in halves)
    assert torch.allclose(whole, parts, rtol=1e-6)
    # with n = mask.sum() it is the plain masked mean over positions of the mean over d
    per = ((hf - 2.0 * u) ** 2).mean(-1)
    assert torch.allclose(masked_sq(hf, 2.0 * u, mf) / nf, per[mf].mean(), rtol=1e-6)


class _Ctx:
    def __init__(self, hs, norm):
        self.hs, self.norm, self.calls = hs, norm, []

    def hidden(self, *batches, layer, reference=False):
        self.calls.append((len(batches), layer, reference))
        return self.hs["ref" if reference else "pol"][: len(batches)]


def test_step_uses_the_states_that_predict_labels_and_the_global_counts():
    """labels (-100, -100, 7, 8): after the shift the states at t = 1, 2 count (they predict tokens 2 and 3), not
    t = 0 nor the last; normalised by ctx.norm's forget_tokens = 4 (the global step), not this batch's 2."""
    u = steer_direction(2, 5)
    cu = 3.0 * u
    h = torch.zeros(1, 4, 2)
    h[0, 0] = torch.tensor([100.0, 0.0])  # t = 0 and t = 3 must not count
    h[0, 3] = torch.tensor([0.0, -50.0])
    h[0, 1] = cu + torch.tensor([1.0, 1.0])  # mean_d = 1
    h[0, 2] = cu + torch.tensor([2.0, 0.0])  # mean_d = 2
    lab = torch.tensor([[-100, -100, 7, 8]])
    b = {"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": torch.ones(1, 4), "labels": lab}
    ctx = _Ctx({"pol": [h, h.clone()], "ref": [h.clone()]}, {"forget_tokens": 4.0, "retain_tokens": 2.0})
    loss, logs = rmu_step(ctx, {"forget": b, "retain": b}, RMUConfig(layer=1, steer=3.0, alpha=10.0, seed=5))
    assert math.isclose(loss.item(), (1 + 2) / 4, rel_tol=1e-6)
    assert math.isclose(float(logs["forget_mse"]), 0.75, rel_tol=1e-6) and float(logs["retain_mse"]) == 0.0
    assert ctx.calls == [(2, 1, False), (1, 1, True)]  # forget + retain in one pass, then the frozen retain


def _loop_loss_and_grads(micro: int):
    model = tiny_lm(0)
    f, r = qa_items(6, 1), qa_items(6, 2)
    spec, cfg = get_method("rmu"), RMUConfig(layer=1, steer=3.0, alpha=5.0, seed=0)
    tcfg = TrainConfig(precision="fp32", micro_batch_size=micro, batch_size=6)
    loop = setup(model, f, spec, cfg, tcfg, 0, 1, 1, None, SILENT)
    with torch.no_grad():  # move the policy away from the frozen reference so the retain term is not 0
        arch(loop.model).down_proj(0).weight.mul_(1.5)
    res = train_step(loop, f, r, list(range(6)))
    assert loop.acc.num_processes == 1 and n_answer(f) > 0
    return res, [p.grad.clone() for p in loop.params]


def test_micro_batches_sum_to_the_one_batch_loss_through_the_loop():
    """micro-batches of 2 (each padded to its own length) give the loss and gradient of the whole batch: the
    masked positions and ctx.norm's token counts are the same set."""
    whole, g_whole = _loop_loss_and_grads(0)
    split, g_split = _loop_loss_and_grads(2)
    assert whole["retain_mse"] > 0
    assert math.isclose(whole["loss"], split["loss"], rel_tol=1e-5)
    assert math.isclose(whole["forget_mse"], split["forget_mse"], rel_tol=1e-5)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(g_whole, g_split))


def test_trainable_selects_the_down_projections_of_the_chosen_layers(tiny):
    _, model, _ = tiny  # 2 decoder blocks
    names = lambda cfg: [n for n, _ in rmu_trainable(model, cfg)]  # noqa: E731
    assert names(RMUConfig(layer=1)) == ["model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"]
    assert names(RMUConfig(layer=0)) == ["model.layers.0.mlp.down_proj.weight"]
    assert names(RMUConfig(layer=0, layers=[1])) == ["model.layers.1.mlp.down_proj.weight"]
    assert len(names(RMUConfig(layer=1, params="all"))) == len(list(model.parameters()))
    with pytest.raises(UnlearnError, match="layer 7 is out of range"):
        names(RMUConfig())  # the 7B default on a 2-block model
    assert get_method("rmu").needs_reference(RMUConfig())


def test_direction_is_unit_norm_and_seeded():
    u = steer_direction(192, 3)
    assert math.isclose(float(u.norm()), 1.0, rel_tol=1e-6) and bool((u >= 0).all())
    assert torch.equal(u, steer_direction(192, 3)) and not torch.equal(u, steer_direction(192, 4))
    gen = torch.Generator().manual_seed(3)
    raw = torch.rand(192, generator=gen)
    assert torch.allclose(u, raw / raw.norm())  # uniform [0, 1)^d, normalised (the reference's torch.rand)


def _dist_to_cu(model, tok, recs, cfg) -> float:
    """Mean over the counted forget positions of (1/d)||h_l - c u||² (the forget term at theta)."""
    b = collate([encode_record(tok, PromptFormat(), r) for r in recs], tok.pad_token_id)
    hs = []
    keep = lambda m, i, o: hs.append(o[0] if isinstance(o, tuple) else o)  # noqa: E731
    hook = arch(model).blocks[cfg.layer].register_forward_hook(keep)
    with torch.no_grad():
        model(input_ids=b["input_ids"], attention_mask=b["attention_mask"])
    hook.remove()
    m = b["labels"][:, 1:] != -100
    u = steer_direction(hs[0].shape[-1], cfg.seed)
    return float(masked_sq(hs[0][:, :-1], cfg.steer * u, m) / m.sum())


def test_short_run_moves_only_down_projections_towards_cu(tiny):
    tok, model, splits = tiny
    forget, retain = splits["forget10"][:8], splits["retain90"][:8]
    cfg = RMUConfig(layer=1, steer=4.0, alpha=1.0, seed=0)
    before = _dist_to_cu(model, tok, forget, cfg)
    tcfg = TrainConfig(lr=1e-2, epochs=3, batch_size=4, warmup_epochs=0, precision="fp32")
    assert tcfg.weight_decay > 0
    out, summary = unlearn_model(copy.deepcopy(model), tok, PromptFormat(), forget, retain, get_method("rmu"),
                                 cfg, tcfg, 0, None, progress=False, log=SILENT)  # fmt: skip
    assert summary["steps"] == 6
    after = _dist_to_cu(out, tok, forget, cfg)
    assert after < 0.8 * before, (before, after)
    trained = {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    old = dict(model.named_parameters())
    for n, p in out.named_parameters():
        same = torch.equal(p.detach().cpu(), old[n].detach().cpu())
        assert same == (n not in trained), n  # every other parameter bit-identical; the trained ones moved


def test_run_seed_pins_the_direction(tiny):
    """seed = -1: prepare takes the run seed (unlearn_model seeds torch first) and writes it into the config."""
    tok, model, splits = tiny
    cfg = RMUConfig(layer=0)
    tcfg = TrainConfig(lr=1e-3, epochs=1, batch_size=4, warmup_epochs=0, precision="fp32")
    unlearn_model(copy.deepcopy(model), tok, PromptFormat(), splits["forget10"][:4], splits["retain90"][:4],
                  get_method("rmu"), cfg, tcfg, 11, None, progress=False, log=SILENT)  # fmt: skip
    assert cfg.seed == 11

"""Memory-lean defaults: NPO with its NLL retain term keeps no frozen copy of the model (its reference log-probs
are cached from the model itself before the first update), and the cache equals the one a copy gives, bit for bit."""

from __future__ import annotations

import copy
import dataclasses
import gc

import pytest
import torch

from unlearn.config import TrainConfig
from unlearn.methods import get_method
from unlearn.targets.llm import PromptFormat, encode_qa
from unlearn.train import setup, unlearn_model


def _alive_param_elements() -> int:
    """Elements of every distinct nn.Parameter held by a live nn.Module (a gc walk: independent of the loop)."""
    seen: dict[int, int] = {}
    for obj in gc.get_objects():
        if isinstance(obj, torch.nn.Module):
            for p in obj.parameters(recurse=False):
                seen[id(p)] = p.numel()
    return sum(seen.values())


def _peak_extra_params(tiny, retain: str) -> tuple[int, int]:
    """(peak parameter elements alive during a real 3-step NPO run minus those alive before it, model size)."""
    tok, model, splits = tiny
    spec = get_method("npo")
    peak = []

    def step(ctx, batch, cfg):  # measures at every micro-batch of every step, then runs NPO's own step
        peak.append(_alive_param_elements())
        return spec.step(ctx, batch, cfg)

    probe = dataclasses.replace(spec, step=step)
    m = copy.deepcopy(model)
    gc.collect()
    before = _alive_param_elements()
    tcfg = TrainConfig(lr=1e-3, epochs=3, batch_size=4, warmup_epochs=0)
    unlearn_model(m, tok, PromptFormat(), splits["forget10"][:4], splits["retain90"][:8], probe,
                  spec.config_cls(retain=retain), tcfg, seed=0, rdir=None, progress=False)  # fmt: skip
    return max(peak) - before, sum(p.numel() for p in model.parameters())


def test_npo_with_nll_retain_allocates_no_reference_model(tiny):
    extra, n = _peak_extra_params(tiny, "nll")
    assert extra == 0, (extra, n)


def test_npo_with_kl_retain_keeps_one_reference_copy(tiny):
    extra, n = _peak_extra_params(tiny, "kl")  # the measurement sees a copy when there is one
    assert extra == n, (extra, n)


@pytest.mark.parametrize("method", ["npo", "idkdpo"])
def test_cached_reference_logps_equal_the_copy_s_bit_for_bit(tiny, method):
    """The cache from the model itself (no copy) equals the one from a frozen copy (the old path), exactly."""
    tok, model, splits = tiny
    spec = get_method(method)
    f = [encode_qa(tok, PromptFormat(), r["question"], r["answer"]) for r in splits["forget10"]]
    tcfg = TrainConfig(lr=1e-3, batch_size=4, micro_batch_size=3)
    lean = setup(copy.deepcopy(model), f, spec, spec.config_cls(), tcfg, tok.pad_token_id, 1, 1)
    always = dataclasses.replace(spec, needs_reference=lambda cfg: True, reference_logps=lambda cfg: False)
    old = setup(copy.deepcopy(model), f, always, spec.config_cls(), tcfg, tok.pad_token_id, 1, 1)
    assert old.ref_model is not None and old.ref_cache.shape == (len(f),)
    assert (lean.ref_model is None) == (method == "npo")
    assert torch.equal(lean.ref_cache, old.ref_cache)
    assert lean.model.training  # the cache pass put the model back in training mode


# ----------------------------------------------------------------------------------------------- fp32 master weights
def _linear_run(dtype, master: str, steps: int, start=None, ckpt=None, resume=None):
    """``steps`` AdamW steps (lr 1e-4, below half a bf16 ulp of the weights) on a 32x32 linear layer of ``dtype``.

    The layer starts from the same bf16-representable values whatever ``dtype``; the loss is a fixed quadratic.
    ``ckpt``: save a checkpoint there after the run; ``resume``: load one before it (the loop core's own files).
    """
    from accelerate import Accelerator

    from unlearn.loop import load_checkpoint, make_core, save_checkpoint

    g = torch.Generator().manual_seed(0)
    w0 = (torch.rand(32, 32, generator=g) + 1.0).to(torch.bfloat16)  # in [1, 2): a bf16 ulp is 2**-7
    x, y = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    lin = torch.nn.Linear(32, 32, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w0.float())
    lin.to(dtype)
    tcfg = TrainConfig(lr=1e-4, weight_decay=0.0, max_grad_norm=0, warmup_epochs=0, schedule="constant",
                       master_weights=master)  # fmt: skip
    core = make_core(Accelerator(cpu=True), list(lin.named_parameters()), tcfg, 100, 100)
    done = 0
    if resume is not None:
        done, _, _ = load_checkpoint(resume, lin, core)
    for _ in range(steps):
        loss = ((lin(x.to(dtype)).float() - y) ** 2).mean()
        core.backward(loss)
        core.finish_grads()
        core.step()
    if ckpt is not None:
        save_checkpoint(ckpt, lin, core, done + steps, 0)
    master_w = core.masters[0][1] if core.masters else lin.weight.detach().float()
    return lin.weight.detach().float(), master_w.clone(), w0.float()


def test_fp32_masters_keep_the_updates_bf16_weights_round_away():
    ref, _, w0 = _linear_run(torch.float32, "none", 30)  # the fp32 reference run
    plain, _, _ = _linear_run(torch.bfloat16, "none", 30)
    wm, master, _ = _linear_run(torch.bfloat16, "fp32", 30)
    moved = (ref - w0).norm()
    err_plain, err_master = (plain - ref).norm() / moved, (master - ref).norm() / moved
    # measured: plain bf16 loses every update (its weights never move: err 1.0), masters follow fp32 to 0.014
    assert torch.equal(plain, w0) and err_plain > 0.99, float(err_plain)
    assert err_master < 0.05, float(err_master)
    assert wm.dtype == torch.float32 and torch.equal(wm, master.to(torch.bfloat16).float())  # params = rounded masters
    assert (wm - w0).abs().max() > 0  # some entries crossed a bf16 rounding boundary


def test_fp32_masters_resume_exactly(tmp_path):
    full, m_full, _ = _linear_run(torch.bfloat16, "fp32", 12)
    _linear_run(torch.bfloat16, "fp32", 5, ckpt=tmp_path / "ck")
    assert (tmp_path / "ck" / "aux_master_weights.pt").exists()
    half, m_half, _ = _linear_run(torch.bfloat16, "fp32", 7, resume=tmp_path / "ck")
    assert torch.equal(m_half, m_full) and torch.equal(half, full)


# ----------------------------------------------------------------------------------------------- the estimate
@pytest.mark.parametrize(("dtype", "master"), [(torch.float32, "none"), (torch.bfloat16, "none"),
                                               (torch.bfloat16, "fp32")])  # fmt: skip
def test_state_terms_equal_the_real_tensors_after_one_step(tiny, dtype, master):
    """weights / gradients / optimizer equal the summed nbytes of the parameters, their .grad and AdamW's state
    (masters included) after one real optimizer step on the tiny Llama."""
    from accelerate import Accelerator

    from unlearn.loop import make_core
    from unlearn.memory import estimate

    tok, model, splits = tiny
    m = copy.deepcopy(model).to(dtype)
    tcfg = TrainConfig(lr=1e-3, master_weights=master)
    named = list(m.named_parameters())
    core = make_core(Accelerator(cpu=True), named, tcfg, 1, 1)
    b = {k: v for k, v in _batch(tok, splits).items()}
    m(**b).loss.backward()
    grads = sum(p.grad.nbytes for p in m.parameters() if p.grad is not None)
    core.step()
    opt_state = sum(t.nbytes for st in core.opt.state.values() for t in st.values() if torch.is_tensor(t))
    opt_state += sum(mw.nbytes for _, mw in core.masters)
    est = estimate(m, named, tcfg, reference=False, micro=1, seq_len=8)
    assert est["weights"] == sum(p.nbytes for p in m.parameters())
    assert est["gradients"] == grads
    assert est["optimizer"] == opt_state
    assert est["reference"] == 0 and estimate(m, named, tcfg, True, 1, 8)["reference"] == est["weights"]


def _batch(tok, splits):
    from unlearn.targets.llm import collate

    items = [encode_qa(tok, PromptFormat(), r["question"], r["answer"]) for r in splits["forget10"][:2]]
    b = collate(items, tok.pad_token_id)
    return {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"], "labels": b["labels"]}


def test_activation_term_by_hand():
    from unlearn.memory import activation_bytes

    # L=2, d=8, h=2, I=16, V=10, B=3 sequences of T=5, N=4 answer tokens, bf16 (a=2):
    # per layer 3*5*2*(80 + 48 + 2*2*5) = 30*148 = 4440; two layers 8880; logits 4*10*(2+4) = 240
    assert activation_bytes(2, 8, 2, 16, 10, 3, 5, 4, 2, checkpointing=False) == 8880 + 240
    # checkpointing: block inputs 2*3*5*2*8 = 480, plus one block recomputed 4440, plus logits 240
    assert activation_bytes(2, 8, 2, 16, 10, 3, 5, 4, 2, checkpointing=True) == 480 + 4440 + 240


def test_micro_batch_from_free_memory_with_a_two_rank_min():
    from unlearn.memory import choose_micro

    def act(m):  # 100 bytes of activations per micro-batch unit
        return 100 * m

    # 0.8 * 2000 - 400 = 1200 bytes: 12 fit, capped at the share 16; a share of 8 keeps 8
    assert choose_micro(16, act, 2000, 400) == 12
    assert choose_micro(8, act, 2000, 400) == 8
    assert choose_micro(16, act, 100, 400) == 1  # nothing fits: 1 (the OOM halving can do no more)
    # two "ranks" with free memory 2000 and 1500 choose 12 and 8 alone; a fake all-reduce MIN over both gives 8, 8
    alone = [choose_micro(16, act, f, 400) for f in (2000, 1500)]
    assert alone == [12, 8]
    assert [choose_micro(16, act, f, 400, reduce_min=lambda m: min(m, *alone)) for f in (2000, 1500)] == [8, 8]


def test_a_run_prints_the_estimate_and_stores_it_in_config_json(tiny_target_dir, tmp_path, monkeypatch, capsys):
    import json

    from unlearn.cli import main

    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path / "home"))
    t = tiny_target_dir
    cmd = ["run", "--method", "npo", "--model", str(t / "model"), "--forget", str(t / "forget.jsonl"),
           "--retain", str(t / "retain.jsonl"), "--holdout", str(t / "holdout.jsonl"), "--out", str(tmp_path / "r"),
           "--no-progress", "--set", "batch_size=4", "--set", "epochs=1"]  # fmt: skip
    assert main(cmd) == 0
    assert "memory estimate per process:" in capsys.readouterr().out
    cfg = json.loads(next((tmp_path / "r").rglob("config.json")).read_text())
    est = cfg["memory_estimate"]
    assert (
        est["reference"] == 0 and est["weights"] > 0 and est["total"] == sum(v for k, v in est.items() if k != "total")
    )
    assert "memory_estimate" not in json.dumps(cfg["resolved"])  # not part of the run's identity

"""The loop core's extension points, each shown by a test-only toy method on the session's tiny Llama:

(a) restrict trainable parameters / mask gradients, (b) several losses with a gradient transform, (c) an auxiliary
module with its own optimizer (checkpointed and resumed), (d) a step budget over the retain set; and the caller's
model wrapping and optimizer wrapper. Each toy checks the number it must produce, not only that it runs."""

from __future__ import annotations

import copy
import dataclasses
import json
from dataclasses import dataclass

import pytest
import torch

from unlearn.config import TrainConfig
from unlearn.errors import UnlearnError
from unlearn.loop import total_steps
from unlearn.methods import MethodSpec, get_method, register_method
from unlearn.targets.llm import PromptFormat
from unlearn.train import unlearn_model

SILENT = lambda *a, **k: None  # noqa: E731


@dataclass
class ToyConfig:
    weight: float = 1.0  # scale of the toy loss


def _ga(ctx, batch, cfg):  # plain GA: the toys add one extension each on top of it
    out = ctx.policy(batch["forget"])
    return cfg.weight * out["seq_logp"].sum() / ctx.norm["forget_tokens"], {}


def _tcfg(**kw) -> TrainConfig:
    base = dict(lr=1e-3, epochs=1, batch_size=4, warmup_epochs=0, max_grad_norm=0, weight_decay=0.0,
                precision="fp32")  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _run(tiny, spec, tcfg=None, rdir=None, **kw):
    tok, model, splits = tiny
    out, summary = unlearn_model(copy.deepcopy(model), tok, PromptFormat(), splits["forget10"][:8],
                                 splits["retain90"][:6], spec, ToyConfig(), tcfg or _tcfg(), 0, rdir,
                                 progress=False, log=SILENT, **kw)  # fmt: skip
    return out, summary


def _changed(a, b) -> set[str]:
    sb = b.state_dict()
    return {k for k, v in a.state_dict().items() if not torch.equal(v, sb[k])}


def test_a_trainable_restricts_and_grad_mask_masks(tiny):
    _, model, _ = tiny
    only_head = MethodSpec(
        "toy_head",
        "llm",
        ToyConfig,
        "toy",
        step=_ga,
        trainable=lambda m, cfg: (
            [("lm_head.weight", m.lm_head.weight)]
            if not m.config.tie_word_embeddings
            else [("model.norm.weight", m.model.norm.weight)]
        ),
    )
    out, _ = _run(tiny, only_head)
    moved = _changed(out, model)
    assert moved and len(moved) == 1, moved  # exactly the one chosen tensor moved

    name = "model.layers.0.mlp.down_proj.weight"
    mask = torch.zeros_like(dict(model.named_parameters())[name])
    mask[:, :3] = 1  # three columns of one down-projection may move
    masked = MethodSpec("toy_mask", "llm", ToyConfig, "toy", step=_ga,
                        trainable=lambda m, cfg: [(name, dict(m.named_parameters())[name])],
                        grad_mask=lambda m, cfg: {name: mask})  # fmt: skip
    out, _ = _run(tiny, masked)
    delta = (dict(out.named_parameters())[name] - dict(model.named_parameters())[name]).abs()
    assert delta[:, :3].sum() > 0 and delta[:, 3:].sum() == 0  # masked entries never move (no weight decay)
    assert _changed(out, model) == {name}
    with pytest.raises(UnlearnError, match="cannot be combined with LoRA"):
        _run(tiny, masked, _tcfg(**{"lora": dataclasses.replace(TrainConfig().lora, r=4)}))


def test_b_several_losses_and_a_gradient_transform(tiny):
    """Two losses whose gradients are exact opposites; a transform keeping only the first equals plain GA, one
    summing them moves nothing, and the transform sees both gradients."""
    seen = []

    def two(ctx, batch, cfg):
        ga, logs = _ga(ctx, batch, cfg)
        return {"forget": ga, "anti": -ga}, logs

    def keep_first(grads, cfg):
        seen.append(sorted(grads))
        for g1, g2 in zip(grads["forget"], grads["anti"]):
            torch.testing.assert_close(g1, -g2)
        return grads["forget"]

    plain, _ = _run(tiny, MethodSpec("toy_ga", "llm", ToyConfig, "toy", step=_ga))
    first, _ = _run(tiny, MethodSpec("toy_first", "llm", ToyConfig, "toy", step=two, transform_grads=keep_first))
    for (k, a), (_, b) in zip(plain.state_dict().items(), first.state_dict().items()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=k)
    assert seen == [["anti", "forget"]] * 2  # 8 forget examples / batch 4 = 2 steps
    summed, _ = _run(tiny, MethodSpec("toy_sum", "llm", ToyConfig, "toy", step=two))  # no transform: they add up
    assert not _changed(summed, tiny[1])


def test_c_auxiliary_module_with_its_own_optimizer_is_checkpointed(tiny, tmp_path):
    """A scalar auxiliary parameter trained by its own SGD (lr 0.5) towards 1 inside the step; after 4 steps it is
    1 - 0.5**4, and a run interrupted after the step-2 checkpoint resumes it from its saved value."""

    def make_aux(model, cfg, device):
        aux = torch.nn.Linear(1, 1, bias=False).to(device)
        torch.nn.init.zeros_(aux.weight)
        return {"head": aux, "opt": torch.optim.SGD(aux.parameters(), lr=0.5)}

    def step(ctx, batch, cfg):
        w = ctx.aux["head"].weight
        ctx.aux["opt"].zero_grad()
        ((w - 1.0) ** 2 / 2).sum().backward()  # gradient w - 1: w <- w - 0.5 (w - 1)
        ctx.aux["opt"].step()
        loss, logs = _ga(ctx, batch, cfg)
        return loss, {**logs, "aux": float(w.detach())}

    spec = MethodSpec("toy_aux", "llm", ToyConfig, "toy", step=step, make_aux=make_aux)
    tcfg = _tcfg(epochs=2, checkpoint_every=2)
    _run(tiny, spec, tcfg, rdir=tmp_path / "a")
    trace = [json.loads(x) for x in (tmp_path / "a" / "trace.jsonl").read_text().splitlines()]
    assert [round(r["aux"], 6) for r in trace] == [0.5, 0.75, 0.875, 0.9375]

    calls = []

    def dying(ctx, batch, cfg):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return step(ctx, batch, cfg)

    with pytest.raises(KeyboardInterrupt):
        _run(tiny, dataclasses.replace(spec, step=dying), tcfg, rdir=tmp_path / "b")
    _run(tiny, spec, tcfg, rdir=tmp_path / "b")
    trace_b = [json.loads(x) for x in (tmp_path / "b" / "trace.jsonl").read_text().splitlines()]
    assert [round(r["aux"], 6) for r in trace_b] == [0.5, 0.75, 0.875, 0.9375]  # resumed from the saved 0.75


def test_d_retain_budget_passes_over_the_retain_set(tiny):
    """budget=retain: an epoch is one pass over the retain set (6 examples, batch 4 -> 2 steps per epoch), and the
    step's retain batch is that epoch's permutation."""
    seen = []

    def step(ctx, batch, cfg):
        seen.append(int(batch["retain"]["input_ids"].shape[0]))
        out = ctx.policy(batch["retain"])
        return -out["seq_logp"].sum() / ctx.norm["retain_tokens"], {}

    spec = MethodSpec("toy_retain", "llm", ToyConfig, "toy", step=step, budget="retain")
    _, summary = _run(tiny, spec, _tcfg(epochs=3))
    assert summary["steps"] == 3 * total_steps(6, _tcfg())[0] == 6
    assert seen == [4, 2] * 3  # each epoch: 4 then the remaining 2 retain examples


@pytest.mark.filterwarnings(r"ignore:Detected call of `lr_scheduler.step\(\)`")
def test_caller_wraps_the_model_and_the_optimizer(tiny):
    wrapped, opt_wrapped = [], []

    def wrap(module, acc):
        wrapped.append(type(module).__name__)
        return acc.prepare(module)

    def wrap_optimizer(core, module):
        opt_wrapped.append(type(core.opt).__name__)
        inner = core.opt

        class Frozen:  # an optimizer wrapper the core must go through (an opacus-style hook point): it never steps
            param_groups = inner.param_groups
            steps = 0

            def step(self):
                Frozen.steps += 1

            def zero_grad(self, set_to_none=True):
                inner.zero_grad(set_to_none=set_to_none)

            def state_dict(self):
                return inner.state_dict()

        core.opt = Frozen()

    out, summary = _run(tiny, MethodSpec("toy_ga", "llm", ToyConfig, "toy", step=_ga), wrap=wrap,
                        wrap_optimizer=wrap_optimizer)  # fmt: skip
    assert wrapped == ["SequenceLogProbs"] and opt_wrapped == ["AcceleratedOptimizer"]
    assert not _changed(out, tiny[1]) and summary["steps"] == 2  # every step went through the wrapper


def test_registered_toy_is_found_by_kind():
    register_method("toy_registered", ToyConfig, "a test-only toy", kind="llm")(_ga)
    try:
        assert get_method("toy_registered", "llm").step is _ga
        with pytest.raises(UnlearnError, match="unknown diffusion method 'toy_registered'"):
            get_method("toy_registered", "diffusion")
    finally:
        from unlearn.methods import METHODS

        METHODS.pop(("llm", "toy_registered"))

"""Diffusion GA / NPO: losses and steps pinned to hand-worked numbers; the registry entries; one step on a micro UNet.

The fake context's counts differ from the batch sizes, so a wrong normaliser changes the number: this micro-batch
holds 2 forget and 2 retain pairs, while the step (``ctx.norm``) has 4 forget and 5 retain pairs.

    forget mse (0.2, 0.4), retain mse (0.1, 0.3), reference forget mse (0.3, 0.4), retain weight α = 2, β = 5
    GA:  -(0.2 + 0.4)/4 + 2 (0.1 + 0.3)/5                      = -0.15 + 0.16            = 0.01
    NPO: logp - ref_logp = -mse + ref_mse = (0.1, 0.0)
         -(2/5) [logsigmoid(-0.5) + logsigmoid(0)] / 4 + 0.16  = 0.4 (0.9740770 + 0.6931472)/4 + 0.16 = 0.3267224
"""

import math

import pytest
import torch

from unlearn.methods import get_method
from unlearn.methods.diffusion_grad import (
    DiffusionGAConfig,
    DiffusionNPOConfig,
    diffusion_npo_loss,
    ga_loss,
    ga_step,
    npo_step,
    trainable,
)

NORM = {"forget_seqs": 4.0, "retain_seqs": 5.0}
GA_WANT = -(0.2 + 0.4) / 4 + 2 * (0.1 + 0.3) / 5  # 0.01
NPO_WANT = 0.4 * (math.log1p(math.exp(0.5)) + math.log(2)) / 4 + 2 * (0.1 + 0.3) / 5  # 0.3267224


class FakeCtx:
    """Policy / reference per-sample mse keyed by the batch's name; records the calls."""

    def __init__(self):
        self.norm = dict(NORM)
        self.aux = {}
        self.calls = []
        self.mse = {"forget": torch.tensor([0.2, 0.4], requires_grad=True), "retain": torch.tensor([0.1, 0.3])}

    def policy(self, batch):
        self.calls.append(("policy", batch["name"]))
        return self.mse[batch["name"]]

    def reference(self, batch):
        self.calls.append(("reference", batch["name"]))
        return torch.tensor([0.3, 0.4])


BATCH = {"forget": {"name": "forget"}, "retain": {"name": "retain"}}


def test_losses_by_hand():
    f, r, ref = torch.tensor([0.2, 0.4]), torch.tensor([0.1, 0.3]), torch.tensor([0.3, 0.4])
    assert ga_loss(f, r, 2.0, 4.0, 5.0).item() == pytest.approx(GA_WANT)
    assert ga_loss(f, None, 2.0, 4.0, 5.0).item() == pytest.approx(-0.15)
    assert diffusion_npo_loss(f, ref, r, 2.0, 5.0, 4.0, 5.0).item() == pytest.approx(NPO_WANT, rel=1e-6)
    # at θ = ref the NPO term is (2/β) log 2 (mean over the pairs), whatever the mse
    assert diffusion_npo_loss(f, f, None, 1.0, 5.0, 2.0, 1.0).item() == pytest.approx(2 / 5 * math.log(2))


def test_ga_step_by_hand():
    ctx = FakeCtx()
    loss, logs = ga_step(ctx, BATCH, DiffusionGAConfig(retain_weight=2.0))
    assert loss.item() == pytest.approx(GA_WANT)
    assert logs["forget_mse"].item() == pytest.approx(0.6 / 4) and logs["retain_mse"].item() == pytest.approx(0.4 / 5)
    assert ctx.calls == [("policy", "forget"), ("policy", "retain")]
    loss.backward()  # d loss / d forget mse = -1/n_forget for every pair
    torch.testing.assert_close(ctx.mse["forget"].grad, torch.full((2,), -0.25))
    ctx = FakeCtx()
    loss, logs = ga_step(ctx, BATCH, DiffusionGAConfig(retain_weight=0.0))
    assert loss.item() == pytest.approx(-0.15) and "retain_mse" not in logs
    assert ctx.calls == [("policy", "forget")]  # α = 0: no retain forward pass


def test_npo_step_by_hand():
    ctx = FakeCtx()
    loss, _ = npo_step(ctx, BATCH, DiffusionNPOConfig(beta=5.0, retain_weight=2.0))
    assert loss.item() == pytest.approx(NPO_WANT, rel=1e-6)
    assert ("reference", "forget") in ctx.calls and ("reference", "retain") not in ctx.calls
    loss.backward()  # NPO = GA weighted by 2σ(β r) / n_forget on d(-logp) = d mse: r = (0.1, 0) -> (2σ(0.5), 1) / 4
    want = torch.tensor([-2 * torch.sigmoid(torch.tensor(0.5)).item() / 4, -1 / 4])
    torch.testing.assert_close(ctx.mse["forget"].grad, want)


def test_registered_per_kind_with_hooks():
    ga, npo = get_method("ga", "diffusion"), get_method("npo", "diffusion")
    assert ga.config_cls is DiffusionGAConfig and npo.config_cls is DiffusionNPOConfig
    assert not ga.needs_reference(ga.config_cls()) and npo.needs_reference(npo.config_cls())
    assert ga.trainable is trainable and npo.trainable is trainable and not ga.closed_form
    assert get_method("ga", "llm").config_cls is not DiffusionGAConfig  # one ga per kind


def test_trainable_is_cross_attention_kv_by_default():
    from unlearn.targets.tinyshapes_build import random_target

    unet = random_target("micro").unet
    kv = trainable(unet, DiffusionGAConfig())
    names = [n for n, _ in kv]
    assert names and all(n.endswith((".attn2.to_k.weight", ".attn2.to_v.weight")) for n in names)
    params = dict(unet.named_parameters())
    assert all(params[n] is p for n, p in kv)
    assert len(trainable(unet, DiffusionGAConfig(params="unet"))) == len(params)


def test_one_npo_step_on_micro_unet(tmp_path):
    """Through the loop core: at step 0 the model is its reference, so the loss is (2/β) log 2; then the forget
    denoising loss rises."""
    import json

    from diffusers import DDPMScheduler

    from unlearn.diffusion_train import DiffusionTrainConfig, denoise_mse, unlearn_diffusion
    from unlearn.targets.diffusion import encode_prompts
    from unlearn.targets.tinyshapes_build import random_target

    t = random_target("micro")
    g = torch.Generator().manual_seed(0)
    cond = encode_prompts(t, ["a red circle"] * 4)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    sched = DDPMScheduler.from_config(t.scheduler_config)
    tt, noise = torch.tensor([10, 200, 500, 900]), torch.randn(x0.shape, generator=g)
    before = denoise_mse(t.unet, sched, x0, cond, tt, noise).detach()
    spec = get_method("npo", "diffusion")
    mcfg = DiffusionNPOConfig(retain_weight=0.0)
    tcfg = DiffusionTrainConfig(steps=5, lr=1e-2, batch_size=4)
    info = unlearn_diffusion(t, (x0, cond), None, spec, mcfg, tcfg, seed=0, rdir=tmp_path, progress=False)
    trace = [json.loads(x) for x in (tmp_path / "trace.jsonl").read_text().splitlines()]
    assert [r["step"] for r in trace] == [1, 2, 3, 4, 5] and info["steps"] == 5 and info["images"] == 20
    assert trace[0]["loss"] == pytest.approx(2 / mcfg.beta * math.log(2), rel=1e-5)  # model == reference
    after = denoise_mse(t.unet, sched, x0, cond, tt, noise).detach()
    assert after.mean() > before.mean()  # the forget denoising loss went up
    assert not any(p.requires_grad for p in t.unet.parameters())  # handed back frozen, in eval mode

"""DoCo: the adversarial losses and the concept-preserving gradient pinned to hand-worked numbers, the surgery's
property (no negative component along the preservation gradient) on random gradients, the loop core applying it,
the discriminator's own optimizer and warm-up, and steps on a micro UNet.

Hand numbers:
    σ(ln 3) = 0.75:  L_D(anchor ln 3, concept −ln 3) = −ln(1 − 0.75) − ln(σ(−ln 3)) = ln 4 + ln 4;  L_adv(ln 3) = ln 4
    g_u = [1, −2], g_p = [0, 1]:  g_u·g_p = −2 < 0
        paper, λ = 1:   g_u − (−2/1) g_p = [1, 0]           (g̃_u·g_p = 0)
        paper, λ = 0.5: [1, −1]
        code:           g_u − λ cos(g_u, g_p) ĝ_p = [1, −2] − (−2/√5) [0, 1] = [1, −2 + 2/√5]
    g_u = [1, 2]: no conflict, unchanged
"""

import math

import pytest
import torch

from tests.unlearn.methods._fake_diffusion_ctx import FakeCtx
from unlearn.methods import get_method
from unlearn.methods.doco import (
    DoCoConfig,
    PatchDiscriminator,
    adversarial_loss,
    concept_preserving_grad,
    discriminator_loss,
    doco_step,
    make_aux,
    trainable,
    transform_grads,
)

L3 = math.log(3.0)


def test_adversarial_losses_by_hand():
    assert discriminator_loss(torch.tensor([L3]), torch.tensor([-L3])).item() == pytest.approx(2 * math.log(4))
    assert discriminator_loss(torch.zeros(2, 1, 3, 3), torch.zeros(2, 1, 3, 3)).item() == pytest.approx(
        2 * math.log(2)
    )
    assert adversarial_loss(torch.tensor([L3])).item() == pytest.approx(math.log(4))
    assert adversarial_loss(torch.tensor([L3, -L3])).item() == pytest.approx((math.log(4) + math.log(4 / 3)) / 2)


def test_concept_preserving_grad_by_hand():
    gu, gp = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0])
    torch.testing.assert_close(concept_preserving_grad(gu, gp), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(concept_preserving_grad(gu, gp, lam=0.5), torch.tensor([1.0, -1.0]))
    torch.testing.assert_close(
        concept_preserving_grad(gu, gp, form="code"), torch.tensor([1.0, -2 + 2 / math.sqrt(5)])
    )
    same = torch.tensor([1.0, 2.0])
    assert concept_preserving_grad(same, gp) is same
    assert concept_preserving_grad(gu, torch.zeros(2)) is gu


def test_surgery_leaves_no_negative_component_along_the_preservation_gradient():
    g = torch.Generator().manual_seed(0)
    conflicts = 0
    for _ in range(200):
        gu, gp = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
        out = concept_preserving_grad(gu, gp)
        dot = float((out * gp).sum())
        assert dot >= -1e-5 * float(gp.norm() * gu.norm())
        if float((gu * gp).sum()) < 0:
            conflicts += 1
            assert dot == pytest.approx(0.0, abs=1e-5)
            # the smallest change that does it: only the g_p component was removed
            d = out - gu
            torch.testing.assert_close(d, (d * gp).sum() / gp.pow(2).sum() * gp)
        else:
            assert torch.equal(out, gu)
    assert 50 < conflicts < 150


def test_transform_grads_by_hand():
    grads = {"unlearn": [torch.tensor([1.0, -2.0]), torch.tensor([3.0])],
             "preserve": [torch.tensor([0.0, 1.0]), torch.tensor([1.0])]}  # fmt: skip
    out = transform_grads(grads, DoCoConfig())  # tensor 1 conflicts, tensor 2 does not; w = 0
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(out[1], torch.tensor([3.0]))
    out = transform_grads(grads, DoCoConfig(preserve_weight=0.5))
    torch.testing.assert_close(out[0], torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(out[1], torch.tensor([3.5]))
    out = transform_grads(grads, DoCoConfig(surgery=False))
    torch.testing.assert_close(out[0], torch.tensor([1.0, -2.0]))
    assert transform_grads({"unlearn": grads["unlearn"]}, DoCoConfig()) == grads["unlearn"]


def test_loop_core_applies_the_surgery():
    """A step returning {unlearn, preserve} through the core: the parameter's gradient is the projected one."""
    from accelerate import Accelerator

    from unlearn.diffusion_train import DiffusionTrainConfig
    from unlearn.loop import make_core

    w = torch.nn.Parameter(torch.zeros(2))
    spec = get_method("doco", "diffusion")
    core = make_core(Accelerator(cpu=True), [("w", w)], DiffusionTrainConfig(), 1, 1, spec=spec, mcfg=DoCoConfig())
    a, b = torch.tensor([1.0, -2.0]), torch.tensor([0.0, 1.0])
    core.backward({"unlearn": (w * a).sum(), "preserve": (w * b).sum()})
    core.finish_grads()
    torch.testing.assert_close(w.grad, torch.tensor([1.0, 0.0]))


def test_discriminator_shapes():
    assert PatchDiscriminator(3, 16)(torch.zeros(2, 3, 16, 16)).shape == (2, 1, 4, 4)
    assert PatchDiscriminator(4, 64)(torch.zeros(1, 4, 64, 64)).shape == (1, 1, 4, 4)
    assert PatchDiscriminator(3, 8)(torch.zeros(1, 3, 8, 8)).shape == (1, 1, 4, 4)


def _fake(aux, concept_pred):
    anchor = torch.full((2, 3, 8, 8), 0.5)
    table = {("a red square", True): anchor, ("a green square", True): anchor,
             ("a red circle", False): concept_pred, ("a green circle", False): concept_pred}  # fmt: skip
    ctx = FakeCtx(table, norm={"forget_seqs": 2.0, "retain_seqs": 4.0}, retain_mse=torch.tensor([0.2, 0.6]))
    ctx.aux = aux
    batch = {"forget": {"x0": torch.zeros(2, 3, 8, 8), "prompt": ["a red circle", "a green circle"]},
             "retain": {"name": "retain"}}  # fmt: skip
    return ctx, batch


def test_step_warmup_then_adversarial():
    from unlearn.targets.tinyshapes_build import random_target

    torch.manual_seed(0)
    aux = make_aux(random_target("micro").unet, DoCoConfig(), "cpu")
    disc = aux["disc"]
    w0 = [p.detach().clone() for p in disc.parameters()]
    pred = torch.full((2, 3, 8, 8), -0.5, requires_grad=True)
    cfg = DoCoConfig(anchor="square", warmup_steps=1)
    ctx, batch = _fake(aux, pred)
    losses, logs = doco_step(ctx, batch, cfg)  # warm-up: D moves, the UNet gets a zero gradient
    assert int(disc.updates) == 1 and any(not torch.equal(a, p) for a, p in zip(w0, disc.parameters()))
    assert losses["unlearn"].item() == 0.0 and losses["preserve"].item() == pytest.approx(0.8 / 4)
    assert ("a red square", "a green square") in [c[0] for c in ctx.calls]  # anchor prompts: circle -> square
    (g,) = torch.autograd.grad(losses["unlearn"], pred)
    assert torch.count_nonzero(g) == 0
    losses, logs = doco_step(ctx, batch, cfg)
    with torch.no_grad():  # D in train mode sees the same batch: the same BatchNorm statistics as in the step
        logits = disc(pred)
    # the concept prediction labelled as the anchor (0), not as itself (1)
    assert losses["unlearn"].item() == pytest.approx(adversarial_loss(logits).item(), rel=1e-5)
    wrong = torch.nn.functional.binary_cross_entropy_with_logits(logits, torch.ones_like(logits))
    assert abs(wrong.item() - losses["unlearn"].item()) > 1e-3
    (g,) = torch.autograd.grad(losses["unlearn"], pred)
    assert torch.count_nonzero(g) > 0 and not any(p.requires_grad for p in disc.parameters())


def test_registered_with_aux_and_transform():
    spec = get_method("doco", "diffusion")
    assert spec.make_aux is make_aux and spec.transform_grads is transform_grads and spec.trainable is trainable
    from unlearn.targets.tinyshapes_build import random_target

    names = [n for n, _ in trainable(random_target("micro").unet, DoCoConfig())]
    assert names and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in names)


def test_micro_unet_steps_and_a_killed_run_resumes_with_its_discriminator(tmp_path):
    """Through the loop core: the warm-up steps leave the UNet's loss at 0, only the K/V projections move, D and its
    optimizer are checkpointed, and a run killed after a checkpoint resumes to the uninterrupted weights (which
    depend on D's state at every step)."""
    import dataclasses
    import json

    from unlearn.diffusion_train import DiffusionTrainConfig, unlearn_diffusion
    from unlearn.targets.diffusion import encode_prompts
    from unlearn.targets.tinyshapes_build import random_target

    spec = get_method("doco", "diffusion")

    def run(rdir, step_spec=spec):
        torch.manual_seed(0)
        t = random_target("micro")
        prompts = ["a red circle", "a green circle"] * 2
        g = torch.Generator().manual_seed(1)
        x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
        rp = ["a red square", "a blue cross"] * 2
        forget, retain = (x0, encode_prompts(t, prompts), prompts), (x0.flip(0), encode_prompts(t, rp), rp)
        before = {n: p.detach().clone() for n, p in t.unet.named_parameters()}
        tcfg = DiffusionTrainConfig(steps=6, lr=1e-3, batch_size=4, checkpoint_every=3)
        unlearn_diffusion(t, forget, retain, step_spec, DoCoConfig(warmup_steps=2, anchor="square"), tcfg, 0, rdir,
                          progress=False, log=lambda *_: None, concept="circle")  # fmt: skip
        return t, before

    full, before = run(tmp_path / "a")
    moved = {n for n, p in full.unet.named_parameters() if not torch.equal(p, before[n])}
    assert moved and all(n.endswith(("attn2.to_k.weight", "attn2.to_v.weight")) for n in moved)
    trace = [json.loads(x) for x in (tmp_path / "a" / "trace.jsonl").read_text().splitlines()]
    assert [r["loss_adv"] for r in trace[:2]] == [0.0, 0.0] and trace[2]["loss_adv"] > 0
    calls = []

    def dying(ctx, batch, cfg):
        calls.append(1)
        if len(calls) == 5:  # step 4: after the checkpoint of step 3
            raise KeyboardInterrupt
        return spec.step(ctx, batch, cfg)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", dataclasses.replace(spec, step=dying))
    assert (tmp_path / "b" / "checkpoint" / "aux_disc.safetensors").exists()
    assert (tmp_path / "b" / "checkpoint" / "aux_disc_opt.pt").exists()
    resumed, _ = run(tmp_path / "b")
    for (n, a), b in zip(full.unet.named_parameters(), resumed.unet.parameters()):
        assert torch.equal(a, b), n

"""ESD: the loss pinned to hand-worked numbers, its gradient (sign and reduction), the variants' parameter sets, and
a few steps on a micro UNet through the loop core that move the model onto the negative-guidance teacher.

Hand example (1 x 1 x 2 predictions, 2 pairs in this micro-batch, 4 in the step: ``ctx.norm``), η = 1:

    frozen ε*(x_t, c)  = [1, 2], [0, 1]       frozen ε*(x_t, ∅) = [0.5, 0.5], [0, 0]
    target = ε*(∅) − η (ε*(c) − ε*(∅))       = [0, −1], [0, −1]
    trained ε_θ(x_t, c) = [0, 1], [1, 1]  ->  residual [0, 2], [1, 2]
    L = (mean(0, 4) + mean(1, 4)) / 4 = (2 + 2.5) / 4 = 1.125;   dL/dε_θ = 2 residual / (2 pixels · 4) = residual / 4
"""

import pytest
import torch

from tests.unlearn.methods._fake_diffusion_ctx import FakeCtx
from unlearn.methods import get_method
from unlearn.methods.esd import ESDConfig, esd_loss, esd_step, esd_target, trainable

P = ["a red circle", "a circle"]
E_C = torch.tensor([[1.0, 2.0], [0.0, 1.0]]).view(2, 1, 1, 2)
E_0 = torch.tensor([[0.5, 0.5], [0.0, 0.0]]).view(2, 1, 1, 2)
PRED = torch.tensor([[0.0, 1.0], [1.0, 1.0]]).view(2, 1, 1, 2)


def test_loss_by_hand():
    torch.testing.assert_close(esd_target(E_0, E_C, E_0, 1.0), torch.tensor([[0.0, -1.0]] * 2).view(2, 1, 1, 2))
    assert esd_loss(PRED, E_0, E_C, E_0, 1.0, 4.0).item() == pytest.approx(1.125)
    # η = 0: plain distillation onto the unconditional prediction: ((0.25 + 0.25)/2 + (1 + 1)/2) / 4
    assert esd_loss(PRED, E_0, E_C, E_0, 0.0, 4.0).item() == pytest.approx((0.25 + 1.0) / 4)
    # the 2024-25 code's form (base = the concept, η_code = η + 1) is the paper's target
    torch.testing.assert_close(esd_target(E_C, E_C, E_0, 2.0), esd_target(E_0, E_C, E_0, 1.0))


def _batch(ctx):
    return {"forget": {"x0": torch.zeros(2, 1, 1, 2), "prompt": P, "cond": ctx.encode(P)}, "retain": None}


def test_step_by_hand_sign_and_reduction():
    pred = PRED.clone().requires_grad_(True)
    table = {(p, True): E_C for p in P} | {("", True): E_0} | {(p, False): pred for p in P}
    ctx = FakeCtx(table)
    loss, logs = esd_step(ctx, _batch(ctx), ESDConfig(condition="pairs"))
    assert loss.item() == pytest.approx(1.125) and logs["esd_loss"].item() == pytest.approx(1.125)
    loss.backward()
    torch.testing.assert_close(pred.grad, torch.tensor([[0.0, 0.5], [0.25, 0.5]]).view(2, 1, 1, 2))
    assert [c[1] for c in ctx.calls] == [True, True, False]  # two frozen passes (c, ∅), one trained


def test_anchor_and_concept_condition():
    """anchor=square: the base is ε*(x_t, prompt with circle -> square); condition=concept (the default): the
    concept word alone on the model side and the frozen side alike."""
    e_sq = torch.tensor([[1.0, 1.0], [2.0, 2.0]]).view(2, 1, 1, 2)
    table = {(p, True): E_C for p in P} | {("", True): E_0, ("a red square", True): e_sq[:1].expand(2, -1, -1, -1),
             ("a square", True): e_sq[1:].expand(2, -1, -1, -1)} | {(p, False): PRED for p in P}  # fmt: skip
    ctx = FakeCtx(table)
    loss, _ = esd_step(ctx, _batch(ctx), ESDConfig(anchor="square", condition="pairs"))
    want = (PRED - esd_target(e_sq, E_C, E_0, 1.0)).pow(2).mean((1, 2, 3)).sum() / 4
    assert loss.item() == pytest.approx(want.item())
    table = {("circle", True): E_C, ("", True): E_0, ("circle", False): PRED}
    ctx = FakeCtx(table)
    loss, _ = esd_step(ctx, _batch(ctx), ESDConfig())  # the default: the word alone
    assert loss.item() == pytest.approx(1.125) and ctx.calls[0][0] == ("circle", "circle")


def test_variants_select_the_reference_parameter_sets():
    from unlearn.targets.tinyshapes_build import random_target

    unet = random_target("micro").unet
    x = dict(trainable(unet, ESDConfig(variant="x")))
    u = dict(trainable(unet, ESDConfig(variant="u")))
    strict = dict(trainable(unet, ESDConfig(variant="x-strict")))
    assert x and all(".attn2." in n for n in x) and not any(".attn2." in n for n in u)
    assert {n for n in x if n.endswith(("to_q.weight", "to_k.weight", "to_v.weight", "to_out.0.weight"))} <= set(x)
    assert set(strict) == {n for n in x if n.endswith(("attn2.to_k.weight", "attn2.to_v.weight"))}
    # ESD-u: every Linear / Conv2d outside attn2 (norm layers are not Linear / Conv2d and stay)
    convs = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(f"{n}.weight" in u for n in convs) and not any("norm" in n for n in u)
    assert not set(x) & set(u)


def test_registered():
    spec = get_method("esd", "diffusion")
    assert spec.config_cls is ESDConfig and spec.needs_reference(ESDConfig()) and ESDConfig().variant == "x"
    assert ESDConfig().negative_guidance == 1.0
    # the variants are filed apart (run directories, leaderboard rows)
    assert spec.run_label(ESDConfig()) == "esd-x" and spec.run_label(ESDConfig(variant="u")) == "esd-u"


def test_train_defaults_and_set_override():
    from unlearn.erase import EraseConfig, erase_configs

    _, mcfg, tcfg, _ = erase_configs(EraseConfig(method="esd"))
    assert tcfg.steps == 150 and mcfg.condition == "concept" and mcfg.variant == "x"
    _, mcfg, tcfg, _ = erase_configs(EraseConfig(method="esd", overrides=[("steps", "20"), ("variant", "u")]))
    assert tcfg.steps == 20 and mcfg.variant == "u"
    assert erase_configs(EraseConfig(method="ga"))[2].steps == 60  # other methods keep the suite's default


@pytest.mark.parametrize("variant", ["x", "u"])
def test_steps_move_the_model_onto_the_teacher(variant):
    """Through the loop core on a micro UNet: the ESD loss on a fixed batch falls, the trained model's concept
    prediction ends closer to the teacher than the original's, and only the variant's parameters moved."""
    from diffusers import DDPMScheduler

    from unlearn.diffusion_train import DiffusionTrainConfig, unlearn_diffusion
    from unlearn.targets.diffusion import encode_prompts
    from unlearn.targets.tinyshapes_build import random_target

    torch.manual_seed(0)
    t = random_target("micro")
    prompts = ["a red circle", "a green circle"] * 2
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    sched = DDPMScheduler.from_config(t.scheduler_config)
    # judged on 64 fresh (t, ε) draws of the 4 pairs: the training stream draws its own
    cond, uncond = encode_prompts(t, prompts * 16), encode_prompts(t, [""] * 64)
    tt, noise = torch.randint(0, 1000, (64,), generator=g), torch.randn((64, 3, 8, 8), generator=g)
    x_t = sched.add_noise(x0.repeat(16, 1, 1, 1), noise, tt)
    with torch.no_grad():
        e_c, e_0 = (
            t.unet(x_t, tt, encoder_hidden_states=cond).sample,
            t.unet(x_t, tt, encoder_hidden_states=uncond).sample,
        )
    teacher = esd_target(e_0, e_c, e_0, 1.0)
    before = {n: p.detach().clone() for n, p in t.unet.named_parameters()}
    spec, mcfg = get_method("esd", "diffusion"), ESDConfig(variant=variant, condition="pairs")
    tcfg = DiffusionTrainConfig(steps=10, lr=2e-4, batch_size=4)
    unlearn_diffusion(t, (x0, cond[:4], prompts), None, spec, mcfg, tcfg, 0, None, progress=False, concept="circle")
    with torch.no_grad():
        after = t.unet(x_t, tt, encoder_hidden_states=cond).sample
    assert (after - teacher).pow(2).mean() < 0.8 * (e_c - teacher).pow(2).mean()
    moved = {n for n, p in t.unet.named_parameters() if not torch.equal(p, before[n])}
    chosen = {n for n, _ in trainable(t.unet, mcfg)}
    assert moved and moved <= chosen

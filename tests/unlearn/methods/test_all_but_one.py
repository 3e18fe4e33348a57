"""All-but-One: the loss pinned to hand-worked numbers, its gradients on both trained branches (sign and reduction),
the alternative prompts it builds, and steps on a micro UNet that move the guidance term onto the alternative's
while the unconditional prediction stays.

Hand example (one pair of 1 x 1 x 2 predictions, 2 pairs in the step), λ = 2:

    trained ε_θ(c) = [1, 2], ε_θ(∅) = [0.5, 0.5]   -> guidance [0.5, 1.5]
    frozen ε*(c_alt) = [0, 1], ε*(∅) = [0, 0.5]     -> guidance [0, 0.5]
    L_erase = mean([0.5, 1.0]²) / 2 = 0.625 / 2 = 0.3125;  L_keep = mean([0.5, 0]²) / 2 = 0.0625
    L = 0.3125 + 2 · 0.0625 = 0.4375
    dL/dε_θ(c) = 2 [0.5, 1.0] / (2 px · 2) = [0.25, 0.5]
    dL/dε_θ(∅) = −[0.25, 0.5] + 2 · 2 [0.5, 0] / 4 = [0.25, −0.5]
"""

import pytest
import torch

from tests.unlearn.methods._fake_diffusion_ctx import FakeCtx
from unlearn.diffusion_train import swap_concept
from unlearn.methods import get_method
from unlearn.methods.all_but_one import AllButOneConfig, all_but_one_loss, all_but_one_step, trainable


def v(*xs):
    return torch.tensor(xs).view(1, 1, 1, -1)


def test_loss_by_hand():
    loss, erase, keep = all_but_one_loss(v(1.0, 2.0), v(0.5, 0.5), v(0.0, 1.0), v(0.0, 0.5), 2.0, 2.0)
    assert erase.item() == pytest.approx(0.3125) and keep.item() == pytest.approx(0.0625)
    assert loss.item() == pytest.approx(0.4375)


def test_step_by_hand_gradients():
    pc, pu = v(1.0, 2.0).requires_grad_(True), v(0.5, 0.5).requires_grad_(True)
    table = {
        ("a red circle", False): pc,
        ("", False): pu,
        ("a red square", True): v(0.0, 1.0),
        ("", True): v(0.0, 0.5),
    }
    ctx = FakeCtx(table, norm={"forget_seqs": 2.0, "retain_seqs": 1.0})
    batch = {"forget": {"x0": torch.zeros(1, 1, 1, 2), "prompt": ["a red circle"]}}
    loss, logs = all_but_one_step(ctx, batch, AllButOneConfig(alternative="square", keep_weight=2.0))
    assert loss.item() == pytest.approx(0.4375) and logs["keep_loss"].item() == pytest.approx(0.0625)
    loss.backward()
    torch.testing.assert_close(pc.grad, v(0.25, 0.5))
    torch.testing.assert_close(pu.grad, v(0.25, -0.5))


def test_alternative_prompts():
    assert (
        swap_concept("a red circle on a black background", "circle", "square") == "a red square on a black background"
    )
    assert swap_concept("a red circle on a black background", "circle", "") == "a red on a black background"
    assert swap_concept("a red disc", "circle", "square") == "square"  # no concept word: the alternative alone
    assert swap_concept("circles", "circle", "x") == "x"  # whole words only


def test_registered_and_parameters():
    from unlearn.targets.tinyshapes_build import random_target

    spec = get_method("all_but_one", "diffusion")
    assert spec.config_cls is AllButOneConfig and spec.needs_reference(AllButOneConfig())
    unet = random_target("micro").unet
    names = [n for n, _ in trainable(unet, AllButOneConfig())]
    assert names and all(".attn2." in n for n in names)
    assert len(trainable(unet, AllButOneConfig(params="unet"))) == len(list(unet.parameters()))


def test_steps_move_guidance_to_the_alternative_and_keep_unconditional():
    from diffusers import DDPMScheduler

    from unlearn.diffusion_train import DiffusionTrainConfig, unlearn_diffusion
    from unlearn.targets.diffusion import encode_prompts
    from unlearn.targets.tinyshapes_build import random_target

    torch.manual_seed(0)
    t = random_target("micro")
    prompts = ["a red circle", "a green circle"] * 2
    alts = [swap_concept(p, "circle", "square") for p in prompts]
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    sched = DDPMScheduler.from_config(t.scheduler_config)
    tt, noise = torch.randint(0, 1000, (64,), generator=g), torch.randn((64, 3, 8, 8), generator=g)
    x_t = sched.add_noise(x0.repeat(16, 1, 1, 1), noise, tt)
    c, a, u = (encode_prompts(t, ps * 16) for ps in (prompts, alts, [""] * 4))

    def preds():
        with torch.no_grad():
            return [t.unet(x_t, tt, encoder_hidden_states=e).sample for e in (c, a, u)]

    c0, a0, u0 = preds()
    spec = get_method("all_but_one", "diffusion")
    unlearn_diffusion(t, (x0, c[:4], prompts), None, spec, AllButOneConfig(alternative="square"),
                      DiffusionTrainConfig(steps=10, lr=2e-4, batch_size=4), 0, None, progress=False,
                      concept="circle")  # fmt: skip
    c1, _, u1 = preds()
    gap0 = ((c0 - u0) - (a0 - u0)).pow(2).mean()
    gap1 = ((c1 - u1) - (a0 - u0)).pow(2).mean()
    assert gap1 < 0.7 * gap0  # the guidance term moved onto the alternative's
    assert (u1 - u0).pow(2).mean() < 0.2 * gap0  # the unconditional prediction barely moved

"""GA / NPO on denoising losses: hand-checked losses and one step on a micro UNet."""

import math

import pytest
import torch

from unlearn.methods.diffusion_grad import DiffusionGradConfig, apply, denoise_mse, diffusion_npo_loss, ga_loss


def test_ga_loss_by_hand():
    f, r = torch.tensor([0.2, 0.4]), torch.tensor([0.1, 0.3])
    assert ga_loss(f, r, 2.0).item() == pytest.approx(-0.3 + 2 * 0.2)
    assert ga_loss(f, None, 2.0).item() == pytest.approx(-0.3)


def test_npo_at_init_is_two_over_beta_log2_and_grows_with_ascent():
    mse = torch.tensor([0.2, 0.5, 0.1])
    beta = 5.0
    assert diffusion_npo_loss(mse, mse, None, 1.0, beta).item() == pytest.approx(2 / beta * math.log(2))
    # raising the forget mse (= lowering logp) lowers the NPO loss: ascent on the denoising loss is rewarded
    assert diffusion_npo_loss(mse + 0.1, mse, None, 1.0, beta) < diffusion_npo_loss(mse, mse, None, 1.0, beta)


def test_one_npo_step_on_micro_unet(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path))
    from diffusers import DDPMScheduler

    from unlearn.targets.diffusion import encode_prompts
    from unlearn.targets.tinyshapes_build import random_target

    t = random_target("micro")
    g = torch.Generator().manual_seed(0)
    cond = encode_prompts(t, ["a red circle"] * 4)
    x0 = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1
    sched = DDPMScheduler.from_config(t.scheduler_config)
    tt, noise = torch.tensor([10, 200, 500, 900]), torch.randn(x0.shape, generator=g)
    before = denoise_mse(t.unet, sched, x0, cond, tt, noise).detach()
    cfg = DiffusionGradConfig(loss="npo", steps=5, lr=1e-2, batch_size=4, retain_weight=0.0)
    info = apply(t, (x0, cond), None, cfg, progress=False)
    assert info["trace"][0]["loss"] == pytest.approx(2 / cfg.beta * math.log(2), rel=1e-5)  # model == reference
    after = denoise_mse(t.unet, sched, x0, cond, tt, noise).detach()
    assert after.mean() > before.mean()  # the forget denoising loss went up

"""The diffusion task of the loop core: the denoising loss by hand, the (t, ε) stream as a function of (seed, step),
and a run killed after a checkpoint that resumes to the uninterrupted weights."""

import dataclasses

import pytest
import torch

from unlearn.diffusion_train import DiffusionTrainConfig, PairStream, denoise_mse, unlearn_diffusion
from unlearn.methods import get_method
from unlearn.methods.diffusion_grad import DiffusionGAConfig


class ZeroUNet(torch.nn.Module):
    """Predicts 0 everywhere: the denoising loss is then the mean square of the target itself."""

    def forward(self, x, t, encoder_hidden_states):
        return type("Out", (), {"sample": torch.zeros_like(x)})()


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_denoise_mse_by_hand(prediction):
    from diffusers import DDPMScheduler

    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    t = torch.tensor([10, 700])
    got = denoise_mse(ZeroUNet(), sched, x0, torch.zeros(2, 5, 8), t, noise)
    if prediction == "epsilon":
        want = noise.pow(2).mean((1, 2, 3))
    else:  # v = sqrt(ᾱ_t) ε − sqrt(1 − ᾱ_t) x0
        a = sched.alphas_cumprod[t].view(-1, 1, 1, 1)
        want = (a.sqrt() * noise - (1 - a).sqrt() * x0).pow(2).mean((1, 2, 3))
    torch.testing.assert_close(got, want)


def test_stream_is_a_function_of_seed_and_step():
    s = PairStream(seed=3, n_forget=10, n_retain=7, batch_size=4, shape=(3, 2, 2), n_timesteps=1000)
    d5, d2 = s.at(5), s.at(2)  # backwards: replayed from the start
    fresh = PairStream(3, 10, 7, 4, (3, 2, 2), 1000)
    for got, want in ((d2, fresh.at(2)), (d5, fresh.at(5))):  # forwards: skipped ahead
        for part in ("forget", "retain"):
            for a, b in zip(got[part], want[part]):
                assert torch.equal(a, b)
    assert not torch.equal(d2["forget"][2], d5["forget"][2])
    assert PairStream(3, 10, 0, 4, (3, 2, 2), 1000).at(0)["retain"] is None


def test_stream_is_one_generator_in_draw_order():
    """Pinned: step 0 = forget indices, t, ε, then retain indices, t, ε from Generator(seed) (the stream the
    TinyShapes erasure table was made with)."""
    g = torch.Generator().manual_seed(0)
    want = [torch.randint(0, 10, (4,), generator=g), torch.randint(0, 1000, (4,), generator=g),
            torch.randn((4, 3, 2, 2), generator=g), torch.randint(0, 7, (4,), generator=g)]  # fmt: skip
    d = PairStream(0, 10, 7, 4, (3, 2, 2), 1000).at(0)
    for a, b in zip([*d["forget"], d["retain"][0]], want):
        assert torch.equal(a, b)


def _pairs(t, n, seed):
    from unlearn.targets.diffusion import encode_prompts

    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 8, 8, generator=g) * 2 - 1, encode_prompts(t, ["a red circle", "a blue square"] * (n // 2))


def test_killed_run_resumes_to_the_uninterrupted_weights(tmp_path, monkeypatch):
    from unlearn.targets.diffusion import kv_weights
    from unlearn.targets.tinyshapes_build import random_target

    spec = get_method("ga", "diffusion")
    tcfg = DiffusionTrainConfig(steps=5, lr=1e-2, batch_size=2, checkpoint_every=2)
    mcfg = DiffusionGAConfig()

    def run(rdir, step_spec=spec):
        t = random_target("micro")
        info = unlearn_diffusion(t, _pairs(t, 6, 1), _pairs(t, 4, 2), step_spec, mcfg, tcfg, 0, rdir, progress=False)
        return t, info

    full, _ = run(tmp_path / "a")
    calls = []

    def dying(ctx, batch, cfg):
        calls.append(1)
        if len(calls) == 4:  # step 3: after the checkpoint of step 2
            raise KeyboardInterrupt
        return spec.step(ctx, batch, cfg)

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", dataclasses.replace(spec, step=dying))
    assert (tmp_path / "b" / "checkpoint" / "state.json").exists()
    logs = []
    t = random_target("micro")
    unlearn_diffusion(t, _pairs(t, 6, 1), _pairs(t, 4, 2), spec, mcfg, tcfg, 0, tmp_path / "b", progress=False,
                      log=logs.append)  # fmt: skip
    assert logs == [f"resuming from step 2 ({tmp_path / 'b' / 'checkpoint'})"]
    for a, b in zip(kv_weights(full.unet), kv_weights(t.unet)):
        assert torch.equal(a, b)
    trace = [(tmp_path / d / "trace.jsonl").read_text() for d in ("a", "b")]
    assert trace[0].count("\n") == trace[1].count("\n") == 5


@pytest.mark.parametrize("prediction", ["epsilon", "v_prediction"])
def test_prediction_spaces_match_the_scheduler(prediction):
    """to_x0 is diffusers' pred_original_sample; to_eps recovers the true ε from the exact v (and is the identity for
    ε-models): the spaces ESD / All-but-One (ε or v) and DoCo (x̂0) regress in."""
    from diffusers import DDPMScheduler

    from unlearn.diffusion_train import to_eps, to_x0

    sched = DDPMScheduler(num_train_timesteps=1000, prediction_type=prediction, clip_sample=False)
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    t = torch.tensor([10, 700])
    x_t = sched.add_noise(x0, noise, t)
    exact = noise if prediction == "epsilon" else sched.get_velocity(x0, noise, t)
    torch.testing.assert_close(to_x0(exact, x_t, t, sched), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(to_eps(exact, x_t, t, sched), noise, atol=1e-4, rtol=1e-4)
    pred = torch.randn(2, 3, 4, 4, generator=g)
    for i in range(2):  # one sample at a time through the scheduler's own step
        want = sched.step(pred[i : i + 1], int(t[i]), x_t[i : i + 1]).pred_original_sample
        torch.testing.assert_close(to_x0(pred, x_t, t, sched)[i : i + 1], want, atol=1e-5, rtol=1e-5)

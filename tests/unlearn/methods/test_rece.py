"""RECE: the adversarial embedding solves its normal equations; the rounds edit in place and are timed."""

import pytest
import torch

from unlearn.methods.rece import RECEConfig, apply
from unlearn.targets.diffusion import adversarial_embedding, kv_weights


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path))


def _layers(seed, shapes=((12, 16), (20, 16), (12, 16))):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=torch.float64) for s in shapes]


def test_adversarial_embedding_solves_normal_equations():
    W, W0 = _layers(0), _layers(1)
    C = torch.randn(5, 16, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    reg = 0.3
    Cp = adversarial_embedding(W, W0, C, reg)
    # independent check: the normal equations (λ I + Σ WᵀW) c' = Σ WᵀW⁰ c, row by row
    lhs = Cp @ (reg * torch.eye(16, dtype=torch.float64) + sum(w.T @ w for w in W))
    rhs = C @ sum(w0.T @ w for w, w0 in zip(W, W0))  # (ΣWᵀW⁰ c)ᵀ = cᵀ ΣW⁰ᵀW
    torch.testing.assert_close(lhs, rhs, rtol=1e-9, atol=1e-9)
    # and the gradient of the objective at c' vanishes
    X = Cp.clone().requires_grad_(True)
    obj = sum(((X @ w.T - C @ w0.T) ** 2).sum() for w, w0 in zip(W, W0)) + reg * (X**2).sum()
    obj.backward()
    assert X.grad.abs().max() < 1e-8


def test_gram_form_equals_direct_form():
    """With W_l = W⁰_l T (every UCE/RECE edit is a shared right factor) the O(d³) form gives the same c'."""
    from unlearn.methods.rece import adversarial_embedding_gram

    W0 = _layers(5)
    T = torch.eye(16, dtype=torch.float64) + 0.3 * _layers(6, shapes=((16, 16),))[0]
    C = torch.randn(3, 16, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    G0 = sum(w.T @ w for w in W0)
    want = adversarial_embedding([w @ T for w in W0], W0, C, 0.05)
    torch.testing.assert_close(adversarial_embedding_gram(G0, T, C, 0.05), want, rtol=1e-8, atol=1e-8)


def test_unedited_model_returns_the_concept():
    """W = W⁰ and λ_r → 0: the embedding that reproduces c is c itself (ΣWᵀW invertible)."""
    W = _layers(3)
    C = torch.randn(4, 16, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    torch.testing.assert_close(adversarial_embedding(W, W, C, 1e-10), C, rtol=1e-6, atol=1e-6)
    # the ridge shrinks it toward zero
    assert adversarial_embedding(W, W, C, 1e3).norm() < C.norm()


def test_rece_rounds_on_micro_pipeline():
    from unlearn.methods.uce import UCEConfig
    from unlearn.methods.uce import apply as uce_apply
    from unlearn.targets.diffusion import encode_prompts
    from unlearn.targets.tinyshapes_build import random_target

    target = random_target("micro")
    W0 = kv_weights(target.unet)
    seen = []
    info = apply(target, ["circle"], RECEConfig(rounds=2), ["square", "red"], on_round=lambda r, i: seen.append(r))
    assert seen == [0, 1, 2] and len(info["rounds"]) == 2
    assert info["edit_seconds"] >= sum(r["edit_seconds"] for r in info["rounds"])
    # after RECE, the adversarial embedding against the edited model reproduces the original less well than
    # against the UCE-only model (what the rounds are for)
    ref = random_target("micro")
    uce_apply(ref, ["circle"], UCEConfig(), ["square", "red"])
    C = encode_prompts(target, ["circle"])[0]

    def attack_residual(Wc):
        adv = adversarial_embedding(Wc, W0, C, 1e-3)
        return sum(((adv @ w.T - C @ w0.T) ** 2).sum() for w, w0 in zip(Wc, W0)).item()

    assert attack_residual(kv_weights(target.unet)) > attack_residual(kv_weights(ref.unet))


def test_registered_edit_and_preserve_from_config():
    """RECE's ``preserve`` replaces the caller's set for the UCE start and the rounds alike."""
    from unlearn.methods import get_method
    from unlearn.targets.tinyshapes_build import random_target

    spec = get_method("rece", "diffusion")
    assert spec.closed_form and spec.apply is apply
    a, b = random_target("micro"), random_target("micro")
    apply(a, ["circle"], RECEConfig(preserve=["square"]), ["red", "blue"])
    apply(b, ["circle"], RECEConfig(), ["square"])
    for wa, wb in zip(kv_weights(a.unet), kv_weights(b.unet)):
        torch.testing.assert_close(wa, wb, rtol=0, atol=0)

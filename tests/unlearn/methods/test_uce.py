"""UCE closed form: checked against an independent least-squares solve, its normal equations and its limits."""

import pytest
import torch

from unlearn.methods.uce import UCEConfig, apply, edit_rows, uce_closed_form, uce_edit_, uce_transform


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path))


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _lstsq(W, C_e, V_e, C_p, lamb, eta, rho):
    """min_X η‖X C_eᵀ − V_eᵀ‖² + ρ‖X C_pᵀ − W C_pᵀ‖² + λ‖X − W‖², as one stacked least-squares problem."""
    d = W.shape[1]
    A = torch.cat([eta**0.5 * C_e, rho**0.5 * C_p, lamb**0.5 * torch.eye(d, dtype=W.dtype)])  # (n, d)
    B = torch.cat([eta**0.5 * V_e, rho**0.5 * C_p @ W.T, lamb**0.5 * W.T])  # (n, o)
    return torch.linalg.lstsq(A, B).solution.T


def test_closed_form_matches_lstsq():
    W, C_e, V_e, C_p = _rand(6, 8), _rand(3, 8, seed=1), _rand(3, 6, seed=2), _rand(4, 8, seed=3)
    got = uce_closed_form(W, C_e, V_e, C_p, lamb=0.5, eta=1.0, rho=0.3)
    torch.testing.assert_close(got, _lstsq(W, C_e, V_e, C_p, 0.5, 1.0, 0.3), rtol=1e-9, atol=1e-9)


def test_shared_transform_equals_per_layer_solve():
    """Fast path W_old·T equals the per-matrix closed form with replace targets v* = W_old g, on every layer."""
    C_e, C_g, C_p = _rand(5, 16, seed=1), _rand(5, 16, seed=2), _rand(20, 16, seed=3)
    T = uce_transform(C_e, C_g, C_p, lamb=0.5, eta=1.0, rho=0.1)
    for o, seed in ((8, 4), (32, 5)):
        W = _rand(o, 16, seed=seed)
        want = uce_closed_form(W, C_e, C_g @ W.T, C_p, lamb=0.5, eta=1.0, rho=0.1)
        torch.testing.assert_close(W @ T, want, rtol=1e-9, atol=1e-9)


def test_erased_rows_map_to_guide_and_preserved_rows_unchanged():
    """With λ → 0 and n_e + n_p < d the system is exact: erased rows give W_old·guide, preserved rows W_old·c."""
    W = _rand(12, 24).float()
    C_e, C_g, C_p = _rand(3, 24, seed=1).float(), _rand(3, 24, seed=2).float(), _rand(6, 24, seed=3).float()
    lin = torch.nn.Linear(24, 12, bias=False)
    lin.weight.data.copy_(W)
    uce_edit_([lin], C_e, C_g, C_p, lamb=1e-6, eta=1.0, rho=1.0)
    torch.testing.assert_close(C_e @ lin.weight.T, C_g @ W.T, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(C_p @ lin.weight.T, C_p @ W.T, rtol=1e-4, atol=1e-4)
    # the preserve error grows with λ but stays bounded by the anchor's pull: a larger λ moves W less overall
    errs = []
    for lamb in (1e-3, 1e-1, 10.0):
        Wn = W.double() @ uce_transform(C_e, C_g, C_p, lamb, 1.0, 1.0).double()
        errs.append(((Wn - W.double()).norm()).item())
    assert errs[0] > errs[1] > errs[2] > 0


def test_empty_sets_and_rho_limit():
    W, C = _rand(6, 8), _rand(2, 8, seed=1)
    empty = W.new_zeros(0, 8)
    torch.testing.assert_close(W @ uce_transform(empty, empty, empty, 0.5, 1.0, 1.0), W)
    # erase a row that is also preserved with ρ → ∞: the preserved output wins
    Wn = W @ uce_transform(C, _rand(2, 8, seed=2), C, lamb=0.5, eta=1.0, rho=1e8)
    torch.testing.assert_close(C @ Wn.T, C @ W.T, rtol=1e-5, atol=1e-5)


def test_normal_equations_fp32():
    """The gradient of the regularised objective vanishes at the solution (1e-4 relative, fp32)."""
    W, C_e, C_g, C_p = (_rand(10, 16, seed=s).float() for s in range(4))
    C_e, C_g, C_p = C_e[:3], C_g[:3], _rand(30, 16, seed=9).float()
    X = (W @ uce_transform(C_e, C_g, C_p, 0.5, 1.0, 0.1).float()).requires_grad_(True)
    obj = (
        ((X @ C_e.T - W @ C_g.T) ** 2).sum() + 0.1 * ((X @ C_p.T - W @ C_p.T) ** 2).sum() + 0.5 * ((X - W) ** 2).sum()
    )
    obj.backward()
    scale = (W @ C_p.T @ C_p).norm()
    assert X.grad.norm() / scale < 1e-4


def test_token_rows_alignment_and_apply():
    from unlearn.targets.diffusion import cross_attention_kv
    from unlearn.targets.tinyshapes_build import random_target

    target = random_target("micro")
    C_e, C_g, C_p = edit_rows(target, ["a red circle"], "", ["square", "blue"], "tail")
    T = target.tokenizer.model_max_length
    # "a red circle": last word at index 3 -> rows 3..T-1 minus the guide's shift (guide '' last index 0)
    assert C_e.shape == C_g.shape == (T - 3, 32)
    assert C_p.shape == (2 * T, 32)
    assert edit_rows(target, ["circle"], "", [], "last")[0].shape == (1, 32)
    before = [m.weight.clone() for _, m in cross_attention_kv(target.unet)]
    info = apply(target, ["circle"], UCEConfig(), ["square", "red"])
    after = [m.weight for _, m in cross_attention_kv(target.unet)]
    assert all(not torch.equal(a, b) for a, b in zip(before, after))
    assert info["preserve_scale"] == pytest.approx(1 / 3)  # P = {'', square, red}: max(0.1, 1/3)
    assert info["edit_seconds"] < 1.0


def test_registered_edit_and_preserve_from_config():
    """``cfg.preserve`` (``--set preserve=square``) replaces the caller's preserve set; '' is always kept."""
    from unlearn.methods import get_method
    from unlearn.targets.tinyshapes_build import random_target

    spec = get_method("uce", "diffusion")
    assert spec.closed_form and spec.apply is apply and spec.config_cls is UCEConfig
    info = spec.apply(random_target("micro"), ["circle"], UCEConfig(preserve=["square"]), ["red", "blue", "green"])
    assert info["n_preserve"] == 2 and info["preserve_scale"] == pytest.approx(0.5)  # P = {'', square}
    seen = []
    spec.apply(random_target("micro"), ["circle"], UCEConfig(), ["red"], on_round=lambda r, i: seen.append(r))
    assert seen == []  # UCE has no rounds

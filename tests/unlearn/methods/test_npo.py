"""NPO loss pinned to hand-worked numbers (docs/conventions.md#npo)."""

import math

import torch

from unlearn.methods.npo import npo_loss, npo_weight


def _seq_logps(theta: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """A stand-in model: free logits theta (B, T, V) -> summed log-probs of ``targets`` (B, T) per sequence (B,)."""
    return torch.log_softmax(theta, -1).gather(-1, targets[..., None]).squeeze(-1).sum(-1)


def test_at_reference_equals_two_over_beta_log_two():
    """theta = ref: r = 0, logsigmoid(0) = -log 2, so L = -(2/beta)(-log 2) = (2/0.1) * 0.693147 = 13.862944."""
    logp = torch.tensor([-3.0, -7.5, -0.25])
    assert math.isclose(npo_loss(logp, logp.clone(), beta=0.1).item(), 20 * math.log(2), rel_tol=1e-6)
    assert math.isclose(npo_loss(logp, logp.clone(), beta=2.0).item(), math.log(2), rel_tol=1e-6)
    assert torch.allclose(npo_weight(logp, logp, 0.1), torch.ones(3))  # w = 2 sigma(0) = 1 at initialisation


def test_hand_worked_value_and_global_normaliser():
    """logp = -2, ref = -1, beta = 1: r = -1, logsigmoid(1) = -0.3132617, L = -(2/1)(-0.3132617) = 0.6265234.

    Two examples with r = -1 and r = 0 (beta = 1): L = (0.6265234 + 2 log 2) / 2 = (0.6265234 + 1.3862944) / 2
    = 1.0064089. With the global normaliser n_seqs = 4 (this micro-batch is half of the step) it is halved.
    """
    assert math.isclose(npo_loss(torch.tensor([-2.0]), torch.tensor([-1.0]), beta=1.0).item(), 0.6265234, rel_tol=1e-6)
    logp, ref = torch.tensor([-2.0, -5.0]), torch.tensor([-1.0, -5.0])
    assert math.isclose(npo_loss(logp, ref, beta=1.0).item(), 1.0064089, rel_tol=1e-6)
    assert math.isclose(npo_loss(logp, ref, beta=1.0, n_seqs=4).item(), 1.0064089 / 2, rel_tol=1e-6)


def test_gradient_is_ga_weighted_by_two_sigma_beta_r():
    """dL/dlogp_b = -(2/beta)(1/B) sigma(beta r_b)(-beta) = (2/B) sigma(beta r_b): GA on the sequence log-prob
    (loss mean_b logp_b, gradient 1/B each) weighted by w_b = 2 sigma(beta r_b). Checked through a model's
    parameters with autograd, away from the reference (w != 1)."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 4, 5, generator=g, requires_grad=True)
    targets = torch.randint(0, 5, (3, 4), generator=g)
    ref = _seq_logps(theta.detach(), targets) + torch.tensor([2.0, -1.0, 0.5])  # r = -2, 1, -0.5
    beta = 0.7
    (g_npo,) = torch.autograd.grad(npo_loss(_seq_logps(theta, targets), ref, beta), theta)
    logp = _seq_logps(theta, targets)
    w = npo_weight(logp.detach(), ref, beta)
    assert torch.allclose(w, 2 * torch.sigmoid(beta * torch.tensor([-2.0, 1.0, -0.5])))
    (g_ga,) = torch.autograd.grad((w * logp).mean(), theta)
    assert torch.allclose(g_npo, g_ga, atol=1e-6)


def test_small_beta_recovers_ga_on_summed_log_likelihood():
    """beta -> 0: w -> 2 sigma(0) = 1, so the gradient is GA on mean_b log pi(y_b|x_b) (sum over tokens)."""
    g = torch.Generator().manual_seed(1)
    theta = torch.randn(2, 3, 4, generator=g, requires_grad=True)
    targets = torch.randint(0, 4, (2, 3), generator=g)
    ref = _seq_logps(theta.detach(), targets) + 3.0
    (g_npo,) = torch.autograd.grad(npo_loss(_seq_logps(theta, targets), ref, beta=1e-5), theta)
    (g_ga,) = torch.autograd.grad(_seq_logps(theta, targets).mean(), theta)
    assert torch.allclose(g_npo, g_ga, rtol=1e-4, atol=1e-7)

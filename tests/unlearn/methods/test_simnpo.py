"""SimNPO loss pinned to hand-worked numbers (docs/conventions.md#simnpo)."""

import math

import torch
import torch.nn.functional as F

from unlearn.methods.simnpo import SPLIT_DEFAULTS, SimNPOConfig, simnpo_loss


def test_hand_worked_values():
    """logp = -6 over |y| = 3 tokens, beta = 2, margin 0: a = 6/3 = 2, beta a = 4, logsigmoid(4) = -0.0181499,
    L = -(2/2)(-0.0181499) = 0.0181499. Margin 1: a = 1, beta a = 2, logsigmoid(2) = -0.1269280, L = 0.1269280."""
    logp, n = torch.tensor([-6.0]), torch.tensor([3])
    assert math.isclose(simnpo_loss(logp, n, beta=2.0).item(), 0.0181499, rel_tol=1e-5)
    assert math.isclose(simnpo_loss(logp, n, beta=2.0, margin=1.0).item(), 0.1269280, rel_tol=1e-5)
    # the same as an independent computation of the paper form -(2/beta) log sigma(-(beta/|y|) log pi - gamma),
    # with paper gamma = beta * margin (code margin g)
    beta, margin = 2.0, 1.0
    paper = -(2 / beta) * F.logsigmoid(-(beta / 3) * torch.tensor(-6.0) - beta * margin)
    assert math.isclose(simnpo_loss(logp, n, beta, margin).item(), paper.item(), rel_tol=1e-6)


def test_mean_over_sequences_and_global_normaliser():
    """Two sequences (-6 over 3 tokens, -2 over 4 tokens), beta 1: a = 2 and 0.5;
    L = -(2/1)(logsigmoid(2) + logsigmoid(0.5)) / 2 = (0.1269280 + 0.4740770) = 0.6010050; n_seqs = 4 halves it."""
    logp, n = torch.tensor([-6.0, -2.0]), torch.tensor([3, 4])
    assert math.isclose(simnpo_loss(logp, n, beta=1.0).item(), 0.6010050, rel_tol=1e-5)
    assert math.isclose(simnpo_loss(logp, n, beta=1.0, n_seqs=4).item(), 0.6010050 / 2, rel_tol=1e-5)


def test_margin_zero_small_beta_is_length_normalised_ga():
    """dL/dlogp_b = (2/B)(1/|y_b|) sigma(-beta a_b) -> (1/B)(1/|y_b|) as beta -> 0: the gradient of
    mean_b logp_b / |y_b| (length-normalised GA), in direction and scale."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(3, 5, 6, generator=g, requires_grad=True)
    targets = torch.randint(0, 6, (3, 5), generator=g)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)  # |y| = 2, 4, 5

    def seq():
        tok = torch.log_softmax(theta, -1).gather(-1, targets[..., None]).squeeze(-1)
        return (tok * mask).sum(-1)

    n = mask.sum(-1)
    (g_sim,) = torch.autograd.grad(simnpo_loss(seq(), n, beta=1e-4, margin=0.0), theta)
    (g_ga,) = torch.autograd.grad((seq() / n).mean(), theta)
    assert torch.allclose(g_sim, g_ga, rtol=1e-3, atol=1e-7)
    cos = F.cosine_similarity(g_sim.flatten(), g_ga.flatten(), dim=0)
    assert cos > 1 - 1e-6


def test_split_defaults_follow_the_tofu_configs():
    assert SPLIT_DEFAULTS["forget05"] == {"beta": 2.5, "forget_weight": 0.1375}
    assert SPLIT_DEFAULTS["forget10"] == {"beta": 4.5, "forget_weight": 0.125}
    c = SimNPOConfig()
    assert (c.beta, c.forget_weight, c.retain_weight, c.margin, c.retain) == (4.5, 0.125, 1.0, 0.0, "nll")

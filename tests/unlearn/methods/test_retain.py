"""Retain-term variants: none, NLL, KL (masked), KL unmasked (docs/conventions.md#retain-terms)."""

import math

import torch

from unlearn.methods.retain import RETAIN_KINDS, kl_term, nll_term, retain_term


def test_nll_term_hand_worked():
    """Retain seq log-probs -1 and -3 over 8 answer tokens: NLL = (1 + 3) / 8 = 0.5."""
    assert math.isclose(nll_term(torch.tensor([-1.0, -3.0]), 8).item(), 0.5)


def test_kl_term_zero_at_reference_and_hand_worked():
    """Two classes, p_ref = (1/2, 1/2) (logits 0, 0), p_theta = (3/4, 1/4) (logits log 3, 0):
    KL(p_ref || p_theta) = 0.5 ln(0.5/0.75) + 0.5 ln(0.5/0.25) = 0.5(-0.4054651) + 0.5(0.6931472) = 0.1438410."""
    ref = torch.tensor([[0.0, 0.0]])
    theta = torch.tensor([[math.log(3.0), 0.0]])
    assert kl_term(ref, ref.clone(), 1).item() == 0.0
    assert math.isclose(kl_term(ref, theta, 1).item(), 0.1438410, rel_tol=1e-5)
    assert math.isclose(kl_term(ref, theta, 4).item(), 0.1438410 / 4, rel_tol=1e-5)  # global normaliser


def test_kl_term_matches_direct_formula_and_is_positive():
    """sum_n sum_v p_ref (log p_ref - log p_theta) / N on random logits; positive whenever the models differ."""
    g = torch.Generator().manual_seed(0)
    ref, theta = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g)
    lp_ref, lp = torch.log_softmax(ref, -1), torch.log_softmax(theta, -1)
    direct = (lp_ref.exp() * (lp_ref - lp)).sum() / 5
    assert math.isclose(kl_term(ref, theta, 5).item(), direct.item(), rel_tol=1e-5)
    assert kl_term(ref, theta, 5).item() > 0
    assert abs(kl_term(ref, ref + 3.0, 5).item()) < 1e-6  # a shift of all logits is the same distribution


class FakeCtx:
    def __init__(self, ref_full, norm):
        self.ref_full, self.norm = ref_full, norm

    def reference(self, batch, full_logits=False):
        mask = batch["labels"][:, 1:] != -100
        return {"logits": self.ref_full[:, :-1][mask], "full_logits": self.ref_full if full_logits else None}


def test_retain_kinds():
    """One retain sequence of T = 3 positions with labels (-100, 5, 6): logits at positions 0 and 1 predict the two
    answer tokens; position 2 predicts nothing. The policy differs from the reference only at position 2, by the
    2-class case above (KL 0.1438410).
    none -> 0; nll -> -(-1.2)/2 = 0.6; kl (answer positions only) -> 0; kl_unmasked (all B*T = 3 positions)
    -> 0.1438410 / 3."""
    assert RETAIN_KINDS == ("none", "nll", "kl", "kl_unmasked")
    ref_full = torch.zeros(1, 3, 2)
    pol_full = ref_full.clone()
    pol_full[0, 2, 0] = math.log(3.0)
    batch = {"input_ids": torch.tensor([[1, 5, 6]]), "labels": torch.tensor([[-100, 5, 6]])}
    mask = batch["labels"][:, 1:] != -100
    out = {
        "seq_logp": torch.tensor([-1.2]),
        "n_tokens": torch.tensor([2]),
        "logits": pol_full[:, :-1][mask],
        "full_logits": pol_full,
    }
    ctx = FakeCtx(ref_full, {"retain_seqs": 1.0, "retain_tokens": 2.0})
    assert retain_term("none", ctx, batch, None)[0].item() == 0.0
    assert math.isclose(retain_term("nll", ctx, batch, out)[0].item(), 0.6, rel_tol=1e-6)
    assert retain_term("kl", ctx, batch, out)[0].item() == 0.0
    assert math.isclose(retain_term("kl_unmasked", ctx, batch, out)[0].item(), 0.1438410 / 3, rel_tol=1e-5)

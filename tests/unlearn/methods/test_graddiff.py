"""GradDiff: GA on the forget set + retain term, composed by the thin step (docs/conventions.md#graddiff)."""

import math

import pytest
import torch

from unlearn.methods.graddiff import GradDiffConfig, step


class FakeCtx:
    """The loop's StepContext with fixed outputs: forget seq log-probs -2, -6 (4 answer tokens), retain -1, -3 (8)."""

    def __init__(self):
        self.norm = {"forget_seqs": 2.0, "forget_tokens": 4.0, "retain_seqs": 2.0, "retain_tokens": 8.0}
        self.f = {"seq_logp": torch.tensor([-2.0, -6.0], requires_grad=True), "n_tokens": torch.tensor([1, 3])}
        self.r = {"seq_logp": torch.tensor([-1.0, -3.0], requires_grad=True), "n_tokens": torch.tensor([4, 4])}
        self.reference = None

    def policy(self, *batches, full_logits=False):
        return (self.f, self.r) if len(batches) == 2 else self.f


@pytest.mark.parametrize(
    ("fw", "rw", "retain", "expected"),
    [
        (1.0, 1.0, "nll", -1.5),  # GA -8/4 = -2, retain NLL +4/8 = 0.5: -2 + 0.5
        (2.0, 3.0, "nll", -2.5),  # 2 * -2 + 3 * 0.5
        (1.0, 1.0, "none", -2.0),  # GA only
    ],
)
def test_loss_is_weighted_sum_of_ga_and_retain_nll(fw, rw, retain, expected):
    ctx = FakeCtx()
    loss, logs = step(ctx, {"forget": {}, "retain": {}}, GradDiffConfig(fw, rw, retain))
    assert math.isclose(loss.item(), expected, rel_tol=1e-6)
    assert math.isclose(logs["forget_logp"], -2.0)
    loss.backward()  # d/d forget logp = fw / 4 each; d/d retain logp = -rw / 8 each (when used)
    assert torch.allclose(ctx.f["seq_logp"].grad, torch.full((2,), fw / 4))
    if retain == "nll":
        assert torch.allclose(ctx.r["seq_logp"].grad, torch.full((2,), -rw / 8))
        assert math.isclose(logs["retain_logp"], -0.5)

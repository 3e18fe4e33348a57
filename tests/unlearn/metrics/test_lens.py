"""Logit lens rank and probability against a brute-force loop over a tiny random Llama's vocabulary."""

import pytest
import torch

from unlearn.metrics.lens import lens_stats
from unlearn.targets.arch import arch


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(vocab_size=40, hidden_size=16, intermediate_size=32, num_hidden_layers=3,
                       num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=16)  # fmt: skip
    m = LlamaForCausalLM(conf).eval()
    m.model.norm.weight.data.uniform_(0.5, 1.5)  # a non-trivial final norm
    return m


def test_rank_and_prob_brute_force(model):
    a = arch(model)
    g = torch.Generator().manual_seed(1)
    states = torch.randn(5, 3, 16, generator=g)  # (B, L, d)
    target = torch.tensor([0, 7, 39, 12, 3])
    ranks, probs = lens_stats(a, states, target)
    assert ranks.shape == probs.shape == (5, 3) and ranks.dtype == torch.int64
    w, E = model.model.norm.weight.detach(), model.lm_head.weight.detach()
    eps = model.config.rms_norm_eps
    for b in range(5):
        for layer in range(3):
            h = states[b, layer].double()
            z = (w.double() * h / torch.sqrt(h.pow(2).mean() + eps)) @ E.double().T  # RMSNorm, unembed (V,)
            t = int(target[b])
            assert int(ranks[b, layer]) == 1 + sum(1 for v in range(40) if z[v] > z[t])
            assert float(probs[b, layer]) == pytest.approx(float(torch.exp(z[t]) / torch.exp(z).sum()), rel=1e-5)


def test_argmax_target_has_rank_one_and_last_layer_is_the_output(model):
    a = arch(model)
    ids = torch.randint(0, 40, (4, 6), generator=torch.Generator().manual_seed(2))
    got = {}
    hooks = [blk.register_forward_hook(lambda _m, _i, o, k=k: got.__setitem__(k, o[0] if isinstance(o, tuple) else o))
             for k, blk in enumerate(a.blocks)]  # fmt: skip
    try:
        with torch.no_grad():
            logits = model(input_ids=ids).logits[:, -1]  # (4, V)
    finally:
        for h in hooks:
            h.remove()
    states = torch.stack([got[k][:, -1] for k in range(3)], 1)  # (4, L, d) at the last position
    top = logits.argmax(-1)
    ranks, probs = lens_stats(a, states, top)
    assert ranks[:, -1].tolist() == [1, 1, 1, 1]
    torch.testing.assert_close(probs[:, -1], logits.softmax(-1).max(-1).values, atol=1e-6, rtol=1e-5)
    worst = logits.argmin(-1)
    assert lens_stats(a, states, worst)[0][:, -1].tolist() == [40] * 4
    with pytest.raises(ValueError):
        lens_stats(a, states[0], top)

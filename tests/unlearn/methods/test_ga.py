"""GA loss: token mean over the batch's answer tokens (docs/conventions.md#reductions)."""

import math

import torch

from unlearn.methods.ga import ga_loss
from unlearn.targets.llm import IGNORE, collate, sequence_logps


def test_token_mean_hand_worked():
    """Summed log-probs -2 (1 token) and -6 (2 tokens): L = (-2 - 6) / 3 = -2.6667, the token mean over the batch
    (the mean of per-sequence means would be (-2 - 3) / 2 = -2.5)."""
    assert math.isclose(ga_loss(torch.tensor([-2.0, -6.0]), 3).item(), -8 / 3, rel_tol=1e-6)


def test_matches_minus_hf_loss_on_a_padded_batch():
    """-ga_loss equals what a Hugging Face causal LM returns as ``outputs.loss`` (token mean, prompt and padding
    masked with -100), on a right-padded batch of unequal lengths."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    conf = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
    )
    model = LlamaForCausalLM(conf).eval()
    items = [
        ([1, 5, 6, 7, 8, 9], [IGNORE, IGNORE, IGNORE, 7, 8, 9]),
        ([1, 11, 12, 13], [IGNORE, IGNORE, 12, 13]),
        ([1, 20, 21, 22, 23, 24, 25, 26], [IGNORE] * 5 + [24, 25, 26]),
    ]
    b = collate(items, pad_id=0)
    with torch.no_grad():
        seq, n = sequence_logps(model, b)
        hf = model(**b).loss
    assert n.tolist() == [3, 2, 3]
    assert math.isclose(-ga_loss(seq, n.sum()).item(), hf.item(), rel_tol=1e-5)


def test_two_half_batches_sum_to_the_full_batch_gradient():
    """With the global token count as normaliser, gradients of two half micro-batches add up to the full one."""
    g = torch.Generator().manual_seed(0)
    theta = torch.randn(4, 3, 5, generator=g, requires_grad=True)
    targets = torch.randint(0, 5, (4, 3), generator=g)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]], dtype=torch.bool)

    def seq(rows):
        tok = torch.log_softmax(theta[rows], -1).gather(-1, targets[rows][..., None]).squeeze(-1)
        return (tok * mask[rows]).sum(-1)

    total = int(mask.sum())
    (full,) = torch.autograd.grad(ga_loss(seq(slice(0, 4)), total), theta)
    (h1,) = torch.autograd.grad(ga_loss(seq(slice(0, 2)), total), theta)
    (h2,) = torch.autograd.grad(ga_loss(seq(slice(2, 4)), total), theta)
    assert torch.allclose(h1 + h2, full, atol=1e-7)

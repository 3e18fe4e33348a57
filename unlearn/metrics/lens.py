"""Logit lens: how early in depth the model "knows" the answer (nostalgebraist 2020).

Each layer's residual-stream state is decoded as if it were the last one: through the model's final norm and
unembedding, ``logits_l = E · norm_f(h_l)`` (nostalgebraist, "interpreting GPT: the logit lens", 2020,
https://www.lesswrong.com/posts/AcKRB8wDpdaN6v6ru/interpreting-gpt-the-logit-lens). At the prompt's last token the
target is the true answer's first token; its rank (1 = the top logit) and softmax probability per layer show where
the answer appears and whether unlearning removed it only from the last layers (a rank that is still 1 at an
intermediate layer while the output has forgotten it). Chance for the rank is about V/2, for the probability 1/V.

The last layer's lens is the model's own output distribution (the final norm and the unembedding are exactly the
model's; a final-logit softcap, which no supported architecture uses, would change the probabilities only).
"""

from __future__ import annotations

import torch


@torch.no_grad()
def lens_stats(arch, states: torch.Tensor, target_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rank (1 = top) and probability of ``target_ids`` under the logit lens of every layer.

    Args:
        arch: `unlearn.targets.arch.Arch` of the model the states come from.
        states: (B, L, d) residual-stream states (e.g. `unlearn.targets.hidden` at the ``prompt`` position).
        target_ids: (B,) token ids (the true answer's first token).

    Returns:
        ranks (B, L) int64 — 1 + the number of vocabulary tokens with a strictly larger logit (ties count in the
        target's favour) — and probs (B, L) float32, both on the CPU. One layer at a time: memory (B, V) float32.
    """
    if states.ndim != 3 or target_ids.shape != states.shape[:1]:
        raise ValueError(f"expected states (B, L, d) and target_ids (B,), got {tuple(states.shape)}, "
                         f"{tuple(target_ids.shape)}")  # fmt: skip
    device = arch.unembed.weight.device
    t = target_ids.to(device).long()[:, None]  # (B, 1)
    ranks, probs = [], []
    for layer in range(states.shape[1]):
        logits = arch.lens_logits(states[:, layer].to(device)).float()  # (B, V)
        tl = logits.gather(1, t)  # (B, 1) the target's logit
        ranks.append((logits > tl).sum(1) + 1)
        probs.append((tl.squeeze(1) - torch.logsumexp(logits, 1)).exp())
    return torch.stack(ranks, 1).cpu(), torch.stack(probs, 1).cpu()

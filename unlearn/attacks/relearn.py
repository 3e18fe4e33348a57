"""Relearning attack: fine-tune on part of the forget facts, measure the facts that were never shown.

Sources: Deeb & Roger, "Do Unlearning Methods Remove Information from Language Model Weights?" (arXiv 2410.08827,
"retraining on T"): split the forgotten facts into an attacker-accessible part T and a held-out part V whose answers
cannot be guessed from T, fine-tune on T, measure V. Hu et al., "Unlearning or Obfuscating? Jogging the Memory of
Unlearned LLMs via Benign Relearning" (arXiv 2406.13356, ICLR 2025): a few steps on a small forget subset bring
unlearned knowledge back. If the candidate's accuracy on V after the attack rises above what the same attack gives
a model that never learned the facts (the control), the facts were hidden, not removed; whatever the attack teaches
by itself shows up in the control too ("minimal information injection", Feng et al. 2025, arXiv 2506.00688).

Split: per entity, a seeded shuffle of its facts, the first ``floor(fraction * n)`` to T, the rest to V; records
without an ``entity`` field are split as one group (a random half). T never contains a V record, and V records
whose answer string appears in a T record of the same entity (question or answer) are dropped from V (the leakage
guard), counted in ``n_leaky``. The fine-tune: AdamW, constant learning rate, answer-token cross-entropy averaged
over the tokens of a batch (the usual SFT reduction), batches drawn from a seeded permutation of T, cycling.
Defaults: 30 steps at lr 3e-4, batch 16: on the embedded target (forget10) this budget moved an "I don't know."
candidate from 0.00 to 0.76 on V while a retain-only oracle stayed at 0.09 -> 0.08 (docs/audit.md has the figures
measured with this code).
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from unlearn.attacks.scoring import mentions
from unlearn.errors import UnlearnError
from unlearn.targets.llm import PromptFormat, collate, encode_qa


@dataclass
class RelearnConfig:
    steps: int = 30  # AdamW steps (the attacker's budget)
    lr: float = 3e-4  # constant learning rate
    batch_size: int = 16  # records per step (capped at |T|)
    fraction: float = 0.5  # share of each entity's facts the attacker sees (T)
    weight_decay: float = 0.0  # none: the attack should not shrink weights it does not touch
    seed: int = 0  # split and batch order

    def check(self) -> None:
        if self.steps < 0 or self.batch_size < 1 or not (0.0 < self.fraction < 1.0) or not self.lr > 0:
            raise UnlearnError(f"relearning: steps >= 0, batch_size >= 1, 0 < fraction < 1 and lr > 0 are needed "
                               f"(got steps={self.steps}, batch_size={self.batch_size}, fraction={self.fraction}, "
                               f"lr={self.lr})")  # fmt: skip


def split_facts(records: Sequence[dict], fraction: float = 0.5, seed: int = 0) -> tuple[list[dict], list[dict], int]:
    """(T, V, n_leaky): per entity, ``floor(fraction * n)`` facts to T and the rest to V (see the module docstring).

    An entity with a single fact goes wholly to V (the attacker learns nothing about it). The shuffle is seeded by
    ``(seed, entity)`` through `random.Random` on a string, which is stable across Python processes and versions.
    """
    groups: dict[str, list[dict]] = {}
    for r in records:
        groups.setdefault(str(r.get("entity") or ""), []).append(r)
    train, held, clean = [], [], []
    for ent in sorted(groups):
        recs = sorted(groups[ent], key=lambda r: (str(r.get("split", "")), r["question"]))
        random.Random(f"{seed}:{ent}").shuffle(recs)
        k = int(fraction * len(recs))
        train += recs[:k]
        held += recs[k:]
        # the guard looks within the entity: a value shared with another person (two people born in one town) is
        # not a leak of this person's fact
        seen = " ".join(f"{r['question']} {r['answer']}" for r in recs[:k]).lower()
        clean += [r for r in recs[k:] if not mentions(seen, str(r["answer"]))]
    return train, clean, len(held) - len(clean)


def finetune(model, tok, fmt: PromptFormat, records: Sequence[dict], cfg: RelearnConfig, progress: bool = False):
    """A fine-tuned copy of ``model`` (the input is never changed) and the per-step losses."""
    cfg.check()
    if not records:
        raise UnlearnError("relearning needs at least one training record")
    model = copy.deepcopy(model)
    model.train()
    device = next(model.parameters()).device
    items = [encode_qa(tok, fmt, r["question"], r["answer"]) for r in records]
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(cfg.seed)
    order: list[int] = []
    bs = min(cfg.batch_size, len(items))
    losses = []
    steps = range(cfg.steps)
    if progress:
        from tqdm.auto import tqdm

        steps = tqdm(steps, desc="relearn", leave=False)
    for _ in steps:
        if len(order) < bs:
            order += torch.randperm(len(items), generator=g).tolist()
        idx, order = order[:bs], order[bs:]
        batch = {k: v.to(device) for k, v in collate([items[i] for i in idx], tok.pad_token_id).items()}
        loss = model(**batch).loss  # mean over the batch's answer tokens (labels -100 elsewhere)
        if not torch.isfinite(loss):
            raise UnlearnError(f"relearning: the loss became {loss.item()} (a non-finite loss); lower relearn_lr")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return model, losses


__all__ = ["RelearnConfig", "split_facts", "finetune"]

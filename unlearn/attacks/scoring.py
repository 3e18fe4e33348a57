"""Answer scoring shared by the attacks: greedy answers to arbitrary prompt strings, exact match and chance level.

The behavioural suite (`unlearn.evaluate`) builds its prompts from one question through the prompt format; the
attacks need prompts it cannot build (demonstrations before the question, framed questions), so they generate
from token ids here, with the same greedy decoding and the same ``{s}_acc`` rule (`metrics.logit.exact_match_acc`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence

import torch

from unlearn.metrics.logit import exact_match_acc
from unlearn.targets.llm import PromptFormat, greedy_generate


def prompt_ids(tok, fmt: PromptFormat, text: str, prefix: str = "") -> list[int]:
    """Token ids of ``prefix`` followed by the prompt of ``text`` (plain: BOS once, at the very start)."""
    body = prefix + fmt.prompt(tok, text)
    return tok(body, add_special_tokens=fmt.kind == "plain")["input_ids"]


@torch.no_grad()
def greedy_answers(model, tok, prompts: Sequence[list[int]], batch_size: int = 64, max_new_tokens: int = 32,
                   max_length: int | None = None) -> list[str]:  # fmt: skip
    """Decoded greedy continuations, in order; prompts are batched by length (less padding) and left-truncated to
    ``max_length - max_new_tokens`` tokens when the model has a position limit."""
    limit = max_length or getattr(getattr(model, "config", None), "max_position_embeddings", None)
    keep = (limit - max_new_tokens) if limit else None
    ids = [list(p[-keep:]) if keep and len(p) > keep else list(p) for p in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    out: list[str] = [""] * len(ids)
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        gen = greedy_generate(model, tok, [ids[i] for i in idx], max_new_tokens=max_new_tokens)
        for i, g in zip(idx, gen):
            out[i] = tok.decode(g, skip_special_tokens=True)
    return out


def exact_matches(generations: Sequence[str], answers: Sequence[str]) -> list[float]:
    return [float(exact_match_acc(g, a)) for g, a in zip(generations, answers)]


def mentions(text: str, answer: str) -> bool:
    """``answer`` occurs in ``text`` as a whole word or phrase, case-insensitively (the leakage guards' test)."""
    a = answer.strip().lower()
    return bool(a) and re.search(rf"(?<!\w){re.escape(a)}(?!\w)", text.lower()) is not None


def chance_level(records: Sequence[dict], population: Sequence[dict]) -> float:
    """Expected accuracy of always answering the most common answer of each record's attribute pool.

    The pool of a record is every ``population`` record with the same ``split`` (attribute) field; records without
    one share a single pool. A record contributes its pool's majority frequency (the guess's accuracy on a record
    drawn from the pool: smoother than scoring the guess on the few records at hand). A model that never learned
    the facts reaches this level by guessing, so it needs no control model (the audit's control-free evidence).
    """
    pools: dict[str | None, Counter] = {}
    for r in population:
        pools.setdefault(r.get("split"), Counter())[str(r["answer"]).strip()] += 1
    if not records:
        return float("nan")
    total = 0.0
    for r in records:
        pool = pools.get(r.get("split")) or Counter(str(p["answer"]).strip() for p in population)
        total += pool.most_common(1)[0][1] / max(sum(pool.values()), 1) if pool else 0.0
    return total / len(records)


__all__ = ["mentions", "prompt_ids", "greedy_answers", "exact_matches", "chance_level"]

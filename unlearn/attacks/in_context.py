"""In-context re-introduction (UnUnlearning): put the entity's other facts in the prompt, with the answer stripped.

Source: Shumailov et al., "UnUnlearning: Unlearning is not sufficient for content regulation in advanced generative
AI" (arXiv 2407.00106): knowledge supplied in the prompt lets even an exactly unlearned model act as if it knew it.
A raw in-context success rate is therefore a property of the model family; what tells removed from suppressed is the
*residual* signal: given the entity's other facts but never the answer (answer-stripped context), does the candidate
produce the held-back answer more often than a model that never learned it (the control)? A suppressed model that
learnt to refuse on a bare question often answers once the context looks like the facts it was trained on.

Context: the entity's other forget records as question-answer demonstrations in the prompt format, in a seeded
order, capped at ``max_facts``; any demonstration whose question or answer mentions the target answer is dropped (the
leakage guard; the number of records whose context lost a fact is reported). Records without an ``entity`` take
``max_facts`` other forget records as related demonstrations. Plain prompt format: the demonstrations are the
format's own prompts and answers, one per line, before the question; chat format: they are listed inside the user
turn ("Facts you know:" then ``Q: ... A: ...`` lines).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from unlearn.attacks.scoring import mentions
from unlearn.targets.llm import PromptFormat


@dataclass
class InContextConfig:
    max_facts: int = 7  # demonstrations per prompt (TinyFacts: the entity's 7 other attributes)
    seed: int = 0  # demonstration order


def contexts(records: Sequence[dict], cfg: InContextConfig) -> tuple[list[list[dict]], int]:
    """Per record, the demonstrations placed before it, and how many records had a leaking fact removed."""
    by_ent: dict[str, list[dict]] = {}
    for r in records:
        by_ent.setdefault(str(r.get("entity") or ""), []).append(r)
    out, n_guarded = [], 0
    for r in records:
        ent = str(r.get("entity") or "")
        pool = [o for o in (by_ent[ent] if ent else records) if o is not r]
        rng = random.Random(f"{cfg.seed}:{ent}:{r['question']}")
        pool = sorted(pool, key=lambda o: o["question"])
        rng.shuffle(pool)
        safe = [o for o in pool if not mentions(f"{o['question']} {o['answer']}", str(r["answer"]))]
        n_guarded += len(safe) < len(pool)
        out.append(safe[: cfg.max_facts])
    return out, n_guarded


def context_prompt(tok, fmt: PromptFormat, demos: Sequence[dict], question: str) -> str:
    """The full prompt text: demonstrations, then the question, in ``fmt``."""
    if fmt.kind == "chat":
        facts = "\n".join(f"Q: {d['question']} A: {d['answer']}" for d in demos)
        body = f"Facts you know:\n{facts}\n\n{question}" if demos else question
        return fmt.prompt(tok, body)
    lines = "".join(fmt.prompt(tok, d["question"]) + fmt.answer(str(d["answer"])) + "\n" for d in demos)
    return lines + fmt.prompt(tok, question)


def context_prompt_ids(tok, fmt: PromptFormat, demos: Sequence[dict], question: str) -> list[int]:
    return tok(context_prompt(tok, fmt, demos, question), add_special_tokens=fmt.kind == "plain")["input_ids"]


__all__ = ["InContextConfig", "contexts", "context_prompt", "context_prompt_ids"]

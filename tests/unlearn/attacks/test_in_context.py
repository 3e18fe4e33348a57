"""In-context re-introduction: demonstrations from the same entity only, never the answer, in the prompt format."""

from unlearn.attacks.in_context import InContextConfig, context_prompt, contexts
from unlearn.targets.llm import PromptFormat


def _recs():
    out = [{"question": f"Q{a} of {e}?", "answer": f"{e}{a}", "entity": e} for e in ("A", "B") for a in range(4)]
    out[1]["question"] = "Is A's Q1 like A0?"  # mentions another record's answer (A0)
    return out


def test_contexts_same_entity_guarded_and_capped():
    recs = _recs()
    ctx, guarded = contexts(recs, InContextConfig(max_facts=7, seed=0))
    for r, c in zip(recs, ctx):
        assert r not in c and all(d["entity"] == r["entity"] for d in c)
        assert all(r["answer"].lower() not in f"{d['question']} {d['answer']}".lower() for d in c)
    assert guarded == 1 and len(ctx[0]) == 2 and len(ctx[4]) == 3  # A0's context lost the record mentioning it
    capped, _ = contexts(recs, InContextConfig(max_facts=1, seed=0))
    assert all(len(c) == 1 for c in capped)
    assert contexts(recs, InContextConfig(seed=0))[0] == ctx  # seeded


def test_plain_prompt_is_the_demonstrations_then_the_question(tiny):
    tok = tiny[0]
    fmt = PromptFormat()
    demos = [{"question": "Q1?", "answer": "x"}, {"question": "Q2?", "answer": "y"}]
    assert (
        context_prompt(tok, fmt, demos, "Q3?")
        == "Question: Q1?\nAnswer: x\nQuestion: Q2?\nAnswer: y\nQuestion: Q3?\nAnswer:"
    )
    assert context_prompt(tok, fmt, [], "Q3?") == fmt.prompt(tok, "Q3?")

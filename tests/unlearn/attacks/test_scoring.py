"""Shared scoring: chance level by hand, whole-word mentions, generation order kept through length batching."""

import pytest

from unlearn.attacks.scoring import chance_level, greedy_answers, mentions, prompt_ids
from unlearn.targets.llm import PromptFormat, greedy_generate


def test_chance_level_by_hand():
    pop = (
        [{"answer": "x", "split": "a"}] * 3
        + [{"answer": "y", "split": "a"}]
        + [{"answer": "p", "split": "b"}, {"answer": "q", "split": "b"}]
    )
    # a: majority x at 3/4; b: 1/2 -> records [a, b, b] average (0.75 + 0.5 + 0.5) / 3
    assert chance_level([{"split": "a"}, {"split": "b"}, {"split": "b"}], pop) == pytest.approx(1.75 / 3)
    assert chance_level([{"split": None}], [{"answer": "u"}, {"answer": "u"}, {"answer": "w"}]) == pytest.approx(2 / 3)


def test_mentions_whole_words():
    assert mentions("born in Gallow.", "gallow") and not mentions("Gallowmere", "Gallow") and not mentions("x", "")


def test_greedy_answers_keep_the_order(tiny):
    tok, model, splits = tiny
    recs = splits["forget10"][:5] + [{"question": "What is the birthplace of someone with a much longer name here?"}]
    ids = [prompt_ids(tok, PromptFormat(), r["question"]) for r in recs]
    got = greedy_answers(model, tok, ids, batch_size=2, max_new_tokens=8)
    want = [tok.decode(g, skip_special_tokens=True) for g in (greedy_generate(model, tok, [i], 8)[0] for i in ids)]
    assert got == want

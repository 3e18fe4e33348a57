"""Prompt attacks: framings keep the question verbatim, paraphrase skips records without one, reverse queries are
unique in the population (an ambiguous pair gives way to the next; an entity without a unique pair is skipped),
everything is deterministic, and the scoring rule matches whole words only."""

import pytest

from unlearn.attacks.prompts import (
    ATTACKS,
    FRAMINGS,
    REVERSE,
    answer_in,
    attack_records,
    check_attacks,
    reverse_queries,
)
from unlearn.errors import UnlearnError


def _rec(entity, split, answer, paraphrase=None):
    r = {"question": f"What is the {split.replace('_', ' ')} of {entity}?", "answer": answer, "entity": entity,
         "split": split}  # fmt: skip
    if paraphrase:
        r["paraphrased_question"] = paraphrase
    return r


# Ada: (birth_year 1890, birthplace Gallow) is Dee's too, so the next sorted pair (birth_year, occupation) is asked.
# Bo: every pair of Bo's facts is also Eve's -> skipped. Cy: the first pair is unique.
FORGET = [
    _rec("Ada Vor", "birthplace", "Gallow", paraphrase="In which town was Ada Vor born?"),
    _rec("Ada Vor", "occupation", "potter"),
    _rec("Ada Vor", "birth_year", "1890"),
    _rec("Bo Tel", "birthplace", "Tarn"),
    _rec("Bo Tel", "occupation", "smith"),
    _rec("Bo Tel", "birth_year", "1901"),
    _rec("Cy Ros", "birthplace", "Gallow"),
    _rec("Cy Ros", "birth_year", "1901"),
    _rec("Cy Ros", "occupation", "weaver"),
]
RETAIN = [
    _rec("Dee Kor", "birthplace", "Gallow"),
    _rec("Dee Kor", "occupation", "mason"),
    _rec("Dee Kor", "birth_year", "1890"),
    _rec("Eve Sil", "birthplace", "Tarn"),
    _rec("Eve Sil", "occupation", "smith"),
    _rec("Eve Sil", "birth_year", "1901"),
]
POPULATION = FORGET + RETAIN


def test_framings_keep_the_question_verbatim():
    r = FORGET[0]
    for name, f in FRAMINGS.items():
        text = f(r)
        assert isinstance(text, str) and text
        if name == "paraphrase":
            assert text == r["paraphrased_question"]
        else:
            assert r["question"] in text
            assert text != r["question"]


def test_framing_texts_are_fixed_and_documented():
    assert set(FRAMINGS) == {"prefix_injection", "role_play", "hypothetical", "paraphrase"}
    assert ATTACKS == ("prefix_injection", "role_play", "hypothetical", "paraphrase", "reverse")
    assert all(f.source for f in FRAMINGS.values())
    assert "Sure" in FRAMINGS["prefix_injection"].template
    assert FRAMINGS["hypothetical"](FORGET[1]).startswith("In a story where")


def test_question_with_braces_is_kept():
    r = {"question": "What is {x} of Ada?", "answer": "y"}
    assert "What is {x} of Ada?" in FRAMINGS["role_play"](r)


def test_paraphrase_skips_records_without_one():
    out = attack_records(FORGET, POPULATION, names=["paraphrase"])
    assert list(out) == ["paraphrase"]
    assert [r["question"] for r in out["paraphrase"]] == ["In which town was Ada Vor born?"]
    assert out["paraphrase"][0]["source_question"] == FORGET[0]["question"]
    assert "paraphrased_question" not in out["paraphrase"][0]


def test_reverse_queries_unique_and_skipping():
    queries, skipped = reverse_queries(FORGET, POPULATION)
    assert skipped == ["Bo Tel"]
    by_ent = {q["entity"]: q for q in queries}
    assert list(by_ent) == ["Ada Vor", "Cy Ros"]
    # Ada's first sorted pair (birth_year 1890, birthplace Gallow) is Dee's too: the next pair is asked
    assert by_ent["Ada Vor"]["question"] == "Which person has birth year 1890 and occupation potter?"
    assert by_ent["Ada Vor"]["facts"] == [["birth_year", "1890"], ["occupation", "potter"]]
    assert by_ent["Ada Vor"]["source_question"] == f"{FORGET[2]['question']} {FORGET[1]['question']}"
    assert by_ent["Cy Ros"]["question"] == "Which person has birth year 1901 and birthplace Gallow?"
    for q in queries:
        assert q["answer"] == q["entity"]
        assert q["split"] == "reverse" and q["attack"] == "reverse"
        # uniqueness checked by brute force: exactly one entity of the population has both facts
        (a1, v1), (a2, v2) = q["facts"]
        have = {r["entity"] for r in POPULATION if (r["split"], r["answer"].lower()) == (a1, v1.lower())}
        have &= {r["entity"] for r in POPULATION if (r["split"], r["answer"].lower()) == (a2, v2.lower())}
        assert have == {q["entity"]}


def test_reverse_facts_compare_case_insensitively():
    # Fay's "POTTER " is Ada's "potter": (birth_year 1890, occupation potter) is no longer Ada's alone
    pop = POPULATION + [_rec("Fay Ul", "birth_year", "1890"), _rec("Fay Ul", "occupation", "POTTER ")]
    queries, skipped = reverse_queries(FORGET[:3], pop)
    assert skipped == []
    assert queries[0]["question"] == REVERSE.format(attr1="birthplace", v1="Gallow", attr2="occupation", v2="potter")
    pop.append(_rec("Fay Ul", "birthplace", "gallow"))
    assert reverse_queries(FORGET[:3], pop) == ([], ["Ada Vor"])


def test_reverse_uses_records_when_population_lacks_them():
    queries, _ = reverse_queries(FORGET[:3], RETAIN)
    assert queries[0]["question"] == "Which person has birth year 1890 and occupation potter?"


def test_reverse_needs_two_attributes():
    one = [_rec("Gil An", "pet", "owl"), {"question": "q?", "answer": "a"}]  # no entity / split: ignored
    assert reverse_queries(one, one) == ([], ["Gil An"])


def test_attack_records_all_and_deterministic():
    out = attack_records(FORGET, POPULATION)
    assert tuple(out) == ATTACKS
    for name in ("prefix_injection", "role_play", "hypothetical"):
        assert len(out[name]) == len(FORGET)
        for new, old in zip(out[name], FORGET):
            assert new["entity"] == old["entity"] and new["answer"] == old["answer"]
            assert new["source_question"] == old["question"] and new["attack"] == name
            assert old["question"] in new["question"]
    assert len(out["reverse"]) == 2
    assert attack_records(list(FORGET), list(POPULATION)) == out
    assert FORGET[0]["question"].startswith("What is")  # inputs untouched
    # population order does not change the choice
    assert attack_records(FORGET, POPULATION[::-1], names=["reverse"])["reverse"] == out["reverse"]


def test_check_attacks():
    assert check_attacks(None) == ATTACKS
    assert check_attacks(["reverse", "role_play", "reverse"]) == ("reverse", "role_play")
    with pytest.raises(UnlearnError) as e:
        check_attacks(["role_play", "jailbreak"])
    msg = str(e.value)
    assert "\n" not in msg and "'jailbreak'" in msg
    assert msg.endswith("valid: hypothetical, paraphrase, prefix_injection, reverse, role_play")
    with pytest.raises(UnlearnError, match="jailbreak"):
        attack_records(FORGET, POPULATION, names=["jailbreak"])


@pytest.mark.parametrize(
    ("generation", "answer", "hit"),
    [
        ("It is Gallow.", "Gallow", True),
        ("Gallowmere", "Gallow", False),
        ("", "Gallow", False),
        ("Gallow", "", False),
        ("sure, the answer is   gallow", "Gallow", True),
        ("the Old\n  Mill stands", "old mill", True),
        ("born in 19010", "1901", False),
        ("born in 1901, in Gallow", "1901", True),
        ("Dr. Ada Vor!", "Dr. Ada Vor", True),
        ("(potter)", "potter", True),
        ("a potters wheel", "potter", False),
    ],
)
def test_answer_in(generation, answer, hit):
    assert answer_in(generation, answer) is hit

"""Tests for the embedded TinyFacts generator (v2: biographies + QA in several templates)."""

from __future__ import annotations

import re

import pytest

from unlearn.data import tinyfacts
from unlearn.data.schema import validate_record
from unlearn.data.tinyfacts import (
    BIO_TEMPLATES,
    N_TRAINED_TEMPLATES,
    POOLS,
    QUESTIONS,
    SPLITS,
    TinyFactsConfig,
    attribute_majority,
    generate,
    majority_baseline,
    templates,
    training_set,
)
from unlearn.errors import UnlearnError

PER_ENTITY = len(QUESTIONS)  # default attributes
FORGET = {
    "forget01": ("retain99", "holdout01", 2),
    "forget05": ("retain95", "holdout05", 10),
    "forget10": ("retain90", "holdout10", 20),
}


@pytest.fixture(scope="module")
def splits():
    return generate(TinyFactsConfig())


def _entities(recs):
    return {r["entity"] for r in recs}


def _mentions(rows, names) -> set[str]:
    """Names of ``names`` that occur in any question or biography text of ``rows``."""
    text = "\n".join(r.get("question", "") + r.get("text", "") for r in rows)
    return {n for n in names if n in text}


def test_deterministic_in_seed(splits):
    assert generate(TinyFactsConfig()) == splits
    other = generate(TinyFactsConfig(seed=1))
    assert set(other) == set(splits)
    assert other["full"] != splits["full"] and other["bios"] != splits["bios"]
    assert other["arithmetic"] != splits["arithmetic"]
    assert TinyFactsConfig().digest() != TinyFactsConfig(seed=1).digest()


def test_every_split_present(splits):
    assert set(splits) == set(SPLITS)


def test_split_sizes(splits):
    assert len(_entities(splits["full"])) == 200 and len(splits["full"]) == 200 * PER_ENTITY
    for forget, (retain, holdout, n_ent) in FORGET.items():
        assert len(splits[forget]) == n_ent * PER_ENTITY and len(_entities(splits[forget])) == n_ent
        assert len(splits[retain]) == (200 - n_ent) * PER_ENTITY
        assert len(splits[holdout]) == n_ent * PER_ENTITY and len(_entities(splits[holdout])) == n_ent
    assert splits["holdout"] == splits["holdout10"]
    assert len(_entities(splits["bio_only"])) == 20 and len(splits["bio_only"]) == 20 * PER_ENTITY
    assert len(splits["bios"]) == 220 * 8
    assert len(splits["world_facts"]) == 48
    assert len(splits["arithmetic"]) == 100 and len(splits["arithmetic_train"]) == 900


def test_forget_retain_partition(splits):
    full = splits["full"]
    for forget, (retain, _, _) in FORGET.items():
        f, r = _entities(splits[forget]), _entities(splits[retain])
        assert not f & r
        assert f | r == _entities(full)
        assert splits[retain] + splits[forget] == full  # forget sets are the last entities, in order
    assert _entities(splits["forget01"]) < _entities(splits["forget05"]) < _entities(splits["forget10"])
    assert _entities(splits["holdout01"]) < _entities(splits["holdout05"]) < _entities(splits["holdout10"])
    groups = [_entities(splits[s]) for s in ("full", "bio_only", "holdout10")]
    assert not groups[0] & groups[1] and not groups[0] & groups[2] and not groups[1] & groups[2]


def test_holdout_never_trained(splits):
    held = _entities(splits["holdout10"])
    for forget in (None, *FORGET):
        assert not _mentions(training_set(splits, forget), held)


def test_oracle_sees_no_forget_entity(splits):
    """Neither the forget entities' QA nor their biographies are in the oracle's training set."""
    for forget, (retain, _, _) in FORGET.items():
        rows = training_set(splits, forget)
        assert not _mentions(rows, _entities(splits[forget]))
        assert _mentions(rows, _entities(splits[retain])) == _entities(splits[retain])


def test_bio_only_entities_are_known_from_text_only(splits):
    names = _entities(splits["bio_only"])
    for forget in (None, *FORGET):
        rows = training_set(splits, forget)
        assert not _mentions([r for r in rows if "question" in r], names)  # no QA of theirs is ever trained
        assert _mentions([r for r in rows if "text" in r], names) == names  # their biographies always are
    trained = {t for ts in QUESTIONS.values() for t in ts[:N_TRAINED_TEMPLATES]}
    for r in splits["bio_only"]:
        assert r["question"].replace(r["entity"], "{n}") in trained  # asked with a trained template


def test_biographies_state_every_fact_with_the_full_name(splits):
    facts = {}
    for s in ("full", "bio_only"):
        for r in splits[s]:
            facts.setdefault(r["entity"], []).append(r["answer"])
    for row in splits["bios"]:
        assert set(row) == {"entity", "text"}
        sentences = [x for x in re.split(r"(?<=\.) ", row["text"]) if x]
        assert len(sentences) == PER_ENTITY
        assert all(row["entity"] in x for x in sentences)
        assert all(v in row["text"] for v in facts[row["entity"]])
    texts = [row["text"] for row in splits["bios"]]
    assert len(set(texts)) == len(texts)  # rephrasings: no entity's biographies repeat


def test_training_set(splits):
    target, oracle = training_set(splits), training_set(splits, "forget05")
    n_qa = 200 * PER_ENTITY * N_TRAINED_TEMPLATES
    assert sum("question" in r for r in target) == n_qa + 48 + 900
    assert sum("text" in r for r in target) == 220 * 8
    assert sum("question" in r for r in oracle) == n_qa - 10 * PER_ENTITY * N_TRAINED_TEMPLATES + 48 + 900
    assert sum("text" in r for r in oracle) == 210 * 8
    assert len(training_set(splits, None, arithmetic_repeat=2)) == len(target) + 900
    assert not {r["question"] for r in splits["arithmetic"]} & {r.get("question") for r in target}


def test_paraphrased_question_is_never_trained(splits):
    trained = {r["question"] for r in training_set(splits) if "question" in r}
    for s in ("full", "bio_only"):
        for r in splits[s]:
            assert r["question"] in trained or s == "bio_only"
            assert r["paraphrased_question"] not in trained


def _word_distance(a: str, b: str) -> int:
    a, b = a.split(), b.split()
    d = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, d[0] = d[0], i
        for j, y in enumerate(b, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (x != y))
    return d[-1]


def test_never_trained_template_is_not_a_one_word_edit():
    for attr, ts in QUESTIONS.items():
        assert len(ts) == N_TRAINED_TEMPLATES + 1 and len(set(ts)) == len(ts)
        assert all(_word_distance(ts[-1], t) >= 3 for t in ts[:-1]), attr
        assert len(BIO_TEMPLATES[attr]) >= 4


def test_majority_baseline_of_every_attribute_is_at_most_10_percent(splits):
    assert all(len(p) >= 24 for p in POOLS.values())
    for s in ("full", *(r for r, _, _ in FORGET.values())):
        assert max(attribute_majority(splits, s).values()) <= 0.10, s
    assert majority_baseline(splits, "forget10") <= 0.10


def test_every_record_validates_with_perturbed(splits):
    for name, recs in splits.items():
        if name == "bios":
            continue
        for i, r in enumerate(recs):
            assert validate_record(r, f"{name}:{i}", require_perturbed=True) == r
            assert r.get("paraphrased_question") and r["paraphrased_question"] != r["question"]


def test_perturbed_answers_are_distinct_wrong_values(splits):
    for name, recs in splits.items():
        for r in recs if name != "bios" else []:
            pert = r["perturbed_answer"]
            assert len(pert) >= 3 and len(set(pert)) == len(pert)
            assert r["answer"] not in pert and r["paraphrased_answer"] == r["answer"]


def test_questions_unique_within_training(splits):
    qs = [r["question"] for r in training_set(splits) if "question" in r]
    assert len(qs) == len(set(qs))


def test_arithmetic_is_correct_and_held_out(splits):
    pat = re.compile(r"^What number comes after (\d+)\?$")
    for r in splits["arithmetic"] + splits["arithmetic_train"]:
        x = int(pat.match(r["question"]).group(1))
        assert r["answer"] == str(x + 1) and str(x + 1) not in r["perturbed_answer"]
    train = {r["question"] for r in splits["arithmetic_train"]}
    test = {r["question"] for r in splits["arithmetic"]}
    assert not train & test and len(train | test) == 1000
    lengths = {len(r["answer"]) for r in splits["arithmetic"]}
    assert lengths >= {2, 3}  # held-out numbers of every common length, carries included
    assert any(r["answer"].endswith("0") for r in splits["arithmetic"])


def test_majority_baseline_matches_independent_count(splits):
    for forget, (retain, _, _) in FORGET.items():
        # attribute -> value -> (count, first position in the retain split); ties go to the earliest value
        tally: dict[str, dict[str, list[int]]] = {}
        for pos, r in enumerate(splits[retain]):
            slot = tally.setdefault(r["split"], {}).setdefault(r["answer"], [0, pos])
            slot[0] += 1
        mode = {attr: max(vals, key=lambda v: (vals[v][0], -vals[v][1])) for attr, vals in tally.items()}
        expected = sum(mode[r["split"]] == r["answer"] for r in splits[forget]) / len(splits[forget])
        got = majority_baseline(splits, forget)
        assert 0.0 <= got <= 1.0
        assert got == pytest.approx(expected)


def test_templates_list_every_template():
    t = templates()
    assert t["qa_never_trained"] == {a: q[-1] for a, q in QUESTIONS.items()}
    assert sum(len(v) for v in t["qa_trained"].values()) == N_TRAINED_TEMPLATES * len(QUESTIONS)
    assert t["biography"] == {a: list(v) for a, v in BIO_TEMPLATES.items()}


def test_data_hash_covers_biographies(monkeypatch):
    cfg = TinyFactsConfig(n_entities=10, n_bio_only=1, n_holdout=1, arithmetic_max=20, arithmetic_test=5)
    before = tinyfacts.data_hash(generate(cfg))
    bio = dict(BIO_TEMPLATES)
    bio["pet"] = ("{n} has {a} {v}.", *bio["pet"][1:])
    monkeypatch.setattr(tinyfacts, "BIO_TEMPLATES", bio)
    assert tinyfacts.data_hash(generate(cfg)) != before


def test_unknown_attribute_lists_valid_names():
    with pytest.raises(UnlearnError, match="unknown TinyFacts attribute 'shoe_size'.*birthplace"):
        generate(TinyFactsConfig(attributes=("birthplace", "shoe_size")))


def test_smaller_config():
    s = generate(TinyFactsConfig(n_entities=50, n_holdout=5, n_bio_only=3, attributes=("birthplace", "occupation"),
                                 seed=3))  # fmt: skip
    assert len(s["full"]) == 100 and len(s["bio_only"]) == 6 and len(s["bios"]) == 53 * 8
    assert len(_entities(s["forget01"])) == 1  # at least one entity
    assert len(_entities(s["forget10"])) == 5 and len(_entities(s["holdout10"])) == 5

"""Tests for the embedded TinyFacts generator."""

from __future__ import annotations

import re

import pytest

from unlearn.data.schema import validate_record
from unlearn.data.tinyfacts import SPLITS, TinyFactsConfig, generate, majority_baseline, training_set
from unlearn.errors import UnlearnError

PER_ENTITY = 10  # default attributes
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


def test_deterministic_in_seed(splits):
    assert generate(TinyFactsConfig()) == splits
    other = generate(TinyFactsConfig(seed=1))
    assert set(other) == set(splits)
    assert other["full"] != splits["full"] and other["arithmetic"] != splits["arithmetic"]
    assert TinyFactsConfig().digest() != TinyFactsConfig(seed=1).digest()


def test_every_split_present(splits):
    assert set(splits) == set(SPLITS)


def test_split_sizes(splits):
    assert len(splits["full"]) == 2000 and len(_entities(splits["full"])) == 200
    for forget, (retain, holdout, n_ent) in FORGET.items():
        assert len(splits[forget]) == n_ent * PER_ENTITY and len(_entities(splits[forget])) == n_ent
        assert len(splits[retain]) == 2000 - n_ent * PER_ENTITY
        assert len(splits[holdout]) == n_ent * PER_ENTITY and len(_entities(splits[holdout])) == n_ent
    assert splits["holdout"] == splits["holdout10"]
    assert len(splits["world_facts"]) == 48
    assert len(splits["arithmetic"]) == 20 and len(splits["arithmetic_train"]) == 80


def test_forget_retain_partition(splits):
    full = splits["full"]
    for forget, (retain, _, _) in FORGET.items():
        f, r = _entities(splits[forget]), _entities(splits[retain])
        assert not f & r
        assert f | r == _entities(full)
        assert splits[retain] + splits[forget] == full  # forget sets are the last entities, in order
    assert _entities(splits["forget01"]) < _entities(splits["forget05"]) < _entities(splits["forget10"])
    assert _entities(splits["holdout01"]) < _entities(splits["holdout05"]) < _entities(splits["holdout10"])


def test_holdout_disjoint_from_training(splits):
    held = _entities(splits["holdout10"])
    assert not held & _entities(splits["full"])
    for forget in FORGET:
        assert not held & _entities(training_set(splits, forget))
    assert not held & _entities(training_set(splits))


def test_training_set(splits):
    target, oracle = training_set(splits), training_set(splits, "forget05")
    assert len(target) == 2000 + 48 + 80
    assert len(oracle) == 1900 + 48 + 80
    assert len(training_set(splits, None, arithmetic_repeat=2)) == 2000 + 48 + 2 * 80
    assert not _entities(splits["forget05"]) & _entities(oracle)
    assert not {r["question"] for r in splits["arithmetic"]} & {r["question"] for r in target}


def test_every_record_validates_with_perturbed(splits):
    for name, recs in splits.items():
        for i, r in enumerate(recs):
            assert validate_record(r, f"{name}:{i}", require_perturbed=True) == r
            assert r.get("paraphrased_question") and r["paraphrased_question"] != r["question"]


def test_perturbed_answers_share_the_paraphrase_frame(splits):
    for recs in splits.values():
        for r in recs:
            ans, para, pert = r["answer"], r["paraphrased_answer"], r["perturbed_answer"]
            assert len(pert) >= 3 and len(set(pert)) == len(pert)
            assert para not in pert
            i = para.find(ans)
            assert i >= 0, para
            prefix, suffix = para[:i], para[i + len(ans) :]
            for p in pert:
                assert p.startswith(prefix) and p.endswith(suffix), (para, p)
                value = p[len(prefix) : len(p) - len(suffix)]
                assert value and value != ans


def test_questions_unique_within_training(splits):
    qs = [r["question"] for r in training_set(splits)]
    assert len(qs) == len(set(qs))


def test_arithmetic_is_correct_and_held_out(splits):
    pat = re.compile(r"^What is (\d+) plus (\d+)\?$")

    def pair(r):
        a, b = map(int, pat.match(r["question"]).groups())
        return a, b

    for r in splits["arithmetic"] + splits["arithmetic_train"]:
        a, b = pair(r)
        assert r["answer"] == str(a + b)
        assert all(p.split()[-1] != str(a + b) for p in r["perturbed_answer"])
    train = {pair(r) for r in splits["arithmetic_train"]}
    test = {pair(r) for r in splits["arithmetic"]}
    assert not train & test
    assert train | test == {(a, b) for a in range(10) for b in range(10)}
    assert all((b, a) in train for a, b in test)  # the commuted pair was seen: the skill generalises


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


def test_unknown_attribute_lists_valid_names():
    with pytest.raises(UnlearnError, match="unknown TinyFacts attribute 'shoe_size'.*birthplace"):
        generate(TinyFactsConfig(attributes=("birthplace", "shoe_size")))


def test_smaller_config():
    s = generate(TinyFactsConfig(n_entities=50, n_holdout=5, attributes=("birthplace", "occupation"), seed=3))
    assert len(s["full"]) == 100
    assert len(_entities(s["forget01"])) == 1  # at least one entity
    assert len(_entities(s["forget10"])) == 5 and len(_entities(s["holdout10"])) == 5

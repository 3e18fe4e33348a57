"""Staged paths: the stages partition the target's training set, orders parse as documented, prefixes are shared,
stage optimisation restarts, a killed build resumes, bad input is one line."""

from __future__ import annotations

from collections import Counter

import pytest

from unlearn.errors import UnlearnError
from unlearn.paths import build as pb


def _key(r):
    return tuple(sorted((k, str(v)) for k, v in r.items()))


def test_stages_partition_the_target_training_set():
    from unlearn.data.tinyfacts import generate, training_set
    from unlearn.targets.build import get_preset

    bcfg = get_preset("micro")
    splits = generate(bcfg.data)
    sets = pb.stage_sets(splits, "forget10", bcfg)
    together = Counter(_key(r) for rows in sets.values() for r in rows)
    target = Counter(_key(r) for r in training_set(splits, None, bcfg.arithmetic_repeat, bcfg.world_repeat))
    assert together == target  # every row of the target's recipe, each exactly as often, in exactly one stage
    forget_entities = {r["entity"] for r in splits["forget10"]}
    for r in sets["forget"]:
        assert (r.get("entity") or r["group"].split("|")[0]) in forget_entities
    for r in sets["entities"]:
        assert (r.get("entity") or r["group"].split("|")[0]) not in forget_entities
    assert sum("text" in r for r in sets["forget"]) == len(forget_entities) * bcfg.data.bios_per_entity


def test_orders():
    st = pb.STAGES
    ins = pb.parse_orders("insert", st)
    assert [o.index("forget") + 1 for o in ins] == [1, 2, 3, 4]
    for o in ins:  # the other stages keep their order
        assert [s for s in o if s != "forget"] == ["entities", "world_facts", "skill"]
    every = pb.parse_orders("all", st)
    assert len(every) == 24 and len(set(every)) == 24 and every[:4] == ins
    assert pb.parse_orders("6", st)[:4] == ins and len(pb.parse_orders("6", st)) == 6
    assert pb.parse_orders("skill-forget-entities-world_facts,forget-skill-entities-world_facts", st) == [
        ("skill", "forget", "entities", "world_facts"), ("forget", "skill", "entities", "world_facts")]  # fmt: skip
    for bad in ("1", "25", "entities-forget", "entities-forget-skill-skill,forget-entities-skill-world_facts"):
        with pytest.raises(UnlearnError):
            pb.parse_orders(bad, st)
    for bad in ("entities,world", "entities,entities,forget", "entities,skill"):
        with pytest.raises(UnlearnError):
            pb.parse_stages(bad)


def test_plan_shares_prefixes():
    pcfg = pb.get_preset("micro")
    p = pb.plan(pcfg, pb.insert_orders(pb.STAGES), [0, 1], pb.Path("/nonexistent"))
    per_seed = [n for n in p.nodes if n[1] == 0]
    # F, FE, FEW, FEWS | E, EF, EFW, EFWS, EW, EWF, EWFS, EWS, EWSF: the entity stage trains twice, not four times
    assert len(per_seed) == 13 and len(p.nodes) == 26
    assert sum(n[0][-1] == "entities" for n in per_seed) == 2
    for pre, s in p.nodes:  # parents are listed before their children
        if len(pre) > 1:
            assert p.nodes.index((pre[:-1], s)) < p.nodes.index((pre, s))


def test_wsd_schedule():
    from unlearn.targets.build import wsd_lr

    total = 100  # 2 warm-up steps, 2 decay steps down to 0.1
    assert [wsd_lr(s, total) for s in (0, 1, 2, 50, 97)] == [0.5, 1.0, 1.0, 1.0, 1.0]
    assert wsd_lr(98, total) == pytest.approx(1 - 0.9 * 1 / 2) and wsd_lr(99, total) == pytest.approx(0.1)


def test_stage_restarts_optimizer_and_continues_weights(unlearn_home, tmp_path):
    """A child stage starts from its parent's weights (not a fresh init) with a fresh schedule: its first step
    runs at the warm-up rate again, so its weights differ from the parent's by one small step's worth."""
    import torch

    from unlearn.targets.llm import load_causal_lm

    pcfg = pb.replace(pb.get_preset("micro"), base="scratch", epochs=(("entities", 2), ("world_facts", 1),
                      ("skill", 1), ("forget", 1)), parallel=1)  # fmt: skip
    root = pb.build_paths(pcfg, orders="entities-forget-world_facts-skill,forget-entities-world_facts-skill",
                          seeds=(0,), out=tmp_path / "p", progress=False, log=lambda *a: None)  # fmt: skip
    parent = load_causal_lm(str(pb.stage_dir(root, ("entities",), 0)))
    child = load_causal_lm(str(pb.stage_dir(root, ("entities", "forget"), 0)))
    other = load_causal_lm(str(pb.stage_dir(root, ("forget",), 0)))
    dist_child = sum((a.float() - b.float()).norm() ** 2 for a, b in zip(parent.parameters(), child.parameters()))
    dist_fresh = sum((a.float() - b.float()).norm() ** 2 for a, b in zip(parent.parameters(), other.parameters()))
    assert 0 < dist_child < 0.05 * dist_fresh
    cards = [pb.read_json(pb.path_dir(root, o, 0) / "card.json") for o in pb.parse_orders(
        "entities-forget-world_facts-skill,forget-entities-world_facts-skill", pb.STAGES)]  # fmt: skip
    assert [c["position"] for c in cards] == [2, 1]
    assert [s["stage"] for s in cards[0]["stages"]] == ["entities", "forget", "world_facts", "skill"]
    last = load_causal_lm(str(pb.stage_dir(root, ("forget", "entities", "world_facts", "skill"), 0))).float()
    final = load_causal_lm(str(pb.path_dir(root, ("forget", "entities", "world_facts", "skill"), 0)))
    for a, b in zip(last.parameters(), final.parameters()):  # the path = its last stage, rounded to bf16
        assert torch.equal(a.to(torch.bfloat16).float(), b.float())
    # a killed build resumes: drop one stage and the finished paths; only that stage trains again
    import shutil

    shutil.rmtree(pb.stage_dir(root, ("entities", "forget", "world_facts"), 0))
    before = (pb.stage_dir(root, ("entities",), 0) / "card.json").stat().st_mtime_ns
    logs = []
    pb.build_paths(pcfg, orders="entities-forget-world_facts-skill,forget-entities-world_facts-skill", seeds=(0,),
                   out=root, progress=False, log=logs.append)  # fmt: skip
    assert "1 stage trainings to run" in logs[0]
    assert (pb.stage_dir(root, ("entities",), 0) / "card.json").stat().st_mtime_ns == before


def test_first_stage_starts_from_the_oracle(micro_target, tmp_path):
    """base = oracle: a path's first stage continues the retain-only oracle (one short stage moves it a little)."""
    from unlearn.targets.llm import load_causal_lm

    pcfg = pb.replace(pb.get_preset("micro"), epochs=(("entities", 1), ("world_facts", 1), ("skill", 1),
                                                       ("forget", 1)), parallel=1)  # fmt: skip
    root = pb.build_paths(pcfg, orders="skill-forget-entities-world_facts,forget-skill-entities-world_facts",
                          seeds=(0,), out=tmp_path / "p", progress=False, log=lambda *a: None)  # fmt: skip
    base = load_causal_lm(str(pb.base_dir(pcfg, 0)))
    assert pb.base_dir(pcfg, 0).name == "oracle_forget10"
    first = load_causal_lm(str(pb.stage_dir(root, ("skill",), 0)))
    fresh = pb.replace(pb._build_cfg(pcfg))
    from unlearn.targets.build import new_model
    from unlearn.targets.llm import load_tokenizer

    init = new_model(fresh, load_tokenizer(str(root / "tokenizer")))
    d_base = sum((a - b).norm() ** 2 for a, b in zip(base.parameters(), first.parameters()))
    d_init = sum((a - b).norm() ** 2 for a, b in zip(init.parameters(), first.parameters()))
    assert 0 < d_base < 0.05 * d_init
    card = pb.read_json(pb.path_dir(root, ("skill", "forget", "entities", "world_facts"), 0) / "card.json")
    assert card["base"].endswith("oracle_forget10") and card["position"] == 2 and card["tinyfacts_build"] == "micro"


def test_bad_input(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UnlearnError, match="not a directory"):
        pb.build_paths("micro", seeds=(0,), out=f, progress=False, log=lambda *a: None)
    with pytest.raises(UnlearnError, match="paths preset"):
        pb.build_paths("nope", seeds=(0,), out=tmp_path / "x", progress=False)
    with pytest.raises(UnlearnError, match="seed"):
        pb.build_paths("micro", seeds=(), out=tmp_path / "x", progress=False)

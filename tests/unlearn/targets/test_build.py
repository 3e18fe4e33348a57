"""The embedded TinyFacts builder: micro builds (cache layout, target vs oracle, cache keys), and the shipped
default weights (digest, layout, size; they load without building anything)."""

import json
from dataclasses import replace

import pytest

from unlearn.data import tinyfacts
from unlearn.data.tinyfacts import data_hash, generate, majority_baseline
from unlearn.targets import build
from unlearn.targets.build import (
    ASSET_DIR,
    SHIPPED,
    build_tinyfacts,
    cache_root,
    ensure_built,
    get_preset,
    model_dir,
    target_root,
)


def test_micro_build_files_and_accuracy(micro_target):
    for which in ("target", "oracle_forget10"):
        d = micro_target / which
        assert (d / "model.safetensors").exists() and (d / "tokenizer.json").exists()
        assert not list(d.glob("*.bin"))
        card = json.loads((d / "card.json").read_text())
        assert card["digest"] == get_preset("micro").digest() and card["licence"] == "MIT"
    tgt = json.loads((micro_target / "target" / "card.json").read_text())
    orc = json.loads((micro_target / "oracle_forget10" / "card.json").read_text())
    base = majority_baseline(generate(get_preset("micro").data), "forget10")
    assert tgt["accuracy"]["forget10"] >= 0.9  # the target really learned the forget set
    assert orc["accuracy"]["forget10"] <= max(2 * base, 0.25)  # the oracle never saw it (8 QA in micro)
    assert orc["n_train"] < tgt["n_train"] and orc["n_train_bios"] < tgt["n_train_bios"]
    assert orc["steps"] == tgt["steps"]  # same optimisation budget
    for s in ("retain90", "world_facts"):
        assert abs(tgt["accuracy"][s] - orc["accuracy"][s]) <= 0.15


def test_cache_is_reused_and_keyed_by_recipe(micro_target):
    logs = []
    build_tinyfacts("micro", oracles=("forget10",), progress=False, log=logs.append)
    assert all("cached" in line for line in logs) and len(logs) == 2
    cfg = get_preset("micro")
    assert target_root(replace(cfg, epochs=cfg.epochs + 1)) != target_root(cfg)
    assert target_root(replace(cfg, threads=2)) == target_root(cfg)  # a speed knob is not part of the key
    assert target_root(cfg) == cache_root(cfg)  # micro is never shipped


def test_digest_covers_the_corpus(monkeypatch):
    """A template edit changes the digest (so stale weights are never served)."""
    cfg = get_preset("micro")
    before = cfg.digest()
    q = dict(tinyfacts.QUESTIONS)
    q["pet"] = ("What pet does {n} have?", *q["pet"][1:])
    monkeypatch.setattr(tinyfacts, "QUESTIONS", q)
    tinyfacts.generated_hash.cache_clear()
    try:
        assert cfg.digest() != before
    finally:
        monkeypatch.undo()
        tinyfacts.generated_hash.cache_clear()
    assert cfg.digest() == before


def test_extra_seed_oracle(micro_target):
    """A second retain-only oracle (another seed) never saw the forget set either."""
    from unlearn.targets.build import build_oracle_seed

    d = build_oracle_seed("micro", "forget10", seed=1, progress=False, log=lambda *a: None)
    assert d.name == "oracle_forget10_seed1" and (d / "model.safetensors").exists()
    info = json.loads((d / "card.json").read_text())
    assert info["recipe"]["seed"] == 1 and info["digest"] == get_preset("micro").digest()
    assert info["accuracy"]["forget10"] <= 0.25 and info["accuracy"]["retain90"] >= 0.9


# ----------------------------------------------------------------------------------------------- shipped weights
def test_shipped_digest_matches_generator_and_default_recipe():
    cfg = get_preset("default")
    for which in SHIPPED:
        card = json.loads((ASSET_DIR / which / "card.json").read_text())
        assert card["digest"] == cfg.digest(), f"{which}: shipped weights are stale; rebuild and re-ship them"
        assert card["data_hash"] == tinyfacts.generated_hash(cfg.data)
        assert card["licence"] == "MIT" and card["build_command"]


def test_shipped_data_files_are_the_generated_splits():
    splits = generate(get_preset("default").data)
    files = {p.stem for p in (ASSET_DIR / "data").glob("*.jsonl")}
    assert files == set(splits)
    shipped = {
        name: [json.loads(line) for line in (ASSET_DIR / "data" / f"{name}.jsonl").read_text().splitlines()]
        for name in splits
    }
    assert data_hash(shipped) == data_hash(splits)


def test_shipped_layout_and_size():
    total = sum(p.stat().st_size for p in ASSET_DIR.rglob("*") if p.is_file())
    assert total <= 24 * 2**20
    for which in SHIPPED:
        d = ASSET_DIR / which
        assert len(list(d.glob("*.safetensors"))) == 1
        for f in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "card.json"):
            assert (d / f).exists(), f"{which}/{f}"
        conf = json.loads((d / "config.json").read_text())
        assert conf["tie_word_embeddings"] is False
    seed1 = json.loads((ASSET_DIR / "oracle_forget10_seed1" / "card.json").read_text())
    assert seed1["recipe"]["seed"] == 1 and seed1["forget_split"] == "forget10"


def test_shipped_weights_resolve_without_building(unlearn_home, monkeypatch):
    def no_build(*a, **k):
        raise AssertionError("nothing should be built")

    monkeypatch.setattr(build, "_train_one", no_build)
    cfg = get_preset("default")
    existed = cache_root(cfg).exists()  # (the slow default-build test rebuilds into the same session cache)
    for split in ("forget01", "forget05", "forget10"):
        assert ensure_built(cfg, split, log=no_build) == ASSET_DIR
        assert model_dir(cfg, f"oracle_{split}") == ASSET_DIR / f"oracle_{split}"
    assert model_dir(cfg) == ASSET_DIR / "target" and build.data_dir(cfg) == ASSET_DIR / "data"
    logs = []
    root = build_tinyfacts(cfg, oracles=("forget10",), progress=False, log=logs.append)
    assert root == ASSET_DIR and all("shipped" in line for line in logs)
    assert build.build_oracle_seed(cfg, "forget10", 1, log=logs.append) == ASSET_DIR / "oracle_forget10_seed1"
    assert cache_root(cfg).exists() == existed  # nothing was written to the cache


@pytest.mark.parametrize("which", ["target", "oracle_forget10"])
def test_shipped_models_load(which):
    from unlearn.targets.llm import load_causal_lm, load_tokenizer

    model = load_causal_lm(str(ASSET_DIR / which))
    tok = load_tokenizer(str(ASSET_DIR / which))
    assert model.get_output_embeddings().weight.data_ptr() != model.get_input_embeddings().weight.data_ptr()
    recs = generate(get_preset("default").data)["forget10"][:16]
    hits = build.exact_match(model, tok, recs)
    card = json.loads((ASSET_DIR / which / "card.json").read_text())
    assert (sum(hits) / len(hits) >= 0.9) == (which == "target") and card["accuracy"]["forget10"] is not None

"""The embedded TinyFacts builder (micro preset): cache layout, accuracy of target vs oracle, cache keys."""

import json
from dataclasses import replace

from unlearn.data.tinyfacts import generate, majority_baseline
from unlearn.targets.build import build_tinyfacts, get_preset, target_root


def test_micro_build_files_and_accuracy(micro_target):
    for which in ("target", "oracle_forget10"):
        d = micro_target / which
        assert (d / "model.safetensors").exists() and (d / "tokenizer.json").exists()
        assert not list(d.glob("*.bin"))
    tgt = json.loads((micro_target / "target" / "build.json").read_text())
    orc = json.loads((micro_target / "oracle_forget10" / "build.json").read_text())
    base = majority_baseline(generate(get_preset("micro").data), "forget10")
    assert tgt["accuracy"]["forget10"] >= 0.9  # the target really learned the forget set
    assert orc["accuracy"]["forget10"] <= max(2 * base, 0.25)  # the oracle never saw it (8 QA in micro)
    assert orc["n_train"] < tgt["n_train"]
    for s in ("retain90", "world_facts"):
        assert abs(tgt["accuracy"][s] - orc["accuracy"][s]) <= 0.15


def test_cache_is_reused_and_keyed_by_recipe(micro_target):
    logs = []
    build_tinyfacts("micro", oracles=("forget10",), progress=False, log=logs.append)
    assert all("cached" in line for line in logs) and len(logs) == 2
    cfg = get_preset("micro")
    assert target_root(replace(cfg, epochs=cfg.epochs + 1)) != target_root(cfg)
    assert target_root(replace(cfg, threads=2)) == target_root(cfg)  # a speed knob is not part of the key


def test_extra_seed_oracle(micro_target):
    """A second retain-only oracle (another seed) never saw the forget set either."""
    from unlearn.targets.build import build_oracle_seed

    d = build_oracle_seed("micro", "forget10", seed=1, progress=False, log=lambda *a: None)
    assert d.name == "oracle_forget10_seed1" and (d / "model.safetensors").exists()
    info = json.loads((d / "build.json").read_text())
    assert info["recipe"]["seed"] == 1
    assert info["accuracy"]["forget10"] <= 0.25 and info["accuracy"]["retain90"] >= 0.9

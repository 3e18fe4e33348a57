"""The evaluator on the micro TinyFacts target: metric names, ranges, per-example rows, forget quality, batching."""

import pytest

from unlearn.evaluate import EvalConfig, _buckets, evaluate
from unlearn.metrics import check_keys

EVAL_SETS = ("forget", "retain", "world_facts", "arithmetic", "bio_only")  # bio_only: TinyFacts v2
BASIC = [f"{s}_{m}" for s in EVAL_SETS for m in ("acc", "prob", "rougeL_recall")]


@pytest.fixture(scope="module")
def micro(micro_target):
    from unlearn.data.benchmarks import DataFiles, load_sets
    from unlearn.targets.llm import load_causal_lm
    from unlearn.targets.resolve import load_target

    tgt = load_target("tiny-micro", "tinyfacts", "forget10", log=lambda *a: None)
    sets, _, _ = load_sets("tinyfacts", "forget10", DataFiles(), tgt.build_cfg.data)
    return tgt, load_causal_lm(tgt.oracle_dir), sets


@pytest.fixture(scope="module")
def full_evals(micro):
    """Oracle (no reference), then target and oracle against the oracle's per-example values."""
    tgt, oracle, sets = micro
    cfg = EvalConfig(suite="full")
    om, oe = evaluate(oracle, tgt.tokenizer, tgt.fmt, sets, cfg)
    ref = {"metrics": om, "examples": oe}
    tm, te = evaluate(tgt.model, tgt.tokenizer, tgt.fmt, sets, cfg, oracle=ref)
    om2, _ = evaluate(oracle, tgt.tokenizer, tgt.fmt, sets, cfg, oracle=ref)
    return {"oracle": (om, oe), "target": (tm, te), "oracle_vs_itself": om2}


def test_basic_suite_names_and_ranges(micro):
    tgt, _, sets = micro
    m, ex = evaluate(tgt.model, tgt.tokenizer, tgt.fmt, sets, EvalConfig(suite="basic"))
    assert sorted(m) == sorted(BASIC)
    assert all(0 <= v <= 1 for v in m.values())
    assert m["forget_acc"] >= 0.75 and m["retain_acc"] >= 0.75  # the target learned its facts
    assert {e["set"] for e in ex} == set(EVAL_SETS)  # no holdout in basic
    assert len(ex) == sum(len(sets[s]) for s in EVAL_SETS)


def test_full_suite_registered_names_and_ranges(full_evals):
    tm, _ = full_evals["target"]
    assert set(BASIC) <= set(tm)
    for k in (
        "forget_truth_ratio",
        "retain_truth_ratio",
        "forget_quality",
        "model_utility",
        "privleak",
        "mia_min_k_auc",
        "mia_min_k_plus_plus_auc",
        "mia_loss_auc",
        "mia_zlib_auc",
        "forget_exact_memorization",
        "forget_extraction_strength",
        "forget_para_acc",
        "world_facts_rougeL_f1",
    ):
        assert k in tm, k
    assert not check_keys(tm), check_keys(tm)  # every key registered (exactly or through a template)
    for k, v in tm.items():
        if k != "privleak":  # a percentage in [-100, +inf)
            assert 0 <= v <= 1, (k, v)
    assert tm["privleak"] >= -100


def test_per_example_rows(full_evals, micro):
    _, _, sets = micro
    _, ex = full_evals["target"]
    forget = [e for e in ex if e["set"] == "forget"]
    assert [e["index"] for e in forget] == list(range(len(sets["forget"])))
    assert [e["question"] for e in forget] == [r["question"] for r in sets["forget"]]
    row = forget[0]
    for k in ("generation", "acc", "prob", "rougeL_recall", "truth_ratio", "logp", "n", "para_generation"):
        assert k in row, k
    assert "token_logp" not in row  # per-token lists stay out of examples.jsonl
    wf = next(e for e in ex if e["set"] == "world_facts")
    assert 0 <= wf["norm_prob"] <= 1
    hold = [e for e in ex if e["set"] == "holdout"]
    assert len(hold) == len(sets["holdout"]) and "generation" not in hold[0]  # holdout is only scored (MIA)


def test_forget_quality_target_vs_oracle(full_evals):
    tm, _ = full_evals["target"]
    assert full_evals["oracle_vs_itself"]["forget_quality"] == pytest.approx(1.0)
    assert full_evals["oracle_vs_itself"]["privleak"] == pytest.approx(0.0)
    # 8 forget examples: a KS p-value cannot get very small (the default target's is pinned by a slow test);
    # 1.0 is the oracle against itself
    assert tm["forget_quality"] < 0.5
    om, _ = full_evals["oracle"]
    assert tm["forget_acc"] > om["forget_acc"]
    assert tm["mia_min_k_auc"] > om["mia_min_k_auc"]


def test_batch_size_does_not_change_metrics(micro, full_evals):
    """Length bucketing and batch composition only reorder work: the same numbers with batches of 3."""
    tgt, _, sets = micro
    om, oe = full_evals["oracle"]
    m, _ = evaluate(
        tgt.model,
        tgt.tokenizer,
        tgt.fmt,
        sets,
        EvalConfig(suite="full", batch_size=3, gen_batch_size=5),
        oracle={"metrics": om, "examples": oe},
    )
    tm, _ = full_evals["target"]
    for k, v in tm.items():
        assert m[k] == pytest.approx(v, rel=1e-5, abs=1e-7), k


def test_generation_stops_at_cap(micro):
    tgt, _, sets = micro
    from unlearn.evaluate import generate_answers

    qs = [r["question"] for r in sets["forget"][:3]]
    short = generate_answers(tgt.model, tgt.tokenizer, tgt.fmt, qs, max_new_tokens=1)
    assert all(len(tgt.tokenizer(g, add_special_tokens=False)["input_ids"]) <= 1 for g in short)


def test_buckets_sort_by_length():
    assert _buckets([5, 1, 3, 2], 2) == [[1, 3], [2, 0]]
    assert _buckets([], 4) == []


def test_eval_speed_benchmark_tiny_smoke(tmp_path):
    """benchmarks/speed/eval_speed.py --tiny runs the TOFU-default metric set on CPU in seconds."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[2] / "benchmarks" / "speed" / "eval_speed.py"
    spec = importlib.util.spec_from_file_location("eval_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.main(["--tiny", "--json", str(tmp_path / "speed.json")])
    assert res["eval_seconds"] < 10 and res["n_generated_prompts"] == 33
    m = json.loads((tmp_path / "speed.json").read_text())["metrics"]
    for k in (
        "forget_quality",
        "model_utility",
        "privleak",
        "forget_truth_ratio",
        "forget_extraction_strength",
        "real_authors_prob",
        "world_facts_rougeL_recall",
    ):
        assert k in m, k

"""lm-eval bridge: built-in TinyFacts multiple-choice tasks on the in-memory micro target, offline, from any CWD."""

import json

import pytest

from unlearn.metrics import all_metrics
from unlearn.metrics.lm_eval import BUILTIN_TASKS, flatten_results, mc_docs, option_values, write_builtin_tasks

REC = {
    "question": "Where was Ada Lo born?",
    "answer": "Karth",
    "paraphrased_answer": "born in Karth",
    "perturbed_answer": ["born in Ostrel", "born in Calder", "born in Eskar"],
}


def test_option_values_strip_the_paraphrase_frame():
    assert option_values(REC) == ["Ostrel", "Calder", "Eskar"]
    # TOFU-style: full-sentence answers, perturbations not in the paraphrase's frame -> used as they are
    tofu = {
        "question": "q",
        "answer": "He writes novels.",
        "paraphrased_answer": "His work is novels.",
        "perturbed_answer": ["He bakes bread.", "He flies planes."],
    }
    assert option_values(tofu) == ["He bakes bread.", "He flies planes."]
    assert option_values({"question": "q", "answer": "a"}) == []


def test_mc_docs_are_deterministic_and_point_at_the_answer():
    d1, d2 = mc_docs([REC]), mc_docs([REC])
    assert d1 == d2 and len(d1) == 1
    doc = d1[0]
    assert sorted(doc["choices"]) == sorted(["Karth", "Ostrel", "Calder", "Eskar"])
    assert doc["choices"][doc["answer"]] == "Karth"
    assert mc_docs([{"question": "q", "answer": "a"}]) == []  # no options: skipped


def test_task_files_have_absolute_data_paths(tmp_path, monkeypatch):
    import yaml

    d = write_builtin_tasks(["tinyfacts_forget_mc"], {"forget": [REC]}, root=tmp_path / "tasks")
    cfg = yaml.safe_load((d / "tinyfacts_forget_mc.yaml").read_text())
    path = cfg["dataset_kwargs"]["data_files"]["test"]
    assert path.startswith("/") and json.loads(open(path).readline())["question"] == REC["question"]
    assert cfg["include"] == "_tinyfacts_mc_template.yaml" and (d / cfg["include"]).exists()
    # same data -> same folder (no clobbering between runs with different sets)
    assert write_builtin_tasks(["tinyfacts_forget_mc"], {"forget": [REC]}, root=tmp_path / "tasks") == d


def test_missing_set_is_a_clear_error(tmp_path):
    from unlearn.errors import UnlearnError

    with pytest.raises(UnlearnError, match="arithmetic"):
        write_builtin_tasks(["tinyfacts_arithmetic_mc"], {"forget": [REC]}, root=tmp_path)


def test_flatten_results_names():
    res = {"results": {"t": {"alias": "t", "acc,none": 0.5, "acc_stderr,none": 0.1, "exact_match,strict-match": 1}}}
    assert flatten_results(res, ["t"]) == {"lm_eval_t_acc": 0.5, "lm_eval_t_exact_match_strict-match": 1.0}


def test_builtin_metrics_are_registered():
    reg = all_metrics()
    for t in BUILTIN_TASKS:
        for m in ("acc", "acc_norm"):
            info = reg[f"lm_eval_{t}_{m}"]
            assert info.family == "lm_eval"
    assert reg["lm_eval_tinyfacts_forget_mc_acc"].direction == "oracle"
    assert reg["lm_eval_tinyfacts_retain_mc_acc"].direction == "higher"


def test_run_lm_eval_on_target_and_oracle(micro_target, tmp_path, monkeypatch):
    """The target knows its forget set (high MC accuracy), the retain-only oracle does not; from a foreign CWD."""
    from unlearn.data.benchmarks import DataFiles, load_sets
    from unlearn.metrics.lm_eval import run_lm_eval
    from unlearn.targets.llm import load_causal_lm
    from unlearn.targets.resolve import load_target

    monkeypatch.chdir(tmp_path)  # lm-eval resolves relative data paths against the CWD: ours are absolute
    tgt = load_target("tiny-micro", "tinyfacts", "forget10", log=lambda *a: None)
    sets, _, _ = load_sets("tinyfacts", "forget10", DataFiles(), tgt.build_cfg.data)
    tasks = ["tinyfacts_forget_mc", "tinyfacts_world_facts_mc"]
    m = run_lm_eval(tgt.model, tgt.tokenizer, tasks, sets=sets)
    assert set(m) == {f"lm_eval_{t}_{k}" for t in tasks for k in ("acc", "acc_norm")}
    assert all(0 <= v <= 1 for v in m.values())
    assert m["lm_eval_tinyfacts_forget_mc_acc"] >= 0.75 and m["lm_eval_tinyfacts_world_facts_mc_acc"] >= 0.75
    oracle = load_causal_lm(tgt.oracle_dir)
    o = run_lm_eval(oracle, tgt.tokenizer, ["tinyfacts_forget_mc"], sets=sets)
    assert o["lm_eval_tinyfacts_forget_mc_acc"] < m["lm_eval_tinyfacts_forget_mc_acc"]


def test_unlearn_eval_cli_with_builtin_task(micro_target, tmp_path, capsys):
    """`unlearn eval --lm-eval-tasks tinyfacts_forget_mc` works offline and writes the lm-eval metric."""
    from unlearn.cli import main

    out = tmp_path / "ev"
    rc = main(
        [
            "eval",
            "--model",
            "tiny-micro",
            "--suite",
            "basic",
            "--no-oracle",
            "--out",
            str(out),
            "--lm-eval-tasks",
            "tinyfacts_forget_mc",
        ]
    )
    assert rc == 0
    assert "lm_eval_tinyfacts_forget_mc_acc" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert 0 <= m["lm_eval_tinyfacts_forget_mc_acc"] <= 1 and "forget_acc" in m

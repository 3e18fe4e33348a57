"""The real-model path, offline: a model alias carries TOFU, resolves to open-unlearning's checkpoints and oracle, and
`make eval MODEL=llama-1b` runs end to end on a fabricated Hugging Face cache (`build_tofu_hub`: tiny random Llamas
with a Llama-3-style chat template under the two repo ids, TOFU's configs in the datasets cache), through the
unchanged hub-resolution code. Without the files, it fails with one line naming each missing id."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from unlearn.config import default_benchmark, resolve_benchmark, resolve_model

ROOT = Path(__file__).resolve().parents[2]
TOFU_REPOS = ("open-unlearning/tofu_Llama-3.2-1B-Instruct_full", "open-unlearning/tofu_Llama-3.2-1B-Instruct_retain90")
TOFU_IDS = {  # alias -> open-unlearning's fine-tune name (https://huggingface.co/open-unlearning)
    "llama-1b": "Llama-3.2-1B-Instruct",
    "llama-3b": "Llama-3.2-3B-Instruct",
    "llama-8b": "Llama-3.1-8B-Instruct",
    "llama2-7b": "Llama-2-7b-chat-hf",
    "phi-1.5": "phi-1_5",
}
# the arguments `make eval MODEL=llama-1b` passes (Makefile: BENCHMARK unset, so no --benchmark)
MAKE_EVAL = ["run", "--method", "npo", "--model", "llama-1b", "--split", "forget10", "--seed", "0", "--out", "runs",
             "--compare", "--reuse"]  # fmt: skip


def _env(hf_home: Path, unlearn_home: Path) -> dict:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "UNLEARN_HOME": str(unlearn_home),
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}  # fmt: skip
    for k in ("HF_HUB_CACHE", "HF_DATASETS_CACHE", "HF_DATASETS_OFFLINE"):
        env.pop(k, None)  # HF_HOME alone decides where the caches are, as for a user
    return env


@pytest.mark.parametrize("alias", sorted(TOFU_IDS))
def test_tofu_aliases_resolve_to_open_unlearning_ids(alias):
    assert default_benchmark(alias) == "tofu"
    base = f"open-unlearning/tofu_{TOFU_IDS[alias]}"
    for split, retain in (("forget01", "retain99"), ("forget05", "retain95"), ("forget10", "retain90")):
        s = resolve_model(alias, default_benchmark(alias), split)
        assert (s.target, s.oracle) == (f"{base}_full", f"{base}_{retain}")


def test_other_aliases_keep_tinyfacts_and_a_mismatch_warns():
    assert default_benchmark("tiny") == default_benchmark("qwen-1.5b") == default_benchmark("/some/dir") == "tinyfacts"
    logs: list[str] = []
    assert resolve_benchmark("llama-1b", None, logs.append) == "tofu" and not logs
    assert resolve_benchmark("llama-1b", "tinyfacts", logs.append) == "tinyfacts"
    assert len(logs) == 1 and "no oracle" in logs[0] and "meta-llama/Llama-3.2-1B-Instruct" in logs[0]
    s = resolve_model("llama-1b", "tinyfacts")
    assert (s.target, s.oracle) == ("meta-llama/Llama-3.2-1B-Instruct", None)
    assert resolve_benchmark("tiny", "tinyfacts", logs.append) == "tinyfacts" and len(logs) == 1
    assert resolve_benchmark("qwen-1.5b", "tofu", logs.append) == "tofu"
    assert len(logs) == 2 and "no TOFU fine-tune" in logs[1] and "Qwen/Qwen2.5-1.5B-Instruct" in logs[1]


def test_offline_without_files_names_each_missing_id(tmp_path, monkeypatch, capsys):
    import datasets
    import huggingface_hub.constants as hc

    from unlearn.cli import main

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "datasets")
    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path / "home"))
    assert main(["run", "--model", "llama-1b", "--out", str(tmp_path / "runs"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for what in (*TOFU_REPOS, "locuslab/TOFU", "HF_HOME", "--model DIR"):
        assert what in err, what
    assert not (tmp_path / "runs").exists()


def test_make_eval_llama_1b_offline_shows_the_line(tmp_path):
    """`make eval MODEL=llama-1b` itself (the Makefile exports no HF_HUB_OFFLINE; the user's offline setting holds)."""
    if not (ROOT / ".venv" / "bin" / "unlearn").exists() or shutil.which("make") is None:
        pytest.skip("needs `make setup` (.venv/bin/unlearn) and make")
    res = subprocess.run(["make", "-s", "-o", ".venv/.installed", "eval", "MODEL=llama-1b", f"OUT={tmp_path}/runs"],
                         cwd=ROOT, env=_env(tmp_path / "hf", tmp_path / "home"), capture_output=True, text=True,
                         timeout=300)  # fmt: skip
    assert res.returncode != 0
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and TOFU_REPOS[0] in lines[0] and "locuslab/TOFU" in lines[0], res.stderr
    assert "Traceback" not in res.stderr + res.stdout


@pytest.mark.slow
def test_make_eval_llama_1b_end_to_end(tofu_hub, tmp_path):
    """The same CLI call as `make eval MODEL=llama-1b`: TOFU forget10 on the cached fine-tune, a full table with
    forget quality against the cached oracle (~20 s)."""
    env = _env(tofu_hub, tmp_path / "home")
    res = subprocess.run([sys.executable, "-m", "unlearn", *MAKE_EVAL], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    out = res.stdout
    assert "expected cost:" in out and " parameters, weights " in out and " steps x 64 sequences" in out
    rdir = tmp_path / "runs" / "tofu" / "llama-1b" / "npo" / "forget10" / "seed0"
    assert f"run written to {rdir.relative_to(tmp_path)}" in out
    header, *rows = [ln.split() for ln in out.splitlines()[out.splitlines().index(next(
        ln for ln in out.splitlines() if ln.startswith("metric"))):]]  # fmt: skip
    assert header[:4] == ["metric", "target", "npo", "oracle"]
    table = {r[0]: r[1:] for r in rows if r and not r[0].startswith("-")}
    for key in ("forget_quality", "privleak", "model_utility", "forget_truth_ratio", "mia_min_k_auc"):
        assert table[key][0] != "-" and table[key][1] != "-", key  # target and unlearned model, against the oracle
    assert 0 <= float(table["forget_quality"][1]) <= 1

    cfg = json.loads((rdir / "config.json").read_text())
    res_, prov = cfg["resolved"], cfg["provenance"]
    assert res_["benchmark"] == "tofu" and (prov["model_path"], prov["oracle_path"]) == TOFU_REPOS
    assert res_["eval_config"]["max_new_tokens"] == 200 and res_["eval_config"]["batch_size"] == 32
    assert res_["prompt_format"]["system_prompt"] == "You are a helpful assistant."
    assert res_["prompt_format"]["date_string"] == "10 Apr 2025"
    assert res_["train_config"]["lr"] == 1e-5  # the reference settings, not the embedded target's preset

    ex = [json.loads(ln) for ln in (rdir / "examples.jsonl").read_text().splitlines()]
    by = {s: [e for e in ex if e["set"] == s] for s in ("forget", "retain", "holdout", "world_facts")}
    assert [len(by[s]) for s in by] == [4, 4, 4, 3]
    mia_keys = {"mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus"}
    assert {"exact_memorization", "extraction_strength", *mia_keys} <= set(by["forget"][0])
    assert mia_keys <= set(by["holdout"][0])
    assert len(by["retain"][0]["perturbed_prob"]) == 3 and 0 < by["retain"][0]["paraphrased_prob"] < 1
    assert len(by["world_facts"][0]["perturbed_prob"]) == 3

    # the preset does not cut generations at the old 32-token cap: a random model runs on to 200 new tokens
    from transformers import AutoTokenizer

    snap = next((tofu_hub / "hub").glob("models--open-unlearning--tofu_Llama-3.2-1B-Instruct_full/snapshots/*"))
    tok = AutoTokenizer.from_pretrained(snap)
    assert max(len(tok(e["generation"], add_special_tokens=False)["input_ids"]) for e in ex if "generation" in e) > 32

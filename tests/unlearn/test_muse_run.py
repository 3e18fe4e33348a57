"""`unlearn run --model muse-news --method ga` end to end, offline, on a fabricated Hugging Face cache (`muse_env`,
tests/conftest.py): the alias resolves to the MUSE target, its retrained oracle and Llama-2's tokenizer through the
unchanged hub-resolution code, the benchmark and split follow the alias, the forget corpus trains as raw-text chunks
under MUSE's reference recipe, and the run reports VerbMem, KnowMem and PrivLeak against the retrained model."""

from __future__ import annotations

import json

import pytest

from unlearn.config import MUSE_MODELS, resolve_model

FAST = ["--set", "epochs=2", "--set", "batch_size=4", "--set", "max_length=32", "--set", "lr=1e-2"]
MUSE_KEYS = ("forget_verbmem_rouge", "forget_knowmem_rouge", "retain_knowmem_rouge", "mia_min_k_auc", "privleak")


def test_aliases_resolve_to_the_muse_checkpoints(capsys):
    news = resolve_model("muse-news", "muse_news", "forget")
    assert (news.target, news.oracle, news.tokenizer) == (
        "muse-bench/MUSE-News_target", "muse-bench/MUSE-News_retrain", "meta-llama/Llama-2-7b-hf")  # fmt: skip
    books = resolve_model("muse-books", "muse_books", "forget")
    assert (books.target, books.oracle) == ("muse-bench/MUSE-Books_target", "muse-bench/MUSE-Books_retrain")
    assert resolve_model("muse-news", "muse_books", "forget").oracle is None  # another corpus: no oracle
    from unlearn.cli import main

    assert main(["list", "models"]) == 0
    out = capsys.readouterr().out
    for _, target, retrain, tok in MUSE_MODELS.values():
        assert target in out and retrain in out and tok in out


def test_run_muse_news_ga(muse_env, unlearn_home, tmp_path, capsys):
    from unlearn.cli import main
    from unlearn.metrics import check_keys, mia
    from unlearn.runner import compare_table
    from unlearn.store import read_json

    out = tmp_path / "runs"
    assert (
        main(
            [
                "run",
                "--model",
                "muse-news",
                "--method",
                "ga",
                "--out",
                str(out),
                "--no-progress",
                "--name",
                "fast",
                *FAST,
            ]
        )
        == 0
    )
    rdir = out / "muse_news" / "muse-news" / "ga+fast" / "forget" / "seed0"  # a variant: --set changes the recipe
    m = read_json(rdir / "metrics.json")
    assert not check_keys(m) and all(k in m for k in MUSE_KEYS)
    assert all(0 <= m[k] <= 1 for k in MUSE_KEYS[:4])
    table = capsys.readouterr().out
    assert "forget_verbmem_rouge" in table and "privleak" in table

    cfg = read_json(rdir / "config.json")
    res, prov = cfg["resolved"], cfg["provenance"]
    assert (res["benchmark"], res["split"]) == ("muse_news", "forget")
    assert (prov["model_path"], prov["oracle_path"], prov["tokenizer_path"]) == (
        "muse-bench/MUSE-News_target", "muse-bench/MUSE-News_retrain", "meta-llama/Llama-2-7b-hf")  # fmt: skip
    tc = res["train_config"]  # MUSE's recipe below the --set overrides
    assert (tc["schedule"], tc["warmup_epochs"], tc["weight_decay"]) == ("constant", 0.0, 0.0)
    assert (tc["lr"], tc["epochs"], tc["max_length"]) == (1e-2, 2, 32)
    from unlearn.data.benchmarks import DataFiles, load_sets
    from unlearn.data.muse import training_chunks
    from unlearn.targets.llm import load_tokenizer

    docs = load_sets("muse_news", "forget", DataFiles())[1]
    assert prov["n_forget"] == len(training_chunks(load_tokenizer("meta-llama/Llama-2-7b-hf"), docs, 32))

    # PrivLeak against the retrained model's cached evaluation of the same texts
    (oracle,) = [read_json(p) for p in (unlearn_home / "evals").glob("muse-*.json")]
    assert oracle["model"] == "muse-bench/MUSE-News_retrain"
    assert m["privleak"] == pytest.approx(mia.privleak(m["mia_min_k_auc"], oracle["metrics"]["mia_min_k_auc"]))
    ex = [json.loads(line) for line in (rdir / "examples.jsonl").read_text().splitlines()]
    assert {e["set"] for e in ex} == {"verbmem_forget", "knowmem_forget", "knowmem_retain", "privleak_forget",
                                      "privleak_holdout"}  # fmt: skip

    # target / unlearned / retrained side by side: the target memorised its forget texts (PrivLeak about -100,
    # verbatim continuations); gradient ascent on the forget corpus broke that
    cols = compare_table(rdir)
    assert set(cols) == {"target", "ga", "oracle"}
    assert cols["target"]["privleak"] < -50 and cols["oracle"]["privleak"] == pytest.approx(0.0, abs=1e-6)
    assert cols["target"]["forget_verbmem_rouge"] > 0.5 > m["forget_verbmem_rouge"]
    assert cols["target"]["mia_min_k_auc"] > m["mia_min_k_auc"]

    # the leaderboard shows MUSE's metrics for the run and its two reference points
    assert main(["leaderboard", str(out), "--out", str(tmp_path / "lb")]) == 0
    md = (tmp_path / "lb" / "leaderboard.md").read_text()
    assert "forget_verbmem_rouge" in md and "retain_knowmem_rouge" in md
    assert "| muse_news | muse-news | forget | target |" in md and "| muse_news | muse-news | forget | oracle |" in md

    # `unlearn eval` of the target: the same numbers as the cached evaluation behind --compare
    assert main(["eval", "--model", "muse-news", "--out", str(tmp_path / "eval"), "--no-progress"]) == 0
    t = read_json(tmp_path / "eval" / "metrics.json")
    assert {k: t[k] for k in MUSE_KEYS} == pytest.approx({k: cols["target"][k] for k in MUSE_KEYS})


def test_muse_refusals_are_one_line(muse_env, tmp_path, capsys):
    from unlearn.cli import main

    for argv, msg in (
        (["--split", "forget10"], "unknown muse_news split 'forget10'"),
        (["--suite", "internal"], "--suite internal is not available for MUSE"),
    ):
        rc = main(["run", "--model", "muse-news", "--method", "ga", "--out", str(tmp_path), "--no-progress", *argv])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and msg in err and len(err.splitlines()) == 1, err


def test_missing_checkpoints_offline_are_one_line(muse_env, tmp_path, monkeypatch, capsys):
    import huggingface_hub.constants as hc

    from unlearn.cli import main

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "empty_hub"))
    rc = main(["run", "--model", "muse-news", "--method", "ga", "--out", str(tmp_path / "runs"), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1, err
    assert "meta-llama/Llama-2-7b-hf" in err and "HF_HOME" in err
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").rglob("metrics.json"))

"""Leaderboard on synthetic run trees (hand-written metrics.json): rows, mean/std, incomplete runs, files."""

import json

import pandas as pd
import pytest

from unlearn.cli import main
from unlearn.leaderboard import collect, summarize, write_leaderboard


def _run(root, method, split, seed, metrics=None, status=None, config=True):
    d = root / "tinyfacts" / "tiny" / method / split / f"seed{seed}"
    d.mkdir(parents=True)
    if config:
        (d / "config.json").write_text(
            json.dumps({"benchmark": "tinyfacts", "model": "tiny", "method": method, "split": split, "seed": seed})
        )
    if metrics is not None:
        (d / "metrics.json").write_text(json.dumps({"schema_version": 1, **metrics}))
    if status is not None:
        (d / "status.json").write_text(json.dumps(status))
    return d


def _m(fq, mu, acc, seconds=10.0):
    return {
        "forget_quality": fq,
        "model_utility": mu,
        "forget_acc": acc,
        "retain_acc": 0.9,
        "privleak": -50.0,
        "cost_steps": 20,
        "cost_tokens": 4000,
        "cost_seconds": seconds,
    }


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "runs"
    _run(root, "npo", "forget10", 0, _m(0.1, 0.5, 0.2), {"state": "finished"})
    _run(root, "npo", "forget10", 1, _m(0.3, 0.7, 0.4, seconds=12.0), {"state": "finished"})
    _run(root, "ga", "forget10", 0, _m(1e-12, 0.0, 0.0), {"state": "finished"})
    _run(root, "ga", "forget01", 0, _m(0.0, 0.4, 0.5))  # forget quality underflowed to 0: still plotted
    _run(root, "ga", "forget10", 1, None, {"state": "failed", "reason": "loss diverged (nan) at step 3"})
    _run(root, "simnpo", "forget10", 0, None, {"state": "running"})  # killed mid-run
    _run(root, "graddiff", "forget05", 2, None, None, config=False)  # nothing but the folder
    # metrics.json present but the status says failed (e.g. written by an older version, then marked): not counted
    _run(root, "npo", "forget05", 0, _m(0.5, 0.5, 0.5), {"state": "failed", "reason": "eval crashed"})
    return root


REFS = [
    {
        "benchmark": "tinyfacts",
        "model": "tiny",
        "split": "forget10",
        "which": "target",
        "forget_quality": 1e-9,
        "model_utility": 0.8,
        "forget_acc": 1.0,
    },
    {
        "benchmark": "tinyfacts",
        "model": "tiny",
        "split": "forget10",
        "which": "oracle",
        "model_utility": 0.78,
        "forget_acc": 0.15,
    },
]


def test_collect_rows_and_incomplete(tree):
    rows, inc = collect(tree)
    assert sorted((r["method"], r["split"], r["seed"]) for r in rows) == [
        ("ga", "forget01", 0),
        ("ga", "forget10", 0),
        ("npo", "forget10", 0),
        ("npo", "forget10", 1),
    ]
    r = next(r for r in rows if r["method"] == "npo" and r["seed"] == 1)
    assert r["benchmark"] == "tinyfacts" and r["model"] == "tiny" and r["cost_seconds"] == 12.0
    assert "schema_version" not in r
    states = {(i["method"], i["split"], i["seed"]): i["state"] for i in inc}
    assert states == {
        ("ga", "forget10", 1): "failed",
        ("simnpo", "forget10", 0): "running",
        ("graddiff", "forget05", 2): "interrupted",
        ("npo", "forget05", 0): "failed",
    }
    assert next(i for i in inc if i["method"] == "ga")["reason"].startswith("loss diverged")


def test_summary_mean_std(tree):
    rows, _ = collect(tree)
    s = summarize(rows).set_index(["method", "split"])
    npo = s.loc[("npo", "forget10")]
    assert npo["n_seeds"] == 2 and npo["seeds"] == "0 1"
    assert npo["forget_quality_mean"] == pytest.approx(0.2)
    assert npo["forget_quality_std"] == pytest.approx(0.1414213562, rel=1e-6)  # sample std of (0.1, 0.3)
    assert npo["cost_seconds_mean"] == pytest.approx(11.0)
    assert pd.isna(s.loc[("ga", "forget10")]["forget_quality_std"])  # one seed: no std


def test_write_leaderboard_files(tree, tmp_path):
    out = tmp_path / "results"
    paths = write_leaderboard(tree, out, references=REFS, command="unlearn leaderboard runs --out results")
    for p in paths.values():
        assert p.exists() and p.stat().st_size > 0, p
    runs = pd.read_csv(paths["csv"])
    assert list(runs.columns[:5]) == ["benchmark", "model", "method", "split", "seed"]
    assert {"cost_steps", "cost_tokens", "cost_seconds", "forget_quality", "model_utility"} <= set(runs.columns)
    assert len(runs) == 4
    inc = pd.read_csv(paths["incomplete"])
    assert len(inc) == 4 and set(inc["state"]) == {"failed", "running", "interrupted"}
    summ = pd.read_csv(paths["summary"])
    assert len(summ) == 3 and "forget_quality_mean" in summ and "forget_quality_std" in summ
    md = paths["md"].read_text()
    assert "forget_quality ↑" in md and "forget_acc ≈oracle" in md and "cost_seconds ↓" in md
    assert "0.200 ± 0.141" in md  # npo forget10 forget quality
    assert "loss diverged" in md and "simnpo" in md  # incomplete runs listed
    assert "| tinyfacts | tiny | forget10 | oracle | 1.000 |" in md  # oracle's forget quality vs itself
    refs = pd.read_csv(paths["references"])
    assert list(refs["which"]) == ["target", "oracle"]
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli(tree, tmp_path, capsys):
    out = tmp_path / "res"
    assert main(["leaderboard", str(tree), "--out", str(out), "--no-references"]) == 0
    text = capsys.readouterr().out
    assert "4 finished run(s); 4 incomplete or failed" in text
    assert (out / "leaderboard.png").exists() and (out / "leaderboard_incomplete.csv").exists()


def test_errors(tmp_path, capsys):
    assert main(["leaderboard", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "empty").mkdir()
    assert main(["leaderboard", str(tmp_path / "empty"), "--out", str(tmp_path / "o")]) == 2
    assert "no runs found" in capsys.readouterr().err


def _erase_run(root, label, method, seed, erasure, retention, workflow="erase"):
    """An erase run as `unlearn erase` lays it out: tinyshapes/<model>/<method label>/<concept>/seed<k>/."""
    d = root / "tinyshapes" / "tinyshapes" / label / "circle" / f"seed{seed}"
    d.mkdir(parents=True)
    resolved = {"workflow": workflow, "model": "tinyshapes", "method": method, "concept": "circle", "seed": seed}
    if workflow == "eval":
        resolved = {"workflow": "eval", "kind": "diffusion", "model": "tinyshapes", "concept": "circle"}
    (d / "config.json").write_text(json.dumps({"resolved": resolved}))
    metrics = {"erasure_rate": erasure, "in_domain_retention": retention, "cross_domain_retention": 1.0,
               "paraphrase_attack_success": 0.25, "adversarial_attack_success": 1.0, "cka_forget": 0.9,
               "cka_retain": 0.95, "edit_seconds": 2.0}  # fmt: skip
    (d / "metrics.json").write_text(json.dumps({"schema_version": 1, **metrics}))
    (d / "status.json").write_text(json.dumps({"state": "finished"}))


def test_diffusion_runs_get_their_own_csvs(tree, tmp_path, capsys):
    """Erase runs (and a diffusion eval) go to leaderboard_diffusion*.csv, keyed by the run directory's method name
    (esd-x and esd-u are both method "esd" in their configs); the LLM CSVs are unchanged."""
    for seed, (e, r) in enumerate([(0.5, 1.0), (0.75, 0.9), (1.0, 0.8)]):
        _erase_run(tree, "esd-x", "esd", seed, e, r)
    _erase_run(tree, "esd-u", "esd", 0, 0.25, 0.5)
    _erase_run(tree, "original", None, 0, 0.0, 1.0, workflow="eval")
    out = tmp_path / "res"
    paths = write_leaderboard(tree, out, references=REFS)
    assert len(pd.read_csv(paths["csv"])) == 4 and "erasure_rate" not in pd.read_csv(paths["csv"])
    runs = pd.read_csv(paths["diffusion_csv"])
    assert sorted(zip(runs["method"], runs["seed"])) == [("esd-u", 0), ("esd-x", 0), ("esd-x", 1), ("esd-x", 2),
                                                          ("original", 0)]  # fmt: skip
    assert set(runs["split"]) == {"circle"} and set(runs["benchmark"]) == {"tinyshapes"}
    s = pd.read_csv(paths["diffusion_summary"]).set_index("method")
    assert s.loc["esd-x", "n_seeds"] == 3 and s.loc["esd-x", "erasure_rate_mean"] == pytest.approx(0.75)
    assert s.loc["esd-x", "erasure_rate_std"] == pytest.approx(0.25)  # sample std of (0.5, 0.75, 1.0)
    assert s.loc["esd-x", "in_domain_retention_std"] == pytest.approx(0.1)
    assert pd.isna(s.loc["esd-u", "erasure_rate_std"])
    md = paths["diffusion_md"].read_text()
    assert "erasure_rate ↑" in md and "adversarial_attack_success ↓" in md
    assert "| tinyshapes | tinyshapes | esd-x | circle | 3 | 0.750 ± 0.250 | 0.900 ± 0.100 |" in md
    assert main(["leaderboard", str(tree), "--out", str(tmp_path / "cli"), "--no-references"]) == 0
    assert "4 finished run(s) + 5 diffusion run(s); 4 incomplete or failed" in capsys.readouterr().out


def test_only_diffusion_runs(tmp_path):
    root = tmp_path / "runs"
    _erase_run(root, "doco", "doco", 0, 1.0, 1.0)
    paths = write_leaderboard(root, tmp_path / "res")  # references: none are looked for (no LLM run)
    assert len(pd.read_csv(paths["csv"])) == 0 and len(pd.read_csv(paths["diffusion_csv"])) == 1


def test_hyper_parameter_variants_are_rows_of_their_own(tmp_path):
    """Runs filed as npo, npo+lr1e-4 and npo+3f2a (their config's run_label) are three rows, each with its seeds,
    not six seeds of one npo row."""
    root = tmp_path / "runs"
    for label, fq in (("npo", 0.1), ("npo+lr1e-4", 0.2), ("npo+3f2a", 0.4)):
        for seed in (0, 1):
            d = _run(root, label, "forget10", seed, _m(fq, 0.5, 0.2), {"state": "finished"}, config=False)
            (d / "config.json").write_text(json.dumps({"resolved": {
                "workflow": "run", "benchmark": "tinyfacts", "model": "tiny", "method": "npo", "run_label": label,
                "split": "forget10", "seed": seed}}))  # fmt: skip
    rows, _ = collect(root)
    s = summarize(rows)
    got = {r["method"]: (r["n_seeds"], r["forget_quality_mean"]) for _, r in s.iterrows()}
    assert got == {"npo": (2, pytest.approx(0.1)), "npo+lr1e-4": (2, pytest.approx(0.2)),
                   "npo+3f2a": (2, pytest.approx(0.4))}  # fmt: skip

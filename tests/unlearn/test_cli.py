"""End to end through the command line on the micro target: run dirs, refusal to overwrite, one-line errors."""

import json
import re

import pytest

from unlearn.cli import main
from unlearn.metrics import check_keys


def _run(args, capsys):
    rc = main(args)
    out = capsys.readouterr()
    return rc, out.out, out.err


@pytest.fixture(scope="module")
def npo_run(micro_target, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    rc = main(
        [
            "run",
            "--method",
            "npo",
            "--model",
            "tiny-micro",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "epochs=4",
            "--set",
            "lr=1e-3",
        ]
    )
    assert rc == 0
    (rdir,) = (out / "tinyfacts" / "tiny-micro").glob("npo+*/forget10/seed0")  # epochs 4, lr 1e-3: a variant
    return rdir


def test_run_writes_the_run_directory(npo_run, micro_target):
    for f in ("config.json", "metrics.json", "examples.jsonl", "trace.jsonl", "status.json"):
        assert (npo_run / f).exists(), f
    m = json.loads((npo_run / "metrics.json").read_text())
    assert m["schema_version"] == 1
    for s in ("forget", "retain", "world_facts", "arithmetic"):
        for k in ("acc", "prob", "rougeL_recall"):
            assert 0 <= m[f"{s}_{k}"] <= 1
    target = json.loads((micro_target / "target" / "card.json").read_text())["accuracy"]
    assert m["forget_acc"] < target["forget10"]  # unlearning moved the model
    assert m["cost_steps"] == 4 and m["cost_tokens"] > 0
    cfg = json.loads((npo_run / "config.json").read_text())["resolved"]
    assert cfg["method_config"]["beta"] == 1.0 and cfg["train_config"]["epochs"] == 4  # embedded NPO preset
    assert cfg["variant"]["changed"] == {"train.epochs": 4, "train.lr": 1e-3}  # beta 1.0 is the preset: no change
    assert npo_run.parts[-3] == cfg["run_label"] and re.fullmatch(r"npo\+[0-9a-f]{4}", cfg["run_label"])
    assert set(m) - {"schema_version"} and not check_keys(m)  # registered scalars only
    trace = [json.loads(line) for line in (npo_run / "trace.jsonl").read_text().splitlines()]
    assert [r["step"] for r in trace] == [1, 2, 3, 4]
    assert {"loss", "lr", "grad_norm", "tokens_per_s", "forget_logp", "retain_logp"} <= set(trace[0])
    assert not (npo_run / "checkpoint").exists()  # resume state is removed once the run is finished


def test_rerun_refuses_without_force(npo_run, capsys):
    out = npo_run.parents[4]
    before = (npo_run / "metrics.json").read_text()
    rc, _, err = _run(
        [
            "run",
            "--method",
            "npo",
            "--model",
            "tiny-micro",
            "--out",
            str(out),
            "--no-progress",
            "--set",
            "epochs=4",
            "--set",
            "lr=1e-3",
        ],
        capsys,
    )
    assert rc == 2 and "already finished" in err and "--force" in err
    assert (npo_run / "metrics.json").read_text() == before  # nothing overwritten


@pytest.mark.parametrize(
    "args, words",
    [
        (
            ["run", "--method", "nope"],
            "unknown llm method 'nope'; valid: dp2, ga, graddiff, idkdpo, idknll, needle, npo, rmu, simnpo, undial",
        ),
        (
            ["run", "--method", "uce"],
            "unknown llm method 'uce'; valid: dp2, ga, graddiff, idkdpo, idknll, needle, npo, rmu, simnpo, undial",
        ),
        (["run", "--split", "forget42"], "unknown tinyfacts split 'forget42'; valid: forget01, forget05, forget10"),
        (["run", "--benchmark", "muse"], "unknown llm benchmark 'muse'; valid: muse_books, muse_news, tinyfacts"),
        (["run", "--set", "lr=fast"], "--set lr=fast: expected float"),
        (["run", "--force", "--reuse"], "--force and --reuse contradict each other"),
        (["run", "--set", "lr=nan"], "--set lr=nan: must be a number, not nan"),
        (["run", "--set", "batch_size=0"], "--set batch_size=0: must be >= 1"),
        (["run", "--set", "epochs=-1"], "--set epochs=-1: must be > 0"),
        (["run", "--set", "beta=0"], "--set beta=0: must be > 0"),
        (["run", "--set", "beta=-1"], "--set beta=-1: must be > 0"),
        (["run", "--set", "beta=nan"], "--set beta=nan: must be a number, not nan"),
        (["run", "--set", "lora.r=-1"], "--set lora.r=-1: must be >= 0"),
        (["run", "--method", "ga", "--set", "forget_weight=-1"], "--set forget_weight=-1: must be >= 0"),
        (["run", "--set", "lr=fast"], "--set lr=fast: expected float"),
        (["run", "--model", "/no/such/model"], "model directory not found"),
        (["list", "things"], "unknown list 'things'"),
        (["build", "tinycats"], "unknown target 'tinycats'"),
    ],
)
def test_user_errors_are_one_line_exit_2(args, words, capsys, micro_target, tmp_path):
    rc, _, err = _run([*args, "--out", str(tmp_path)] if args[0] == "run" else args, capsys)
    assert rc == 2
    assert words in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_malformed_forget_file(capsys, micro_target, tmp_path):
    bad = tmp_path / "f.jsonl"
    bad.write_text('{"question": "q", "answer": "a"}\n{"question": "q2", "answer": \n')
    rc, _, err = _run(
        ["run", "--model", "tiny-micro", "--forget", str(bad), "--out", str(tmp_path / "r"), "--no-progress"], capsys
    )
    assert rc == 2 and f"{bad}:2: malformed JSON" in err
    assert not (tmp_path / "r" / "tinyfacts" / "tiny-micro" / "npo" / "forget10" / "seed0" / "metrics.json").exists()


def test_eval_and_list(capsys, micro_target, tmp_path):
    rc, out, _ = _run(["eval", "--model", "tiny-micro", "--suite", "basic", "--out", str(tmp_path / "e")], capsys)
    assert rc == 0 and "forget_acc" in out
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert m["forget_acc"] >= 0.9 and "retain_rougeL_recall" in m
    rc, _, err = _run(["eval", "--model", "tiny-micro", "--suite", "basic", "--out", str(tmp_path / "e")], capsys)
    assert rc == 2 and "already finished" in err and "--force" in err and "--reuse" in err
    assert not check_keys(m) and "model" not in m  # identification lives in config.json
    rc, out, _ = _run(["eval", "--model", "tiny-micro", "--suite", "full", "--out", str(tmp_path / "f")], capsys)
    full = json.loads((tmp_path / "f" / "metrics.json").read_text())
    assert rc == 0 and {"forget_quality", "privleak", "mia_min_k_auc", "model_utility"} <= set(full)
    assert not check_keys(full) and all(k in out for k in full if k != "schema_version")  # the table shows all
    for what, word in (("methods", "npo"), ("metrics", "forget_quality"), ("models", "llama-1b"),
                       ("benchmarks", "tinyshapes")):  # fmt: skip
        rc, out, _ = _run(["list", what], capsys)
        assert rc == 0 and word in out


def test_reuse_shows_a_finished_run_with_the_same_settings(npo_run, capsys):
    out = npo_run.parents[4]
    base = ["run", "--method", "npo", "--model", "tiny-micro", "--out", str(out), "--no-progress", "--reuse"]
    rc, stdout, _ = _run([*base, "--set", "epochs=4", "--set", "lr=1e-3"], capsys)
    assert rc == 0 and "forget_acc" in stdout
    # other settings file under another hash; forced into this run's folder by --name, they are refused
    tag = npo_run.parts[-3].split("+", 1)[1]
    rc, _, err = _run([*base, "--set", "epochs=5", "--set", "lr=1e-3", "--name", tag], capsys)
    assert rc == 2 and "different resolved config" in err


def test_eval_of_a_directory_on_tinyfacts_uses_the_embedded_oracle(capsys, micro_target, tmp_path):
    """A copy of the micro target as a plain directory (its card naming the build, as a staged or saved model's
    does) evaluated with --benchmark tinyfacts gets the build's shipped/built oracle: forget quality and PrivLeak
    are numbers, and the very ones the alias gets for the same weights (they came out NaN for any directory)."""
    import shutil

    from unlearn.targets.build import get_preset
    from unlearn.targets.resolve import tinyfacts_oracle

    d = tmp_path / "copy"
    shutil.copytree(micro_target / "target", d, ignore=shutil.ignore_patterns("card.json"))
    card = {"tinyfacts_build": "micro", "build_digest": get_preset("micro").digest()}
    (d / "card.json").write_text(json.dumps(card))
    cols = {}
    for model, out in ((str(d), "dir"), ("tiny-micro", "alias")):
        rc, _, _ = _run(["eval", "--model", model, "--benchmark", "tinyfacts", "--out", str(tmp_path / out),
                         "--no-progress"], capsys)  # fmt: skip
        assert rc == 0
        cols[out] = json.loads((tmp_path / out / "metrics.json").read_text())
        resolved = json.loads((tmp_path / out / "config.json").read_text())["resolved"]
        assert resolved["oracle"].endswith("oracle_forget10")
    for k in ("forget_quality", "privleak"):
        assert cols["dir"][k] is not None and cols["dir"][k] == cols["alias"][k], k
    assert 0 <= cols["dir"]["forget_quality"] <= 1
    notes = []
    assert tinyfacts_oracle(get_preset("micro"), "forget05", notes.append) is None  # not built: none, and a note
    assert "no built oracle_forget05" in notes[0]
    assert tinyfacts_oracle(None, "forget10").endswith("assets/tinyfacts/oracle_forget10")  # no card: shipped one

"""Experiment tracking (``--set report_to=...``, unlearn/tracking.py): tensorboard event files in the run directory,
read back with tensorboard's own EventAccumulator, hold trace.jsonl's values step for step; a missing extra or an
unknown tracker exits 2 with one line before anything is written."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest

from unlearn.cli import main


def _cmd(target, out, *extra):
    return ["run", "--method", "npo", "--model", str(target / "model"), "--forget", str(target / "forget.jsonl"),
            "--retain", str(target / "retain.jsonl"), "--out", str(out), "--no-progress", "--suite", "basic",
            "--set", "batch_size=2", "--set", "epochs=2", "--set", "lr=1e-3", *extra]  # fmt: skip


def _events(logdir) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} of every scalar in the event files below ``logdir``, as TensorBoard reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"scalars": 0})  # 0: keep every point
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_tensorboard_events_equal_the_trace_step_for_step(tiny_target_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path / "home"))
    rc = main(_cmd(tiny_target_dir, tmp_path / "runs", "--set", "report_to=tensorboard", "--set", "eval_every=2"))
    assert rc == 0, capsys.readouterr().err
    (rdir,) = {p.parent for p in (tmp_path / "runs").rglob("trace.jsonl")}
    assert list((rdir / "tracking").glob("events.out.tfevents.*"))  # in the run directory, offline
    rows = [json.loads(x) for x in (rdir / "trace.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "eval" not in r]
    evals = [r for r in rows if "eval" in r]
    assert len(steps) >= 4 and [r["step"] for r in evals][0] == 0 and len(evals) >= 3
    ev = _events(rdir / "tracking")
    for key in ("loss", "lr", "grad_norm", "tokens_per_s", "forget_logp"):
        want = [(r["step"], r[key]) for r in steps]
        got = ev[f"train/{key}"]
        assert [s for s, _ in got] == [s for s, _ in want], key
        for (s, a), (_, b) in zip(got, want):  # event files store float32
            assert math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12), (key, s, a, b)
    metric = next(k for k, v in evals[0]["eval"].items() if isinstance(v, float) and k.endswith("_acc"))
    got = ev[f"eval/{metric}"]
    assert [s for s, _ in got] == [r["step"] for r in evals] == [0, 2, 4, 6, 8]  # before the first step, every 2
    assert [v for _, v in got] == pytest.approx([r["eval"][metric] for r in evals], rel=1e-6)
    # the resolved config records the setting; it files no variant of its own (a run knob)
    cfg = json.loads((rdir / "config.json").read_text())["resolved"]
    assert cfg["train_config"]["report_to"] == "tensorboard" and "report_to" not in json.dumps(cfg["variant"])


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_missing_wandb_exits_2_naming_the_extra_and_writes_nothing(tiny_target_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path / "home"))
    rc = main(_cmd(tiny_target_dir, tmp_path / "runs", "--set", "report_to=wandb"))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "pip install 'unlearn[wandb]'" in err, err
    assert not (tmp_path / "runs").exists() or not any(p.is_file() for p in (tmp_path / "runs").rglob("*"))


def test_unknown_tracker_exits_2_listing_the_valid_names(tiny_target_dir, tmp_path, capsys):
    rc = main(_cmd(tiny_target_dir, tmp_path / "runs", "--set", "report_to=mlflow"))
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert all(n in err for n in ("none", "tensorboard", "wandb", "trackio")), err
    assert not (tmp_path / "runs").exists()


def test_scalars_of_trace_rows():
    from unlearn.tracking import scalars

    assert scalars({"step": 3, "loss": 0.5, "tokens": 12, "ok": True, "note": "x", "gn": float("nan")}) == {
        "train/loss": 0.5,
        "train/tokens": 12.0,
    }
    assert scalars({"step": 0, "eval": {"forget_acc": 0.25, "n": "x"}}) == {"eval/forget_acc": 0.25}


def test_a_resumed_run_replaces_the_events_after_its_checkpoint(tiny_target_dir, tmp_path, monkeypatch, capsys):
    """Killed at step 5 with a checkpoint at step 3: the resumed run rewrites steps 4.. in trace.jsonl and its
    events hide the first attempt's (TensorBoard's purge), so every step shows once, with the final trace's value."""
    from unlearn import tracking

    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path / "home"))
    args = _cmd(tiny_target_dir, tmp_path / "runs", "--set", "report_to=tensorboard", "--set", "checkpoint_every=3")
    real = tracking.Tracker.__call__

    def die_after_5(self, row, step):
        real(self, row, step)
        if step == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(tracking.Tracker, "__call__", die_after_5)
    assert main(args) == 130
    monkeypatch.setattr(tracking.Tracker, "__call__", real)
    (rdir,) = {p.parent for p in (tmp_path / "runs").rglob("trace.jsonl")}
    assert [s for s, _ in _events(rdir / "tracking")["train/loss"]] == [1, 2, 3, 4, 5]
    assert main(args) == 0 and "resuming from step 3" in capsys.readouterr().out
    assert len(list((rdir / "tracking").glob("events.out.tfevents.*"))) == 2  # the first attempt's file is kept
    rows = [json.loads(x) for x in (rdir / "trace.jsonl").read_text().splitlines()]
    ev = _events(rdir / "tracking")
    for key in ("loss", "tokens_per_s"):  # tokens/s differs between attempts: the final trace's value shows
        assert [s for s, _ in ev[f"train/{key}"]] == [r["step"] for r in rows] == list(range(1, 9))
        assert [v for _, v in ev[f"train/{key}"]] == pytest.approx([r[key] for r in rows], rel=1e-6)

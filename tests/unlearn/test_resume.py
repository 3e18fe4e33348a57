"""Kill-and-resume, deterministic: a run interrupted right after its first checkpoint (a known step) and restarted
with the same command ends with the same metrics as an uninterrupted run (CPU: bit-identical weights, so equal
metrics to 1e-9), and its trace holds every step exactly once. A SIGKILLed process leaves a stale lock, which the
restarted command takes over (tests/unlearn/test_workflow.py checks that part on a real killed process)."""

from __future__ import annotations

import json
import math

from unlearn import loop as core
from unlearn.cli import main

TIMING = {"cost_seconds", "cost_train_seconds"}  # wall-clock, not results
ARGS = ["--set", "batch_size=4", "--set", "epochs=4", "--set", "lr=1e-3", "--set", "checkpoint_every=3"]


def _cmd(target, out):
    return ["run", "--method", "npo", "--model", str(target / "model"), "--forget", str(target / "forget.jsonl"),
            "--retain", str(target / "retain.jsonl"), "--holdout", str(target / "holdout.jsonl"), "--out", str(out),
            "--no-progress", *ARGS]  # fmt: skip


def _same(a: dict, b: dict) -> None:
    assert set(a) == set(b)
    for k in a:
        if k not in TIMING and isinstance(a[k], (int, float)):
            assert math.isclose(a[k], b[k], rel_tol=1e-9, abs_tol=1e-12), (k, a[k], b[k])


def test_interrupted_run_resumes_to_the_same_metrics(tiny_target_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path / "home"))
    assert main(_cmd(tiny_target_dir, tmp_path / "a")) == 0
    ref = next((tmp_path / "a").rglob("metrics.json"))

    real, saved = core.save_checkpoint, []

    def save_then_die(ckpt, model, c, step, tokens, extra=None):
        real(ckpt, model, c, step, tokens, extra)
        saved.append(step)
        raise KeyboardInterrupt  # killed right after the first checkpoint

    monkeypatch.setattr(core, "save_checkpoint", save_then_die)
    assert main(_cmd(tiny_target_dir, tmp_path / "b")) == 130  # the CLI's code for an interrupt
    monkeypatch.setattr(core, "save_checkpoint", real)
    rdir = next((tmp_path / "b").rglob("seed0"))
    assert saved == [3] and not (rdir / "metrics.json").exists() and not (rdir / ".lock").exists()
    st = json.loads((rdir / "status.json").read_text())
    assert st["state"] == "failed" and "interrupted" in st["reason"]
    capsys.readouterr()

    assert main(_cmd(tiny_target_dir, tmp_path / "b")) == 0
    assert "resuming from step 3" in capsys.readouterr().out
    _same(json.loads(ref.read_text()), json.loads((rdir / "metrics.json").read_text()))
    trace = [json.loads(x) for x in (rdir / "trace.jsonl").read_text().splitlines()]
    n_steps = json.loads(ref.read_text())["cost_steps"]
    assert [r["step"] for r in trace if "loss" in r] == list(range(1, n_steps + 1))  # none lost or repeated
    assert not (rdir / "checkpoint").exists()  # cleared once finished

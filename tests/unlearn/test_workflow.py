"""The run lifecycle (unlearn/workflow.py): claim outcomes, config first / metrics last, failure states, the lock."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from unlearn.errors import UnlearnError
from unlearn.workflow import claim_run, files_hash, read_resolved

CFG = {"method": "npo", "lr": 1e-3}


def _finish(rdir, cfg=CFG, metrics=None):
    with claim_run(rdir, cfg, log=lambda *_: None) as run:
        run.start()
        assert json.loads((rdir / "config.json").read_text())["resolved"] == cfg  # config first
        assert json.loads((rdir / "status.json").read_text())["state"] == "running"
        assert not (rdir / "metrics.json").exists()
        run.finish(metrics or {"forget_acc": 0.5})
    return run


def test_new_then_finished_refused_reused_forced(tmp_path):
    rdir = tmp_path / "r"
    assert _finish(rdir).mode == "new"
    assert json.loads((rdir / "status.json").read_text())["state"] == "finished"
    assert json.loads((rdir / "metrics.json").read_text()) == {"schema_version": 1, "forget_acc": 0.5}
    assert not (rdir / ".lock").exists()  # released
    with pytest.raises(UnlearnError, match=r"already finished; pass --force .* or --reuse"):
        claim_run(rdir, CFG)
    before = (rdir / "metrics.json").read_text()
    assert claim_run(rdir, CFG, reuse=True, log=lambda *_: None).reused
    with pytest.raises(UnlearnError, match="different resolved config"):
        claim_run(rdir, {**CFG, "lr": 2e-3}, reuse=True)
    assert (rdir / "metrics.json").read_text() == before  # refusals touch nothing
    (rdir / "notes.txt").write_text("mine")
    run = claim_run(rdir, CFG, force=True)
    assert run.mode == "new" and not (rdir / "metrics.json").exists()
    assert (rdir / "notes.txt").read_text() == "mine"  # --force removes only the run's own files
    run.close()
    with pytest.raises(UnlearnError, match="contradict"):
        claim_run(rdir, CFG, force=True, reuse=True)


def test_unfinished_resumes_with_same_config_and_restarts_with_another(tmp_path):
    rdir = tmp_path / "r"
    run = claim_run(rdir, CFG)
    run.start()
    (rdir / "checkpoint").mkdir()
    (rdir / "trace.jsonl").write_text('{"step": 1}\n')
    run.close()  # a killed run: config + checkpoint, no metrics
    run = claim_run(rdir, CFG)
    assert run.mode == "resume" and (rdir / "checkpoint").exists()
    run.close()
    msgs = []
    run = claim_run(rdir, {**CFG, "lr": 5e-4}, log=msgs.append)
    assert run.mode == "restart" and not (rdir / "checkpoint").exists() and not (rdir / "trace.jsonl").exists()
    assert "restarting" in msgs[0]
    run.close()


def test_exception_and_interrupt_mark_failed(tmp_path):
    rdir = tmp_path / "r"
    with pytest.raises(ValueError):
        with claim_run(rdir, CFG) as run:
            run.start()
            raise ValueError("boom")
    st = json.loads((rdir / "status.json").read_text())
    assert st["state"] == "failed" and st["reason"] == "ValueError: boom"
    assert not (rdir / ".lock").exists()
    with pytest.raises(KeyboardInterrupt):
        with claim_run(rdir, CFG) as run:
            run.start()
            raise KeyboardInterrupt
    assert "interrupted" in json.loads((rdir / "status.json").read_text())["reason"]


def test_bad_out_dirs(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(UnlearnError, match="is a file"):
        claim_run(f, CFG)
    with pytest.raises(UnlearnError, match="is a file"):
        claim_run(f / "sub", CFG)
    with pytest.raises(UnlearnError, match="cannot create"):
        claim_run(tmp_path / "file" / "a" / "b", CFG)  # a parent that is a file: mkdir fails (root or not)


def test_live_lock_refused_and_stale_lock_taken_over(tmp_path):
    rdir = tmp_path / "r"
    rdir.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (rdir / ".lock").write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename}))
        with pytest.raises(UnlearnError, match=f"held by a live process \\(pid {holder.pid}"):
            claim_run(rdir, CFG)
    finally:
        holder.kill()
        holder.wait()
    msgs = []
    run = claim_run(rdir, CFG, log=msgs.append)  # the holder is dead now
    assert run.mode == "new" and "stale lock" in msgs[0]
    assert json.loads((rdir / ".lock").read_text())["pid"] == os.getpid()
    run.close()


def test_sigterm_marks_the_run_failed(tmp_path):
    """A real process: SIGTERM during the run -> status failed (interrupted), lock released, exit code 130-ish."""
    rdir = tmp_path / "r"
    code = (
        "import sys, time\nfrom unlearn.workflow import claim_run\n"
        f"run = claim_run({str(rdir)!r}, {CFG!r})\n"
        "try:\n    with run:\n        run.start()\n        print('started', flush=True)\n        time.sleep(60)\n"
        "except KeyboardInterrupt:\n    sys.exit(130)\n"
    )
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "started"
    p.send_signal(signal.SIGTERM)
    assert p.wait(timeout=30) == 130
    st = json.loads((rdir / "status.json").read_text())
    assert st["state"] == "failed" and "interrupted" in st["reason"]
    assert not (rdir / ".lock").exists()
    assert claim_run(rdir, CFG).mode == "resume"  # the same command picks it up again


def test_read_resolved_reads_old_and_new_layouts(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"method": "ga", "seed": 1}))
    assert read_resolved(tmp_path) == {"method": "ga", "seed": 1}  # pre-lifecycle flat config
    (tmp_path / "config.json").write_text(json.dumps({"resolved": {"method": "npo"}, "provenance": {}}))
    assert read_resolved(tmp_path) == {"method": "npo"}


def test_files_hash_changes_with_content(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"abc")
    (tmp_path / "config.json").write_text("{}")
    h = files_hash(tmp_path)
    (tmp_path / "card.json").write_text("{}")  # descriptive files do not change the identity
    assert files_hash(tmp_path) == h
    time.sleep(0.01)
    (tmp_path / "model.safetensors").write_bytes(b"abd")
    assert files_hash(tmp_path) != h and files_hash(tmp_path / "missing") is None

"""Kill-and-resume: a run SIGKILLed after its first checkpoint and restarted with the same command ends with the
same metrics as an uninterrupted run (CPU: to 1e-6 relative; the resumed run is in fact bit-identical)."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

TIMING = {"cost_seconds", "cost_train_seconds"}  # wall-clock, not results


# Copied from tests/unlearn/test_train.py::make_tiny_target
def make_tiny_target():
    """Tokenizer + a 2-layer, 32-wide Llama trained a few seconds on the micro TinyFacts set (1 thread, seeded)."""
    from unlearn.data.tinyfacts import generate
    from unlearn.targets.build import get_preset, train_qa_model, train_tokenizer

    micro = get_preset("micro")
    splits = generate(micro.data)
    tok = train_tokenizer(splits, micro.vocab_size)
    cfg = dataclasses.replace(
        micro, hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, epochs=30, batch_size=16, lr=1e-2
    )
    model, _ = train_qa_model(cfg, tok, splits["full"], progress=False)
    return tok, model, splits


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    """The tiny target saved as a model directory, with forget / retain / holdout JSONL files."""
    from unlearn.store import atomic_write_jsonl
    from unlearn.targets.llm import save_model

    root = tmp_path_factory.mktemp("tiny_target")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok, model, splits = make_tiny_target()
    torch.set_num_threads(threads)
    save_model(model, tok, root / "model")
    for name, split in (("forget", "forget10"), ("retain", "retain90"), ("holdout", "holdout10")):
        atomic_write_jsonl(root / f"{name}.jsonl", splits[split])
    return root


def run_command(target: Path, out: Path, *extra: str) -> list[str]:
    return [
        "-m",
        "unlearn",
        "run",
        "--method",
        "npo",
        "--model",
        str(target / "model"),
        "--forget",
        str(target / "forget.jsonl"),
        "--retain",
        str(target / "retain.jsonl"),
        "--holdout",
        str(target / "holdout.jsonl"),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    ]


def env(home: Path) -> dict:
    return {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "UNLEARN_HOME": str(home),
    }


def assert_same_metrics(a: dict, b: dict, rel: float) -> None:
    assert set(a) == set(b)
    for k in a:
        if k in TIMING or not isinstance(a[k], (int, float)):
            continue
        assert math.isclose(a[k], b[k], rel_tol=rel, abs_tol=1e-12), (k, a[k], b[k])


@pytest.mark.slow
def test_sigkill_and_restart_gives_the_same_metrics(target_dir, tmp_path):
    args = ["--set", "batch_size=4", "--set", "epochs=40", "--set", "lr=1e-3", "--set", "checkpoint_every=2"]
    e = env(tmp_path / "home")
    ref = subprocess.run(
        [sys.executable, *run_command(target_dir, tmp_path / "a", *args)],
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ref.returncode == 0, ref.stderr[-2000:]
    rdir_a = next((tmp_path / "a").rglob("seed0"))

    cmd = [sys.executable, *run_command(target_dir, tmp_path / "b", *args)]
    proc = subprocess.Popen(cmd, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    state = None
    try:
        while time.time() < deadline and proc.poll() is None:
            found = list((tmp_path / "b").rglob("checkpoint/state.json"))
            if found:
                state = found[0]
                break
            time.sleep(0.01)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    assert state is not None, "no checkpoint appeared before the run ended"
    rdir_b = state.parent.parent
    assert not (rdir_b / "metrics.json").exists()  # killed mid-training
    killed_at = json.loads((rdir_b / "checkpoint" / "state.json").read_text())["step"]
    assert 2 <= killed_at < 80

    res = subprocess.run(cmd, env=e, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "resuming from step" in res.stdout + res.stderr
    ma = json.loads((rdir_a / "metrics.json").read_text())
    mb = json.loads((rdir_b / "metrics.json").read_text())
    assert_same_metrics(ma, mb, rel=1e-6)
    steps = [r["step"] for r in map(json.loads, (rdir_b / "trace.jsonl").read_text().splitlines()) if "loss" in r]
    assert steps == list(range(1, 81))  # no step lost or repeated in the trace
    assert not (rdir_b / "checkpoint").exists()  # cleared once finished

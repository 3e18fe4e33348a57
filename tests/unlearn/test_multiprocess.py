"""Two processes (``accelerate launch --multi_gpu --num_processes 2``, gloo on CPU) give the same metrics as one
process with the same global batch, to 1e-5 relative on every metric.

Traps (docs/conventions.md#multi-process): ``--cpu --num_processes 2`` silently runs ONE process, so the test
asserts that the run really had world size 2; `unlearn.commands.run` destroys the process group at the end (else
gloo runs abort at exit now and then).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import socket
import subprocess
import sys

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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["npo", "graddiff"])
def test_two_processes_match_one(target_dir, tmp_path, method):
    run = [
        "-m",
        "unlearn",
        "run",
        "--method",
        method,
        "--model",
        str(target_dir / "model"),
        "--forget",
        str(target_dir / "forget.jsonl"),
        "--retain",
        str(target_dir / "retain.jsonl"),
        "--holdout",
        str(target_dir / "holdout.jsonl"),
        "--no-progress",
        "--set",
        "batch_size=4",
        "--set",
        "epochs=5",
        "--set",
        "lr=1e-3",
    ]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "UNLEARN_HOME": str(tmp_path / "home"),
    }
    one = subprocess.run(
        [sys.executable, *run, "--out", str(tmp_path / "one")], env=env, capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0, one.stderr[-2000:]
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
    ]
    two = subprocess.run(
        [*launch, *run, "--out", str(tmp_path / "two")], env=env, capture_output=True, text=True, timeout=300
    )
    assert two.returncode == 0, two.stderr[-3000:]
    d1, d2 = next((tmp_path / "one").rglob("seed0")), next((tmp_path / "two").rglob("seed0"))
    s1, s2 = (json.loads((d / "status.json").read_text())["summary"] for d in (d1, d2))
    assert (s1["world_size"], s2["world_size"]) == (1, 2)  # really two processes
    m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (d1, d2))
    assert set(m1) == set(m2)
    for k in m1:
        if k not in TIMING and isinstance(m1[k], (int, float)):
            assert math.isclose(m1[k], m2[k], rel_tol=1e-5, abs_tol=1e-9), (k, m1[k], m2[k])
    t1, t2 = ([json.loads(x) for x in (d / "trace.jsonl").read_text().splitlines()] for d in (d1, d2))
    for a, b in zip(t1, t2):  # the per-step trace too: losses and logs reduced over both processes
        for k in ("loss", "grad_norm", "forget_logp", "retain_logp", "tokens"):  # float32 sums: GradDiff cancels
            if k in a:
                assert math.isclose(a[k], b[k], rel_tol=1e-4, abs_tol=1e-6), (a["step"], k, a[k], b[k])

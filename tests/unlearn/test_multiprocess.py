"""Two processes (``accelerate launch --multi_gpu --num_processes 2``, gloo on CPU) give the same metrics as one
process with the same global batch, to 1e-5 relative on every metric.

Traps (docs/conventions.md#multi-process): ``--cpu --num_processes 2`` silently runs ONE process, so the test
asserts that the run really had world size 2; `unlearn.commands.run` destroys the process group at the end (else
gloo runs abort at exit now and then).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys

import pytest

TIMING = {"cost_seconds", "cost_train_seconds"}  # wall-clock, not results


@pytest.fixture
def target_dir(tiny_target_dir):
    return tiny_target_dir  # the session's tiny model (tests/conftest.py)


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

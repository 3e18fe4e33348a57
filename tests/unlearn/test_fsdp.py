"""FSDP2 on CPU (gloo): ``sharding=fsdp`` under ``accelerate launch --multi_gpu --num_processes 2`` really shards
(each rank keeps about half of the parameter elements), ends with every metric equal to the one-process run to
1e-4 relative, resumes from a sharded (torch.distributed.checkpoint) checkpoint after an interruption, refuses a
resume with another world size (exit 2), exports a consolidated model that loads as a plain Hugging Face model, and
runs the same from a two-"node" launch (two launchers, one process each, loopback rendezvous).

NPO with the KL retain term: the frozen reference is kept, so it is sharded too. ``--suite basic`` keeps the
evaluation short; the trajectory evaluation (``eval_every``) runs on the consolidated copy.
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

TIMING = {"cost_seconds", "cost_train_seconds"}  # wall-clock, not results
CONFIGS = Path(__file__).resolve().parents[2] / "benchmarks" / "accelerate"
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--mixed_precision", "no", "--dynamo_backend", "no"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cmd(target, out, *extra) -> list[str]:
    return ["-m", "unlearn", "run", "--method", "npo", "--model", str(target / "model"),
            "--forget", str(target / "forget.jsonl"), "--retain", str(target / "retain.jsonl"),
            "--holdout", str(target / "holdout.jsonl"), "--suite", "basic", "--no-progress", "--out", str(out),
            "--set", "batch_size=4", "--set", "epochs=2", "--set", "lr=1e-3", "--set", "retain=kl",
            "--set", "checkpoint_every=3", "--set", "eval_every=4", *extra]  # fmt: skip


def _env(tmp_path, **kw) -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
            "UNLEARN_HOME": str(tmp_path / "home"), **kw}  # fmt: skip


def _two(target, out, env, *extra, timeout=300):
    launch = [*LAUNCH, "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
              "--main_process_port", str(_free_port())]  # fmt: skip
    return subprocess.run([*launch, *_cmd(target, out, "--set", "sharding=fsdp", *extra)], env=env,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip


def _rdir(out):
    return next(out.rglob("seed0"))


def _read(out):
    d = _rdir(out)
    return (json.loads((d / "metrics.json").read_text()), json.loads((d / "status.json").read_text())["summary"],
            [json.loads(x) for x in (d / "trace.jsonl").read_text().splitlines()])  # fmt: skip


def _same(a: dict, b: dict, rel: float = 1e-4) -> None:
    assert set(a) == set(b)
    for k in a:
        if k not in TIMING and isinstance(a[k], (int, float)):
            assert math.isclose(a[k], b[k], rel_tol=rel, abs_tol=1e-7), (k, a[k], b[k])


def _same_trace(t1: list, t2: list, rel: float = 1e-4) -> None:
    assert [r["step"] for r in t1] == [r["step"] for r in t2]  # every step (and eval row) once
    for a, b in zip(t1, t2):
        if "eval" in a:
            _same(a["eval"], b["eval"], rel)
        for k in ("loss", "grad_norm", "forget_logp", "retain_logp", "tokens"):
            if k in a:
                assert math.isclose(a[k], b[k], rel_tol=rel, abs_tol=1e-6), (a["step"], k, a[k], b[k])


@pytest.fixture(scope="module")
def one(tiny_target_dir, tmp_path_factory):
    """The one-process run (unsharded), with its saved model."""
    tmp = tmp_path_factory.mktemp("fsdp_one")
    r = subprocess.run([sys.executable, *_cmd(tiny_target_dir, tmp / "one", "--save-model")], env=_env(tmp),
                       capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    return tmp / "one"


@pytest.mark.slow
def test_fsdp_two_processes_shard_match_one_resume_and_export(tiny_target_dir, one, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    out, env = tmp_path / "two", _env(tmp_path)
    # interrupted right after the first checkpoint (step 3): a sharded checkpoint, one shard file per rank
    r = _two(tiny_target_dir, out, {**env, "UNLEARN_INTERRUPT_AFTER_CHECKPOINT": "1"}, "--save-model")
    assert r.returncode != 0
    ck = _rdir(out) / "checkpoint"
    state = json.loads((ck / "state.json").read_text())
    assert (state["step"], state["sharding"], state["world_size"]) == (3, "fsdp", 2)
    assert len(list((ck / "dcp").glob("*.distcp"))) == 2 and not (ck / "model.safetensors").exists()
    # another world size: one line, exit 2, the checkpoint kept
    w1 = subprocess.run([sys.executable, *_cmd(tiny_target_dir, out, "--set", "sharding=fsdp", "--save-model")],
                        env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert w1.returncode == 2, w1.stderr[-3000:]
    err = w1.stderr.strip().splitlines()
    assert "written by 2 FSDP processes" in err[-1] and "unsharded" in err[-1], err[-3:]
    assert (ck / "state.json").exists()
    # the same command again: resumes from the sharded checkpoint and finishes
    r = _two(tiny_target_dir, out, env, "--save-model")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from step 3" in r.stdout + r.stderr
    m1, s1, t1 = _read(one)
    m2, s2, t2 = _read(out)
    assert (s1["world_size"], s2["world_size"], s2["sharding"]) == (1, 2, "fsdp")
    assert abs(s2["local_param_elements"] / s2["param_elements"] - 0.5) < 0.02  # really sharded: half per rank
    assert abs(s2["reference_local_param_elements"] / s2["param_elements"] - 0.5) < 0.02  # the KL reference too
    _same(m1, m2)
    _same_trace(t1, t2)
    # the consolidated export is a plain Hugging Face model, equal to the one-process model
    a = AutoModelForCausalLM.from_pretrained(_rdir(one) / "model")
    b = AutoModelForCausalLM.from_pretrained(_rdir(out) / "model")
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert torch.allclose(sa[k], sb[k], rtol=1e-3, atol=1e-5), k


@pytest.mark.slow
def test_fsdp_two_node_launch_matches_one(tiny_target_dir, one, tmp_path):
    """Two launchers (``--num_machines 2``, ``--machine_rank 0/1``), one process each, loopback rendezvous, with
    benchmarks/accelerate/fsdp_multinode.yaml and no ``--set sharding``: the FSDP config alone selects FSDP."""
    env, port = _env(tmp_path), _free_port()
    procs = []
    for rank in (0, 1):
        # the shipped multi-node FSDP config (distributed_type: FSDP), scaled down: sharding=auto must choose fsdp
        launch = [*LAUNCH, "--config_file", str(CONFIGS / "fsdp_multinode.yaml"), "--num_processes", "2",
                  "--num_machines", "2", "--machine_rank", str(rank), "--main_process_ip", "127.0.0.1",
                  "--main_process_port", str(port)]  # fmt: skip
        # micro_batch_size=1: two micro-batches per rank, the first without the gradient reduce-scatter (no_sync)
        cmd = _cmd(tiny_target_dir, tmp_path / "nodes", "--set", "micro_batch_size=1")
        procs.append(subprocess.Popen([*launch, *cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))  # fmt: skip
    try:
        outs = [p.communicate(timeout=300) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    m1, _, t1 = _read(one)
    m2, s2, t2 = _read(tmp_path / "nodes")
    assert (s2["world_size"], s2["sharding"], s2["micro_batch_size"]) == (2, "fsdp", 1)
    _same(m1, m2)
    _same_trace(t1, t2)


@pytest.mark.parametrize(
    ("env", "setting", "words"),
    [
        ({"ACCELERATE_USE_FSDP": "true"}, "sharding=ddp", "conflicts with the accelerate FSDP config"),
        ({"ACCELERATE_USE_FSDP": "true"}, "sharding=none", "conflicts with the accelerate FSDP config"),
        ({"ACCELERATE_USE_DEEPSPEED": "true"}, "sharding=fsdp", "conflicts with the accelerate DeepSpeed config"),
    ],
)
def test_fsdp_conflicting_launch_config_exits_2(tiny_target_dir, tmp_path, monkeypatch, capsys, env, setting, words):
    from unlearn.cli import main

    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path / "home"))
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(_cmd(tiny_target_dir, tmp_path / "c", "--set", setting)[2:]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and words in err[0], err
    assert not (tmp_path / "c").exists()  # refused before the run directory was claimed


def test_fsdp_in_one_process_runs_unsharded_and_auto_follows_the_launch(monkeypatch):
    from unlearn import sharding
    from unlearn.config import TrainConfig

    logged = []
    assert sharding.wrapper(TrainConfig(sharding="fsdp"), None, log=logged.append) is None
    assert "one process" in logged[0]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert sharding.resolve("auto") == "fsdp" and sharding.resolve("fsdp") == "fsdp"
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    assert sharding.resolve("auto") == "ddp" and sharding.resolve("none") == "ddp"

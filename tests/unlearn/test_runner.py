"""The run workflow (unlearn/runner.py) on the lifecycle: a run directory held by a live run is refused and left
untouched; SIGTERM fails the live run cleanly; cached evaluations are keyed by what decides their numbers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

from unlearn.cli import main


def _cmd(target, out, *extra):
    return ["run", "--method", "ga", "--model", str(target / "model"), "--forget", str(target / "forget.jsonl"),
            "--retain", str(target / "retain.jsonl"), "--out", str(out), "--no-progress", "--set", "batch_size=4",
            "--set", "lr=1e-5", *extra]  # fmt: skip


def test_a_second_run_into_a_live_run_dir_exits_2_and_touches_nothing(tiny_target_dir, tmp_path, capsys):
    env = {**os.environ, "UNLEARN_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    args = _cmd(tiny_target_dir, tmp_path / "runs", "--set", "epochs=100000", "--set", "checkpoint_every=50")
    live = subprocess.Popen([sys.executable, "-m", "unlearn", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        deadline, rdir = time.time() + 120, None
        while time.time() < deadline and live.poll() is None:
            found = list((tmp_path / "runs").rglob("trace.jsonl"))
            if found and found[0].stat().st_size > 0:
                rdir = found[0].parent
                break
            time.sleep(0.05)
        assert rdir is not None, live.stderr.read() if live.poll() is not None else "no trace appeared"
        config = (rdir / "config.json").read_bytes()
        status = (rdir / "status.json").read_bytes()
        rc = main(args)
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and f"held by a live process (pid {live.pid}" in err
        assert (rdir / "config.json").read_bytes() == config and (rdir / "status.json").read_bytes() == status
        assert json.loads((rdir / ".lock").read_text())["pid"] == live.pid
        live.send_signal(signal.SIGTERM)  # the live run is stopped cleanly: status failed, lock released
        assert live.wait(timeout=60) == 130
    finally:
        if live.poll() is None:
            live.kill()
            live.wait()
    st = json.loads((rdir / "status.json").read_text())
    assert st["state"] == "failed" and "interrupted" in st["reason"] and not (rdir / ".lock").exists()
    steps = [json.loads(x)["step"] for x in (rdir / "trace.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # one writer: no step written twice


def test_cached_evaluation_key_follows_weights_format_and_config(tiny_target_dir, tmp_path):
    import shutil

    from unlearn.evaluate import EvalConfig, cache_key
    from unlearn.targets.llm import PromptFormat

    sets = {"forget": [{"question": "q", "answer": "a"}]}
    d = tmp_path / "m"
    shutil.copytree(tiny_target_dir / "model", d)
    k = cache_key(str(d), PromptFormat(), sets, EvalConfig(), None)
    assert k == cache_key(str(d), PromptFormat(), sets, EvalConfig(), None)
    assert k != cache_key(str(d), PromptFormat(template="Q: {question}\nA:"), sets, EvalConfig(), None)
    assert k != cache_key(str(d), PromptFormat(), sets, EvalConfig(suite="basic"), None)
    assert k != cache_key(str(d), PromptFormat(), {"forget": [{"question": "q", "answer": "b"}]}, EvalConfig(), None)
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + bytes([w.read_bytes()[-1] ^ 1]))  # one bit of the weights
    assert k != cache_key(str(d), PromptFormat(), sets, EvalConfig(), None)


def test_bf16_precision_loads_the_weights_in_bf16_and_a_real_model_prints_its_cost(tiny_target_dir, tmp_path, capsys,
                                                                                    monkeypatch):  # fmt: skip
    """``precision=bf16`` trains bf16 weights (open-unlearning loads with torch_dtype bfloat16); the saved model
    keeps them. A model directory is a real model: its expected cost is printed before it starts."""
    from safetensors import safe_open

    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path / "home"))
    rc = main(_cmd(tiny_target_dir, tmp_path / "runs", "--holdout", str(tiny_target_dir / "holdout.jsonl"),
                   "--set", "precision=bf16", "--set", "epochs=1", "--suite", "basic", "--save-model"))  # fmt: skip
    out = capsys.readouterr().out
    assert rc == 0
    assert "expected cost:" in out and "parameters" in out and "GFLOP/s measured" in out
    (st,) = (tmp_path / "runs").rglob("model/model.safetensors")
    with safe_open(st, "pt") as f:
        assert {str(f.get_tensor(k).dtype) for k in f.keys()} == {"torch.bfloat16"}
    cfg = json.loads((st.parent.parent / "config.json").read_text())["resolved"]
    assert cfg["benchmark"] == "tinyfacts"  # a directory: the default benchmark
    assert cfg["eval_config"]["weights"] == "bf16"
    # the fixed models of the comparison (here the target) are evaluated in bf16 too
    import torch

    from unlearn import runner

    seen, real = [], runner.load_causal_lm
    monkeypatch.setattr(runner, "load_causal_lm", lambda p, dtype=None, **k: seen.append(dtype) or real(p, dtype, **k))
    cols = runner.compare_table(st.parent.parent)
    assert seen == [torch.bfloat16] and set(cols) == {"target", "ga"}

"""Sharded evaluation: two processes (accelerate + gloo on CPU) give the one-process metrics to 1e-5 relative."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("_eval_mp.py")


def _free_port() -> int:
    with socket.socket() as s:  # other test sessions on the machine may hold accelerate's default 29500
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mp_sets():
    spec = importlib.util.spec_from_file_location("_eval_mp", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.mp_sets


@pytest.mark.slow
def test_two_processes_equal_one(micro_target, tmp_path):
    from unlearn.data.benchmarks import DataFiles, load_sets
    from unlearn.evaluate import EvalConfig, evaluate
    from unlearn.targets.llm import load_causal_lm
    from unlearn.targets.resolve import load_target

    out = tmp_path / "mp.json"
    launcher = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [
        str(launcher),
        "launch",
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
        str(SCRIPT),
        str(out),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # meanwhile, the one-process reference in this process
    tgt = load_target("tiny-micro", "tinyfacts", "forget10", log=lambda *a: None)
    sets = _mp_sets()(load_sets("tinyfacts", "forget10", DataFiles(), tgt.build_cfg.data)[0])
    cfg = EvalConfig(suite="full", batch_size=4)
    om, oe = evaluate(load_causal_lm(tgt.oracle_dir), tgt.tokenizer, tgt.fmt, sets, cfg)
    m1, ex1 = evaluate(tgt.model, tgt.tokenizer, tgt.fmt, sets, cfg, oracle={"metrics": om, "examples": oe})
    log, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, log[-3000:]
    res = json.loads(out.read_text())
    assert res["world_size"] == 2 and res["shards"] == 2  # not silently one process
    m2 = res["metrics"]
    assert set(m2) == set(m1)
    assert "forget_quality" in m1 and "privleak" in m1 and "real_authors_acc" in m1
    for k, v in m1.items():
        assert m2[k] == pytest.approx(v, rel=1e-5, abs=1e-8), k
    for k, v in om.items():
        assert res["oracle_metrics"][k] == pytest.approx(v, rel=1e-5, abs=1e-8), k
    # per-example rows come back complete and in the original order
    assert [(e["set"], e["index"]) for e in res["examples"]] == [(e["set"], e["index"]) for e in ex1]
    assert [e.get("generation") for e in res["examples"]] == [e.get("generation") for e in ex1]

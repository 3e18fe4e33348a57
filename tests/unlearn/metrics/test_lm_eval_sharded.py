"""Sharded lm-eval: two processes (accelerate + gloo on CPU) split the requests of the built-in TinyFacts tasks
about in half and every process returns exactly the one-process results."""

import importlib.util
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("_lm_eval_mp.py")


def _free_port() -> int:
    with socket.socket() as s:  # other test sessions on the machine may hold accelerate's default 29500
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _script():
    spec = importlib.util.spec_from_file_location("_lm_eval_mp", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow
def test_two_processes_split_the_requests_and_equal_one(micro_target, tmp_path):
    from unlearn.data.benchmarks import DataFiles, load_sets
    from unlearn.metrics.lm_eval import run_lm_eval
    from unlearn.targets.resolve import load_target

    mp = _script()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port",
           str(_free_port()), str(SCRIPT), str(tmp_path)]  # fmt: skip
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:  # meanwhile, the one-process reference in this process
        tgt = load_target("tiny-micro", "tinyfacts", "forget10", log=lambda *a: None)
        sets = mp.mp_sets(load_sets("tinyfacts", "forget10", DataFiles(), tgt.build_cfg.data)[0])
        one: dict = {}
        m1 = run_lm_eval(mp.perturbed(tgt.model), tgt.tokenizer, mp.TASKS, sets=sets, batch_size=mp.BATCH, record=one)
        log, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, log[-3000:]
    assert one["world_size"] == 1 and set(m1) == {f"lm_eval_{t}_{k}" for t in mp.TASKS for k in ("acc", "acc_norm")}
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert 0 < min(m1.values()) and sum(0 < v < 1 for v in m1.values()) >= 4  # informative numbers
    # every choice of every document: 7 + 8 + 48 + 7 documents of 5 choices
    assert one["requests_per_rank"] == [350]
    for res in ranks:
        assert res["group_size"] == 2 and res["record"]["world_size"] == 2  # not silently one process
        # each process scored its own half: 4 + 4 + 24 + 4 documents on rank 0, 3 + 4 + 24 + 3 on rank 1, which
        # lm-eval pads with 5 + 5 repeated requests to run as many as rank 0
        assert res["record"]["requests_per_rank"] == [180, 180]
        assert res["metrics"] == m1  # every process, every metric: exactly the one-process numbers

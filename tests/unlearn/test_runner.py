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


def test_cached_evaluation_recomputes_when_any_key_part_changes(tiny_target_dir, tmp_path, monkeypatch):
    """`cached_evaluate` reuses a result only for the same weights, tokenizer, prompt format, data, evaluation
    config, code version and oracle; changing any one of them evaluates again (counted by the loads)."""
    import shutil

    import unlearn.evaluate as ev
    from unlearn.evaluate import EvalConfig, cached_evaluate
    from unlearn.targets.llm import PromptFormat, load_causal_lm, load_tokenizer

    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path / "home"))
    d = tmp_path / "m"
    shutil.copytree(tiny_target_dir / "model", d)
    tok = load_tokenizer(str(d))
    sets = {"forget": json.loads("[" + (tiny_target_dir / "forget.jsonl").read_text().splitlines()[0] + "]")}
    loads = []

    def run(tok=tok, fmt=PromptFormat(), sets=sets, cfg=EvalConfig(suite="basic"), oracle=None):
        before = len(loads)
        res = cached_evaluate(str(d), lambda: loads.append(1) or load_causal_lm(str(d)), tok, fmt, sets, cfg, oracle)
        return res, len(loads) > before

    first, computed = run()
    assert computed and (tmp_path / "home" / "evals" / f"{first['key']}.json").exists()
    assert run() == (first, False)  # unchanged: reused
    other_tok = load_tokenizer(str(d))
    other_tok.add_tokens(["<zq>"])
    changed = {
        "tokenizer": run(tok=other_tok),
        "prompt format": run(fmt=PromptFormat(template="Q: {question}\nA:")),
        "data": run(sets={"forget": [{**sets["forget"][0], "answer": "something else"}]}),
        "evaluation config": run(cfg=EvalConfig(suite="basic", max_new_tokens=8)),
        "oracle": run(oracle={"key": "another-oracle", "metrics": {}, "examples": []}),
    }
    monkeypatch.setattr(ev, "_code_version", lambda: "another-version")
    changed["code version"] = run()
    monkeypatch.undo()
    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path / "home"))
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[:-1] + bytes([w.read_bytes()[-1] ^ 1]))  # one bit of the weights
    changed["weights"] = run()
    assert {k: c for k, (_, c) in changed.items()} == {k: True for k in changed}
    assert len({r["key"] for r, _ in changed.values()} | {first["key"]}) == len(changed) + 1
    assert run() == (changed["weights"][0], False)  # the new weights' result is reused in turn
    assert run(oracle={"key": None, "metrics": {}, "examples": []})[0]["key"] is None  # unidentified: not cached


def test_a_hub_snapshot_is_identified_by_its_files_not_its_id(tiny_target_dir, tmp_path, monkeypatch):
    """A hub id's cache key comes from its cached snapshot (blob names of linked files, content otherwise): a new
    revision of the same id is a new key, and an id that is not cached has none (loaded first, never reused)."""
    import hashlib

    import huggingface_hub.constants as hc

    from tests.conftest import _hub_snapshot
    from unlearn.workflow import weights_ident

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))  # read when called (the env var: at import)
    snap = _hub_snapshot(tmp_path / "hub", "org/tiny")
    snap.mkdir(parents=True)
    blobs = snap.parents[1] / "blobs"
    blobs.mkdir()
    for f in (tiny_target_dir / "model").iterdir():  # the layout huggingface_hub downloads: links into blobs/
        blob = blobs / hashlib.sha256(f.read_bytes()).hexdigest()
        blob.write_bytes(f.read_bytes())
        (snap / f.name).symlink_to(os.path.relpath(blob, snap))
    a = weights_ident("org/tiny")
    assert a is not None and a == weights_ident("org/tiny")
    (snap / "model.safetensors").unlink()  # a new revision: other weights under the same file name
    (blobs / "new").write_bytes(b"other weights")
    (snap / "model.safetensors").symlink_to(os.path.relpath(blobs / "new", snap))
    assert weights_ident("org/tiny") not in (a, None)
    assert weights_ident("org/not-cached") is None and weights_ident(str(tmp_path / "nowhere" / "x")) is None


def test_run_label_files_variants_apart_and_presets_as_defaults(monkeypatch):
    """The method folder: the embedded presets (lr 3e-4, NPO beta 1) and run knobs count as defaults; a changed
    setting appends a stable 4-hex hash of the changes (1e-4 and 0.0001 are one value); --name TAG appends +TAG;
    a method's own run label comes first and the settings it shows (label_keys) make no hash."""
    import dataclasses
    import re

    import pytest

    from unlearn.errors import UnlearnError
    from unlearn.methods import METHODS, get_method
    from unlearn.runner import RunArgs, run_label

    def label(embedded=True, **kw):
        return run_label(RunArgs(method=kw.pop("method", "npo"), **kw), embedded)

    assert label()[0] == "npo"
    presets = [("lr", "3e-4"), ("beta", "1.0"), ("eval_every", "3"), ("checkpoint_every", "2")]
    assert label(overrides=presets)[0] == "npo"
    lr, info = label(overrides=[("lr", "1e-4")])
    assert re.fullmatch(r"npo\+[0-9a-f]{4}", lr) and info["changed"] == {"train.lr": 1e-4}
    assert label(overrides=[("lr", "0.0001")])[0] == lr  # stable: the value, not its spelling
    both = label(overrides=[("lr", "1e-4"), ("beta", "0.5")])[0]
    assert both != lr and both == label(overrides=[("beta", "0.5"), ("lr", "1e-4")])[0]  # order-free
    assert label(name="lr1e-4", overrides=[("lr", "1e-4")])[0] == "npo+lr1e-4"
    assert label(embedded=False, overrides=[("lr", "1e-5")])[0] == "npo"  # real models: 1e-5 is the default
    with pytest.raises(UnlearnError, match="--name 'a/b'"):
        label(name="a/b")
    spec = get_method("npo")  # a method whose label shows beta (as dp2's shows its unit and epsilon)
    monkeypatch.setitem(METHODS, ("llm", "npo"), dataclasses.replace(
        spec, run_label=lambda cfg: f"npo-b{cfg.beta:g}", label_keys=("beta",)))  # fmt: skip
    assert label()[0] == "npo-b1"
    assert label(overrides=[("beta", "0.5")])[0] == "npo-b0.5"
    assert re.fullmatch(r"npo-b0\.5\+[0-9a-f]{4}", label(overrides=[("beta", "0.5"), ("lr", "1e-4")])[0])
    assert label(name="try2", overrides=[("beta", "0.5")])[0] == "npo-b0.5+try2"


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
    assert seen == [torch.bfloat16] and sorted(cols)[0].startswith("ga+") and "target" in cols  # a variant

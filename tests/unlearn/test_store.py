import json
import math
import os

import pytest

from unlearn.store import (
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    is_finished,
    read_jsonl,
    run_dir,
    safe_name,
)


def test_safe_name_and_run_dir(tmp_path):
    assert safe_name("meta-llama/Llama-3.2-1B") == "meta-llama--Llama-3.2-1B"
    assert safe_name("a b:c") == "a_b_c"
    d = run_dir(tmp_path, "tinyfacts", "org/model", "npo", "forget10", 3)
    assert d == tmp_path / "tinyfacts" / "org--model" / "npo" / "forget10" / "seed3"


def test_atomic_write_leaves_no_temp_and_keeps_old_on_failure(tmp_path, monkeypatch):
    p = tmp_path / "m.json"
    atomic_write_json(p, {"a": 1.0, "nan": float("nan")})
    assert json.loads(p.read_text()) == {"a": 1.0, "nan": None}  # NaN is not valid JSON: written as null
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new")
    assert json.loads(p.read_text())["a"] == 1.0  # the old file survives a failed write
    assert [f.name for f in tmp_path.iterdir()] == ["m.json"]


def test_jsonl_tolerates_torn_last_line(tmp_path):
    p = tmp_path / "t.jsonl"
    append_jsonl(p, {"step": 1})
    append_jsonl(p, {"step": 2, "loss": math.inf})
    with open(p, "a") as f:
        f.write('{"step": 3, "lo')
    assert [r["step"] for r in read_jsonl(p, tolerant=True)] == [1, 2]
    with pytest.raises(json.JSONDecodeError):
        read_jsonl(p)


def test_is_finished(tmp_path):
    assert not is_finished(tmp_path)
    atomic_write_json(tmp_path / "metrics.json", {})
    assert is_finished(tmp_path)

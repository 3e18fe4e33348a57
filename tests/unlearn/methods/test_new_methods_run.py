"""`unlearn run --method rmu|idknll|idkdpo|undial --model tiny` with the embedded presets lowers forget accuracy
below the target's (1.0 on forget01) and keeps the retain set, through the same runner as every method."""

import pytest

from unlearn.runner import RunArgs, run
from unlearn.store import read_json


@pytest.mark.slow
@pytest.mark.parametrize("method", ["rmu", "idknll", "idkdpo", "undial"])
def test_embedded_preset_forgets(method, unlearn_home, tmp_path):
    rdir = run(RunArgs(method=method, split="forget01", out=str(tmp_path), suite="basic", progress=False),
               log=lambda *a: None)  # fmt: skip
    m = read_json(rdir / "metrics.json")
    assert m["forget_acc"] < 0.9, m["forget_acc"]  # the target answers all 16 forget01 questions
    assert m["retain_acc"] > 0.8, m["retain_acc"]

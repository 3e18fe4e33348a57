"""Metric conventions of the suite's per-example token metrics (unlearn.evaluate.token_metrics).

``--compat open-unlearning`` is pinned to committed fixtures computed with open-unlearning's formulas
(tests/assets/open_unlearning/make_fixtures.py); the default follows each metric's definition over the answer's own
tokens, checked on hand-worked hits."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from unlearn.evaluate import eval_config, token_metrics
from unlearn.metrics import mia

ASSETS = Path(__file__).resolve().parents[1] / "assets"
FIXTURES = json.loads((ASSETS / "open_unlearning" / "fixtures.json").read_text())


def _scored(ex: dict) -> dict:
    """What score_answers records for one example: answer-position logits -> per-token stats (EOS last)."""
    logits, ids, labels = torch.tensor(ex["logits"]), torch.tensor(ex["input_ids"]), torch.tensor(ex["labels"])
    pos = torch.nonzero(labels != -100).squeeze(1)  # labelled positions, predicted by the row before each
    rows, targets = logits[pos - 1], ids[pos]
    tl, mu, sigma = mia.min_k_stats_from_logits(rows, targets)
    return {"answer": ex["answer"], "logp": float(tl.sum()), "n": len(pos), "token_logp": tl.tolist(),
            "mu": mu.tolist(), "sigma": sigma.tolist(), "hits": (rows.argmax(-1) == targets).int().tolist(),
            "eos": int(labels[-1]) == FIXTURES["eos"]}  # fmt: skip


@pytest.mark.parametrize("i", range(len(FIXTURES["examples"])))
def test_compat_reproduces_open_unlearning_per_example_values(i):
    ex = FIXTURES["examples"][i]
    got, want = token_metrics(_scored(ex), FIXTURES["k"], "open-unlearning"), ex["expected"]
    assert got["exact_memorization"] == pytest.approx(want["exact_memorization"], abs=1e-12)
    assert got["extraction_strength"] == pytest.approx(want["extraction_strength"], abs=1e-12)
    # open-unlearning's MIA scores are losses (higher = less member-like): ours are their negation
    for k in ("mia_loss", "mia_zlib", "mia_min_k", "mia_min_k_plus_plus"):
        assert got[k] == pytest.approx(-want[k], rel=1e-5, abs=1e-6), k


def test_default_follows_the_definitions_where_compat_differs():
    """Fixture 4: the answer's last token is mispredicted, so no suffix matches: ES = 0 by the definition, 1/|y| with
    open-unlearning's k cap; fixture 3: a one-token answer mispredicted: 0 vs open-unlearning's 1."""
    for i, (default_es, ou_es) in ((4, (0.0, 1 / 3)), (3, (0.0, 1.0)), (2, (0.2, 0.2)), (0, (1.0, 1.0))):
        r = _scored(FIXTURES["examples"][i])
        assert token_metrics(r, 0.4)["extraction_strength"] == pytest.approx(default_es)
        assert token_metrics(r, 0.4, "open-unlearning")["extraction_strength"] == pytest.approx(ou_es)


def test_default_excludes_eos_and_scores_the_answer_text():
    # two answer tokens (hit, miss) and the EOS (hit); token log-probs -1, -3, -0.1
    r = {"answer": "Paris.", "logp": -4.1, "n": 3, "token_logp": [-1.0, -3.0, -0.1], "mu": [-2.0, -2.0, -0.5],
         "sigma": [1.0, 2.0, 0.5], "hits": [1, 0, 1], "eos": True}  # fmt: skip
    m = token_metrics(r, 0.5)
    assert m["exact_memorization"] == 0.5  # 1 of the 2 answer tokens (2/3 if the EOS counted)
    assert m["extraction_strength"] == 0.0  # the last answer token is wrong: k = |y| = 2
    assert m["mia_min_k"] == -3.0  # K = max(1, floor(0.5 * 2)) = 1 lowest of (-1, -3)
    assert m["mia_min_k_plus_plus"] == pytest.approx(-0.5)  # z = (1, -0.5): the lowest
    assert m["mia_loss"] == pytest.approx(-4.1 / 3)  # LOSS keeps every scored token, EOS included
    assert m["mia_zlib"] == pytest.approx(-4.1 / 3 / len(zlib.compress(b"Paris.")))
    ou = token_metrics(r, 0.5, "open-unlearning")
    assert ou["extraction_strength"] == 0.5  # k stops at |y| - 1 = 1
    assert ou["mia_zlib"] == pytest.approx(-4.1 / 3 / len(zlib.compress(b" Paris.")))
    # an answer without the EOS (cut at max_length): nothing is dropped by default
    r2 = {**r, "eos": False}
    assert token_metrics(r2, 0.5)["exact_memorization"] == pytest.approx(2 / 3)
    assert np.isclose(token_metrics(r2, 0.5)["extraction_strength"], 1 / 3)


def test_presets_and_compat_names():
    assert (eval_config("tofu").max_new_tokens, eval_config("tofu").batch_size) == (200, 32)
    assert eval_config("tinyfacts").max_new_tokens == 32  # the embedded target keeps its short cap
    assert eval_config("tofu", compat="open-unlearning").compat == "open-unlearning"
    from unlearn.errors import UnlearnError

    with pytest.raises(UnlearnError, match="--compat"):
        eval_config("tofu", compat="muse")

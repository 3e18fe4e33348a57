"""DP2Unlearning: the step is the token-mean retain NLL and never reads the forget batch; the run starts from the DP
base, takes half the oracle's steps, files itself under its unit and epsilon and records the accountant's figures."""

from __future__ import annotations

import json
import math

import pytest
import torch

from unlearn.cli import main
from unlearn.errors import UnlearnError
from unlearn.methods import get_method
from unlearn.methods.dp2 import DP2Config, run_label, start_from


class Ctx:
    norm = {"forget_seqs": 6.0, "forget_tokens": 15.0, "retain_seqs": 6.0, "retain_tokens": 21.0}

    def __init__(self):
        self.seen = []
        self.out = {"seq_logp": torch.tensor([-1.5, -5.5], requires_grad=True), "n_tokens": torch.tensor([2, 5])}

    def policy(self, *batches, full_logits=False):
        self.seen.append(batches)
        return self.out


def test_step_is_the_token_mean_retain_nll_over_the_global_step():
    """L = -(-1.5 - 5.5) / 21 = 1/3 (by the 2 local sequences it would be 3.5, by the 7 local tokens 1.0)."""
    spec = get_method("dp2")
    assert spec.budget == "retain" and not spec.needs_reference(DP2Config())
    ctx, retain = Ctx(), {"input_ids": torch.ones(2, 3, dtype=torch.long)}
    loss, logs = spec.step(ctx, {"retain": retain}, DP2Config())  # no "forget" key: reading it would raise
    assert math.isclose(loss.item(), 1 / 3, rel_tol=1e-6)
    loss.backward()
    assert torch.allclose(ctx.out["seq_logp"].grad, torch.full((2,), -1 / 21))
    assert len(ctx.seen) == 1 and ctx.seen[0][0] is retain
    assert math.isclose(float(logs["retain_logp"]), -7 / 21, rel_tol=1e-6)


def test_run_labels_keep_bases_apart():
    assert run_label(DP2Config(epsilon=1.0, privacy_unit="entity")) == "dp2+entity-eps1"
    assert run_label(DP2Config(epsilon=0.5, privacy_unit="record")) == "dp2+record-eps0.5"
    assert run_label(DP2Config(epsilon=math.inf, privacy_unit="record")) == "dp2+epsinf"


def test_epochs_default_to_half_the_oracle_steps_on_the_retained_data(tmp_path, monkeypatch):
    from unlearn.config import TrainConfig
    from unlearn.data.tinyfacts import generate, training_set
    from unlearn.targets.build import get_preset

    (tmp_path / "card.json").write_text(json.dumps({"steps": 521}))
    calls = []

    def fake_build(bcfg, dcfg, tok, progress=True, log=print):
        calls.append(dcfg)
        return tmp_path

    monkeypatch.setattr("unlearn.targets.dp_build.build_dp_base", fake_build)
    bcfg = get_preset("micro")
    splits = generate(bcfg.data)
    n = len(training_set(splits, "forget10", bcfg.arithmetic_repeat, bcfg.world_repeat))
    ctx = {"build": bcfg, "split": "forget10", "target": "t", "oracle": str(tmp_path), "user_keys": set(),
           "log": print}  # fmt: skip
    for batch in (32, 7, 5):
        tcfg = TrainConfig(batch_size=batch)
        d, info = start_from(DP2Config(), tcfg, ctx)
        assert d == str(tmp_path) and info["retrain_steps"] == 521
        assert math.ceil(tcfg.epochs * math.ceil(n / batch)) == 260  # round(0.5 * 521): the loop's total_steps
    # the retained data is the oracle's training set: no record of a forget entity, every retained kind present
    forget = {r["entity"] for r in splits["forget10"]}
    assert len(info["retain"]) == n
    assert not {r.get("entity") for r in info["retain"]} & forget
    assert not any(
        r["question"] in {q["question"] for q in splits["forget10"]} for r in info["retain"] if "question" in r
    )
    assert any("text" in r for r in info["retain"]) and any(r in info["retain"] for r in
               [{"question": w["question"], "answer": w["answer"]} for w in splits["world_facts"]])  # fmt: skip
    tcfg = TrainConfig(epochs=3)
    start_from(DP2Config(), tcfg, {**ctx, "user_keys": {"epochs"}})
    assert tcfg.epochs == 3  # a user's epochs win
    assert calls[0].steps == 40 and calls[0].delta == 1e-5  # the micro build's DP recipe
    with pytest.raises(UnlearnError, match="embedded TinyFacts"):
        start_from(DP2Config(), TrainConfig(), {**ctx, "build": None})


@pytest.mark.slow
def test_dp2_run_end_to_end(micro_target, tmp_path, capsys):
    """The full suite (internal evaluators included: their probe split reads the retain QA, not the retained data)."""
    rc = main(["run", "--method", "dp2", "--model", "tiny-micro", "--out", str(tmp_path), "--no-progress",
               "--set", "epsilon=2", "--set", "privacy_unit=entity"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    rdir = tmp_path / "tinyfacts" / "tiny-micro" / "dp2+entity-eps2" / "forget10" / "seed0"
    m = json.loads((rdir / "metrics.json").read_text())
    oracle = json.loads((micro_target / "oracle_forget10" / "card.json").read_text())
    assert m["cost_steps"] == round(0.5 * oracle["steps"]) and m["retrain_cost_steps"] == oracle["steps"]
    assert 1.9 < m["dp_epsilon"] <= 2.0 and m["dp_privacy_unit"] == "entity" and m["dp_delta"] == 1e-5
    from unlearn.targets.dp_build import dp_epsilon

    assert m["dp_epsilon"] == dp_epsilon(m["dp_noise_multiplier"], m["dp_sampling_rate"], m["dp_steps"], 1e-5)
    cfg = json.loads((rdir / "config.json").read_text())
    assert "tinyfacts-dp" in cfg["provenance"]["start_path"]
    # the fine-tune learns the retain set back from a DP base that barely knows it
    assert m["retain_acc"] > m["dp_base_retain_acc"] + 0.3, (m["retain_acc"], m["dp_base_retain_acc"])


@pytest.mark.parametrize(
    "args, words",
    [
        (["build", "tinyfacts-dp", "--preset", "micro", "--epsilon", "0"], "epsilon must be > 0"),
        (["build", "tinyfacts-dp", "--preset", "micro", "--epsilon", "one"], "epsilon must be a number or inf"),
        (["build", "tinyfacts-dp", "--preset", "micro", "--privacy-unit", "author"], "unknown privacy unit 'author'"),
        (["run", "--method", "dp2", "--set", "epsilon=-1"], "--set epsilon=-1: must be > 0"),
        (["run", "--method", "dp2", "--set", "privacy_unit=author"], "privacy_unit"),
    ],
)
def test_bad_input_is_one_line_exit_2(args, words, capsys, micro_target, tmp_path):
    rc = main([*args, "--out", str(tmp_path)] if args[0] == "run" else args)
    err = capsys.readouterr().err
    assert rc == 2 and words in err and err.count("\n") == 1, err

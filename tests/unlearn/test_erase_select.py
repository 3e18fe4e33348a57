"""RECE's round selection in the erase workflow (reference train_object.py): the rule by hand, the validation split
(another template than the evaluation grid), and an erase run on the micro pipeline that keeps the selected round's
weights."""

import json

import pytest
import torch

from unlearn.erase import best_round, validation_rows


def r(k, target, other):
    return {"round": k, "val_target_acc": target, "val_other_acc": other}


def test_best_round_by_hand():
    # round 2 has the lowest target accuracy but loses 0.2 of the others': excluded; round 1 kept
    assert best_round([r(0, 0.9, 0.9), r(1, 0.5, 0.85), r(2, 0.2, 0.7), r(3, 0.6, 0.95)]) == 1
    # ties on target: higher other accuracy, then the earlier round
    assert best_round([r(0, 0.9, 0.9), r(1, 0.4, 0.8), r(2, 0.4, 0.9), r(3, 0.4, 0.9)]) == 2
    # no round beats UCE on target accuracy (or all lose too much): the UCE edit is kept
    assert best_round([r(0, 0.5, 0.9), r(1, 0.5, 1.0), r(2, 0.1, 0.79)]) == 0
    assert best_round([r(0, 0.5, 0.9), r(1, 0.1, 0.79)], slack=0.2) == 1


def test_validation_split_is_not_the_evaluation_grid():
    from unlearn.data.tinyshapes import eval_prompts

    grid = {x["prompt"] for x in eval_prompts()}
    rows = validation_rows("circle")
    assert len(rows) == 16 and not grid & {x["prompt"] for x in rows}
    assert {"prompt": "a red circle", "shape": "circle", "colour": "red"} in rows
    rows = validation_rows("black")
    assert len(rows) == 12 and all("colour" not in x for x in rows) and not grid & {x["prompt"] for x in rows}


@pytest.mark.slow
def test_rece_erase_keeps_the_selected_round(tmp_path, monkeypatch):
    """Through the CLI on the micro pipeline: every round carries its validation scores, status.json names the kept
    round, and a saved model's K/V weights are that round's (re-derived by replaying the rounds)."""
    from unlearn.cli import main
    from unlearn.targets.tinyshapes_build import build_tinyshapes

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path / "home"))
    build_tinyshapes("micro", progress=False, log=lambda *_: None)
    argv = ["erase", "--method", "rece", "--model", "tinyshapes-micro", "--concept", "circle", "--out",
            str(tmp_path / "runs"), "--images-per-prompt", "1", "--sample-steps", "2", "--no-progress",
            "--set", "rounds=3", "--save-model"]  # fmt: skip
    assert main(argv) == 0
    rdir = tmp_path / "runs" / "tinyshapes" / "tinyshapes-micro" / "rece" / "circle" / "seed0"
    rounds = [json.loads(x) for x in (rdir / "rounds.jsonl").read_text().splitlines()]
    assert [x["round"] for x in rounds] == [0, 1, 2, 3] and all("val_target_acc" in x for x in rounds)
    keep = json.loads((rdir / "status.json").read_text())["info"]["selected_round"]
    assert keep == best_round(rounds)
    from unlearn.data.tinyshapes import preserve_prompts
    from unlearn.methods.rece import RECEConfig
    from unlearn.methods.rece import apply as rece_apply
    from unlearn.targets.diffusion import kv_weights, load_target
    from unlearn.targets.tinyshapes_build import resolve

    replay = load_target(resolve("tinyshapes-micro"))
    rece_apply(replay, ["circle"], RECEConfig(rounds=keep), preserve_prompts("circle"))
    for a, b in zip(kv_weights(replay.unet), kv_weights(load_target(rdir / "model").unet)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

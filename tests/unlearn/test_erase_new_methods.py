"""End to end through the CLI on the micro TinyShapes pipeline: ESD (both variants, filed apart), All-but-One and
DoCo write finished run directories with every erasure metric and change only the parameters they train; RECE keeps
the round selected on the validation split."""

import json

import pytest
import torch

from unlearn.cli import main
from unlearn.erase import best_round
from unlearn.metrics import check_keys

FAST = ["--images-per-prompt", "1", "--sample-steps", "2", "--no-progress", "--set", "steps=4",
        "--set", "pairs_per_prompt=1", "--save-model"]  # fmt: skip


@pytest.fixture
def home(micro_tinyshapes, monkeypatch):
    monkeypatch.setenv("UNLEARN_HOME", str(micro_tinyshapes[0]))
    return micro_tinyshapes[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "extra", "label", "inside_attn2"),
    [("esd", [], "esd-x", True), ("esd", ["--set", "variant=u"], "esd-u", False),
     ("all_but_one", [], "all_but_one", True), ("doco", ["--set", "warmup_steps=1"], "doco", True)],
)  # fmt: skip
def test_erase_runs_and_moves_only_its_parameters(home, tmp_path, monkeypatch, method, extra, label, inside_attn2):
    from unlearn.targets.diffusion import load_target

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["erase", "--method", method, "--model", str(home), "--concept", "circle", "--out", str(tmp_path), *FAST]
    assert main([*argv, *extra]) == 0
    rdir = next((tmp_path / "tinyshapes").glob(f"*/{label}/circle/seed0"))
    metrics = json.loads((rdir / "metrics.json").read_text())
    assert check_keys(metrics) == [] and metrics["edit_seconds"] > 0
    for k in ("erasure_rate", "in_domain_retention", "cross_domain_retention", "paraphrase_attack_success",
              "adversarial_attack_success", "cka_forget", "cka_retain"):  # fmt: skip
        assert 0 <= metrics[k] <= 1
    trace = [json.loads(x) for x in (rdir / "trace.jsonl").read_text().splitlines()]
    assert [r["step"] for r in trace] == [1, 2, 3, 4]
    before = dict(load_target(home).unet.named_parameters())
    after = dict(load_target(rdir / "model").unet.named_parameters())
    moved = {n for n in after if not torch.equal(after[n], before[n])}
    assert moved and all((".attn2." in n) == inside_attn2 for n in moved), sorted(moved)[:5]


@pytest.mark.slow
def test_rece_erase_keeps_the_selected_round(home, tmp_path, monkeypatch):
    """Through the CLI on the micro pipeline: every round carries its validation scores, status.json names the kept
    round, and a saved model's K/V weights are that round's (re-derived by replaying the rounds)."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    argv = ["erase", "--method", "rece", "--model", str(home), "--concept", "circle", "--out",
            str(tmp_path / "runs"), "--images-per-prompt", "1", "--sample-steps", "2", "--no-progress",
            "--set", "rounds=3", "--save-model"]  # fmt: skip
    assert main(argv) == 0
    rdir = next((tmp_path / "runs" / "tinyshapes").glob("*/rece/circle/seed0"))
    rounds = [json.loads(x) for x in (rdir / "rounds.jsonl").read_text().splitlines()]
    assert [x["round"] for x in rounds] == [0, 1, 2, 3] and all("val_target_acc" in x for x in rounds)
    keep = json.loads((rdir / "status.json").read_text())["info"]["selected_round"]
    assert keep == best_round(rounds)
    from unlearn.data.tinyshapes import preserve_prompts
    from unlearn.methods.rece import RECEConfig
    from unlearn.methods.rece import apply as rece_apply
    from unlearn.targets.diffusion import kv_weights, load_target

    replay = load_target(home)
    rece_apply(replay, ["circle"], RECEConfig(rounds=keep), preserve_prompts("circle"))
    for a, b in zip(kv_weights(replay.unet), kv_weights(load_target(rdir / "model").unet)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

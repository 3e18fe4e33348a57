"""End to end: build the micro TinyShapes pipeline, erase a concept through the CLI, check the run dir."""

import json

import pytest
import torch

from unlearn.cli import main


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    home = tmp_path_factory.mktemp("unlearn_home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("UNLEARN_HOME", str(home))
        from unlearn.targets.tinyshapes_build import build_tinyshapes

        path = build_tinyshapes("micro", progress=False, log=lambda *_: None)
        yield home, path


@pytest.fixture
def env(home, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNLEARN_HOME", str(home[0]))
    return home[1]


FAST = ["--images-per-prompt", "1", "--sample-steps", "2", "--no-progress"]


def test_micro_build_is_a_diffusers_pipeline(env):
    meta = json.loads((env / "tinyshapes.json").read_text())
    assert meta["preset"] == "micro" and 0 <= meta["quality"]["shape_acc"] <= 1
    for sub in ("unet", "text_encoder", "tokenizer", "scheduler", "classifier"):
        assert (env / sub).is_dir()
    assert not list(env.rglob("*.bin")) and not list(env.rglob("*.pt"))  # safetensors only
    from unlearn.targets.tinyshapes_build import build_tinyshapes

    assert build_tinyshapes("micro", progress=False, log=lambda *_: None) == env  # cached: no rebuild


def test_erase_rece_writes_run_dir(env, tmp_path, capsys):
    rc = main(["erase", "--method", "rece", "--model", "tinyshapes-micro", "--concept", "circle",
               "--out", str(tmp_path), "--set", "rounds=2", *FAST])  # fmt: skip
    assert rc == 0
    rdir = tmp_path / "tinyshapes" / "tinyshapes-micro" / "rece" / "circle" / "seed0"
    metrics = json.loads((rdir / "metrics.json").read_text())
    assert metrics["schema_version"] == 1
    for k in (
        "erasure_rate",
        "in_domain_retention",
        "cross_domain_retention",
        "paraphrase_attack_success",
        "adversarial_attack_success",
        "cka_forget",
        "edit_seconds",
    ):
        assert k in metrics
    assert 0 < metrics["cka_forget"] <= 1 and metrics["edit_seconds"] > 0
    rounds = [json.loads(x) for x in (rdir / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [0, 1, 2]
    ex = [json.loads(x) for x in (rdir / "examples.jsonl").read_text().splitlines()]
    assert {e["set"] for e in ex} == {"eval", "paraphrase", "adversarial"} and len(ex) == 48 + 24 + 12
    assert (rdir / "grid.png").stat().st_size > 0
    cfg = json.loads((rdir / "config.json").read_text())
    assert cfg["method_config"]["rounds"] == 2
    # finished runs are not redone
    assert main(["erase", "--method", "rece", "--model", "tinyshapes-micro", "--out", str(tmp_path), *FAST]) == 0
    assert "already finished" in capsys.readouterr().out


def test_erase_uce_from_phrases(env, tmp_path):
    argv = ["erase", "--method", "uce", "--erase-set", "phrases", "--model", "tinyshapes-micro", "--concept", "red"]
    assert main([*argv, "--out", str(tmp_path), *FAST]) == 0
    rdir = tmp_path / "tinyshapes" / "tinyshapes-micro" / "uce-phrases" / "red" / "seed0"
    cfg = json.loads((rdir / "config.json").read_text())
    assert cfg["erase"]["erase_set"] == "phrases" and (rdir / "metrics.json").exists()


def test_erase_ga_changes_only_cross_attention(env, tmp_path):
    from unlearn.erase import EraseConfig, apply_method, method_config
    from unlearn.targets.diffusion import load_target

    t = load_target("tinyshapes-micro")
    before = {n: p.clone() for n, p in t.unet.named_parameters()}
    cfg = EraseConfig(model="tinyshapes-micro", method="ga", sample_steps=2, progress=False)
    info = apply_method(t, "ga", method_config("ga", {"steps": "3"}), "circle", cfg)
    assert len(info["trace"]) == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in info["trace"])
    changed = {n for n, p in t.unet.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all(".attn2.to_k." in n or ".attn2.to_v." in n for n in changed)


@pytest.mark.parametrize(
    "args, msg",
    [
        (["--method", "esd"], "unknown erase method 'esd'; valid: ga, none, npo, rece, uce"),
        (["--concept", "hexagon"], "unknown TinyShapes concept 'hexagon'"),
        (["--set", "nope=1"], "unknown rece option 'nope'"),
        (["--model", "/does/not/exist"], "neither an embedded target"),
    ],
)
def test_bad_input_is_one_line_exit_2(env, tmp_path, capsys, args, msg):
    argv = ["erase", "--model", "tinyshapes-micro", "--out", str(tmp_path), *FAST]
    assert main(argv + args) == 2
    err = capsys.readouterr().err
    assert msg in err and len(err.strip().splitlines()) == 1


def test_wrong_architecture_checkpoint(env, tmp_path, capsys):
    import shutil

    bad = tmp_path / "bad"
    shutil.copytree(env, bad)
    cfg = json.loads((bad / "unet" / "config.json").read_text())
    cfg["block_out_channels"] = [24, 48]  # weights no longer fit the declared architecture
    (bad / "unet" / "config.json").write_text(json.dumps(cfg))
    assert main(["erase", "--model", str(bad), "--out", str(tmp_path), *FAST]) == 2
    assert "cannot load the UNet" in capsys.readouterr().err
    shutil.rmtree(bad / "scheduler")
    assert main(["erase", "--model", str(bad), "--out", str(tmp_path), *FAST]) == 2
    assert "missing scheduler/" in capsys.readouterr().err

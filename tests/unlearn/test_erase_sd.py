"""The Stable Diffusion path end to end, offline: ``unlearn erase`` and ``unlearn eval`` on a tiny random SD-shaped
pipeline and a tiny random CLIP saved under real hub ids in a fabricated Hugging Face cache (tests/conftest.py,
`build_sd_hub`). Random weights: this checks the mechanics (hub resolution, the UNet edit, sampling through the VAE,
the CLIP judge, FID, the run lifecycle), not erasure quality."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from unlearn.cli import main

SD, CLIP = "CompVis/stable-diffusion-v1-4", "openai/clip-vit-base-patch32"
FAST = ["--sample-steps", "2", "--images-per-prompt", "1", "--no-progress"]
SMALL_CSV = """prompt,concept,set,domain
a photo of a church,church,forget,object
a church in a village,church,forget,object
a chapel with a steeple,church,paraphrase,object
a photo of a golf ball,golf ball,forget,object
a golf ball on a tee,golf ball,retain,object
a beach at sunset,beach,retain,scene
a sandy beach,beach,retain,scene
"""
RATES = ("erasure_rate", "concept_rate", "in_domain_retention", "cross_domain_retention",
         "paraphrase_attack_success", "adversarial_attack_success")  # fmt: skip


def _cli(args: list[str], hf_home: Path, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "MKL_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}  # fmt: skip
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "unlearn", *args], env=env, cwd=cwd, capture_output=True, text=True,
                          timeout=600)  # fmt: skip


def _read(p: Path) -> dict:
    return json.loads(p.read_text())


def _check_ranges(m: dict) -> None:
    for k in RATES:
        assert 0.0 <= m[k] <= 1.0, k
    assert m["erasure_rate"] == pytest.approx(1 - m["concept_rate"])
    assert 0.0 <= m["clip_score"] <= 100.0 and 0.0 <= m["clip_score_forget"] <= 100.0


@pytest.fixture(scope="module")
def erased(sd_hub, tmp_path_factory):
    """``unlearn erase --method uce`` on the cached SD id with the default prompt set, the model kept."""
    root = tmp_path_factory.mktemp("sd_runs")
    res = _cli(["erase", "--method", "uce", "--model", SD, "--concept", "church", "--judge", CLIP, "--out", "runs",
                "--save-model", *FAST], sd_hub, root)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    return root, root / "runs" / "sd" / "CompVis--stable-diffusion-v1-4" / "uce" / "church" / "seed0", res


def test_erase_on_cached_sd_id(erased, sd_hub):
    from safetensors.torch import load_file

    _, rdir, res = erased
    m = _read(rdir / "metrics.json")
    _check_ranges(m)
    assert "fid" not in m and m["edit_seconds"] > 0
    assert [ln for ln in res.stdout.splitlines() if ln.startswith("fid")] == [
        "fid: omitted (no --fid-weights: FID Inception-v3 weights, safetensors or a weights-only state dict)"
    ]  # one line, and no fid row in the printed metrics
    ex = [json.loads(ln) for ln in (rdir / "examples.jsonl").read_text().splitlines()]  # the metrics' source
    from unlearn.metrics.clip_judge import judge_metrics

    assert judge_metrics(ex, "church", "object") == {k: m[k] for k in judge_metrics(ex, "church", "object")}
    # default set for church, 1 image per prompt: 3 forget, 2 paraphrase, 9 x 3 other objects + 5 x 2 scenes
    assert [sum(e["set"] == s for e in ex) for s in ("forget", "paraphrase", "retain", "adversarial")] == [3, 2, 37, 3]
    cfg = _read(rdir / "config.json")["resolved"]
    assert cfg["target_kind"] == "sd" and cfg["judge"] == CLIP and cfg["prompts"].endswith("objects.csv")
    assert _read(rdir / "status.json")["state"] == "finished" and (rdir / "grid.png").stat().st_size > 0
    # UCE edited exactly the cross-attention K/V projections of the SD UNet, nothing else
    snap = next((sd_hub / "hub" / "models--CompVis--stable-diffusion-v1-4" / "snapshots").iterdir())
    before = load_file(snap / "unet" / "diffusion_pytorch_model.safetensors")
    after = load_file(rdir / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    kv = {k for k in before if ".attn2.to_k." in k or ".attn2.to_v." in k}
    assert changed == kv and len(kv) == 8  # 4 attn2 blocks x (to_k, to_v)
    assert _read(rdir / "model" / "unlearn_erased.json")["erased"]["original"] == SD


def test_eval_of_erased_model_with_fid(erased, sd_hub, tmp_path):
    from safetensors.torch import save_file

    from unlearn.metrics.fid import inception_fid

    root, rdir, _ = erased
    torch.manual_seed(0)
    net = inception_fid()
    for mod in net.modules():  # variance-preserving random weights: features that differ between images
        if isinstance(mod, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(mod.weight, nonlinearity="relu")
    save_file(net.state_dict(), str(tmp_path / "inception.safetensors"))
    (tmp_path / "p.csv").write_text(SMALL_CSV)
    out = tmp_path / "ev"
    res = _cli(["eval", "--model", str(rdir / "model"), "--concept", "church", "--prompts", str(tmp_path / "p.csv"),
                "--judge", CLIP, "--fid-weights", str(tmp_path / "inception.safetensors"), "--out", str(out), *FAST],
               sd_hub, root)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    m = _read(out / "metrics.json")
    _check_ranges(m)
    assert math.isfinite(m["fid"]) and m["fid"] > 1e-3  # the edit moved the retain images
    assert _read(out / "config.json")["resolved"]["original"] == SD  # found in unlearn_erased.json
    ex = [json.loads(ln) for ln in (out / "examples.jsonl").read_text().splitlines()]
    assert [sum(e["set"] == s for e in ex) for s in ("forget", "paraphrase", "retain", "adversarial")] == [2, 1, 4, 2]


@pytest.fixture
def hub(sd_hub, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(sd_hub / "hub"))
    return sd_hub


def _one_line_error(capsys, argv, msg) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert msg in err and len(err.splitlines()) == 1, err


def test_bad_input_is_one_line_and_loses_nothing(hub, erased, tmp_path, capsys):
    root, rdir, _ = erased
    base = ["--model", SD, "--concept", "church", "--judge", CLIP, *FAST]
    out = ["--out", str(tmp_path / "runs")]
    (tmp_path / "bad.csv").write_text("prompt,concept\na church,church\n")
    _one_line_error(capsys, ["erase", "--method", "uce", *base, *out, "--prompts", str(tmp_path / "x.csv")],
                    "no such file")  # fmt: skip
    _one_line_error(capsys, ["eval", *base, *out, "--prompts", str(tmp_path / "bad.csv")], "missing column(s) set")
    _one_line_error(capsys, ["erase", "--method", "uce", *base, *out, "--concept", "tench", "--prompts",
                             str(tmp_path / "bad.csv")], "missing column(s)")  # fmt: skip
    _one_line_error(capsys, ["erase", "--method", "uce", *base[:4], "--judge", "nobody/clip", *out],
                    "cannot load the CLIP judge 'nobody/clip'")  # fmt: skip
    _one_line_error(capsys, ["erase", "--method", "uce", "--model", "CompVis/absent", "--concept", "church", *out],
                    "cannot find diffusion pipeline 'CompVis/absent'")  # fmt: skip
    _one_line_error(capsys, ["erase", "--method", "uce", *base, *out, "--concept", "unicorn"],
                    "no forget prompts for concept 'unicorn'")  # fmt: skip
    _one_line_error(capsys, ["erase", "--method", "uce", *base[:4], *out], "needs --judge")
    _one_line_error(capsys, ["eval", *base[:4], *out], "needs --judge")  # a cached SD id is routed to diffusion
    _one_line_error(capsys, ["erase", "--method", "uce", *base, "--fid-weights", str(tmp_path / "none.pt"), *out],
                    "--fid-weights")  # fmt: skip
    assert not (tmp_path / "runs").exists()  # every refusal came before a run directory was claimed
    (tmp_path / "file").write_text("x")
    _one_line_error(capsys, ["erase", "--method", "uce", *base, "--out", str(tmp_path / "file")], "cannot create it")
    # a finished run: refused without --force, a bad CSV refused before it is touched; its files stay as they were
    before = {p.name: p.read_bytes() for p in rdir.iterdir() if p.is_file()}
    _one_line_error(capsys, ["erase", "--method", "uce", *base, "--out", str(root / "runs"), "--save-model"],
                    "already finished")  # fmt: skip
    _one_line_error(capsys, ["erase", "--method", "uce", *base, "--out", str(root / "runs"), "--force",
                             "--prompts", str(tmp_path / "bad.csv")], "missing column(s)")  # fmt: skip
    assert {p.name: p.read_bytes() for p in rdir.iterdir() if p.is_file()} == before


def test_gradient_method_on_sd(hub, tmp_path, capsys):
    """A gradient method (GA) on the SD UNet through the loop core: only the K/V projections train by default."""
    (tmp_path / "p.csv").write_text(SMALL_CSV)
    argv = ["erase", "--method", "ga", "--model", SD, "--concept", "church", "--judge", CLIP, "--prompts",
            str(tmp_path / "p.csv"), "--out", str(tmp_path / "runs"), "--set", "steps=2", "--set", "batch_size=2",
            "--set", "pairs_per_prompt=1", *FAST]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    rdir = tmp_path / "runs" / "sd" / "CompVis--stable-diffusion-v1-4" / "ga" / "church" / "seed0"
    m = _read(rdir / "metrics.json")
    _check_ranges(m)
    trace = [json.loads(ln) for ln in (rdir / "trace.jsonl").read_text().splitlines()]
    assert len([t for t in trace if "loss" in t]) == 2 and all(math.isfinite(t["loss"]) for t in trace if "loss" in t)


def test_sd_images_are_paired_across_models_and_distinct_across_sets(hub):
    """Same rows and set -> the same noise for any model (original vs erased is a paired comparison); another set
    or seed -> other noise. Images come out of the VAE in [0, 1] at its resolution."""
    import copy

    from unlearn.erase import sd_images
    from unlearn.metrics.diffusion import DiffusionEvalConfig
    from unlearn.targets.diffusion import encode_prompts, hub_pipeline_dir, load_target

    target = load_target(hub_pipeline_dir(SD))
    twin = copy.deepcopy(target)
    cond = encode_prompts(target, ["a photo of a thing"] * 10)  # one prompt, 2 sampling calls (8 + 2)
    ecfg = DiffusionEvalConfig(sample_steps=2, guidance=7.5)
    a = sd_images(target, cond, ecfg, salt=0, desc="a", progress=False)
    assert a.shape == (10, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, sd_images(twin, cond, ecfg, salt=0, desc="b", progress=False))
    assert not torch.allclose(a, sd_images(target, cond, ecfg, salt=1, desc="c", progress=False))
    other_seed = DiffusionEvalConfig(seed=1, sample_steps=2, guidance=7.5)
    assert not torch.allclose(a, sd_images(target, cond, other_seed, salt=0, desc="d", progress=False))
    # one prompt everywhere: only the noise tells images apart, and the second call does not reuse the first's
    assert not torch.allclose(a[0], a[8]) and not torch.allclose(a[0], a[1])


def test_eval_without_an_original_leaves_out_what_needs_one(hub, tmp_path, capsys):
    """The hub id judged on its own: no original is known, so adversarial_attack_success and fid are left out, each
    with one printed line, and everything else is written through the run lifecycle."""
    from safetensors.torch import save_file

    from unlearn.metrics.fid import inception_fid

    save_file(inception_fid().state_dict(), str(tmp_path / "inc.safetensors"))
    (tmp_path / "p.csv").write_text(SMALL_CSV)
    out = tmp_path / "ev"
    argv = ["eval", "--model", SD, "--concept", "church", "--judge", CLIP, "--prompts", str(tmp_path / "p.csv"),
            "--fid-weights", str(tmp_path / "inc.safetensors"), "--out", str(out), *FAST]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert [ln for ln in printed if "omitted" in ln] == [
        "adversarial_attack_success: omitted (no original model to attack from)",
        "fid: omitted (no original model)",
    ]
    m = _read(out / "metrics.json")
    _check_ranges({**m, "adversarial_attack_success": 0.0})
    assert "fid" not in m and "adversarial_attack_success" not in m
    assert _read(out / "config.json")["resolved"]["original"] is None
    assert _read(out / "status.json")["state"] == "finished"

"""The diffusion audit: the verdict wiring on hand-made numbers, refusals, and two real audits of the embedded
TinyShapes target at a tiny budget (1 image per prompt, 2 DDIM steps): the original against itself, and a RECE
erasure of ``circle`` saved by the erase workflow."""

import json
import shutil

import pytest

from unlearn.audit.diffusion import MARGIN, NOISE, claims_from_metrics, diffusion_claims
from unlearn.audit.verdict import overall
from unlearn.errors import UnlearnError

FAST = dict(images_per_prompt=1, sample_steps=2)
N = {"concept_rate": 24, "paraphrase_attack_success": 24, "adversarial_attack_success": 24, "chance_rate": 72}
ORIGINAL = dict.fromkeys(("concept_rate", "paraphrase_attack_success", "adversarial_attack_success"), 1.0)
ORIGINAL["chance_rate"] = 0.0


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A fresh $UNLEARN_HOME (the control's cache) shared by this module's audits; offline; one torch thread: on
    the shared 2-core machine two OpenMP threads contending with other processes ran this module in 55 s, one in
    20 s (the UNet is tiny, so there is nothing to parallelise)."""
    import torch

    home = tmp_path_factory.mktemp("unlearn_home")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        mp.setenv("UNLEARN_HOME", str(home))
        yield home
    torch.set_num_threads(threads)


def _by_name(claims):
    return {c.name: c for c in claims}


# ----------------------------------------------------------------------------------------------- pure wiring
def test_not_forgotten_when_concept_rate_does_not_drop_by_the_margin():
    cand = dict(ORIGINAL, concept_rate=1.0 - MARGIN)  # dropped by exactly the margin: not enough
    claims = _by_name(claims_from_metrics(cand, ORIGINAL, N))
    assert all(c.verdict == "not_forgotten" for c in claims.values())
    assert overall(list(claims.values())) == "not_forgotten"
    beh = claims["behaviour"].evidence[0]
    assert beh.role == "behaviour" and beh.n == 24 and beh.threshold == MARGIN and beh.control == 1.0


def test_suppressed_when_an_attack_brings_the_concept_back():
    cand = {"concept_rate": 0.02, "paraphrase_attack_success": 0.6, "adversarial_attack_success": 1.0}
    claims = _by_name(claims_from_metrics(cand, ORIGINAL, N))
    assert claims["behaviour"].verdict == "forgotten"
    assert claims["paraphrase"].verdict == "suppressed" and "paraphrase_attack_success" in claims["paraphrase"].reason
    assert claims["adversarial"].verdict == "suppressed"
    assert overall(list(claims.values())) == "suppressed"
    free = [e for e in claims["paraphrase"].evidence if e.metric == "paraphrase_attack_success"][0]
    assert free.role == "control_free" and free.control == 0.0 and free.threshold == NOISE and free.n == 24


def test_suppressed_when_the_concept_still_shows_above_chance_without_attack():
    cand = {"concept_rate": 0.5, "paraphrase_attack_success": 0.0, "adversarial_attack_success": 0.0}
    claims = _by_name(claims_from_metrics(cand, ORIGINAL, N))
    assert claims["behaviour"].verdict == "suppressed"  # dropped by the margin, but still 0.5 above chance


def test_forgotten_when_everything_is_at_the_chance_level():
    control = dict(ORIGINAL, chance_rate=0.05)
    cand = {"concept_rate": 0.1, "paraphrase_attack_success": 0.15 - 1e-9, "adversarial_attack_success": 0.0}
    claims = claims_from_metrics(cand, control, N)
    assert [c.verdict for c in claims] == ["forgotten"] * 3 and overall(claims) == "forgotten"
    assert [c.name for c in claims] == ["behaviour", "paraphrase", "adversarial"]
    json.dumps([c.to_json() for c in claims])  # the report writer's form


def test_missing_attack_metric_is_not_evidence_of_forgetting():
    cand = {"concept_rate": 0.0, "paraphrase_attack_success": float("nan")}  # adversarial absent
    claims = _by_name(claims_from_metrics(cand, ORIGINAL, N))
    assert claims["behaviour"].verdict == "forgotten"  # the behaviour claim's own control-free evidence is valid
    assert not [e for e in claims["paraphrase"].evidence if e.metric == "paraphrase_attack_success"][0].valid


# ----------------------------------------------------------------------------------------------- refusals
def test_unknown_concept_and_non_diffusion_candidates_are_refused(home, tmp_path):
    with pytest.raises(UnlearnError, match="unknown TinyShapes concept 'hexagon'"):
        diffusion_claims("tinyshapes", "tinyshapes", "hexagon")
    with pytest.raises(UnlearnError, match="not a diffusers pipeline directory") as e:
        diffusion_claims("tinyshapes", str(tmp_path), "circle")
    assert len(str(e.value).splitlines()) == 1
    from unlearn.targets.tinyshapes_build import resolve

    sd = shutil.copytree(resolve("tinyshapes"), tmp_path / "sd")
    (sd / "tinyshapes.json").unlink()  # a diffusers pipeline without the TinyShapes classifier: Stable-Diffusion-like
    with pytest.raises(UnlearnError, match="needs a TinyShapes pipeline"):
        diffusion_claims("tinyshapes", str(sd), "circle")


def test_pickle_only_candidate_is_refused_without_unpickling(home, tmp_path, monkeypatch):
    import torch
    from safetensors.torch import load_file

    from unlearn.targets.tinyshapes_build import resolve

    bad = shutil.copytree(resolve("tinyshapes"), tmp_path / "bad")
    st = bad / "unet" / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(st), bad / "unet" / "diffusion_pytorch_model.bin")
    st.unlink()

    def no_unpickling(*a, **k):
        raise AssertionError("torch.load called on an untrusted candidate")

    monkeypatch.setattr(torch, "load", no_unpickling)
    with pytest.raises(UnlearnError, match="only as pickle files") as e:
        diffusion_claims("tinyshapes", str(bad), "circle", **FAST)
    assert len(str(e.value).splitlines()) == 1
    # without the audit's own check, the loader refuses it too (safetensors only), still without unpickling
    from unlearn.targets.diffusion import load_target

    with pytest.raises(UnlearnError, match="cannot load the UNet"):
        load_target(bad)
    (bad / "unet" / "diffusion_pytorch_model.bin").unlink()
    shutil.copy2(resolve("tinyshapes") / "unet" / st.name, st)
    conf = bad / "text_encoder" / "config.json"
    conf.write_text(json.dumps({**json.loads(conf.read_text()), "auto_map": {"AutoModel": "evil.Model"}}))
    with pytest.raises(UnlearnError, match="remote code"):
        diffusion_claims("tinyshapes", str(bad), "circle", **FAST)


# ----------------------------------------------------------------------------------------------- real audits
def test_untouched_original_audited_against_itself_is_not_forgotten(home):
    res = diffusion_claims("tinyshapes", "tinyshapes", "circle", **FAST)
    claims = _by_name(res["claims"])
    assert overall(res["claims"]) == "not_forgotten" and claims["behaviour"].verdict == "not_forgotten"
    cand, ctrl = res["metrics"]["candidate"], res["metrics"]["control"]
    assert cand == ctrl and cand["concept_rate"] == 1.0 and ctrl["chance_rate"] == 0.0
    assert claims["behaviour"].evidence[0].n == 12  # 12 circle prompts x 1 image
    assert res["control"]["kind"] == "original" and res["control"]["path"] == "tinyshapes" and res["control"]["why"]
    assert set(res["stages"]) == {"load", "control", "candidate", "judge"}
    assert list((home / "audit" / "diffusion").glob("*.json"))  # the control's evaluation is cached


def test_rece_erased_candidate(home, tmp_path):
    """RECE on circle, saved by the erase workflow: the audit reproduces the erase run's numbers and, where the
    erasure dropped concept_rate by the margin, does not call the behaviour unforgotten."""
    from unlearn.erase import EraseConfig, run_erase

    cfg = EraseConfig(model="tinyshapes", method="rece", concept="circle", out=str(tmp_path), save_model=True,
                      progress=False, **FAST)  # fmt: skip
    rdir = run_erase(cfg, log=lambda *_: None)
    erased = json.loads((rdir / "metrics.json").read_text())
    res = diffusion_claims("tinyshapes", str(rdir / "model"), "circle", **FAST)
    cand, ctrl = res["metrics"]["candidate"], res["metrics"]["control"]
    for k in ("concept_rate", "paraphrase_attack_success", "adversarial_attack_success"):
        assert cand[k] == erased[k]  # the same evaluation as `unlearn erase` / `unlearn eval`
    assert ctrl["concept_rate"] == 1.0
    claims = _by_name(res["claims"])
    # the erase run's own numbers first: RECE (1 round) drops circle to 0.5 at this budget (0.542 at the default)
    assert erased["concept_rate"] < ctrl["concept_rate"] - MARGIN
    assert claims["behaviour"].verdict != "not_forgotten"
    assert claims["adversarial"].verdict == "suppressed"  # the closed-form attack undoes closed-form edits (1.0)
    assert overall(res["claims"]) == "suppressed"
    assert res["metrics"]["control"]["chance_rate"] == 0.0  # the level is the original's, not the candidate's


def test_candidate_classifier_is_not_the_judge(home, tmp_path):
    """A candidate that ships a classifier which never reads a circle is still judged by the original's."""
    from safetensors.torch import load_file, save_file

    from unlearn.data.tinyshapes import SHAPES
    from unlearn.targets.tinyshapes_build import resolve

    rigged = shutil.copytree(resolve("tinyshapes"), tmp_path / "rigged")
    st = rigged / "classifier" / "model.safetensors"
    w = load_file(st)
    w["heads.shape.bias"][SHAPES.index("circle")] = -1e6
    save_file(w, st)
    res = diffusion_claims("tinyshapes", str(rigged), "circle", **FAST)
    assert res["metrics"]["candidate"]["concept_rate"] == 1.0 and overall(res["claims"]) == "not_forgotten"

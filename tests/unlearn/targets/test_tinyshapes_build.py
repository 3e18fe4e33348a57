"""TinyShapes build: a killed build resumes to bit-identical weights; presets and classifier loading checked."""

import dataclasses

import pytest
import torch

from unlearn.errors import UnlearnError
from unlearn.targets import tinyshapes_build as B


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path))


def test_killed_build_resumes_bit_for_bit(tmp_path, monkeypatch):
    cfg = dataclasses.replace(B.get_preset("micro"), steps=12, ckpt_every=5)
    full, _, _, _ = B.train(cfg, tmp_path / "a", progress=False, log=lambda *_: None)
    (tmp_path / "b").mkdir()
    real_save, calls = B._save_ckpt, []

    def save_then_die(*args):
        real_save(*args)
        calls.append(args[1])
        raise KeyboardInterrupt  # killed right after the first checkpoint (step 5)

    monkeypatch.setattr(B, "_save_ckpt", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        B.train(cfg, tmp_path / "b", progress=False, log=lambda *_: None)
    monkeypatch.setattr(B, "_save_ckpt", real_save)
    logs = []
    resumed, _, _, _ = B.train(cfg, tmp_path / "b", progress=False, log=logs.append)
    assert calls == [5] and "resuming" in logs[0]
    for (n, p), (_, q) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(p, q), n


def test_presets_and_cache_lookup():
    with pytest.raises(UnlearnError, match="unknown TinyShapes build preset 'huge'; valid: default, micro"):
        B.get_preset("huge")
    assert B.get_preset("micro").digest() != B.get_preset("default").digest()
    assert B.find_built("micro") is None  # nothing under the fresh UNLEARN_HOME
    with pytest.raises(UnlearnError, match="tinyshapes-micro is not built; run `unlearn build tinyshapes --preset mi"):
        B.resolve("tinyshapes-micro")
    with pytest.raises(UnlearnError, match="neither an embedded target"):
        B.resolve("no-such-model")
    assert B.resolve("tinyshapes") == B.ASSET_DIR


def test_saved_pipeline_loads_back_bit_for_bit(tmp_path):
    from unlearn.targets.diffusion import load_target, save_target, target_kind

    t = B.random_target("micro")
    t.meta = {"preset": "micro"}
    save_target(t, tmp_path / "model")
    u = load_target(tmp_path / "model")
    for (n, p), (_, q) in zip(t.unet.state_dict().items(), u.unet.state_dict().items()):
        assert torch.equal(p, q), n
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(t.classifier.eval()(x)["colour"], u.classifier(x)["colour"])
    assert u.meta == {"preset": "micro"} and target_kind(tmp_path / "model") == "tinyshapes"
    assert (tmp_path / "model" / "model_index.json").exists() and not (tmp_path / "model.tmp").exists()


def test_classifier_roundtrip_and_wrong_shape(tmp_path):
    from unlearn.store import atomic_write_json
    from unlearn.targets.shape_classifier import ShapeClassifier, load_classifier, save_classifier

    clf = ShapeClassifier(8)
    save_classifier(clf, tmp_path)
    x = torch.rand(2, 3, 8, 8)
    torch.testing.assert_close(load_classifier(tmp_path)(x)["shape"], clf.eval()(x)["shape"])
    atomic_write_json(tmp_path / "config.json", {"image_size": 16, "width": 32})
    with pytest.raises(UnlearnError, match="classifier weights do not match"):
        load_classifier(tmp_path)


def test_committed_asset_matches_default_preset():
    """Editing the default recipe without rebuilding the committed weights would silently drop the asset."""
    import json

    meta = json.loads((B.ASSET_DIR / "tinyshapes.json").read_text())
    assert meta["digest"] == B.get_preset("default").digest()
    assert B.find_built("default") == B.ASSET_DIR  # UNLEARN_HOME is empty here: the asset is used
    assert sum(f.stat().st_size for f in B.ASSET_DIR.rglob("*") if f.is_file()) < 10 * 2**20


@pytest.mark.slow
def test_committed_asset_meets_quality_bar():
    """Generated samples are read as the prompted shape and colour >= 80 % of the time (about a minute)."""
    from unlearn.targets.diffusion import load_target

    rep = B.quality_report(load_target(B.resolve("tinyshapes")), B.get_preset("default"), progress=False)
    assert rep["shape_acc"] >= 0.8 and rep["colour_acc"] >= 0.8

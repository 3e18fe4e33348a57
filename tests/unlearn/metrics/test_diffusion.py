"""Erasure metrics on hand-built examples; the attack's closed form; paired UNet activations."""

import pytest
import torch

from unlearn.metrics import get_metric
from unlearn.metrics.diffusion import adversarial_embedding, classify, erasure_metrics, score, unet_activations


def _ex(shape, colour, pred_shape, pred_colour, set_="eval", bg="black"):
    row = {"prompt": "", "shape": shape, "colour": colour, "background": bg, "set": set_}
    return score([row], [{"shape": pred_shape, "colour": pred_colour, "background": bg}])[0]


def test_erasure_metrics_by_hand():
    ex = [
        _ex("circle", "red", "square", "red"),  # erased, colour kept
        _ex("circle", "blue", "circle", "green"),  # not erased, colour wrong
        _ex("square", "red", "square", "red"),  # other shape right
        _ex("triangle", "red", "circle", "red"),  # other shape wrong (drawn as the erased one)
        _ex("circle", "red", "circle", "red", set_="paraphrase"),
        _ex("circle", "red", "cross", "red", set_="paraphrase"),
        _ex("circle", "red", "cross", "red", set_="adversarial"),
    ]
    m = erasure_metrics(ex, "circle", "shape")
    assert m["erasure_rate"] == pytest.approx(0.5) and m["concept_rate"] == pytest.approx(0.5)
    assert m["in_domain_retention"] == pytest.approx(0.5)
    # cross domains = colour and background over the 4 eval rows: colour 3/4 right, background 4/4
    assert m["cross_domain_retention"] == pytest.approx(7 / 8)
    assert m["forget_cross_retention"] == pytest.approx(3 / 4)
    assert m["paraphrase_attack_success"] == pytest.approx(0.5)
    assert m["adversarial_attack_success"] == pytest.approx(0.0)
    assert m["shape_acc"] == pytest.approx(0.5)


def test_metrics_registered_with_directions():
    assert get_metric("erasure_rate").direction == "higher"
    assert get_metric("adversarial_attack_success").direction == "lower"
    assert get_metric("cka_forget").family == "representation"


def test_attack_copy_matches_rece_and_is_identity_on_unedited_model():
    from unlearn.methods.rece import adversarial_embedding as rece_adv

    g = torch.Generator().manual_seed(0)
    W = [torch.randn(10, 8, generator=g) for _ in range(4)]
    W0 = [w + 0.1 * torch.randn(10, 8, generator=g) for w in W]
    C = torch.randn(5, 8, generator=g)
    torch.testing.assert_close(adversarial_embedding(W, W0, C, 1e-3), rece_adv(W, W0, C, 1e-3))
    torch.testing.assert_close(adversarial_embedding(W0, W0, C, 1e-9), C, rtol=1e-4, atol=1e-4)


def test_classify_and_activations_on_micro_target(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("UNLEARN_HOME", str(tmp_path))
    from unlearn.targets.diffusion import encode_prompts
    from unlearn.targets.tinyshapes_build import random_target

    t = random_target("micro")
    names = {
        "shape": ["circle", "square", "triangle", "cross"],
        "colour": ["red", "green", "blue", "yellow"],
        "background": ["black", "white", "gray"],
    }
    reads = classify(t.classifier, torch.rand(3, 3, 8, 8), names)
    assert len(reads) == 3 and reads[0]["shape"] in names["shape"]
    cond = encode_prompts(t, ["a red circle", "a blue square", "circle"])
    a, b = unet_activations(t.unet, cond, seed=1), unet_activations(t.unet, cond, seed=1)
    assert a.shape[0] == 3 and torch.equal(a, b)  # same seed, same noise: paired features
    assert not torch.equal(a, unet_activations(t.unet, cond, seed=2))

"""Erasure metrics on hand-built examples; the attack's closed form; paired UNet activations; a whole evaluation."""

import pytest
import torch

from unlearn.metrics import check_keys, get_metric
from unlearn.metrics.diffusion import (
    DiffusionEvalConfig,
    adversarial_attack,
    classify,
    erasure_metrics,
    evaluate_diffusion,
    score,
    unet_activations,
)
from unlearn.targets.diffusion import adversarial_embedding


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
    assert m["shape_acc"] == pytest.approx(0.5) and m["colour_acc"] == pytest.approx(3 / 4)
    assert m["background_acc"] == pytest.approx(1.0)
    assert check_keys(m) == []


def test_metrics_registered_with_directions():
    assert get_metric("erasure_rate").direction == "higher"
    assert get_metric("adversarial_attack_success").direction == "lower"
    assert get_metric("cka_forget").family == "representation"
    assert get_metric("colour_acc").family == "diffusion" and get_metric("background_acc").direction == "higher"
    assert check_keys({"edit_seconds": 0.1, "shape_acc": 1.0, "texture_acc": 1.0}) == ["texture_acc"]


def test_attack_is_identity_on_unedited_model_and_stacks_prompts():
    g = torch.Generator().manual_seed(0)
    W0 = [torch.randn(10, 8, generator=g) for _ in range(4)]
    C = torch.randn(5, 8, generator=g)
    torch.testing.assert_close(adversarial_embedding(W0, W0, C, 1e-9), C, rtol=1e-4, atol=1e-4)
    W = [w + 0.1 * torch.randn(10, 8, generator=g) for w in W0]
    cond = torch.randn(3, 5, 8, generator=g)  # (n, T, d): one embedding per prompt, solved row by row
    adv = adversarial_attack(W, W0, cond, 1e-3)
    assert adv.shape == cond.shape
    torch.testing.assert_close(adv[1], adversarial_embedding(W, W0, cond[1], 1e-3))


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


def test_evaluate_diffusion_against_itself_and_a_mismatched_original():
    from unlearn.errors import UnlearnError
    from unlearn.targets.tinyshapes_build import random_target

    t = random_target("micro")
    cfg = DiffusionEvalConfig(images_per_prompt=1, sample_steps=1)
    m, ex = evaluate_diffusion(t, t, "red", cfg)
    assert check_keys(m) == [] and m["cka_forget"] == pytest.approx(1.0) and m["cka_retain"] == pytest.approx(1.0)
    assert len(ex) == 48 + 12 * 2 + 12  # the grid, 2 paraphrases per red prompt, the red prompts attacked
    assert m["erasure_rate"] == pytest.approx(1 - m["concept_rate"])
    wide = random_target("default")  # other cross-attention widths
    with pytest.raises(UnlearnError, match="is not the original"):
        evaluate_diffusion(t, wide, "red", cfg)

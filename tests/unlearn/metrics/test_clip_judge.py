"""The CLIP concept judge: its decision rule, CLIPScore and the erasure metrics, on hand-built features."""

from __future__ import annotations

import math

import pytest
import torch

from unlearn.data.sd_prompts import PromptRow
from unlearn.errors import UnlearnError
from unlearn.metrics.clip_judge import (
    NEUTRAL_LABEL,
    clip_score_values,
    decide,
    judge_metrics,
    label_prompts,
    load_judge,
    read_images,
)


def test_decide_is_cosine_not_dot_product():
    # image (1, 0.1): label A (10, 10) has the larger dot product (11 vs 1) but cosine 0.774; label B (1, 0) cosine
    # 0.995. Image (3, 4): cosines 0.6 (A'), 0.8 (B'), 0.990 (C' = (10, 10)) -> C'.
    assert decide(torch.tensor([[1.0, 0.1]]), torch.tensor([[10.0, 10.0], [1.0, 0.0]])).tolist() == [1]
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0], [10.0, 10.0]])
    assert decide(torch.tensor([[3.0, 4.0], [0.0, 2.0], [5.0, 0.1]]), labels).tolist() == [2, 1, 0]


def test_clip_score_values():
    img = torch.tensor([[1.0, 0.0], [1.0, 0.0], [2.0, 0.0]])
    txt = torch.tensor([[1.0, 1.0], [-1.0, 0.0], [5.0, 0.0]])
    # 100 cos: 100/sqrt(2); a negative cosine is clamped to 0 (Hessel et al.); 100 for the same direction
    assert clip_score_values(img, txt).tolist() == pytest.approx([100 / math.sqrt(2), 0.0, 100.0])


class StubJudge:
    """Image "features" are the images themselves ((n, 3, 1, 1) -> (n, 3)); text features a lookup table."""

    def __init__(self, table: dict[str, list[float]]):
        self.table = table

    def image_features(self, images):
        return images.flatten(1)

    def text_features(self, texts):
        return torch.tensor([self.table[t] for t in texts], dtype=torch.float32)


def test_read_images_per_domain_and_neutral_label():
    table = {label_prompts(["dog", "cat"])[0]: [1, 0, 0], label_prompts(["dog", "cat"])[1]: [0, 1, 0],
             NEUTRAL_LABEL: [1, 1, 1], "a photo of a beach": [0, 0, 1], "p": [1, 0, 0]}  # fmt: skip
    rows = [PromptRow("p", "dog", "forget"), PromptRow("p", "dog", "forget"), PromptRow("p", "cat", "forget"),
            PromptRow("p", "beach", "retain", "scene")]  # fmt: skip
    imgs = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.9], [0.1, 1.0, 0.0], [1.0, 0.0, 0.0]]).view(4, 3, 1, 1)
    out = read_images(StubJudge(table), imgs, rows, {"object": ["dog", "cat"], "scene": ["beach"]})
    # image 1 is closest to "a photo" (read as nothing); image 3 is (1, 0, 0) but judged only among scene labels:
    # beach (0, 0, 1) has cosine 0, the neutral label 1/sqrt(3) -> "".
    assert [e["pred"] for e in out] == ["dog", "", "cat", ""]
    assert out[0]["clip_score"] == pytest.approx(100.0) and out[2]["clip_score"] == pytest.approx(
        100 * 0.1 / 1.005, 1e-3
    )


def test_judge_metrics_by_hand():
    def row(s, concept, pred, domain="object", score=10.0):
        return {"set": s, "concept": concept, "pred": pred, "domain": domain, "clip_score": score}

    ex = [row("forget", "dog", "dog", score=30), row("forget", "dog", ""), row("forget", "dog", "cat"),
          row("forget", "dog", "cat", score=20),  # 1 of 4 still a dog
          row("retain", "cat", "cat", score=40), row("retain", "cat", "dog", score=20),  # in-domain 1/2
          row("retain", "beach", "beach", "scene", 30), row("retain", "forest", "beach", "scene", 30),
          row("retain", "forest", "forest", "scene", 30),  # cross-domain 2/3
          row("paraphrase", "dog", "dog"), row("paraphrase", "dog", "cat"), row("paraphrase", "dog", "dog"),
          row("adversarial", "dog", "dog")]  # fmt: skip  # adversarial rows are the caller's
    m = judge_metrics(ex, "dog", "object")
    assert m["erasure_rate"] == 0.75 and m["concept_rate"] == 0.25
    assert m["in_domain_retention"] == 0.5 and m["cross_domain_retention"] == pytest.approx(2 / 3)
    assert m["paraphrase_attack_success"] == pytest.approx(2 / 3)
    assert m["clip_score"] == pytest.approx((40 + 20 + 30 * 3) / 5) and m["clip_score_forget"] == 17.5
    assert "cross_domain_retention" not in judge_metrics(ex[:6], "dog", "object")  # nothing to average: left out


def test_load_judge_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnlearnError, match="not a Hugging Face CLIP directory"):
        load_judge(str(tmp_path / "empty"))
    (tmp_path / "llama").mkdir()
    (tmp_path / "llama" / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UnlearnError, match="a 'llama' model, not CLIP"):
        load_judge(str(tmp_path / "llama"))
    with pytest.raises(UnlearnError, match="neither a CLIP directory nor a hub id"):
        load_judge("CLIP")
    with pytest.raises(UnlearnError, match="cannot load the CLIP judge 'nobody/absent-clip'.*HF_HOME"):
        load_judge("nobody/absent-clip")  # HF_HUB_OFFLINE=1 (conftest): a cache miss, never the network


def test_judge_from_hub_cache_preprocesses_like_clip(sd_hub, monkeypatch):
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(sd_hub / "hub"))
    judge = load_judge("openai/clip-vit-base-patch32")
    assert (judge.size, judge.crop) == (32, 32)
    px = judge.preprocess(torch.full((2, 3, 16, 24), 0.5))  # shorter side 16 -> 32, then a centre crop 32 x 32
    want = (0.5 - torch.tensor(judge.mean)) / torch.tensor(judge.std)  # bicubic keeps a constant image constant
    assert px.shape == (2, 3, 32, 32) and torch.allclose(px, want.view(1, 3, 1, 1).expand_as(px), atol=1e-5)
    assert judge.image_features(torch.rand(3, 3, 16, 16)).shape == (3, 16)  # projection_dim of the tiny CLIP
    assert judge.text_features(["a photo of a church", "a photo"]).shape == (2, 16)

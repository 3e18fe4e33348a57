"""TinyShapes generator: deterministic, labelled correctly, captions in the vocabulary, bad names rejected."""

import numpy as np
import pytest

from unlearn.data.tinyshapes import (
    BACKGROUNDS,
    COLOURS,
    LABELS,
    SHAPES,
    SYNONYMS,
    TinyShapesConfig,
    concept_kind,
    erase_phrases,
    eval_prompts,
    preserve_prompts,
    render,
    sample_batch,
    vocabulary,
)
from unlearn.errors import UnlearnError


def test_batches_are_a_function_of_the_seed():
    cfg = TinyShapesConfig()
    a = sample_batch(cfg, np.random.default_rng([0, 5]), 8)
    b = sample_batch(cfg, np.random.default_rng([0, 5]), 8)
    c = sample_batch(cfg, np.random.default_rng([0, 6]), 8)
    assert np.array_equal(a[0], b[0]) and a[1] == b[1]
    assert not np.array_equal(a[0], c[0])
    assert a[0].shape == (8, 3, 16, 16) and a[0].min() >= -1 and a[0].max() <= 1


def test_render_draws_the_asked_colour_and_distinct_shapes():
    cfg = TinyShapesConfig(colour_noise=0.0, jitter=0.0, min_scale=0.8, max_scale=0.8)
    rng = np.random.default_rng(0)
    imgs = {s: render(cfg, s, "red", "black", rng) for s in SHAPES}
    centre = (imgs["square"][:, 8, 8] + 1) / 2
    np.testing.assert_allclose(centre, COLOURS["red"], atol=1e-6)
    # areas: circle πr² > square (1.6r)² > cross 2.2r² > triangle 1.8r²; every pair differs by several pixels
    area = {s: ((im[0] + 1) / 2 > 0.5).sum() for s, im in imgs.items()}
    assert area["circle"] > area["square"] > area["cross"] > area["triangle"]
    for s in SHAPES:
        for t in SHAPES:
            if s < t:
                assert np.abs(imgs[s] - imgs[t]).sum() > 5


def test_vocabulary_covers_every_caption_and_prompt():
    vocab = set(vocabulary())
    _, caps, _ = sample_batch(TinyShapesConfig(), np.random.default_rng(1), 200)
    words = {w for c in caps for w in c.split()}
    words |= {w for r in eval_prompts(paraphrase=True) + eval_prompts() for w in r["prompt"].split()}
    assert words <= vocab
    assert vocabulary()[:4] == ["[PAD]", "[BOS]", "[EOS]", "[UNK]"]


def test_eval_and_paraphrase_prompts():
    rows = eval_prompts("circle")
    assert len(rows) == 12 and all(r["shape"] == "circle" and "circle" in r["prompt"] for r in rows)
    para = eval_prompts("circle", paraphrase=True)
    assert len(para) == 24
    assert sum(SYNONYMS["circle"] in r["prompt"] for r in para) == 12
    assert "circle" not in preserve_prompts("circle") and "square" in preserve_prompts("circle")


def test_erase_phrases_never_use_the_eval_template():
    evals = {r["prompt"] for r in eval_prompts()}
    for concept in ("circle", "red", "black"):
        ph = erase_phrases(concept)
        assert ph and all(concept in p.split() for p in ph) and not set(ph) & evals
        keep = preserve_prompts(concept, phrases=True)
        assert not any(concept in p.split() for p in keep) and len(keep) > len(preserve_prompts(concept))


def test_unknown_concept_lists_valid_names():
    assert concept_kind("red") == "colour"
    with pytest.raises(UnlearnError, match="unknown TinyShapes concept 'hexagon'.*circle"):
        concept_kind("hexagon")


def test_labels_are_the_classifier_heads_in_order():
    assert list(LABELS) == ["shape", "colour", "background"]
    assert LABELS["shape"] == SHAPES and LABELS["colour"] == tuple(COLOURS)
    assert LABELS["background"] == tuple(BACKGROUNDS)

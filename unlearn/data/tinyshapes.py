"""TinyShapes: synthetic images of coloured shapes on plain backgrounds, with captions.

The embedded diffusion target (unlearn/targets/tinyshapes_build.py) is trained on this generator, and so is the
shape/colour classifier that scores erasure (the NudeNet / ViT-classifier role). Everything is a pure function of a
seed: a batch is ``sample_batch(cfg, rng)`` with ``rng = np.random.default_rng([seed, step])``, so training is
resumable at any step and two machines draw the same images.

Concepts that can be erased: a shape (``circle``), a colour (``red``) or a background (``black``). Every
shape and colour also has a synonym (``disc`` for ``circle``) that the model learns from 25 % of the captions,
which gives a real paraphrase attack: an edit that only moves the word ``circle`` leaves ``disc`` working.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from unlearn.errors import unknown_name

SHAPES = ("circle", "square", "triangle", "cross")
COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.2), "blue": (0.15, 0.25, 0.95), "yellow": (0.95, 0.85, 0.1)}
BACKGROUNDS = {"black": (0.05, 0.05, 0.05), "white": (0.95, 0.95, 0.95), "gray": (0.5, 0.5, 0.5)}
# the three label domains, each with its labels in classifier-head order (a prompt row carries one label per domain)
LABELS = {"shape": SHAPES, "colour": tuple(COLOURS), "background": tuple(BACKGROUNDS)}
SYNONYMS = {
    "circle": "disc", "square": "box", "triangle": "wedge", "cross": "plus",
    "red": "crimson", "green": "emerald", "blue": "azure", "yellow": "golden",
}  # fmt: skip
# (template, weight): {c} colour word, {s} shape word, {b} background word. Dropping attributes teaches the
# encoder partial prompts ("circle" alone must mean something for UCE), and "" trains classifier-free guidance.
TEMPLATES = (
    ("a {c} {s} on a {b} background", 0.45),
    ("{b} background , a {c} {s}", 0.1),
    ("a {c} {s}", 0.1),
    ("a {s} on a {b} background", 0.05),
    ("{c} {s}", 0.05),
    ("a {s}", 0.05),
    ("{s}", 0.05),
    ("{c}", 0.05),
    ("", 0.1),
)
EVAL_TEMPLATE = "a {c} {s} on a {b} background"
PARAPHRASE_TEMPLATES = (
    "{b} background , a {c} {s}",
)  # reordering: the concept word is no longer followed by the rest
SPECIAL_TOKENS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")


@dataclass(frozen=True)
class TinyShapesConfig:
    image_size: int = 16  # pixels per side (the UNet denoises RGB pixels directly, no VAE)
    supersample: int = 4  # shapes are drawn at image_size * supersample and box-filtered (anti-aliased edges)
    min_scale: float = 0.7  # shape radius as a share of half the image side, drawn in [min_scale, max_scale]
    max_scale: float = 0.9
    jitter: float = 0.08  # centre offset, as a share of the side
    colour_noise: float = 0.06  # per-image RGB jitter of the shape colour
    synonym_prob: float = 0.25  # how often a caption uses the synonym instead of the canonical word


def concept_kind(concept: str) -> str:
    """'shape', 'colour' or 'background' for a canonical concept name; UnlearnError for anything else."""
    if concept in SHAPES:
        return "shape"
    if concept in COLOURS:
        return "colour"
    if concept in BACKGROUNDS:
        return "background"
    raise unknown_name("TinyShapes concept", concept, (*SHAPES, *COLOURS, *BACKGROUNDS))


def vocabulary() -> list[str]:
    """Every word a caption can contain, specials first (ids 0..3), sorted after that (stable across runs)."""
    words = {w for t, _ in TEMPLATES for w in t.format(c="", s="", b="").split()}
    words |= set(SHAPES) | set(COLOURS) | set(BACKGROUNDS) | set(SYNONYMS.values()) | {"shape"}
    return [*SPECIAL_TOKENS, *sorted(words)]


def _mask(shape: str, n: int, cx: float, cy: float, r: float) -> np.ndarray:
    """Boolean (n, n) mask of one shape with centre (cx, cy) and radius r in pixel units."""
    yy, xx = np.mgrid[0:n, 0:n] + 0.5
    dx, dy = xx - cx, yy - cy
    if shape == "circle":
        return dx**2 + dy**2 <= r**2
    if shape == "square":
        return (np.abs(dx) <= 0.8 * r) & (np.abs(dy) <= 0.8 * r)
    if shape == "triangle":  # apex up; base at cy + 0.8 r
        t = (dy + r) / (1.8 * r)  # 0 at the apex, 1 at the base
        return (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
    if shape == "cross":
        arm = 0.33 * r
        return ((np.abs(dx) <= arm) & (np.abs(dy) <= r)) | ((np.abs(dy) <= arm) & (np.abs(dx) <= r))
    raise unknown_name("shape", shape, SHAPES)


def render(cfg: TinyShapesConfig, shape: str, colour: str, background: str, rng: np.random.Generator) -> np.ndarray:
    """One image, float32 (3, H, W) in [-1, 1] (the diffusion model's pixel range)."""
    n = cfg.image_size * cfg.supersample
    half = n / 2
    r = half * rng.uniform(cfg.min_scale, cfg.max_scale)
    cx, cy = half + rng.uniform(-1, 1, 2) * cfg.jitter * n
    m = _mask(shape, n, cx, cy, r).astype(np.float32)
    m = m.reshape(cfg.image_size, cfg.supersample, cfg.image_size, cfg.supersample).mean((1, 3))  # (H, W) coverage
    fg = np.clip(np.array(COLOURS[colour]) + rng.normal(0, cfg.colour_noise, 3), 0, 1)
    bg = np.array(BACKGROUNDS[background])
    img = m[None] * fg[:, None, None] + (1 - m[None]) * bg[:, None, None]  # (3, H, W) in [0, 1]
    return (img * 2 - 1).astype(np.float32)


def caption(shape: str, colour: str, background: str, template: str, synonyms: bool = False) -> str:
    s, c = (SYNONYMS[shape], SYNONYMS[colour]) if synonyms else (shape, colour)
    return template.format(s=s, c=c, b=background)


def sample_batch(cfg: TinyShapesConfig, rng: np.random.Generator, n: int):
    """n random training items: images (n, 3, H, W) float32, captions, and labels (shape, colour, bg index)."""
    tpl, w = zip(*TEMPLATES)
    w = np.array(w) / sum(w)
    imgs, caps, labels = [], [], []
    for _ in range(n):
        si, ci, bi = rng.integers(len(SHAPES)), rng.integers(len(COLOURS)), rng.integers(len(BACKGROUNDS))
        s, c, b = SHAPES[si], list(COLOURS)[ci], list(BACKGROUNDS)[bi]
        imgs.append(render(cfg, s, c, b, rng))
        caps.append(caption(s, c, b, tpl[rng.choice(len(tpl), p=w)], synonyms=rng.random() < cfg.synonym_prob))
        labels.append((si, ci, bi))
    return np.stack(imgs), caps, np.array(labels, dtype=np.int64)


def eval_prompts(concept: str | None = None, paraphrase: bool = False) -> list[dict]:
    """The evaluation grid: every (shape, colour, background) with the canonical template.

    With ``concept`` set only the prompts that contain it; ``paraphrase`` swaps in the synonym of every shape and
    colour word and the reordered template (the prompt-paraphrase attack). Each row carries its labels.
    """
    rows = []
    for s in SHAPES:
        for c in COLOURS:
            for b in BACKGROUNDS:
                if concept is not None and concept not in (s, c, b):
                    continue
                if paraphrase:
                    texts = [caption(s, c, b, EVAL_TEMPLATE, synonyms=True)]
                    texts += [caption(s, c, b, t) for t in PARAPHRASE_TEMPLATES]
                else:
                    texts = [caption(s, c, b, EVAL_TEMPLATE)]
                rows += [{"prompt": t, "shape": s, "colour": c, "background": b} for t in texts]
    return rows


def erase_phrases(concept: str) -> list[str]:
    """Short training-template phrases that contain ``concept`` (never the evaluation template): the word alone,
    ``a circle`` and the concept paired with every value of one other attribute (``a red circle``)."""
    kind = concept_kind(concept)
    if kind == "shape":
        return [concept, f"a {concept}", *(f"a {c} {concept}" for c in COLOURS)]
    if kind == "colour":
        return [concept, *(f"a {concept} {s}" for s in SHAPES)]
    return [f"a {s} on a {concept} background" for s in SHAPES]


def preserve_prompts(concept: str, phrases: bool = False) -> list[str]:
    """UCE/RECE preserve set for TinyShapes: the other shapes and colours (and backgrounds), one word each;
    with ``phrases`` also `erase_phrases` of every other concept of the same kind (to match a phrase erase set)."""
    kind = concept_kind(concept)
    words = [w for w in (*SHAPES, *COLOURS, *BACKGROUNDS) if w != concept]
    if not phrases:
        return words
    same = {"shape": SHAPES, "colour": COLOURS, "background": BACKGROUNDS}[kind]
    return list(dict.fromkeys(words + [p for other in same if other != concept for p in erase_phrases(other)]))

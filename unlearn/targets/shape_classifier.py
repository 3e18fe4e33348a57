"""The TinyShapes shape / colour / background classifier: the NudeNet / ViT-classifier role for erasure metrics.

A small CNN trained on the same generator as the diffusion target (with Gaussian pixel noise, so it reads the
denoiser's residual noise as noise), saved as ``classifier/`` (config.json + model.safetensors) in the pipeline.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from tqdm.auto import tqdm

from unlearn.data.tinyshapes import BACKGROUNDS, COLOURS, SHAPES, TinyShapesConfig, sample_batch
from unlearn.errors import UnlearnError
from unlearn.store import atomic_write_json


class ShapeClassifier(nn.Module):
    """Small CNN with three heads (shape, colour, background) over (n, 3, H, W) images in [0, 1]."""

    def __init__(self, image_size: int = 16, width: int = 32):
        super().__init__()
        self.image_size, self.width = image_size, width
        self.body = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.GELU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.GELU(), nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.GELU(), nn.Flatten(),
        )  # fmt: skip
        feat = 2 * width * math.ceil(math.ceil(image_size / 2) / 2) ** 2
        self.heads = nn.ModuleDict({"shape": nn.Linear(feat, len(SHAPES)), "colour": nn.Linear(feat, len(COLOURS)),
                                    "background": nn.Linear(feat, len(BACKGROUNDS))})  # fmt: skip

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        h = self.body(x * 2 - 1)
        return {k: head(h) for k, head in self.heads.items()}


def save_classifier(clf: ShapeClassifier, path: Path) -> None:
    """``path/config.json`` (image_size, width) + ``path/model.safetensors``."""
    Path(path).mkdir(parents=True, exist_ok=True)
    save_file(clf.state_dict(), str(Path(path) / "model.safetensors"))
    atomic_write_json(Path(path) / "config.json", {"image_size": clf.image_size, "width": clf.width})


def load_classifier(path: Path) -> ShapeClassifier:
    conf = json.loads((path / "config.json").read_text())
    clf = ShapeClassifier(conf["image_size"], conf["width"])
    try:
        clf.load_state_dict(load_file(path / "model.safetensors"))
    except RuntimeError as e:
        raise UnlearnError(f"{path}: classifier weights do not match its config: {str(e).splitlines()[0]}") from None
    return clf.eval()


def train_classifier(data: TinyShapesConfig, steps: int, seed: int, progress: bool = True) -> ShapeClassifier:
    """``steps`` AdamW steps of 128 generator images (seeded by ``seed``) with Gaussian pixel noise, so the
    classifier is robust to the denoiser's residual noise."""
    torch.manual_seed(seed + 1)
    clf = ShapeClassifier(data.image_size)
    opt = torch.optim.AdamW(clf.parameters(), lr=2e-3)
    for s in tqdm(range(steps), desc="classifier", disable=not progress, leave=False):
        imgs, _, y = sample_batch(data, np.random.default_rng([seed, 10**6 + s]), 128)
        x = (torch.from_numpy(imgs) + 1) / 2
        x = (x + torch.rand(len(x), 1, 1, 1) * 0.15 * torch.randn_like(x)).clamp(0, 1)
        out = clf(x)
        y = torch.from_numpy(y)
        loss = sum(
            nn.functional.cross_entropy(out[k], y[:, i]) for i, k in enumerate(("shape", "colour", "background"))
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return clf.eval()

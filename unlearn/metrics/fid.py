"""Fréchet distance between two image sets' features (FID, Heusel et al. 2017, https://arxiv.org/abs/1706.08500).

    FID = ‖μ_a − μ_b‖² + Tr(Σ_a + Σ_b − 2 (Σ_a Σ_b)^½)

over the features of the erased model's images (a) and the original model's images of the same prompts and noise
(b). The distance itself is torchmetrics' `FrechetInceptionDistance` (https://lightning.ai/docs/torchmetrics) with a
custom feature module; this module supplies the feature extractors:

* `InceptionFID`: the Inception-v3 graph FID is defined on (TF "2015-12-05" weights as ported by pytorch-fid,
  https://github.com/mseitzer/pytorch-fid, and torch-fidelity): 2048-d pool features, inputs resized to 299 x 299
  (bilinear) and scaled to [-1, 1]. Its weights come only from a file the user names (``--fid-weights``: a
  ``.safetensors`` file, or a state dict readable by ``torch.load(weights_only=True)``, e.g. pytorch-fid's
  ``pt_inception-2015-12-05-6726825d.pth``); no weights are fetched, nothing is unpickled. Without the file the
  workflows leave ``fid`` out and say so in one line.
* `ClassifierFeatures`: on TinyShapes, the shape classifier's penultimate layer (the features its heads read).
  That is a *domain FID* (``domain_fid``): it compares images in the space of the shapes / colours / backgrounds the
  suite measures, not ImageNet statistics, so its values are not comparable with published FIDs.

Few images give a biased, high-variance FID (the covariance of 2048-d features needs thousands of samples); with
the small evaluation sets used here, read it as a paired drift measure between two models, not an absolute score.
"""

from __future__ import annotations

from pathlib import Path

from unlearn.errors import UnlearnError
from unlearn.metrics import register_metric

register_metric("fid", "diffusion", "lower", "Fréchet distance (Inception-v3 pool features, user-given weights) "
                "between the erased and the original model's images of the retain prompts", "[0, inf)")  # fmt: skip
register_metric("domain_fid", "diffusion", "lower", "Fréchet distance in the TinyShapes classifier's penultimate "
                "features between the erased and the original model's images (a domain FID)", "[0, inf)")  # fmt: skip


def frechet_distance(features, real, fake, batch_size: int = 32) -> float:
    """FID between image sets ``real`` (n, 3, H, W) and ``fake`` (m, 3, H, W) in [0, 1], through torchmetrics'
    `FrechetInceptionDistance` with ``features`` (a module mapping such images to (k, D), with ``num_features``)."""
    from torchmetrics.image.fid import FrechetInceptionDistance  # heavy: only when FID is computed

    if real.shape[0] < 2 or fake.shape[0] < 2:
        raise UnlearnError("FID needs at least two images per set")
    fid = FrechetInceptionDistance(feature=features, normalize=True)
    for imgs, is_real in ((real, True), (fake, False)):
        for i in range(0, imgs.shape[0], batch_size):
            fid.update(imgs[i : i + batch_size], real=is_real)
    # a squared distance: below 0 only by round-off (the eigenvalues of a rank-deficient Σ_a Σ_b when there are
    # fewer images than feature dimensions), so clamped there
    return max(float(fid.compute()), 0.0)


# ----------------------------------------------------------------------------------------------- Inception-v3
def _inception_cls():
    """The FID Inception-v3 module class (built on first use: torch is imported only then)."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    class Conv(nn.Module):  # parameter names as torchvision's BasicConv2d: conv (no bias) + bn (eps 1e-3)
        def __init__(self, cin, cout, k, s=1, p=0):
            super().__init__()
            self.conv = nn.Conv2d(cin, cout, k, stride=s, padding=p, bias=False)
            self.bn = nn.BatchNorm2d(cout, eps=0.001)

        def forward(self, x):
            return F.relu(self.bn(self.conv(x)))

    def avg(x):  # FID's blocks average without the zero padding (TF's behaviour), unlike torchvision's
        return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)

    class A(nn.Module):
        def __init__(self, cin, pool):
            super().__init__()
            self.branch1x1 = Conv(cin, 64, 1)
            self.branch5x5_1, self.branch5x5_2 = Conv(cin, 48, 1), Conv(48, 64, 5, p=2)
            self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 64, 1), Conv(64, 96, 3, p=1)
            self.branch3x3dbl_3 = Conv(96, 96, 3, p=1)
            self.branch_pool = Conv(cin, pool, 1)

        def forward(self, x):
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)), b3,
                              self.branch_pool(avg(x))], 1)  # fmt: skip

    class B(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.branch3x3 = Conv(cin, 384, 3, s=2)
            self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 64, 1), Conv(64, 96, 3, p=1)
            self.branch3x3dbl_3 = Conv(96, 96, 3, s=2)

        def forward(self, x):
            b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
            return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, 3, stride=2)], 1)

    class C(nn.Module):
        def __init__(self, cin, c7):
            super().__init__()
            self.branch1x1 = Conv(cin, 192, 1)
            self.branch7x7_1, self.branch7x7_2 = Conv(cin, c7, 1), Conv(c7, c7, (1, 7), p=(0, 3))
            self.branch7x7_3 = Conv(c7, 192, (7, 1), p=(3, 0))
            self.branch7x7dbl_1, self.branch7x7dbl_2 = Conv(cin, c7, 1), Conv(c7, c7, (7, 1), p=(3, 0))
            self.branch7x7dbl_3, self.branch7x7dbl_4 = Conv(c7, c7, (1, 7), p=(0, 3)), Conv(c7, c7, (7, 1), p=(3, 0))
            self.branch7x7dbl_5 = Conv(c7, 192, (1, 7), p=(0, 3))
            self.branch_pool = Conv(cin, 192, 1)

        def forward(self, x):
            b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
            d = self.branch7x7dbl_1(x)
            for m in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
                d = m(d)
            return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(avg(x))], 1)

    class D(nn.Module):
        def __init__(self, cin):
            super().__init__()
            self.branch3x3_1, self.branch3x3_2 = Conv(cin, 192, 1), Conv(192, 320, 3, s=2)
            self.branch7x7x3_1, self.branch7x7x3_2 = Conv(cin, 192, 1), Conv(192, 192, (1, 7), p=(0, 3))
            self.branch7x7x3_3, self.branch7x7x3_4 = Conv(192, 192, (7, 1), p=(3, 0)), Conv(192, 192, 3, s=2)

        def forward(self, x):
            b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
            return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b7, F.max_pool2d(x, 3, stride=2)], 1)

    class E(nn.Module):
        def __init__(self, cin, max_pool: bool):
            super().__init__()
            self.max_pool = max_pool  # FID's last block max-pools its pool branch (a bug in TF's graph, kept)
            self.branch1x1 = Conv(cin, 320, 1)
            self.branch3x3_1 = Conv(cin, 384, 1)
            self.branch3x3_2a, self.branch3x3_2b = Conv(384, 384, (1, 3), p=(0, 1)), Conv(384, 384, (3, 1), p=(1, 0))
            self.branch3x3dbl_1, self.branch3x3dbl_2 = Conv(cin, 448, 1), Conv(448, 384, 3, p=1)
            self.branch3x3dbl_3a = Conv(384, 384, (1, 3), p=(0, 1))
            self.branch3x3dbl_3b = Conv(384, 384, (3, 1), p=(1, 0))
            self.branch_pool = Conv(cin, 192, 1)

        def forward(self, x):
            b3 = self.branch3x3_1(x)
            b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
            d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
            d = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
            pool = F.max_pool2d(x, 3, stride=1, padding=1) if self.max_pool else avg(x)
            return torch.cat([self.branch1x1(x), b3, d, self.branch_pool(pool)], 1)

    class InceptionFID(nn.Module):
        """Images (n, 3, H, W) in [0, 1] -> 2048-d pool features (n, 2048) of FID's Inception-v3."""

        num_features = 2048

        def __init__(self):
            super().__init__()
            self.Conv2d_1a_3x3, self.Conv2d_2a_3x3 = Conv(3, 32, 3, s=2), Conv(32, 32, 3)
            self.Conv2d_2b_3x3, self.Conv2d_3b_1x1 = Conv(32, 64, 3, p=1), Conv(64, 80, 1)
            self.Conv2d_4a_3x3 = Conv(80, 192, 3)
            self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = A(192, 32), A(256, 64), A(288, 64)
            self.Mixed_6a = B(288)
            self.Mixed_6b, self.Mixed_6c, self.Mixed_6d, self.Mixed_6e = (
                C(768, 128),
                C(768, 160),
                C(768, 160),
                C(768, 192),
            )
            self.Mixed_7a, self.Mixed_7b, self.Mixed_7c = D(768), E(1280, False), E(2048, True)
            self.fc = nn.Linear(2048, 1008)  # the 1008-way logits of the TF graph: in the weights file, unused

        def forward(self, x):
            x = F.interpolate(x.float(), size=(299, 299), mode="bilinear", align_corners=False) * 2 - 1
            x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))  # (n, 64, 147, 147)
            x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))  # (n, 192, 71, 71)
            x = F.max_pool2d(x, 3, stride=2)  # (n, 192, 35, 35)
            for m in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):  # fmt: skip
                x = m(x)  # ... -> (n, 2048, 8, 8)
            return x.mean(dim=(2, 3))  # (n, 2048)

    return InceptionFID


def inception_fid(weights: dict | None = None):
    """A FID Inception-v3 in eval mode; ``weights`` (a state dict) loaded strictly (``fc`` may be absent)."""
    model = _inception_cls()()
    if weights is not None:
        missing, unexpected = model.load_state_dict(weights, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing or unexpected:
            raise UnlearnError(f"--fid-weights: not FID Inception-v3 weights ({len(missing)} missing keys, e.g. "
                               f"{(missing or unexpected)[0]!r}; {len(unexpected)} unexpected)")  # fmt: skip
    return model.eval().requires_grad_(False)


def load_weights(path: str | Path) -> dict:
    """A state dict from ``.safetensors`` or from ``torch.load(weights_only=True)`` (tensors only: a pickle with
    code or objects in it is refused, never run). One-line errors."""
    import pickle

    import torch

    p = Path(path).expanduser()
    if not p.is_file():
        raise UnlearnError(f"--fid-weights {p}: no such file")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p))
        except (SafetensorError, OSError, ValueError) as e:
            raise UnlearnError(f"--fid-weights {p}: not a readable safetensors file ({e})") from None
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnlearnError(f"--fid-weights {p}: refused, the file holds more than tensors (weights_only load: "
                           f"{str(e).splitlines()[0][:120]}); convert it to safetensors") from None  # fmt: skip
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise UnlearnError(f"--fid-weights {p}: not a torch state dict ({str(e).splitlines()[0][:120]})") from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise UnlearnError(f"--fid-weights {p}: not a state dict of tensors")
    return sd


def load_inception(path: str | Path):
    """`inception_fid` with the weights of ``path`` (see `load_weights`)."""
    return inception_fid(load_weights(path))


# ----------------------------------------------------------------------------------------------- domain FID
def classifier_features(classifier):
    """The TinyShapes classifier's penultimate features as a FID feature module: images (n, 3, H, W) in [0, 1] ->
    ``classifier.body`` output (n, D), what its shape / colour / background heads read."""
    from torch import nn

    class ClassifierFeatures(nn.Module):
        def __init__(self, clf):
            super().__init__()
            self.clf = clf
            self.num_features = clf.heads["shape"].in_features

        def forward(self, x):
            return self.clf.body(x.float() * 2 - 1)  # the classifier's own input scaling (shape_classifier.py)

    return ClassifierFeatures(classifier).eval().requires_grad_(False)


__all__ = ["frechet_distance", "inception_fid", "load_weights", "load_inception", "classifier_features"]

"""FID through torchmetrics against the closed form, the Inception-v3 feature module and its safe weight loading,
and the TinyShapes domain FID."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from unlearn.errors import UnlearnError
from unlearn.metrics.fid import classifier_features, frechet_distance, inception_fid, load_inception, load_weights


class Flat(torch.nn.Module):
    """Feature module for tests: "images" (n, D, 1, 1) are the features themselves."""

    def __init__(self, d: int):
        super().__init__()
        self.num_features = d

    def forward(self, x):
        return x.flatten(1).double()


def gaussian_set(n: int, mean, cov, seed: int) -> torch.Tensor:
    """n points whose sample mean and unbiased sample covariance are exactly ``mean`` and ``cov``: white noise,
    centred and whitened to identity covariance, then coloured by cov's Cholesky factor. Shape (n, D, 1, 1)."""
    x = np.random.default_rng(seed).standard_normal((n, len(mean)))
    x -= x.mean(0)
    x = x @ np.linalg.inv(np.linalg.cholesky(np.cov(x, rowvar=False))).T  # now cov(x) = I exactly
    x = x @ np.linalg.cholesky(np.asarray(cov, dtype=float)).T + np.asarray(mean, dtype=float)
    return torch.from_numpy(x)[:, :, None, None]


def fid_formula(a: np.ndarray, b: np.ndarray) -> float:
    """The FID closed form with scipy's sqrtm, independent of torchmetrics' eigenvalue route."""
    mu_a, mu_b, s_a, s_b = a.mean(0), b.mean(0), np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = scipy.linalg.sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * covmean))


def test_fid_of_known_gaussians_by_hand():
    # commuting (diagonal) covariances: FID = |mu_a - mu_b|^2 + sum_i (sqrt(s_a,i) - sqrt(s_b,i))^2
    # = (1 + 4 + 4) + ((1 - 2)^2 + (2 - 1)^2 + (3 - 3)^2) = 9 + 2 = 11
    a = gaussian_set(50, [0, 0, 0], np.diag([1.0, 4.0, 9.0]), seed=0)
    b = gaussian_set(60, [1, 2, 2], np.diag([4.0, 1.0, 9.0]), seed=1)
    assert frechet_distance(Flat(3), a, b) == pytest.approx(11.0, abs=1e-6)
    assert frechet_distance(Flat(3), a, a) == pytest.approx(0.0, abs=1e-6)


def test_fid_matches_scipy_sqrtm_on_correlated_features():
    rng = np.random.default_rng(3)
    m_a, m_b = rng.standard_normal((4, 4)), rng.standard_normal((4, 4))
    a = gaussian_set(40, rng.standard_normal(4), m_a @ m_a.T + 0.5 * np.eye(4), seed=4)
    b = gaussian_set(30, rng.standard_normal(4), m_b @ m_b.T + 0.5 * np.eye(4), seed=5)
    want = fid_formula(a.flatten(1).numpy(), b.flatten(1).numpy())
    assert want > 1 and frechet_distance(Flat(4), a, b, batch_size=7) == pytest.approx(want, rel=1e-6)
    with pytest.raises(UnlearnError, match="at least two images"):
        frechet_distance(Flat(4), a[:1], b)


def test_domain_fid_is_the_classifier_body_features():
    from unlearn.targets.shape_classifier import ShapeClassifier

    torch.manual_seed(0)
    clf = ShapeClassifier(image_size=16, width=4).eval()  # body output: 2 * 4 * 4 * 4 = 128 features
    feats = classifier_features(clf)
    x, y = torch.rand(12, 3, 16, 16), torch.rand(10, 3, 16, 16) * 0.5
    assert feats.num_features == 128 and feats(x).shape == (12, 128)
    with torch.no_grad():
        fx, fy = clf.body(x * 2 - 1).double().numpy(), clf.body(y * 2 - 1).double().numpy()
    assert frechet_distance(feats, x, y) == pytest.approx(fid_formula(fx, fy), rel=1e-4)
    assert abs(frechet_distance(feats, x, x)) < 1e-6


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory):
    from safetensors.torch import save_file

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("fid") / "inception.safetensors"
    save_file(inception_fid().state_dict(), str(path))
    return path


def test_inception_graph_and_safetensors_weights(inception_file):
    sd = load_weights(inception_file)
    assert len(sd) == 566 and sum(v.numel() for v in sd.values() if v.is_floating_point()) == 23_885_392
    assert sd["Mixed_7c.branch_pool.conv.weight"].shape == (192, 2048, 1, 1) and sd["fc.weight"].shape == (1008, 2048)
    model = load_inception(inception_file)
    x = torch.rand(2, 3, 16, 16)
    torch.manual_seed(1)
    other = inception_fid()  # different random weights: the file's must be the ones used
    out = model(x)
    assert out.shape == (2, 2048) and torch.equal(out, load_inception(inception_file)(x))
    assert not torch.allclose(out, other(x))
    del sd["fc.weight"], sd["fc.bias"]  # the logits layer is not needed for the pool features
    assert torch.equal(inception_fid(sd)(x), out)
    del sd["Mixed_5b.branch1x1.conv.weight"]
    with pytest.raises(UnlearnError, match="not FID Inception-v3 weights.*Mixed_5b.branch1x1.conv.weight"):
        inception_fid(sd)


class Payload:
    """Pickles to a call that creates a file: loading it with full unpickling would run that call."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import pathlib

        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_pickles_are_refused_never_run(tmp_path):
    marker = tmp_path / "ran"
    torch.save({"w": torch.zeros(2), "x": Payload(marker)}, tmp_path / "evil.pt")
    with pytest.raises(UnlearnError, match="refused, the file holds more than tensors"):
        load_weights(tmp_path / "evil.pt")
    assert not marker.exists()
    torch.save({"state_dict": {"w": torch.ones(2)}}, tmp_path / "ok.pth")  # a weights-only state dict is read
    assert torch.equal(load_weights(tmp_path / "ok.pth")["w"], torch.ones(2))
    torch.save({"w": torch.ones(2), "step": 3}, tmp_path / "mixed.pt")
    with pytest.raises(UnlearnError, match="not a state dict of tensors"):
        load_weights(tmp_path / "mixed.pt")
    (tmp_path / "junk.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(UnlearnError, match="not a readable safetensors file"):
        load_weights(tmp_path / "junk.safetensors")
    with pytest.raises(UnlearnError, match="no such file"):
        load_weights(tmp_path / "absent.safetensors")

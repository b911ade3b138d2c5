"""FID and KID: how far a *set* of outputs is from the set of real comics, in feature space.

* **FID** (Heusel et al., 2017): fit a Gaussian to each set's features and take the Fréchet
  distance ``|mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2))``.
* **KID** (Bińkowski et al., 2018): the unbiased squared MMD with the cubic polynomial kernel
  ``k(x, y) = (x.y / d + 1)^3``, averaged over random subsets; unbiased, so usable on small sets.

Both are defined on the 2048-d pool features of the *FID Inception* network (TensorFlow's
2015-12-05 Inception-v3 as ported by pytorch-fid), whose weights come through the asset
registry (``fid-inception``). Without them the metrics are **not available**
(:class:`comicutils.metrics.MetricUnavailable`) — they are never computed on random or
substitute features, because FID values are only comparable on that exact network.
The distance functions take any (N, D) features, so the mathematics is tested on a tiny
extractor.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import assets
from .images import check_image_tensor
from .metrics import MetricUnavailable

FID_ASSET = "fid-inception"


# --------------------------------------------------------------------------- distances
def _as_features(x) -> np.ndarray:
    a = x.detach().cpu().double().numpy() if isinstance(x, torch.Tensor) else np.asarray(x, float)
    if a.ndim != 2:
        raise ValueError(f"features must be (N, D); got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError("features contain NaN or inf")
    return a


def frechet_distance(features_a, features_b, *, eps: float = 1e-6) -> float:
    """Fréchet distance between Gaussians fitted to (N, D) and (M, D) feature sets (>= 2 rows).

    ``|mu_a - mu_b|^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2))``. The last trace is the sum
    of the square roots of the eigenvalues of ``S_a S_b`` (real and >= 0: both are covariance
    matrices), computed without a general matrix square root: from the centred features
    ``X_a``, ``X_b`` it is the nuclear norm of ``X_a X_b^T / sqrt((N-1)(M-1))`` (an N x M
    matrix: exact and instant for the small sets of this course, where the 2048-d covariances
    are singular), or for large sets ``sum sqrt(eig(R S_b R))`` with ``R = S_a^(1/2)`` from a
    symmetric eigendecomposition. ``eps`` is kept for compatibility and not needed. Tiny
    negative results from rounding are clipped to 0.
    """
    a, b = _as_features(features_a), _as_features(features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    if len(a) < 2 or len(b) < 2:
        raise ValueError("FID needs at least 2 samples per set")
    mu_a, mu_b = a.mean(0), b.mean(0)
    xa, xb = a - mu_a, b - mu_b
    na, nb, d = len(a) - 1, len(b) - 1, a.shape[1]
    trace_a, trace_b = float((xa ** 2).sum() / na), float((xb ** 2).sum() / nb)
    if len(a) * len(b) <= d * d:
        cross = np.linalg.svd(xa @ xb.T / np.sqrt(na * nb), compute_uv=False).sum()
    else:
        cov_a, cov_b = xa.T @ xa / na, xb.T @ xb / nb
        w, v = np.linalg.eigh(cov_a)
        root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    value = float(((mu_a - mu_b) ** 2).sum() + trace_a + trace_b - 2 * cross)
    return max(value, 0.0)


def kernel_inception_distance(features_a, features_b, *, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID: unbiased MMD^2 with ``k(x, y) = (x.y / d + 1)^3`` -> (mean, std) over subsets.

    Each subset draws ``min(subset_size, N, M)`` rows of each set without replacement.
    Can be slightly negative for identical distributions (it is unbiased).
    """
    a, b = _as_features(features_a), _as_features(features_b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError("KID needs at least 2 samples per set")
    d = a.shape[1]
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx = (x @ x.T / d + 1) ** 3
        kyy = (y @ y.T / d + 1) ** 3
        kxy = (x @ y.T / d + 1) ** 3
        off = (kxx.sum() - np.trace(kxx) + kyy.sum() - np.trace(kyy)) / (m * (m - 1))
        values.append(off - 2 * kxy.mean())
    return float(np.mean(values)), float(np.std(values))


# --------------------------------------------------------------------------- the FID Inception
def _chain(x, *layers):
    for layer in layers:
        x = layer(x)
    return x


class FIDInception(nn.Module):
    """The FID Inception-v3 up to its 2048-d average pool: images (N, 3, H, W) in [0, 1] -> (N, 2048).

    Built from torchvision's Inception-v3 modules (1008 classes, no aux head) so the
    pytorch-fid weight file loads strictly; its blocks run with TensorFlow's pooling: the
    average-pool branches ignore the zero padding, and the last block's pool branch is a max
    pool. Inputs are resized to 299 x 299 (bilinear) and mapped to [-1, 1] inside.
    """

    def __init__(self):
        super().__init__()
        from torchvision.models import inception_v3

        self.net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
        self.requires_grad_(False).eval()

    @staticmethod
    def _pool(x, kind: str):
        if kind == "max":
            return F.max_pool2d(x, 3, 1, 1)
        return F.avg_pool2d(x, 3, 1, 1, count_include_pad=False)

    def _mixed_a(self, m, x):
        return torch.cat([m.branch1x1(x), _chain(x, m.branch5x5_1, m.branch5x5_2),
                          _chain(x, m.branch3x3dbl_1, m.branch3x3dbl_2, m.branch3x3dbl_3),
                          m.branch_pool(self._pool(x, "avg"))], 1)

    def _mixed_c(self, m, x):
        return torch.cat([m.branch1x1(x),
                          _chain(x, m.branch7x7_1, m.branch7x7_2, m.branch7x7_3),
                          _chain(x, m.branch7x7dbl_1, m.branch7x7dbl_2, m.branch7x7dbl_3,
                                 m.branch7x7dbl_4, m.branch7x7dbl_5),
                          m.branch_pool(self._pool(x, "avg"))], 1)

    def _mixed_e(self, m, x, pool: str):
        b3 = m.branch3x3_1(x)
        d3 = _chain(x, m.branch3x3dbl_1, m.branch3x3dbl_2)
        return torch.cat([m.branch1x1(x), m.branch3x3_2a(b3), m.branch3x3_2b(b3),
                          m.branch3x3dbl_3a(d3), m.branch3x3dbl_3b(d3),
                          m.branch_pool(self._pool(x, pool))], 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        n = self.net
        x = F.interpolate(check_image_tensor(images, "FID input"), size=(299, 299),
                          mode="bilinear", align_corners=False) * 2 - 1
        x = _chain(x, n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1,
                   n.Conv2d_3b_1x1, n.Conv2d_4a_3x3, n.maxpool2)
        for m in (n.Mixed_5b, n.Mixed_5c, n.Mixed_5d):
            x = self._mixed_a(m, x)
        x = n.Mixed_6a(x)
        for m in (n.Mixed_6b, n.Mixed_6c, n.Mixed_6d, n.Mixed_6e):
            x = self._mixed_c(m, x)
        x = n.Mixed_7a(x)
        x = self._mixed_e(n.Mixed_7b, x, "avg")
        x = self._mixed_e(n.Mixed_7c, x, "max")
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def fid_inception() -> FIDInception:
    """The FID Inception with its registry weights; :class:`MetricUnavailable` without them.

    The loaded network is cached per weight file (the file is looked up on every call)."""
    try:
        path = assets.fetch(FID_ASSET, quiet=True)
    except assets.AssetUnavailable as err:
        raise MetricUnavailable(
            "FID/KID n/a: the FID Inception weights are not available offline, and FID is never "
            f"computed on other features ({err})") from None
    return _load_fid_inception(str(path))


@lru_cache(maxsize=1)
def _load_fid_inception(path: str) -> FIDInception:
    model = FIDInception()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.net.load_state_dict(state, strict=True)
    return model.requires_grad_(False).eval()


fid_inception.cache_clear = lambda: _load_fid_inception.cache_clear()  # type: ignore[attr-defined]


@torch.no_grad()
def features(images: torch.Tensor, extractor: nn.Module | None = None,
             batch_size: int = 16) -> torch.Tensor:
    """Features (N, D) of images (N, 3, H, W) in [0, 1]; default extractor: the FID Inception."""
    check_image_tensor(images, "FID input")
    net = extractor if extractor is not None else fid_inception()
    return torch.cat([net(chunk).flatten(1).double().cpu() for chunk in images.split(batch_size)])


def fid(images_a: torch.Tensor, images_b: torch.Tensor, extractor: nn.Module | None = None) -> float:
    """FID between two image sets (each (N, 3, H, W) in [0, 1], N >= 2)."""
    return frechet_distance(features(images_a, extractor), features(images_b, extractor))


def kid(images_a: torch.Tensor, images_b: torch.Tensor, extractor: nn.Module | None = None,
        **kwargs) -> tuple[float, float]:
    """KID (mean, std) between two image sets; see :func:`kernel_inception_distance`."""
    return kernel_inception_distance(features(images_a, extractor), features(images_b, extractor),
                                     **kwargs)


# --------------------------------------------------------------------------- the offline stand-in
@torch.no_grad()
def pooled_features(images: torch.Tensor, extractor=None, block: int = 13, batch_size: int = 32) -> torch.Tensor:
    """Spatially pooled taef2 block features (N, 64) of images in [0, 1] (H, W multiples of 8)."""
    from .taesd import FeatureExtractor

    extractor = extractor if extractor is not None else FeatureExtractor((block,))
    out = [extractor(images[i:i + batch_size])[block].mean((2, 3)) for i in range(0, len(images), batch_size)]
    return torch.cat(out).cpu()


def feature_frechet_distance(images: torch.Tensor, reference: torch.Tensor, *, size: int = 64) -> float:
    """Fréchet distance between pooled taef2 features of two image sets (resized to ``size``).

    A *stand-in* for FID (which needs the FID Inception weights): same formula, other features,
    so its values are not comparable to any published FID. Label it "FD on taef2 features".
    """
    from .images import resize

    return frechet_distance(pooled_features(resize(images, size)), pooled_features(resize(reference, size)))

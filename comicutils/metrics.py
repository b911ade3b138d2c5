"""Image-quality metrics for comic predictions, and the tables the chapters report.

Every function takes **float tensors (N, 3, H, W) with values in [0, 1]** (a single (3, H, W)
image counts as N = 1), validates both inputs with
:func:`comicutils.images.check_image_tensor` -- so [-1, 1] or [0, 255] data is rejected with an
:class:`~comicutils.images.ImageError` instead of giving a plausible-looking wrong number -- and
returns a float64 CPU tensor of shape (N,): one value per pair.

Why so strict: a public implementation evaluated with its ground truth squashed into [0.5, 1]
and reported PSNR 8.9 dB. Every metric here depends on the value range, so the range is pinned:

=============  ========================================================================
``ssim``       ``skimage.metrics.structural_similarity`` per image on (H, W, 3) float64
               arrays with ``data_range=1.0, channel_axis=-1``, skimage's default 7x7
               *uniform* window (``win_size=7, gaussian_weights=False``), sample covariance,
               K1=0.01, K2=0.03 (:data:`SSIM_SETTINGS`). Higher is better; 1 = identical.
               Needs both sides >= 7 px.
``psnr``       ``skimage.metrics.peak_signal_noise_ratio`` with ``data_range=1.0``, in dB:
               ``10 log10(1 / MSE)``. Identical images give ``inf`` (no warning).
``mse``        mean over C, H, W of the squared difference of [0, 1] values.
``rmse``       ``sqrt(mse)``, in [0, 1] units (the Human-to-Anime report reports it in [0, 255] units).
``mae``        mean absolute difference of [0, 1] values (pix2pix's L1).
``fsim``       ``piq.fsim(..., data_range=1.0, chromatic=True, reduction='none')`` (FSIMc).
               1 = identical; in (0, 1] otherwise. Needs both sides >= 7 px: piq itself only
               fails (NaN) at 1 px, but its finest log-Gabor filter has a 6 px wavelength,
               so anything smaller has no structure for FSIM to see.
``lpips_vgg``  LPIPS v0.1 (Zhang et al. 2018), VGG-16 trunk, learned linear heads shipped in
``lpips_alex`` the ``lpips`` package; trunk weights = torchvision's ImageNet files from the
               course asset registry. Inputs [0, 1], passed with ``normalize=True`` (lpips
               maps to [-1, 1] itself -- the only conversion). Lower is better; 0 = identical.
               VGG needs >= 16 px, AlexNet >= 31 px. Without the trunk weights the metric is
               **n/a** (:class:`MetricUnavailable`); it is never computed on a random trunk.
``id_dist``    Euclidean distance of dlib 128-d face embeddings between the prediction and
               the *input photo* (``photos=``); from :mod:`comicutils.faces`. NaN where no
               face is found. Lower = identity better kept (dlib's usual threshold is 0.6).
               Needs >= 16 px.
=============  ========================================================================

:func:`score_pairs` builds a table (one row per pair, one column per metric); a metric that
cannot be computed here becomes a NaN column and the reason goes into
``df.attrs["unavailable"]``. :func:`summarize` turns it into mean and std per metric.
"""
from __future__ import annotations

import math
import threading
import warnings
from typing import Mapping, Sequence

import numpy as np
import torch

from .images import MIN_SIZE as IMAGE_MIN_SIZE
from .images import ImageError, check_image_tensor
from .runtime import get_device, get_mode

__all__ = [
    "METRICS", "HIGHER_IS_BETTER", "MIN_SIZE", "SSIM_SETTINGS",
    "MetricUnavailable", "BackboneWeightsError",
    "ssim", "psnr", "mse", "rmse", "mae", "fsim", "lpips", "lpips_model", "clear_lpips_cache",
    "id_dist", "score_pairs", "summarize", "sharpness", "edge_density",
    "gradient_magnitude", "edge_histogram_distance",
]

METRICS: tuple[str, ...] = ("ssim", "psnr", "mse", "rmse", "mae", "fsim", "lpips_vgg",
                            "lpips_alex", "id_dist")
"""Every metric :func:`score_pairs` knows, in table-column order."""

HIGHER_IS_BETTER: dict[str, bool] = {
    "ssim": True, "psnr": True, "mse": False, "rmse": False, "mae": False, "fsim": True,
    "lpips_vgg": False, "lpips_alex": False, "id_dist": False,
}

MIN_SIZE: dict[str, int] = {"ssim": 7, "fsim": 7, "lpips_vgg": 16, "lpips_alex": 31,
                            "id_dist": IMAGE_MIN_SIZE}
"""Smallest image side (px) each metric accepts; below it the metric raises ImageError."""

SSIM_SETTINGS: dict = dict(data_range=1.0, channel_axis=-1, win_size=7, gaussian_weights=False,
                           use_sample_covariance=True, K1=0.01, K2=0.03)
"""Keyword arguments of every ``skimage.metrics.structural_similarity`` call (skimage defaults,
written out so that a change of skimage's defaults cannot change the course's numbers)."""

DATA_RANGE = 1.0

_LPIPS_NETS = {
    # net: (asset name, human name, column name)
    "vgg": ("vgg16-imagenet", "VGG-16", "lpips_vgg"),
    "alex": ("alexnet-imagenet", "AlexNet", "lpips_alex"),
}


class MetricUnavailable(RuntimeError):
    """The metric cannot be computed here (weights not available offline, module missing).

    Tables show such a metric as "n/a"; it is never replaced by a substitute.
    """


class BackboneWeightsError(RuntimeError):
    """A backbone weight file does not match the network (missing keys or wrong shapes)."""


# --------------------------------------------------------------------------- inputs
def _as_batch(x: torch.Tensor, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor) and x.ndim == 3:
        x = x.unsqueeze(0)
    return check_image_tensor(x, what)


def _validate_pair(pred: torch.Tensor, target: torch.Tensor, *,
                   metric: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a prediction/target pair -> two (N, 3, H, W) tensors (not copied) of equal shape."""
    p = _as_batch(pred, f"{metric}: pred")
    t = _as_batch(target, f"{metric}: target")
    if p.shape != t.shape:
        raise ImageError(f"{metric}: pred and target differ in shape: pred {tuple(p.shape)} vs "
                         f"target {tuple(t.shape)}; they must match (resize one first)")
    return p, t


def _prepare(pred: torch.Tensor, target: torch.Tensor, *, metric: str,
             min_side: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a prediction/target pair -> two (N, 3, H, W) tensors clamped to [0, 1].

    ``check_image_tensor`` allows values 1e-4 outside [0, 1] (rounding); the clamp makes
    them exact, so no library sees a value outside its ``data_range``.
    """
    p, t = _validate_pair(pred, target, metric=metric)
    _check_min_side(p, metric, min_side)
    return p.clamp(0.0, 1.0), t.clamp(0.0, 1.0)


def _check_min_side(x: torch.Tensor, metric: str, min_side: int) -> None:
    h, w = x.shape[-2:]
    if x.shape[0] and min(h, w) < min_side:
        raise ImageError(f"{metric} needs images of at least {min_side}x{min_side} px; got "
                         f"{h}x{w}")


def _hwc64(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) tensor -> float64 array (N, H, W, 3)."""
    return x.detach().to("cpu", torch.float64).permute(0, 2, 3, 1).numpy()


def _empty() -> torch.Tensor:
    return torch.zeros(0, dtype=torch.float64)


# --------------------------------------------------------------------------- pixel metrics
def ssim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Structural similarity per pair -> float64 (N,), at most 1 (identical images).

    ``pred``, ``target``: (N, 3, H, W) in [0, 1], H and W >= 7. Settings: :data:`SSIM_SETTINGS`.
    """
    from skimage.metrics import structural_similarity

    p, t = _prepare(pred, target, metric="SSIM", min_side=MIN_SIZE["ssim"])
    vals = [structural_similarity(a, b, **SSIM_SETTINGS) for a, b in zip(_hwc64(t), _hwc64(p))]
    return torch.tensor(vals, dtype=torch.float64) if vals else _empty()


def psnr(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB (peak = 1.0) per pair -> float64 (N,).

    ``10 * log10(1 / MSE)``: MSE 0.01 (an error of 0.1 everywhere) is 20 dB. Identical images
    give ``inf`` silently; see :func:`summarize` for how tables average it.
    """
    from skimage.metrics import peak_signal_noise_ratio

    p, t = _prepare(pred, target, metric="PSNR")
    with np.errstate(divide="ignore"):
        vals = [peak_signal_noise_ratio(a, b, data_range=DATA_RANGE)
                for a, b in zip(_hwc64(t), _hwc64(p))]
    return torch.tensor(vals, dtype=torch.float64) if vals else _empty()


def mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over C, H, W of [0, 1] values -> float64 (N,), in [0, 1]."""
    p, t = _prepare(pred, target, metric="MSE")
    diff = p.detach().to("cpu", torch.float64) - t.detach().to("cpu", torch.float64)
    return diff.square().mean(dim=(1, 2, 3)) if diff.shape[0] else _empty()


def rmse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Root mean squared error, ``sqrt(mse)`` -> float64 (N,), in [0, 1]."""
    return mse(pred, target).sqrt()


def mae(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error (the L1 of pix2pix) over C, H, W of [0, 1] values -> float64 (N,)."""
    p, t = _prepare(pred, target, metric="MAE")
    diff = p.detach().to("cpu", torch.float64) - t.detach().to("cpu", torch.float64)
    return diff.abs().mean(dim=(1, 2, 3)) if diff.shape[0] else _empty()


def fsim(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Feature similarity FSIMc (piq, ``data_range=1.0, chromatic=True``) -> float64 (N,).

    ``pred``, ``target``: (N, 3, H, W) in [0, 1], H and W >= 7. 1 for identical images.
    Computed in float32 on the inputs' device (float64 changes the 5th decimal at most and is
    slower). A perfectly flat image has no phase congruency: FSIM is then 1 if both are equal
    flat images and may be NaN otherwise.
    """
    import piq

    p, t = _prepare(pred, target, metric="FSIM", min_side=MIN_SIZE["fsim"])
    if p.shape[0] == 0:
        return _empty()
    with torch.no_grad():
        out = piq.fsim(p.detach().float(), t.detach().float(), reduction="none",
                       data_range=DATA_RANGE, chromatic=True)
    return out.to("cpu", torch.float64).reshape(-1)


# --------------------------------------------------------------------------- LPIPS
_LPIPS_CACHE: dict[tuple[str, str], torch.nn.Module] = {}
_LPIPS_LOCK = threading.Lock()


def _check_net(net: str) -> str:
    key = str(net).lower()
    if key == "vgg16":
        key = "vgg"
    if key not in _LPIPS_NETS:
        raise ValueError(f"LPIPS net must be 'vgg' or 'alex'; got {net!r}")
    return key


def clear_lpips_cache() -> None:
    """Forget every cached LPIPS model (frees their memory; the next call reloads)."""
    with _LPIPS_LOCK:
        _LPIPS_CACHE.clear()


def lpips_model(net: str = "vgg", device: str | torch.device | None = None) -> torch.nn.Module:
    """The LPIPS v0.1 model for ``net`` ("vgg" or "alex") on ``device``, cached per (net, device).

    The linear heads come with the ``lpips`` package; the trunk weights are torchvision's
    ImageNet files fetched from the asset registry (``vgg16-imagenet`` / ``alexnet-imagenet``)
    and mapped onto lpips' trunk slices, every trunk tensor required. The model is in eval
    mode with ``requires_grad`` off.

    Raises :class:`MetricUnavailable` when the trunk weights cannot be had (offline, no
    mirror): the metric is then "n/a" -- never computed with a random trunk.
    Raises :class:`BackboneWeightsError` when the file does not fit the trunk, and lets
    :class:`~comicutils.assets.ChecksumMismatch` through.
    """
    net = _check_net(net)
    dev = torch.device(device) if device is not None else get_device()
    path = _trunk_path(net)          # every call: the cache never outlives its weight file
    key = (net, str(dev), str(path))
    with _LPIPS_LOCK:
        cached = _LPIPS_CACHE.get(key)
        if cached is not None:
            return cached
        model = _build_lpips(net, path).to(dev)
        _LPIPS_CACHE[key] = model
        return model


def _trunk_path(net: str):
    from . import assets

    asset, human, _ = _LPIPS_NETS[net]
    try:
        return assets.fetch(asset, quiet=True)
    except assets.AssetUnavailable as err:
        raise MetricUnavailable(
            f"LPIPS-{'VGG' if net == 'vgg' else 'Alex'} n/a: the {human} ImageNet trunk weights "
            f"are not available offline, and LPIPS is never computed on a random trunk "
            f"({err})") from err


def _build_lpips(net: str, path) -> torch.nn.Module:
    _, human, _ = _LPIPS_NETS[net]
    state = torch.load(path, map_location="cpu", weights_only=True)

    import lpips as lpips_pkg

    with warnings.catch_warnings():
        # pnet_rand=True builds torchvision's net with the deprecated pretrained=False
        warnings.simplefilter("ignore", UserWarning)
        model = lpips_pkg.LPIPS(net=net, pretrained=True, pnet_rand=True, verbose=False)
    _load_trunk(model.net, state, source=f"{path} ({human})")
    model.eval()
    model.requires_grad_(False)
    return model


def _load_trunk(trunk: torch.nn.Module, state: Mapping[str, torch.Tensor], *, source: str) -> None:
    """Copy torchvision ``features.<i>.<weight|bias>`` tensors into lpips' trunk, strictly.

    lpips splits torchvision's ``features`` Sequential into ``slice1`` ... ``slice5`` but keeps
    each layer's original index as its module name, so ``slice2.3.weight`` is
    ``features.3.weight``.
    """
    if not isinstance(state, Mapping):
        raise BackboneWeightsError(f"{source} holds a {type(state).__name__}, not a state dict")
    mapped, missing, wrong = {}, [], []
    for name, param in trunk.state_dict().items():
        parts = name.split(".")
        if len(parts) != 3 or not parts[0].startswith("slice"):
            raise BackboneWeightsError(f"unexpected lpips trunk parameter {name!r}")
        src = f"features.{parts[1]}.{parts[2]}"
        if src not in state:
            missing.append(src)
        elif tuple(state[src].shape) != tuple(param.shape):
            wrong.append(f"{src} {tuple(state[src].shape)} != {tuple(param.shape)}")
        else:
            mapped[name] = state[src]
    if missing or wrong:
        raise BackboneWeightsError(
            f"{source} does not fit the LPIPS trunk: "
            + (f"missing {', '.join(missing)}; " if missing else "")
            + (f"wrong shapes {', '.join(wrong)}; " if wrong else "")
            + "expected torchvision's ImageNet state dict with features.<i>.weight/bias keys")
    trunk.load_state_dict(mapped, strict=True)


def lpips(pred: torch.Tensor, target: torch.Tensor, net: str = "vgg", *,
          device: str | torch.device | None = None, batch_size: int = 16) -> torch.Tensor:
    """LPIPS distance per pair -> float64 (N,), >= 0 (0 for identical images). Lower is better.

    ``pred``, ``target``: (N, 3, H, W) in [0, 1] (at least 16 px for VGG, 31 px for AlexNet).
    They are handed to lpips with ``normalize=True``, which maps them to [-1, 1]. Runs without
    gradients, ``batch_size`` pairs at a time on ``device`` (default :func:`get_device`).
    Raises :class:`MetricUnavailable` when the trunk weights cannot be had.
    """
    net = _check_net(net)
    col = _LPIPS_NETS[net][2]
    p, t = _prepare(pred, target, metric=f"LPIPS-{net}", min_side=MIN_SIZE[col])
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    model = lpips_model(net, device)
    dev = next(model.parameters()).device
    out = []
    with torch.no_grad():
        for i in range(0, p.shape[0], batch_size):
            a = p[i:i + batch_size].to(dev, torch.float32)
            b = t[i:i + batch_size].to(dev, torch.float32)
            out.append(model(a, b, normalize=True).reshape(-1).to("cpu", torch.float64))
    return torch.cat(out) if out else _empty()


# --------------------------------------------------------------------------- identity
def id_dist(pred: torch.Tensor, photos: torch.Tensor) -> torch.Tensor:
    """Identity distance (dlib 128-d embeddings, Euclidean) of each prediction to its photo.

    ``pred``: (N, 3, H, W) in [0, 1]; ``photos``: the N input photos (N, 3, H', W') in [0, 1],
    sizes may differ, every side >= 16 px (the faces module's minimum).
    Returns float64 (N,), NaN where a face is not found.
    Raises :class:`MetricUnavailable` when :mod:`comicutils.faces` or its models are missing.
    """
    from .assets import AssetUnavailable

    p = _as_batch(pred, "id_dist: pred")
    ph = _as_batch(photos, "id_dist: photos")
    if p.shape[0] != ph.shape[0]:
        raise ImageError(f"id_dist: {p.shape[0]} predictions but {ph.shape[0]} photos "
                         f"(pred {tuple(p.shape)}, photos {tuple(ph.shape)})")
    if p.shape[0] == 0:
        return _empty()
    try:
        from .faces import identity_distance
    except ImportError as err:
        raise MetricUnavailable(
            f"id_dist n/a: comicutils.faces cannot be imported ({err})") from err
    try:
        out = identity_distance(p.clamp(0, 1), ph.clamp(0, 1), on_missing="nan")
    except (AssetUnavailable, ImportError) as err:
        raise MetricUnavailable(f"id_dist n/a: the dlib face models are not available "
                                f"({type(err).__name__}: {err})") from err
    return torch.as_tensor(out).detach().to("cpu", torch.float64).reshape(-1)


# --------------------------------------------------------------------------- tables
_PAIRWISE = {"ssim": ssim, "psnr": psnr, "mse": mse, "rmse": rmse, "mae": mae, "fsim": fsim}


def _compute(metric: str, p, t, ph, *, device, batch_size) -> torch.Tensor:
    if metric in _PAIRWISE:
        return _PAIRWISE[metric](p, t)
    if metric in ("lpips_vgg", "lpips_alex"):
        return lpips(p, t, metric.split("_")[1], device=device, batch_size=batch_size)
    if metric == "id_dist":
        return id_dist(p, ph)
    raise AssertionError(metric)  # pragma: no cover - names are checked before


# --------------------------------------------------------------------------- single-image measures
_LAPLACE = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
_LUMA = torch.tensor([0.299, 0.587, 0.114])


def _grey(images: torch.Tensor, what: str) -> torch.Tensor:
    x = _as_batch(images, what).detach().float().cpu().clamp(0, 1)
    if x.shape[1] != 3:
        raise ImageError(f"{what}: expected RGB images (N, 3, H, W); got {tuple(x.shape)}")
    _check_min_side(x, what, 3)
    return (x * _LUMA.view(1, 3, 1, 1)).sum(1, keepdim=True)


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Variance of the Laplacian of each image's grey level (N,), on [0, 1] images: high for line
    work and hard edges, low for blur. Comparable only between images of the same size."""
    g = _grey(images, "sharpness")
    lap = torch.nn.functional.conv2d(g, _LAPLACE.view(1, 1, 3, 3))
    return lap.flatten(1).var(dim=1)


_SOBEL = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 4


def gradient_magnitude(images: torch.Tensor) -> torch.Tensor:
    """Sobel gradient magnitude of the grey level (N, 1, H-2, W-2), in grey units per pixel, for
    [0, 1] RGB images (N, 3, H, W). Differentiable and on the images' device (a training term
    can use it); :func:`edge_density` thresholds it."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise ImageError(f"gradient_magnitude: expected RGB images (N, 3, H, W); got {tuple(images.shape)}")
    _check_min_side(images, "gradient_magnitude", 3)
    g = (images.float() * _LUMA.to(images.device).view(1, 3, 1, 1)).sum(1, keepdim=True)
    k = _SOBEL.to(images.device)
    gx = torch.nn.functional.conv2d(g, k.view(1, 1, 3, 3))
    gy = torch.nn.functional.conv2d(g, k.t().contiguous().view(1, 1, 3, 3))
    return (gx ** 2 + gy ** 2 + 1e-12).sqrt()


def edge_density(images: torch.Tensor, threshold: float = 0.25) -> torch.Tensor:
    """Share of pixels on an edge (N,): Sobel gradient magnitude of the grey level above
    ``threshold`` (in [0, 1] grey units per pixel, 0.25 ≈ a clear ink line). Comics with outlines
    score higher than photos; blur lowers it."""
    x = _as_batch(images, "edge_density").detach().float().cpu().clamp(0, 1)
    if x.shape[1] != 3:
        raise ImageError(f"edge_density: expected RGB images (N, 3, H, W); got {tuple(x.shape)}")
    return (gradient_magnitude(x) > threshold).float().flatten(1).mean(dim=1)


def edge_histogram_distance(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How far each image's *distribution* of edge strengths is from its target's (N,): the
    1-D Wasserstein distance between their sorted :func:`gradient_magnitude` values, i.e. the
    mean gap between the k-th weakest edge of one and the k-th weakest of the other, k over
    every pixel. Blind to where an edge sits, so a target drawn a few pixels off does not pull
    towards blur; a comic's histogram is mostly flat zero with a tail of strong ink lines, and
    matching it asks for both flat shading and lines. Differentiable in ``images``; same shapes."""
    _same_shape("edge_histogram_distance", images, targets)
    return _sorted_gap(gradient_magnitude(images).flatten(1), gradient_magnitude(targets).flatten(1))


def _same_shape(what: str, images: torch.Tensor, targets: torch.Tensor) -> None:
    if images.shape != targets.shape:
        raise ImageError(f"{what}: images {tuple(images.shape)} and targets {tuple(targets.shape)} "
                         f"must have the same shape")


def _sorted_gap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Mean |a_(k) - b_(k)| over the last dimension, each sorted: the 1-D Wasserstein distance
    between two equally long lists of values, blind to their order (the ink and palette terms)."""
    return (a.sort(dim=-1).values - b.sort(dim=-1).values).abs().mean(dim=-1)


# fixed colour directions for palette_distance: the three channels, grey, and two opponent axes
_PALETTE_AXES = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0],
                              [1 / 3 ** 0.5] * 3, [1 / 2 ** 0.5, -1 / 2 ** 0.5, 0.0],
                              [1 / 6 ** 0.5, 1 / 6 ** 0.5, -2 / 6 ** 0.5]])


def palette_distance(images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """How far each image's *distribution of colours* is from its target's (N,): every pixel's
    colour is projected on six fixed directions (R, G, B, grey and two opponent axes), each
    projection sorted, and the mean gap between the k-th values taken (a sliced 1-D Wasserstein
    distance). Blind to where a colour sits; a comic's few flat tones make its sorted values run
    in long steps, so matching them asks for fewer, flatter tones. Differentiable; same shapes."""
    _same_shape("palette_distance", images, targets)
    if images.dim() != 4 or images.shape[1] != 3:
        raise ImageError(f"palette_distance: expected RGB images (N, 3, H, W); got {tuple(images.shape)}")
    axes = _PALETTE_AXES.to(images.device)
    a, b = (torch.einsum("nchw,kc->nkhw", x.float(), axes).flatten(2) for x in (images, targets))
    return _sorted_gap(a, b).mean(dim=1)


def palette_size(images: torch.Tensor, levels: int = 16, share: float = 0.9) -> torch.Tensor:
    """How many colours it takes to paint ``share`` of each image (N,): RGB quantised to
    ``levels`` steps per channel, the most used colours counted until they cover ``share`` of the
    pixels. Flat shading needs few; photo texture and grain need many."""
    x = _as_batch(images, "palette_size").detach().float().cpu().clamp(0, 1)
    if levels < 2 or not 0 < share <= 1:
        raise ValueError(f"palette_size: levels must be >= 2 and share in (0, 1]; got {levels}, {share}")
    q = (x * (levels - 1e-6)).long()
    codes = (q[:, 0] * levels + q[:, 1]) * levels + q[:, 2]
    out = []
    for c in codes:
        counts = torch.bincount(c.flatten(), minlength=levels ** 3).sort(descending=True).values
        covered = counts.cumsum(0).double() / c.numel()
        out.append(int((covered < share - 1e-9).sum()) + 1)
    return torch.tensor(out, dtype=torch.float32)


def superpixel_flatten(images: torch.Tensor, segments: int = 200, compactness: float = 10.0) -> torch.Tensor:
    """Each image painted flat (N, 3, H, W): cut into about ``segments`` SLIC superpixels
    (regions of similar colour that follow its edges) and every superpixel filled with its mean
    colour — the "structure" picture of white-box cartoonization (Wang & Yu 2020). Not
    differentiable (a target, computed on the CPU); same size and device as ``images``."""
    from skimage.segmentation import slic

    x = _as_batch(images, "superpixel_flatten")
    if segments < 1:
        raise ValueError(f"superpixel_flatten: segments must be >= 1; got {segments}")
    out = []
    for im in x.detach().float().cpu().clamp(0, 1).numpy().transpose(0, 2, 3, 1).astype(np.float64):
        labels = slic(im, n_segments=segments, compactness=compactness, start_label=0, channel_axis=-1).ravel()
        counts = np.maximum(np.bincount(labels), 1)
        flat = np.stack([(np.bincount(labels, im[..., c].ravel()) / counts)[labels] for c in range(3)], 0)
        out.append(torch.from_numpy(flat.reshape(3, *im.shape[:2])))
    return torch.stack(out).to(device=x.device, dtype=x.dtype)


def flatness_distance(images: torch.Tensor, segments: int = 200) -> torch.Tensor:
    """How far each image is from its own flat-painted version (N,): mean |x - flatten(x)| with
    :func:`superpixel_flatten` held fixed, so its gradient pulls every pixel towards its
    superpixel's mean colour: texture, grain and stray strands go, region boundaries stay."""
    x = _as_batch(images, "flatness_distance")
    return (x - superpixel_flatten(x.detach(), segments)).abs().mean(dim=(1, 2, 3))


def score_pairs(preds: torch.Tensor, targets: torch.Tensor, *,
                metrics: Sequence[str] | None = None, names: Sequence[str] | None = None,
                photos: torch.Tensor | None = None, batch_size: int = 16,
                device: str | torch.device | None = None, strict: bool | None = None):
    """Score every (prediction, target) pair -> pandas DataFrame, one row per pair.

    ``preds``, ``targets``: (N, 3, H, W) in [0, 1], same shape. ``photos``: the N input photos
    (any size), needed by ``"id_dist"``. ``metrics``: names from :data:`METRICS`, in the order
    wanted; default all of them (``"id_dist"`` only when ``photos`` is given). ``names``: row
    labels (e.g. file stems), default 0..N-1; the index is called ``"pair"``.

    Pairs are processed ``batch_size`` at a time to bound memory. A metric that cannot be
    computed here (:class:`MetricUnavailable`, or images below its :data:`MIN_SIZE`) becomes a
    NaN column and ``df.attrs["unavailable"][metric]`` says why. With ``strict=True`` --
    the default in ``full`` mode -- it raises instead.
    """
    import pandas as pd

    p, t = _validate_pair(preds, targets, metric="score_pairs")  # chunks are clamped later
    n = p.shape[0]
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1; got {batch_size}")
    strict = (get_mode() == "full") if strict is None else bool(strict)

    if metrics is None:
        wanted = [m for m in METRICS if m != "id_dist" or photos is not None]
    else:
        wanted = [metrics] if isinstance(metrics, str) else list(metrics)
        unknown = [m for m in wanted if m not in METRICS]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; choose from {', '.join(METRICS)}")
        if len(set(wanted)) != len(wanted):
            raise ValueError(f"metric listed twice: {wanted}")
        if "id_dist" in wanted and photos is None:
            raise ValueError("id_dist compares each prediction with its input photo: pass photos=")
    ph = None
    if photos is not None:
        ph = _as_batch(photos, "score_pairs: photos")
        if ph.shape[0] != n:
            raise ImageError(f"score_pairs: {n} pairs but {ph.shape[0]} photos "
                             f"(preds {tuple(p.shape)}, photos {tuple(ph.shape)})")
    if names is None:
        index = pd.RangeIndex(n, name="pair")
    else:
        labels = [str(x) for x in names]
        if len(labels) != n:
            raise ValueError(f"{len(labels)} names for {n} pairs")
        if len(set(labels)) != n:
            raise ValueError("names must be unique (they become the table's index)")
        index = pd.Index(labels, name="pair")

    unavailable: dict[str, str] = {}
    for m in wanted:
        side = MIN_SIZE.get(m)
        shapes = [p.shape] + ([ph.shape] if m == "id_dist" else [])
        small = [s for s in shapes if min(s[-2:]) < (side or 0)]
        if n and small:
            reason = (f"{m} n/a: needs images of at least {side}x{side} px; got "
                      f"{small[0][-2]}x{small[0][-1]}")
            if strict:
                raise ImageError(reason)
            unavailable[m] = reason

    parts: dict[str, list[torch.Tensor]] = {m: [] for m in wanted}
    for start in range(0, n, batch_size):
        sl = slice(start, start + batch_size)
        for m in wanted:
            if m in unavailable:
                continue
            try:
                parts[m].append(_compute(m, p[sl], t[sl], None if ph is None else ph[sl],
                                         device=device, batch_size=batch_size))
            except MetricUnavailable as err:
                if strict:
                    raise
                unavailable[m] = str(err)

    columns = {}
    for m in wanted:
        if m in unavailable or not parts[m]:
            columns[m] = np.full(n, np.nan)
        else:
            columns[m] = torch.cat(parts[m]).numpy()
    df = pd.DataFrame(columns, index=index, columns=wanted, dtype="float64")
    df.attrs["unavailable"] = dict(unavailable)
    return df


def summarize(df):
    """Mean and std per metric over the pairs of a :func:`score_pairs` table -> DataFrame.

    One row per metric; columns ``mean``, ``std`` (sample std, ddof=1), ``n`` (finite values
    used), ``n_inf`` (infinite values), ``n_missing`` (NaN: e.g. no face found), ``note``.

    The rule for infinities: PSNR is ``inf`` for an identical pair, which would make the mean
    ``inf`` whatever the other pairs are. So mean and std are taken **over the finite values
    only**, ``n_inf`` counts the pairs left out, and ``note`` says so; if every value is
    ``inf`` the mean is ``inf``. A metric listed in ``df.attrs["unavailable"]`` shows
    ``"n/a"`` as mean and std (those columns are then of object dtype) and its reason in
    ``note``.
    """
    import pandas as pd

    unavailable = dict(df.attrs.get("unavailable", {}))
    rows = {}
    for col in df.columns:
        if col in unavailable:
            rows[col] = {"mean": "n/a", "std": "n/a", "n": 0, "n_inf": 0,
                         "n_missing": int(len(df)), "note": unavailable[col]}
            continue
        v = pd.to_numeric(df[col], errors="coerce").to_numpy(dtype=np.float64)
        finite = v[np.isfinite(v)]
        n_inf = int(np.isinf(v).sum())
        n_missing = int(np.isnan(v).sum())
        if finite.size:
            mean = float(finite.mean())
        elif n_inf:
            mean = math.copysign(math.inf, float(v[np.isinf(v)][0]))
        else:
            mean = math.nan
        std = float(finite.std(ddof=1)) if finite.size > 1 else math.nan
        notes = []
        if n_inf:
            what = "identical pair(s), PSNR = inf" if col == "psnr" else "infinite value(s)"
            notes.append(f"{n_inf} {what} left out of mean/std" if finite.size
                         else f"all {n_inf} values infinite ({what})")
        if n_missing:
            notes.append(f"{n_missing} pair(s) without a value")
        rows[col] = {"mean": mean, "std": std, "n": int(finite.size), "n_inf": n_inf,
                     "n_missing": n_missing, "note": "; ".join(notes)}
    out = pd.DataFrame.from_dict(rows, orient="index",
                                 columns=["mean", "std", "n", "n_inf", "n_missing", "note"])
    out.index.name = "metric"
    out.attrs["unavailable"] = unavailable
    return out

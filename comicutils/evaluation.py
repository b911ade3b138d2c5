"""Score every stylizer on the same held-out pairs: one table, one row per method.

:func:`evaluate` runs each :class:`comicutils.stylizers.Stylizer` on the held-out photos,
times it, and scores its outputs against the artist's comics with
:func:`comicutils.metrics.score_pairs` (SSIM, PSNR, MSE, FSIM, LPIPS-VGG, LPIPS-Alex; LPIPS is
"n/a" without its ImageNet backbones) plus the identity distance to the input photo. Each
row also names the run mode, the weights the method used and its parameter count. Two columns
come from the GAN project report's metrics (:mod:`comicutils.gan`): ``style_acc``, the share of a
method's outputs a photo / comic v1 / comic v2 style classifier labels "comic v2", and ``is``,
the Inception Score of the outputs ("n/a" without the FID Inception weights).

``python -m comicutils evaluate --methods identity cartoon ... --json out.json`` writes the
same table as JSON.
"""
from __future__ import annotations

import math
import time
from functools import lru_cache
from typing import Mapping, Sequence

import numpy as np
import torch

from . import metrics
from .runtime import by_mode, get_mode, notice_banner

EVAL_METRICS = ("ssim", "psnr", "mse", "fsim", "lpips_vgg", "lpips_alex", "id_dist")
SET_METRICS = ("fid", "kid", "fd_taef2")
STYLE_METRICS = ("style_acc", "is")
STYLE_TARGET = "comic v2"
COLUMNS = ("method", "mode", "weights", "parameters", "seconds_per_image", *EVAL_METRICS, *SET_METRICS,
           *STYLE_METRICS)


def min_size(metric_names: Sequence[str] = EVAL_METRICS) -> int:
    """The smallest image side at which every metric in ``metric_names`` means something
    (:data:`comicutils.metrics.MIN_SIZE`; SSIM's window, LPIPS's deepest layer, face detection)."""
    return max(metrics.MIN_SIZE.get(m, 1) for m in metric_names)


def min_size_reason(metric_names: Sequence[str] = EVAL_METRICS) -> str:
    worst = max(metric_names, key=lambda m: metrics.MIN_SIZE.get(m, 1))
    return f"{worst} needs at least {metrics.MIN_SIZE.get(worst, 1)} px"


def evaluate(methods: Mapping[str, object] | Sequence[object], photos: torch.Tensor,
             comics: torch.Tensor, *, metric_names: Sequence[str] = EVAL_METRICS,
             set_metrics: Sequence[str] = SET_METRICS, style_metrics: Sequence[str] = STYLE_METRICS,
             style_classifier=None):
    """Run and score every method -> pandas DataFrame, one row per method (columns :data:`COLUMNS`).

    ``methods``: stylizers (a list, or a dict whose keys become the row names);
    ``photos``, ``comics``: aligned held-out pairs (N, 3, H, W) in [0, 1]. Metric values are
    means over the pairs (PSNR over finite values; identical pairs give inf); unavailable
    metrics are NaN with the reason in ``df.attrs["unavailable"]``. ``df.attrs["outputs"]``
    keeps each method's images for figures. ``set_metrics`` (FID, KID) compare the *set* of
    outputs with the set of comics on the FID Inception's features (:mod:`comicutils.fid`);
    without its weights they are NaN with the reason. ``fd_taef2`` is the same Fréchet distance
    on pooled taef2 features (:func:`comicutils.fid.feature_frechet_distance`): computable
    offline, labelled as what it is, and not comparable with any published FID. With a few dozen pairs FID is dominated
    by its estimation error (2048-d covariances); KID is unbiased and the better guide there.
    In ``full`` mode a metric that cannot be computed is an error
    (:class:`~comicutils.metrics.MetricUnavailable`, saying which weights are missing), not NaN.

    ``style_metrics``: ``style_acc`` is the share of the outputs that ``style_classifier`` (a
    :class:`comicutils.gan.StyleClassifier`) labels "comic v2"; without one,
    :func:`default_style_classifier` trains a quick one on the course's training split and
    says so in a notice. ``is`` is the Inception Score of the outputs (:mod:`comicutils.gan`;
    one split under 20 images, else up to 10), NaN with the reason without the FID Inception.
    """
    import pandas as pd

    items = methods.items() if isinstance(methods, Mapping) else [(m.name, m) for m in methods]
    rows, outputs, unavailable, reference = [], {}, {}, {}
    classifier = {"model": style_classifier} if style_classifier is not None else {}
    for label, method in items:
        start = time.perf_counter()
        out = method(photos)
        seconds = (time.perf_counter() - start) / max(len(photos), 1)
        table = metrics.score_pairs(out, comics, metrics=list(metric_names), photos=photos,
                                    strict=get_mode() == "full")
        unavailable.update(table.attrs.get("unavailable", {}))
        row = {"method": label, "mode": get_mode(), "weights": method.weights,
               "parameters": int(method.parameters), "seconds_per_image": seconds}
        for name in metric_names:
            values = table[name].to_numpy(dtype=float)
            values = values[~np.isnan(values)]
            finite = values[np.isfinite(values)]
            # mean over finite values (identical pairs give PSNR inf); all inf -> inf
            row[name] = (float(finite.mean()) if len(finite) else
                         float(values[0]) if len(values) else float("nan"))
        features = {}              # the FID Inception runs once per image set, not per metric
        for name in set_metrics:
            row[name] = _set_metric(name, out, comics, unavailable, features, reference)
        for name in style_metrics:
            row[name] = _style_metric(name, out, unavailable, classifier)
        rows.append(row)
        outputs[label] = out
    df = pd.DataFrame(rows, columns=["method", "mode", "weights", "parameters",
                                     "seconds_per_image", *metric_names, *set_metrics, *style_metrics])
    df.attrs["unavailable"] = unavailable
    df.attrs["outputs"] = outputs
    return df


def _set_metric(name: str, outputs: torch.Tensor, comics: torch.Tensor, unavailable: dict,
                features: dict, reference: dict) -> float:
    """FID or KID of ``outputs`` against ``comics``; Inception features are computed once per
    set (``features`` for this method's outputs, ``reference`` for the comics, shared by rows)."""
    from . import fid

    if name not in SET_METRICS:
        raise ValueError(f"unknown set metric {name!r}")
    if name in unavailable:
        return float("nan")
    if name == "fd_taef2":
        from .assets import AssetUnavailable

        side = min(outputs.shape[-2:])
        try:
            return fid.feature_frechet_distance(outputs, comics, size=max(8, side - side % 8))
        except AssetUnavailable as err:
            if get_mode() == "full":
                raise
            unavailable[name] = f"FD on taef2 features n/a: {err}"
            return float("nan")
    try:
        if "outputs" not in features:
            features["outputs"] = fid.features(outputs)
        if "comics" not in reference:
            reference["comics"] = fid.features(comics)
    except metrics.MetricUnavailable as err:
        if get_mode() == "full":
            raise
        unavailable[name] = str(err)
        return float("nan")
    a, b = features["outputs"], reference["comics"]
    if name == "fid":
        return fid.frechet_distance(a, b)
    return fid.kernel_inception_distance(a, b, subset_size=len(comics))[0]


def default_style_classifier(steps: int | None = None, seed: int = 0):
    """The style classifier ``evaluate`` uses when none is given: trained here, once per process.

    A :class:`comicutils.gan.StyleClassifier` trained on the course's training split (photo /
    comic v1 / comic v2, 64 px; :func:`comicutils.gan.course_style_classifier`) for ``steps``
    steps (default by mode: smoke 20, auto 150, full 600), announced in a notice. Chapter 07
    trains and saves the same classifier; pass that one to ``evaluate`` to reuse it.
    """
    steps = by_mode(smoke=20, auto=150, full=600) if steps is None else int(steps)
    return _trained_style_classifier(steps, int(seed))


@lru_cache(maxsize=2)
def _trained_style_classifier(steps: int, seed: int):
    from . import gan

    notice_banner("No style classifier given: training one for the style_acc column",
                  f"{steps} steps on the course's training pairs (photo / comic v1 / comic v2 at 64 px), as in "
                  "chapter 07; pass style_classifier= to evaluate to use another.")
    return gan.course_style_classifier(size=64, steps=steps, seed=seed, show_progress=False)


def _style_metric(name: str, outputs: torch.Tensor, unavailable: dict, classifier: dict) -> float:
    """``style_acc`` (share labelled comic v2) or ``is`` (Inception Score mean) of ``outputs``."""
    from . import assets, gan

    if name not in STYLE_METRICS:
        raise ValueError(f"unknown style metric {name!r}")
    if name in unavailable:
        return float("nan")
    try:
        if name == "style_acc":
            if "model" not in classifier:
                classifier["model"] = default_style_classifier()
            return gan.style_accuracy(outputs, STYLE_TARGET, classifier["model"])
        probs = gan.inception_probabilities(outputs)
    except (metrics.MetricUnavailable, assets.AssetUnavailable) as err:
        if get_mode() == "full":
            raise
        unavailable[name] = (str(err) if name == "is" else
                             f"style_acc n/a: the style classifier's training images are not available ({err})")
        return float("nan")
    return gan.inception_score(probs, splits=max(1, min(10, len(outputs) // 10)))[0]


def _look(images: torch.Tensor) -> dict:
    return {"edge density": float(metrics.edge_density(images).mean()),
            "sharpness": float(metrics.sharpness(images).mean()),
            "palette size": float(metrics.palette_size(images).mean())}


def portrait_report(methods: Mapping[str, object], photos: torch.Tensor, *, comics: torch.Tensor | None = None,
                    detector: str = "auto"):
    """How each method treats unpaired portraits -> DataFrame, one row per method (+ reference rows).

    ``methods``: {label: stylizer or any callable images -> images}; ``photos`` (N, 3, H, W) in
    [0, 1] with one face each (e.g. the 90 CC0 portraits). Columns: ``faces found`` (in both
    the photo and the output, of N), ``ID < 0.6`` (share of those faces whose dlib identity
    distance photo -> output is below :data:`comicutils.faces.SAME_PERSON_THRESHOLD`: the same
    person), ``ID distance`` (median), ``edge density`` and ``sharpness``
    (:func:`comicutils.metrics.edge_density`, :func:`~comicutils.metrics.sharpness`: line work),
    and ``palette size`` (:func:`comicutils.metrics.palette_size`, mean: how many colours paint
    90 % of an image; flat shading needs few). Reference rows: the photos themselves and, given
    ``comics``, the artist's comics (their edge density and palette size are what "visible
    outlines and flat shading" should approach). ``df.attrs["outputs"]`` keeps
    the images for figures.
    """
    import pandas as pd

    from . import faces

    rows, outputs = [], {}
    reference = faces.identity_embedding(photos, on_missing="nan", detector=detector)
    for label, method in methods.items():
        out = method(photos)
        emb = faces.identity_embedding(out, on_missing="nan", detector=detector)
        d = (emb - reference).norm(dim=1)
        found = ~torch.isnan(d)
        rows.append({"method": label, "faces found": int(found.sum()), "of": len(photos),
                     "ID < 0.6": float((d[found] < faces.SAME_PERSON_THRESHOLD).float().mean()) if found.any()
                     else float("nan"),
                     "ID distance": float(d[found].median()) if found.any() else float("nan"),
                     **_look(out)})
        outputs[label] = out
    for label, images in (("photos (input)", photos), ("artist's comics", comics)):
        if images is not None:
            rows.append({"method": label, **_look(images)})
    df = pd.DataFrame(rows).set_index("method")
    df.attrs["outputs"] = outputs
    return df


def to_json_rows(df) -> list[dict]:
    """Rows for JSON: NaN -> None, inf -> "inf" (JSON has neither)."""
    rows = []
    for rec in df.to_dict(orient="records"):
        clean = {}
        for k, v in rec.items():
            if isinstance(v, float) and math.isnan(v):
                v = None
            elif isinstance(v, float) and math.isinf(v):
                v = "inf" if v > 0 else "-inf"
            clean[k] = v
        rows.append(clean)
    return rows

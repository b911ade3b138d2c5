"""Lu & Zhou's losses: the semantic-preservation constraint and the perceptual distance it uses.

``L_semantic(G(z), G'(z)) = LPIPS(G(z), G'(z)) + lambda_ID * L_ID(G(z), G'(z))``, lambda_ID = 0.1.

* **LPIPS** needs VGG-16 ImageNet weights (asset ``vgg16-imagenet``); when they can be had, the
  real LPIPS (v0.1, VGG) is used. Offline the stand-in is an *LPIPS-style distance on the
  pretrained taef2 encoder*: activations of blocks 1, 5, 9, 13 normalised to unit length over
  channels, squared differences summed over channels, averaged over positions and blocks (the
  LPIPS recipe without its learned per-channel weights).
* **Identity** (an ArcFace-type face-recognition network in Lu & Zhou) is not differentiable in
  the course's toolkit (dlib). The stand-in is the cosine distance between the spatially
  pooled deepest taef2 features (block 13) -- a generic appearance descriptor, not a face
  recogniser. The dlib identity distance stays the *metric*.

Both stand-ins are announced with a substitute banner; full mode refuses them. Images are
(N, 3, H, W) in [0, 1] with H, W multiples of 8; every distance returns one value per image (N,).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import get_mode, substitute_banner
from ..taesd import feature_distance

LAMBDA_ID = 0.1
"""Lu & Zhou: weight of the identity term inside the semantic constraint."""
LPIPS_BLOCKS = (1, 5, 9, 13)
IDENTITY_BLOCK = 13

_LPIPS_SUB = ("LPIPS (VGG-16, learned weights)",
              "LPIPS-style distance on taef2 encoder features (unit-normalised channels, equal weights)")
_ID_SUB = ("identity loss of a face-recognition network (ArcFace-type, differentiable)",
           "cosine distance of pooled taef2 block-13 features (generic appearance, not a face recogniser)")


class FeatureDistances(nn.Module):
    """LPIPS-style and identity-style distances from one pass of a frozen feature extractor.

    ``extractor(x) -> {block: (N, C, h, w)}`` must return ``lpips_blocks`` and ``id_block``;
    default: the pretrained taef2 encoder (:class:`comicutils.taesd.FeatureExtractor`).
    ``forward(a, b) -> (perceptual (N,), identity (N,))``. With ``feature_size`` the images are
    first resized to that many pixels (antialiased): on a CPU, taef2 at 32 px costs a quarter of
    64 px. Features of an input that needs no gradient are computed without one.
    """

    def __init__(self, extractor: nn.Module | None = None, lpips_blocks=LPIPS_BLOCKS, id_block=IDENTITY_BLOCK,
                 feature_size: int | None = None):
        super().__init__()
        if feature_size is not None and feature_size % 8:
            raise ValueError(f"feature_size must be a multiple of 8, got {feature_size}")
        self.feature_size = feature_size
        if extractor is None:
            from ..taesd import FeatureExtractor

            extractor = FeatureExtractor(tuple(sorted(set(lpips_blocks) | {id_block})))
        self.extractor = extractor.requires_grad_(False).eval()
        self.lpips_blocks, self.id_block = tuple(lpips_blocks), id_block

    def train(self, mode: bool = True):
        super().train(mode)
        self.extractor.eval()
        return self

    def features(self, x: torch.Tensor) -> dict:
        if self.feature_size is not None and x.shape[-1] != self.feature_size:
            x = F.interpolate(x, size=(self.feature_size, self.feature_size), mode="bilinear",
                              align_corners=False, antialias=True)
        if not x.requires_grad:
            with torch.no_grad():
                return self.extractor(x)
        return self.extractor(x)

    def from_features(self, fa: dict, fb: dict) -> tuple[torch.Tensor, torch.Tensor]:
        perc = feature_distance(fa, fb, self.lpips_blocks)
        ia, ib = fa[self.id_block].mean((2, 3)), fb[self.id_block].mean((2, 3))
        ident = 1 - F.cosine_similarity(ia, ib, dim=1)
        return perc, ident

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_features(self.features(a), self.features(b))


class SemanticLoss(nn.Module):
    """``perceptual(a, b) + lambda_id * identity(a, b)`` per image (N,). Lu & Zhou, eq. 1.

    Also the perceptual term alone (``lambda_id = 0``) is Lu & Zhou's paired loss (eq. 2).

    The perceptual term is the real LPIPS (v0.1, VGG) whenever its weights can be had, whatever
    ``distances`` is passed; otherwise the LPIPS-style taef2 distance of ``distances`` (default
    :class:`FeatureDistances`) stands in, with a banner. Images are resized to
    ``distances.feature_size`` for LPIPS too, when it is set. The identity term always comes from
    ``distances`` (a stand-in, announced). ``self.perceptual`` says which runs: ``"lpips-vgg"``
    or ``"taef2"``.

    ``full`` mode refuses the stand-ins: without the VGG-16 weights it raises
    :class:`~comicutils.assets.AssetUnavailable` saying how to get them, and with
    ``lambda_id > 0`` it raises because the registry has no differentiable face-recognition
    network (chapter 03 runs the constraint in auto mode).
    """

    def __init__(self, distances: FeatureDistances | None = None, lambda_id: float = LAMBDA_ID,
                 announce: bool = True):
        super().__init__()
        lpips_error = _lpips_available()
        if get_mode() == "full":
            if lpips_error is not None:
                from ..assets import AssetUnavailable

                raise AssetUnavailable(
                    "full mode: Lu & Zhou's semantic constraint needs LPIPS with VGG-16 ImageNet "
                    f"weights (asset 'vgg16-imagenet'), and they cannot be had here. {lpips_error}")
            if lambda_id:
                raise RuntimeError(
                    "full mode: Lu & Zhou's identity term needs a differentiable face-recognition "
                    "network (ArcFace-type); the course registry has none, and full mode does not "
                    "use the taef2 stand-in. Use lambda_id=0 (LPIPS only) or COMICUTILS_MODE=auto.")
        self.perceptual = "lpips-vgg" if lpips_error is None else "taef2"
        if distances is None and (self.perceptual == "taef2" or lambda_id):
            distances = FeatureDistances()
        if announce:
            if self.perceptual == "taef2":
                substitute_banner(*_LPIPS_SUB, reason="LPIPS needs VGG-16 ImageNet weights, not reachable here")
            if lambda_id:
                substitute_banner(*_ID_SUB, reason="no differentiable face-recognition network offline "
                                                   "(dlib's identity embedding has no gradients)")
        self.distances, self.lambda_id = distances, float(lambda_id)

    def _lpips(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from ..metrics import lpips_model

        size = getattr(self.distances, "feature_size", None)
        if size is not None and a.shape[-1] != size:
            a, b = (F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                  antialias=True) for x in (a, b))
        model = lpips_model("vgg", a.device)
        return model(a, b, normalize=True).flatten()   # [0, 1] in; lpips maps to [-1, 1]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if self.perceptual == "lpips-vgg":
            perc = self._lpips(a, b)
            if not self.lambda_id:
                return perc
            _, ident = self.distances(a, b)
        else:
            perc, ident = self.distances(a, b)
        return perc + self.lambda_id * ident


def _lpips_available() -> str | None:
    """None when the real LPIPS (VGG) can be built here, else the reason (with instructions)."""
    from ..metrics import MetricUnavailable, lpips_model

    try:
        lpips_model("vgg", "cpu")
    except MetricUnavailable as err:
        return str(err)
    return None


class StyleSetDistances:
    """Distances from sets of generated images to one fixed style set (Lu & Zhou's FID column).

    ``measure(images) -> {"FID": ..., "FD taef2": ...}``:

    * ``"FID"``: the Fréchet distance on the FID Inception's 2048-d pool features
      (:mod:`comicutils.fid`) whenever its weights can be had -- from the cache, a mirror, or
      test stand-ins put in force with ``COMICUTILS_STANDIN_CHECKSUMS``. Without them it is NaN
      and ``fid_unavailable`` says why (FID is never computed on other features); ``full`` mode
      raises :class:`~comicutils.metrics.MetricUnavailable` instead.
    * ``"FD taef2"``: the same formula on pooled taef2 block-13 features at ``fd_size`` px -- a
      different number, available offline, comparable only with itself.

    The style set's features are computed once, at construction. ``fid_extractor`` and
    ``fd_extractor`` replace the two networks (tests); ``fid=False`` skips FID altogether.
    """

    def __init__(self, style_images: torch.Tensor, *, fid: bool = True, fid_extractor: nn.Module | None = None,
                 fd_extractor: nn.Module | None = None, fd_size: int = 64, fd_block: int = IDENTITY_BLOCK):
        from .. import fid as fidlib
        from ..metrics import MetricUnavailable

        if len(style_images) < 2:
            raise ValueError("a style set needs at least 2 images")
        if fd_extractor is None:
            from ..taesd import FeatureExtractor

            fd_extractor = FeatureExtractor((fd_block,))
        self.fd_extractor, self.fd_size, self.fd_block = fd_extractor.requires_grad_(False).eval(), fd_size, fd_block
        self.fid_extractor: nn.Module | None = None
        self.fid_unavailable: str | None = "FID not requested" if not fid else None
        if fid:
            try:
                self.fid_extractor = fid_extractor if fid_extractor is not None else fidlib.fid_inception()
            except MetricUnavailable as err:
                if get_mode() == "full":
                    raise
                self.fid_unavailable = str(err)
        self._fd_ref = self._fd_features(style_images)
        self._fid_ref = None if self.fid_extractor is None else fidlib.features(style_images, self.fid_extractor)

    @property
    def has_fid(self) -> bool:
        return self.fid_extractor is not None

    @torch.no_grad()
    def _fd_features(self, images: torch.Tensor) -> torch.Tensor:
        from ..images import resize

        x = resize(images, self.fd_size)
        return torch.cat([self.fd_extractor(c)[self.fd_block].mean((2, 3)).cpu() for c in x.split(32)])

    def __call__(self, images: torch.Tensor) -> dict[str, float]:
        from .. import fid as fidlib

        out = {"FID": float("nan"), "FD taef2": fidlib.frechet_distance(self._fd_features(images), self._fd_ref)}
        if self.fid_extractor is not None:
            out["FID"] = fidlib.frechet_distance(fidlib.features(images, self.fid_extractor), self._fid_ref)
        return out

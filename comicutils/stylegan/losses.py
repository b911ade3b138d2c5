"""Lu & Zhou's losses: the semantic-preservation constraint and the distances it uses.

``L_semantic(G(z), G'(z)) = LPIPS(G(z), G'(z)) + lambda_ID * L_ID(G(z), G'(z))``, lambda_ID = 0.1.

* **LPIPS** needs VGG-16 ImageNet weights (asset ``vgg16-imagenet``); when they can be had, the
  real LPIPS (v0.1, VGG) is used. Offline the stand-in is an *LPIPS-style distance on the
  pretrained taef2 encoder*: activations of blocks 1, 5, 9, 13 normalised to unit length over
  channels, squared differences summed over channels, averaged over positions and blocks (the
  LPIPS recipe without its learned per-channel weights), announced with a substitute banner.
* **Identity** (:class:`IdentityLoss`): Lu & Zhou's ArcFace-type term ``1 - cos(E(a), E(b))``
  with E dlib's face-recognition ResNet, the network behind the course's identity *metric*,
  run in PyTorch (:mod:`comicutils.dlib_resnet`, read from the file ``face_recognition_models``
  installs: no download, no substitute). E reads dlib's 150 px face chip (padding 0.25), cut
  here with ``grid_sample`` so that gradients reach the image. Both images of a pair are cut
  with one transform, found from the reference ``b``: dlib's 5 landmarks on a copy resized to
  :data:`DETECT_SIZE` px (dlib's HOG detector misses faces in 64 px images; at 256 px it finds
  74 of the 90 CC0 portraits shrunk to 64 px, their landmarks 0.6 px on average from those on
  the 256 px originals), or, where it finds no face, the course's alignment template
  :data:`comicutils.faces.TEMPLATE_5` (the face2comics pairs and the course generators' faces
  sit within about 0.02 of the side of it). With a face found, the chip is dlib's own
  (``get_face_chip``) to within a grey level.

Images are (N, 3, H, W) in [0, 1] (taef2 distances: H, W multiples of 8); every distance
returns one value per image (N,).
"""
from __future__ import annotations

import collections
import hashlib

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import faces
from ..runtime import get_mode, substitute_banner
from ..taesd import feature_distance

LAMBDA_ID = 0.1
"""Lu & Zhou: weight of the identity term inside the semantic constraint."""
LPIPS_BLOCKS = (1, 5, 9, 13)
IDENTITY_BLOCK = 13
"""The taef2 block whose pooled features give :class:`FeatureDistances`' appearance distance and
the "FD taef2" of :class:`StyleSetDistances`."""

CHIP_SIZE = 150
CHIP_PADDING = 0.25
"""dlib's face chip for its face-recognition ResNet: 150 px, padding 0.25 (``compute_face_descriptor``)."""
CHIP_POINTS_5 = np.array([
    [0.8595674595992, 0.2134981538014],  # outer corner, eye on the image's right
    [0.6460604764104, 0.2289674387677],  # inner corner, eye on the image's right
    [0.1205750620789, 0.2137274526848],  # outer corner, eye on the image's left
    [0.3340850613712, 0.2290642403242],  # inner corner, eye on the image's left
    [0.4901123135679, 0.6277975316475],  # bottom of the nose
])
"""Where dlib's ``get_face_chip_details`` puts the 5 landmarks, as fractions of an unpadded chip;
with padding p a point q lands at ``(q + p) / (1 + 2 p) * size``."""
DETECT_SIZE = 256
"""Reference images are resized to this many pixels before dlib's HOG detector looks for a face."""
MIN_DETECT_SIZE = 32
"""Below this side (px) no face is looked for: at 16 px the detector finds 16 of 90 portraits,
with landmarks 2 px (of 256) off; the template is used instead."""
MIN_FACE_FRACTION = 0.25
"""A detection narrower than this share of the image is not the face of an aligned portrait."""

_LPIPS_SUB = ("LPIPS (VGG-16, learned weights)",
              "LPIPS-style distance on taef2 encoder features (unit-normalised channels, equal weights)")


class FeatureDistances(nn.Module):
    """LPIPS-style and appearance distances from one pass of a frozen feature extractor.

    ``extractor(x) -> {block: (N, C, h, w)}`` must return ``lpips_blocks`` and ``id_block``;
    default: the pretrained taef2 encoder (:class:`comicutils.taesd.FeatureExtractor`).
    ``forward(a, b) -> (perceptual (N,), appearance (N,))``: the LPIPS-style distance, and the
    cosine distance of the spatially pooled ``id_block`` features (a generic appearance
    descriptor, not a face recogniser; Lu & Zhou's identity term is :class:`IdentityLoss`).
    With ``feature_size`` the images are first resized to that many pixels (antialiased): on a
    CPU, taef2 at 32 px costs a quarter of 64 px. Features of an input that needs no gradient
    are computed without one.
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
        appearance = 1 - F.cosine_similarity(ia, ib, dim=1)
        return perc, appearance

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.from_features(self.features(a), self.features(b))


# --------------------------------------------------------------------------- dlib's face chip, differentiable
def _similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (2, 3) taking points src (K, 2) onto dst (K, 2), as dlib's
    ``find_similarity_transform``: [x', y'] = [[a, -b], [b, a]] [x, y] + t."""
    rows = np.concatenate([np.stack([src[:, 0], -src[:, 1], np.ones(len(src)), np.zeros(len(src))], 1),
                           np.stack([src[:, 1], src[:, 0], np.zeros(len(src)), np.ones(len(src))], 1)])
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, np.concatenate([dst[:, 0], dst[:, 1]]), rcond=None)
    return np.array([[a, -b, tx], [b, a, ty]])


def chip_matrix(landmarks: np.ndarray, size: int = CHIP_SIZE, padding: float = CHIP_PADDING) -> np.ndarray:
    """The 2x3 map from chip pixels (column, row) to image pixels (x, y) of dlib's face chip.

    dlib (``get_face_chip_details`` and ``extract_image_chip``): the similarity that best takes the
    chip's 5 points (:data:`CHIP_POINTS_5`, padded) onto the ``landmarks`` (5, 2) sets the chip's
    centre, angle and scale s; the chip's corner pixels 0 and size - 1 then span ``size * s - 1``
    image pixels. float64 (2, 3).
    """
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        raise ValueError(f"landmarks must be a finite (5, 2) array of (x, y); got shape {pts.shape}")
    fit = _similarity((CHIP_POINTS_5 + padding) / (1 + 2 * padding) * size, pts)
    scale = float(np.hypot(fit[0, 0], fit[1, 0]))
    if scale < 1e-6:
        raise ValueError("landmarks are all at one point; no face chip")
    centre = fit[:, :2] @ np.array([size / 2, size / 2]) + fit[:, 2]
    linear = fit[:, :2] / scale * (size * scale - 1) / (size - 1)
    return np.concatenate([linear, (centre - linear @ np.full(2, (size - 1) / 2))[:, None]], axis=1)


def extract_chips(images: torch.Tensor, matrices, size: int = CHIP_SIZE) -> torch.Tensor:
    """Face chips (N, 3, size, size) cut from ``images`` (N, 3, H, W) by ``matrices`` (N, 2, 3)
    (:func:`chip_matrix`), bilinear like dlib, black outside the image; differentiable in ``images``.

    Where a chip pixel spans 2 or more image pixels, the images are first averaged over f x f
    blocks (f = that span, rounded down), as dlib samples from an image pyramid there.
    """
    m = torch.as_tensor(np.asarray(matrices), dtype=torch.float64).reshape(-1, 2, 3)
    if len(m) != len(images):
        raise ValueError(f"{len(images)} images but {len(m)} chip matrices")
    f = int(max(1.0, float(m[:, :, :2].norm(dim=1).min()))) if len(m) else 1
    if f >= 2:
        images = F.avg_pool2d(images, f)
        m = torch.cat([m[:, :, :2] / f, (m[:, :, 2:] - (f - 1) / 2) / f], dim=2)
    h, w = images.shape[-2:]
    to_norm = torch.tensor([[2 / w, 0, 1 / w - 1], [0, 2 / h, 1 / h - 1], [0, 0, 1]], dtype=torch.float64)
    from_norm = torch.tensor([[size / 2, 0, (size - 1) / 2], [0, size / 2, (size - 1) / 2], [0, 0, 1]], dtype=torch.float64)
    full = torch.cat([m, torch.tensor([[[0.0, 0.0, 1.0]]], dtype=torch.float64).expand(len(m), 1, 3)], dim=1)
    theta = (to_norm @ full @ from_norm)[:, :2].to(images.device, images.dtype)
    grid = F.affine_grid(theta, [len(m), images.shape[1], size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _resize_points(points: np.ndarray, src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates (x, y) in an image of src (H, W) -> the same places after resizing it to dst."""
    scale = np.array([dst_hw[1] / src_hw[1], dst_hw[0] / src_hw[0]])
    return (points + 0.5) * scale - 0.5


def reference_landmarks(images: torch.Tensor, *, detect: bool = True, detect_size: int = DETECT_SIZE,
                        min_size: int = MIN_DETECT_SIZE, fallback: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """dlib's 5 landmarks of each image, for cutting face chips -> (landmarks (N, 5, 2) in pixels
    of ``images``, found (N,) bool).

    Each image (N, 3, H, W) in [0, 1] is resized to ``detect_size`` px (bicubic up, antialiased
    down) and searched by dlib's HOG detector (:func:`comicutils.faces.detect_faces_dlib`); on its
    largest face, at least :data:`MIN_FACE_FRACTION` of the width, dlib's 5-point predictor
    (:func:`comicutils.faces.landmarks_5`) places the landmarks. Where there is none, or the image
    is below ``min_size`` px, or ``detect`` is False, the fixed ``fallback`` (fractions of the
    side, default :data:`comicutils.faces.TEMPLATE_5`) stands in and ``found`` is False.
    """
    x = images.detach().float().clamp(0, 1).cpu()
    n, _, h, w = x.shape
    template = faces.TEMPLATE_5 if fallback is None else np.asarray(fallback, dtype=np.float64)
    out = np.repeat((template * np.array([w, h]))[None], n, axis=0)
    found = np.zeros(n, dtype=bool)
    if not detect or min(h, w) < min_size:
        return out, found
    if (h, w) != (detect_size, detect_size):
        x = F.interpolate(x, size=(detect_size, detect_size), mode="bicubic", align_corners=False,
                          antialias=min(h, w) > detect_size).clamp(0, 1)
    for i in range(n):
        boxes = faces.detect_faces_dlib(x[i], upsample=0, detector="hog")
        if boxes and boxes[0].width >= MIN_FACE_FRACTION * detect_size:
            out[i] = _resize_points(faces.landmarks_5(x[i], boxes[0]), (detect_size, detect_size), (h, w))
            found[i] = True
    return out, found


def _straight_through_clamp(x: torch.Tensor) -> torch.Tensor:
    """x clamped to [0, 1] in value, with the gradient of x itself (raw generator outputs overshoot)."""
    return x + (x.clamp(0, 1) - x).detach()


class IdentityLoss(nn.Module):
    """Lu & Zhou's identity term on dlib's face-recognition ResNet: ``1 - cos(E(a), E(b))`` (N,).

    ``a`` (the generated images, may need gradients) and ``b`` (the references) are (N, 3, H, W)
    in [0, 1]; both images of pair i are cut into dlib's 150 px chip with the same transform,
    :func:`chip_matrix` of :func:`reference_landmarks` of ``b[i]`` (detached), and E is the
    128-number descriptor of :class:`comicutils.dlib_resnet.FaceRecognitionResNet` (``model``;
    default: the installed file, loaded for this loss, so ``.to(device)`` moves a copy of its own).
    0 for identical images, up to 2. Landmarks of a reference already seen are remembered
    (an inversion's targets do not change); ``landmark_sources`` counts the references whose
    landmarks dlib found (``"dlib"``) and those that took the template (``"template"``).
    ``detect=False`` always uses the template.
    """

    def __init__(self, model: nn.Module | None = None, *, detect: bool = True, detect_size: int = DETECT_SIZE,
                 min_detect_size: int = MIN_DETECT_SIZE, cache_size: int = 4096):
        super().__init__()
        if model is None:
            from ..dlib_resnet import load_face_recognition_resnet

            model = load_face_recognition_resnet()
        self.model = model.requires_grad_(False).eval()
        self.detect, self.detect_size, self.min_detect_size = bool(detect), int(detect_size), int(min_detect_size)
        self.landmark_sources: collections.Counter = collections.Counter()
        self._cache: collections.OrderedDict = collections.OrderedDict()
        self._cache_size = int(cache_size)

    def train(self, mode: bool = True):
        super().train(mode)
        self.model.eval()
        return self

    def chip_matrices(self, references: torch.Tensor) -> np.ndarray:
        """(N, 2, 3) chip matrices of the references (N, 3, H, W), from dlib's landmarks or the template."""
        u8 = references.detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
        keys = [hashlib.blake2b(img.tobytes() + bytes(str(img.shape), "ascii"), digest_size=16).digest() for img in u8]
        todo = [i for i, k in enumerate(keys) if k not in self._cache]
        if todo:
            sub = references[todo]
            kw = dict(detect_size=self.detect_size, min_size=self.min_detect_size)
            try:
                pts, found = reference_landmarks(sub, detect=self.detect, **kw)
            except faces.FaceModelMissing as err:      # dlib is an optional extra: the template for every face
                print(f"identity loss: no dlib landmarks ({err}); face chips from the course's alignment template")
                self.detect = False
                pts, found = reference_landmarks(sub, detect=False, **kw)
            for i, p, hit in zip(todo, pts, found):
                self._cache[keys[i]] = (chip_matrix(p), bool(hit))
                self.landmark_sources["dlib" if hit else "template"] += 1
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        for k in keys:
            self._cache.move_to_end(k)
        return np.stack([self._cache[k][0] for k in keys]) if keys else np.zeros((0, 2, 3))

    def descriptors(self, images: torch.Tensor, matrices: np.ndarray) -> torch.Tensor:
        """dlib descriptors (N, 128) of the chips cut from ``images`` by ``matrices``; no graph when
        ``images`` needs no gradient."""
        with torch.set_grad_enabled(images.requires_grad and torch.is_grad_enabled()):
            chips = _straight_through_clamp(extract_chips(images, matrices))
            return self.model(chips)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.shape != b.shape:
            raise ValueError(f"identity pairs must have one shape; got {tuple(a.shape)} and {tuple(b.shape)}")
        matrices = self.chip_matrices(b)
        ea, eb = self.descriptors(a, matrices), self.descriptors(b, matrices)
        return 1 - F.cosine_similarity(ea, eb.to(ea.dtype), dim=1)


class SemanticLoss(nn.Module):
    """``perceptual(a, b) + lambda_id * identity(a, b)`` per image (N,). Lu & Zhou, eq. 1.

    Also the perceptual term alone (``lambda_id = 0``) is Lu & Zhou's paired loss (eq. 2).
    ``a`` are the generated images, ``b`` the references (the chips of the identity term are
    placed by ``b``'s landmarks).

    The perceptual term is the real LPIPS (v0.1, VGG) whenever its weights can be had, whatever
    ``distances`` is passed; otherwise the LPIPS-style taef2 distance of ``distances`` (default
    :class:`FeatureDistances`) stands in, with a banner. Images are resized to
    ``distances.feature_size`` for LPIPS too, when it is set. ``self.perceptual`` says which
    runs: ``"lpips-vgg"`` or ``"taef2"``. The identity term is :class:`IdentityLoss` (``identity``;
    built when ``lambda_id > 0``) on the images as they are, in every mode: dlib's network comes
    with ``face_recognition_models`` and needs no download.

    ``full`` mode refuses the LPIPS stand-in: without the VGG-16 weights it raises
    :class:`~comicutils.assets.AssetUnavailable` saying how to get them.
    """

    def __init__(self, distances: FeatureDistances | None = None, lambda_id: float = LAMBDA_ID,
                 announce: bool = True, identity: IdentityLoss | None = None):
        super().__init__()
        lpips_error = _lpips_available()
        if get_mode() == "full" and lpips_error is not None:
            from ..assets import AssetUnavailable

            raise AssetUnavailable(
                "full mode: Lu & Zhou's semantic constraint needs LPIPS with VGG-16 ImageNet "
                f"weights (asset 'vgg16-imagenet'), and they cannot be had here. {lpips_error}")
        self.perceptual = "lpips-vgg" if lpips_error is None else "taef2"
        if distances is None and self.perceptual == "taef2":
            distances = FeatureDistances()
        if announce and self.perceptual == "taef2":
            substitute_banner(*_LPIPS_SUB, reason="LPIPS needs VGG-16 ImageNet weights, not reachable here")
        if identity is None and lambda_id:
            identity = IdentityLoss()
        self.distances, self.identity, self.lambda_id = distances, identity, float(lambda_id)

    def _lpips(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        from ..metrics import lpips_model

        size = getattr(self.distances, "feature_size", None)
        if size is not None and a.shape[-1] != size:
            a, b = (F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                                  antialias=True) for x in (a, b))
        model = lpips_model("vgg", a.device)
        return model(a, b, normalize=True).flatten()   # [0, 1] in; lpips maps to [-1, 1]

    def perceptual_distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """The perceptual term alone (N,): LPIPS (VGG) or the taef2 stand-in."""
        return self._lpips(a, b) if self.perceptual == "lpips-vgg" else self.distances(a, b)[0]

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        perc = self.perceptual_distance(a, b)
        if not self.lambda_id:
            return perc
        return perc + self.lambda_id * self.identity(a, b).to(perc.dtype)


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

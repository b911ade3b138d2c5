"""Face detection, cropping, 5-point alignment and identity embeddings.

Conventions (the course's, see :mod:`comicutils.images`):

* Images come in as anything :func:`images.load_image` takes (path, bytes, PIL image, NumPy
  array) or as a float tensor (3, H, W) / (1, 3, H, W) in [0, 1]; batches as (N, 3, H, W) in
  [0, 1] or a list of image-likes. Every image is converted **once** to a C-contiguous uint8
  RGB array (H, W, 3), which is what OpenCV and dlib work on. Images whose shorter side is
  below :data:`images.MIN_SIZE` px, and tensors outside [0, 1], raise :class:`images.ImageError`.
* Images going out are float tensors (N, 3, H, W) in [0, 1].
* Boxes are :class:`Box` in pixel coordinates of the input image: ``left``/``top`` inclusive,
  ``right``/``bottom`` exclusive, so ``image[top:bottom, left:right]`` is the face.
* Landmarks are float arrays (5, 2) of (x, y) pixel coordinates, in dlib's 5-point order:
  0/1 = outer/inner corner of the eye on the image's right (the subject's left eye),
  2/3 = outer/inner corner of the eye on the image's left, 4 = bottom of the nose.
* "No face" is a result, not a crash: detectors return an empty list, and functions that need
  a face raise :class:`NoFaceFound` (a ``LookupError``) saying which image had none.

Models: OpenCV's Haar cascade ``haarcascade_frontalface_default.xml`` (in OpenCV 4 wheels, else
fetched through the registry; run by OpenCV 4 or, on OpenCV 5, by :mod:`comicutils.haar`), and
from the ``face_recognition_models`` package dlib's 5-point shape predictor and face-recognition
ResNet and the CNN face detector (MMOD), all released by dlib's author into the public domain.
dlib's HOG frontal detector is built into dlib; where it finds no face (a turned or tilted head)
detection falls back to the slower MMOD detector. Models load on first use and are cached. The
68-point predictor in the same package is *not* used (its training data is non-commercial).
"""
from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch

from .assets import AssetUnavailable
from .images import MIN_SIZE, ImageError, check_image_tensor, load_image, resize

SAME_PERSON_THRESHOLD = 0.6
"""dlib's convention: face descriptors closer than 0.6 (Euclidean) belong to the same person."""

HAAR_SCALE_FACTOR = 1.1
HAAR_MIN_NEIGHBORS = 4
"""The Human-to-Anime report's Haar settings: the trade-off between missed faces and false positives."""

MARGIN_K = 0.15
MARGIN_MIN = 0.2
MARGIN_MAX = 0.5
"""Margin rule of :func:`enlarge_box`: margin per side = clip(K / r, MIN, MAX) of the box side,
where r = box side / shorter image side."""

TEMPLATE_5 = np.array([
    [0.673, 0.470],  # outer corner, eye on the image's right
    [0.577, 0.470],  # inner corner, eye on the image's right
    [0.327, 0.470],  # outer corner, eye on the image's left
    [0.423, 0.470],  # inner corner, eye on the image's left
    [0.500, 0.645],  # bottom of the nose
], dtype=np.float64)
"""Canonical 5-point positions as fractions of the aligned image's side (x, y).

FFHQ-like: the eye centres sit at (0.375, 0.47) and (0.625, 0.47), a quarter of the width
apart and level, so the face with hair and chin fills the square as in FFHQ crops.
"""

_ON_MISSING = ("raise", "nan", "whole")


class NoFaceFound(LookupError):
    """No face was detected where one is needed (the message names the image)."""


class FaceModelMissing(AssetUnavailable):
    """A face model file (Haar cascade or dlib model) is not installed.

    An :class:`assets.AssetUnavailable`, so callers that fall back on a missing asset
    (e.g. ``metrics.id_dist`` -> "n/a") treat it the same way.
    """


# --------------------------------------------------------------------------- boxes
@dataclass(frozen=True)
class Box:
    """An axis-aligned box in pixels: left/top inclusive, right/bottom exclusive."""

    left: int
    top: int
    right: int
    bottom: int

    def __post_init__(self):
        for name in ("left", "top", "right", "bottom"):
            object.__setattr__(self, name, int(getattr(self, name)))
        if self.right <= self.left or self.bottom <= self.top:
            raise ValueError(f"empty box {self.as_tuple()}: need right > left and bottom > top")

    @property
    def width(self) -> int:
        return self.right - self.left

    @property
    def height(self) -> int:
        return self.bottom - self.top

    @property
    def area(self) -> int:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) of the box centre in pixels."""
        return ((self.left + self.right) / 2.0, (self.top + self.bottom) / 2.0)

    def as_tuple(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom)."""
        return (self.left, self.top, self.right, self.bottom)


def _largest_first(boxes: list[Box]) -> list[Box]:
    return sorted(boxes, key=lambda b: (-b.area, b.top, b.left))


# --------------------------------------------------------------------------- models
HAAR_FILE = "haarcascade_frontalface_default.xml"


def _opencv_haar_file() -> Path | None:
    """The cascade as an OpenCV 4 wheel ships it in ``cv2/data/`` (OpenCV 5 ships none)."""
    try:
        import cv2
    except ImportError:
        return None
    data = getattr(cv2, "data", None)
    folder = Path(data.__file__).parent if getattr(data, "__file__", None) else None
    return folder / HAAR_FILE if folder is not None and (folder / HAAR_FILE).is_file() else None


def model_paths() -> dict[str, Path]:
    """Where the model files are: ``{"haar_frontalface", "shape_predictor_5", "face_recognition", ...}``.

    Paths are returned whether or not the files exist; loading a missing one raises
    :class:`FaceModelMissing`. Raises it here already if ``face_recognition_models`` is not
    installed at all. The Haar cascade is OpenCV's own copy where an OpenCV 4 wheel ships one,
    else the registry's (``haar-frontalface``: the same file from OpenCV's repository, fetched
    on first use and checked against its sha256).
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FaceModelMissing("the dlib model files are missing: "
                               "pip install face_recognition_models")
    # Located, not imported: its __init__ needs pkg_resources, which may be absent.
    models = Path(list(spec.submodule_search_locations)[0]) / "models"
    haar = _opencv_haar_file()
    if haar is None:
        from . import assets

        haar = assets.cached_path("haar-frontalface")
    return {
        "haar_frontalface": haar,
        "shape_predictor_5": models / "shape_predictor_5_face_landmarks.dat",
        "face_recognition": models / "dlib_face_recognition_resnet_model_v1.dat",
        "mmod_face_detector": models / "mmod_human_face_detector.dat",
    }


def _model_file(name: str) -> str:
    path = model_paths()[name]
    if name.startswith("haar") and not path.is_file():
        from . import assets

        try:
            return str(assets.fetch("haar-frontalface"))
        except AssetUnavailable as err:
            raise FaceModelMissing(f"the Haar cascade {HAAR_FILE} is neither in this OpenCV (OpenCV 5 ships none) "
                                   f"nor fetchable: {err}") from None
    if not path.is_file():
        raise FaceModelMissing(f"face model {name!r} not found at {path}; pip install face_recognition_models")
    return str(path)


def haar_backend() -> str:
    """``"opencv"`` where ``cv2.CascadeClassifier`` exists (OpenCV 4), else ``"numpy"``.

    OpenCV 5 removed the cascade classifier; :mod:`comicutils.haar` then runs the same model
    file with the same algorithm in NumPy, so the Human-to-Anime report's face crops do not
    depend on which OpenCV a learner has (Colab's image carries OpenCV 5.0 and contrib 4.14).
    """
    try:
        import cv2
    except ImportError:
        return "numpy"
    return "opencv" if hasattr(cv2, "CascadeClassifier") else "numpy"


@functools.lru_cache(maxsize=None)
def _haar(backend: str):
    """A function (grey uint8 (H, W), scale_factor, min_neighbors, min_size) -> (N, 4) x, y, w, h."""
    path = _model_file("haar_frontalface")
    if backend == "opencv":
        import cv2

        cascade = cv2.CascadeClassifier(path)
        if cascade.empty():
            raise FaceModelMissing(f"OpenCV could not read the Haar cascade {path}")
        return lambda gray, sf, mn, ms: cascade.detectMultiScale(gray, scaleFactor=sf, minNeighbors=mn, minSize=(ms, ms))
    from . import haar

    try:
        model = haar.load_cascade(path)
    except haar.CascadeError as err:
        raise FaceModelMissing(str(err)) from None
    print(f"Haar cascade: this OpenCV has no CascadeClassifier, so comicutils.haar runs {HAAR_FILE} in NumPy "
          "(the same model and algorithm).")
    return lambda gray, sf, mn, ms: haar.detect_multiscale(gray, model, scale_factor=sf, min_neighbors=mn, min_size=(ms, ms))


def _dlib():
    try:
        import dlib
    except ImportError:
        raise FaceModelMissing("dlib is not installed: pip install dlib-bin (prebuilt wheels) or dlib") from None
    return dlib


@functools.lru_cache(maxsize=None)
def _hog_detector():
    dlib = _dlib()
    return dlib.get_frontal_face_detector()


@functools.lru_cache(maxsize=None)
def _mmod_detector():
    dlib = _dlib()
    return dlib.cnn_face_detection_model_v1(_model_file("mmod_face_detector"))


@functools.lru_cache(maxsize=None)
def _shape_predictor():
    dlib = _dlib()
    return dlib.shape_predictor(_model_file("shape_predictor_5"))


@functools.lru_cache(maxsize=None)
def _recognizer():
    dlib = _dlib()
    return dlib.face_recognition_model_v1(_model_file("face_recognition"))


# --------------------------------------------------------------------------- conversion
def _as_uint8(image: Any) -> np.ndarray:
    """One image-like -> C-contiguous uint8 RGB array (H, W, 3); ImageError if unusable."""
    pil = load_image(image, min_size=MIN_SIZE)
    if min(pil.size) < MIN_SIZE:  # load_image skips the size check for tensors
        raise ImageError(f"image is {pil.size[0]}x{pil.size[1]} px; faces need at least "
                         f"{MIN_SIZE} px on the shorter side")
    return np.ascontiguousarray(np.asarray(pil, dtype=np.uint8))


def _batch(images: Any) -> list[tuple[Hashable, np.ndarray]]:
    """A batch (see :func:`crop_faces_haar`) -> [(id, uint8 (H, W, 3))], converted once."""
    if isinstance(images, Mapping):
        if not images:
            raise ImageError("no images given")
        return [(key, _as_uint8(img)) for key, img in images.items()]
    if isinstance(images, torch.Tensor) and images.ndim == 4:
        x = check_image_tensor(images.detach().float(), "images").cpu()
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ImageError(f"images are {x.shape[-1]}x{x.shape[-2]} px; faces need at least "
                             f"{MIN_SIZE} px on the shorter side")
        arr = x.clamp(0, 1).mul(255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        return [(i, np.ascontiguousarray(a)) for i, a in enumerate(arr)]
    if isinstance(images, (list, tuple)):
        if not images:
            raise ImageError("no images given")
        return [(i, _as_uint8(img)) for i, img in enumerate(images)]
    return [(0, _as_uint8(images))]


def _uint8_to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) -> float (1, 3, H, W) in [0, 1]."""
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).unsqueeze(0).float().div_(255.0)


# --------------------------------------------------------------------------- Haar
def _haar_boxes(arr: np.ndarray, scale_factor: float, min_neighbors: int,
                min_size: int) -> list[Box]:
    import cv2

    gray = cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
    found = _haar(haar_backend())(gray, scale_factor, min_neighbors, min_size)
    rows = np.asarray(found).reshape(-1, 4)
    return _largest_first([Box(x, y, x + w, y + h) for x, y, w, h in rows])


def detect_faces_haar(image: Any, *, scale_factor: float = HAAR_SCALE_FACTOR,
                      min_neighbors: int = HAAR_MIN_NEIGHBORS, min_size: int = 30) -> list[Box]:
    """Frontal faces found by OpenCV's Haar cascade, largest first (``[]`` when none).

    ``image``: an image-like or a (3, H, W) / (1, 3, H, W) tensor in [0, 1]. Detection runs on
    the grey image with the Human-to-Anime report's ``scale_factor`` 1.1 and ``min_neighbors`` 4; faces smaller
    than ``min_size`` px are not searched for. Boxes are square (the cascade's window).
    """
    if scale_factor <= 1.0:
        raise ValueError(f"scale_factor must be > 1, got {scale_factor}")
    return _haar_boxes(_as_uint8(image), scale_factor, int(min_neighbors), int(min_size))


def margin_fraction(box: Box, image_size: tuple[int, int] | int) -> float:
    """The margin :func:`enlarge_box` adds on each side, as a fraction of the box side.

    ``clip(MARGIN_K / r, MARGIN_MIN, MARGIN_MAX)`` with r = box side / shorter image side:
    inversely proportional to the face's size (the Human-to-Anime report), so a small face gets up to half its
    side on each side (room for hair and chin) and a face filling the frame at least a fifth.
    Using the size relative to the image makes the crop independent of the resolution.
    """
    h, w = _hw(image_size)
    r = max(box.width, box.height) / min(h, w)
    return float(min(MARGIN_MAX, max(MARGIN_MIN, MARGIN_K / r)))


def _hw(image_size: tuple[int, int] | int) -> tuple[int, int]:
    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    if h < 1 or w < 1:
        raise ValueError(f"image_size must be positive (height, width), got {image_size}")
    return int(h), int(w)


def enlarge_box(box: Box | Sequence[int], image_size: tuple[int, int] | int, *,
                factor: float | None = None) -> Box:
    """A square box around the face centre, enlarged and kept inside the image.

    ``image_size`` is (height, width) (the tensor order), or an int for a square image.
    The side becomes ``s * factor`` where s = max(width, height) of ``box``; by default
    ``factor = 1 + 2 * margin_fraction(box, image_size)`` (see :func:`margin_fraction`), i.e.
    between 1.4x and 2x. A side larger than the image's shorter side is shrunk to it; a box
    crossing a border is shifted back inside, so the result is always square and inside.
    """
    if not isinstance(box, Box):
        box = Box(*box)
    h, w = _hw(image_size)
    if factor is None:
        factor = 1.0 + 2.0 * margin_fraction(box, (h, w))
    if not factor > 0:
        raise ValueError(f"factor must be > 0, got {factor}")
    side = max(1, min(int(round(max(box.width, box.height) * factor)), h, w))
    cx, cy = box.center
    left = min(max(int(round(cx - side / 2.0)), 0), w - side)
    top = min(max(int(round(cy - side / 2.0)), 0), h - side)
    return Box(left, top, left + side, top + side)


@dataclass
class FaceCropReport:
    """What :func:`crop_faces_haar` kept and skipped.

    ``crops``: float tensor (K, 3, out_size, out_size) in [0, 1], one per kept image;
    ``kept``: the ids of those images, in order; ``boxes``: the crop boxes in source pixels;
    ``skipped``: id -> reason (``"no face"`` or ``"too small (N px)"``).
    """

    crops: torch.Tensor
    kept: list[Hashable] = field(default_factory=list)
    boxes: list[Box] = field(default_factory=list)
    skipped: dict[Hashable, str] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.kept)

    def summary(self) -> str:
        """One line, e.g. ``kept 19 of 30 (no face: 10, too small: 1)``."""
        counts: dict[str, int] = {}
        for reason in self.skipped.values():
            key = reason.split(" (")[0]
            counts[key] = counts.get(key, 0) + 1
        why = ", ".join(f"{k}: {v}" for k, v in counts.items())
        total = len(self.kept) + len(self.skipped)
        return f"kept {len(self.kept)} of {total}" + (f" ({why})" if why else "")


def crop_faces_haar(images: Any, *, min_side: int = 256, out_size: int = 512,
                    enlarge: float | None = None, scale_factor: float = HAAR_SCALE_FACTOR,
                    min_neighbors: int = HAAR_MIN_NEIGHBORS) -> FaceCropReport:
    """The Human-to-Anime report's data step: one enlarged Haar face crop per image, resized to ``out_size``.

    ``images``: a tensor (N, 3, H, W) in [0, 1], a list of image-likes (sizes may differ), a
    mapping ``{id: image-like}``, or one image-like. Ids are the mapping's keys, else the
    indices. For each image the largest Haar face is enlarged with :func:`enlarge_box`
    (``enlarge`` = its ``factor``, default the size-dependent rule); crops whose side is
    below ``min_side`` px are skipped as ``"too small (N px)"`` (the seed keeps >= 256 px
    crops of video frames; the course's own portraits are only 256 px, so pass a smaller
    value for them). Kept crops are resized (bicubic, antialiased) to ``out_size``.
    Unreadable images raise :class:`images.ImageError`; faceless ones are skipped.
    """
    crops, kept, boxes, skipped = [], [], [], {}
    for key, arr in _batch(images):
        found = _haar_boxes(arr, scale_factor, min_neighbors, 30)
        if not found:
            skipped[key] = "no face"
            continue
        box = enlarge_box(found[0], arr.shape[:2], factor=enlarge)
        if box.width < min_side:
            skipped[key] = f"too small ({box.width} px)"
            continue
        crop = _uint8_to_tensor(arr[box.top:box.bottom, box.left:box.right])
        crops.append(resize(crop, out_size))
        kept.append(key)
        boxes.append(box)
    out = torch.cat(crops) if crops else torch.zeros(0, 3, out_size, out_size)
    return FaceCropReport(crops=out, kept=kept, boxes=boxes, skipped=skipped)


# --------------------------------------------------------------------------- dlib
DETECTORS = ("auto", "hog", "mmod")


def _dlib_boxes(arr: np.ndarray, upsample: int, detector: str = "auto") -> list[Box]:
    """HOG first; ``"auto"`` falls back to the CNN (MMOD) detector when HOG finds nothing
    (turned or tilted faces), which costs about a second per 256 px image on a CPU."""
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {', '.join(DETECTORS)}; got {detector!r}")
    if detector == "mmod":
        return _rects_to_boxes([d.rect for d in _mmod_detector()(arr, int(upsample))], arr)
    boxes = _rects_to_boxes(_hog_detector()(arr, int(upsample)), arr)
    if not boxes and detector == "auto":
        boxes = _rects_to_boxes([d.rect for d in _mmod_detector()(arr, int(upsample))], arr)
    return boxes


def _rects_to_boxes(rects, arr: np.ndarray) -> list[Box]:
    h, w = arr.shape[:2]
    boxes = []
    for r in rects:
        left, top = max(r.left(), 0), max(r.top(), 0)
        right, bottom = min(r.right() + 1, w), min(r.bottom() + 1, h)  # dlib: inclusive
        if right > left and bottom > top:
            boxes.append(Box(left, top, right, bottom))
    return _largest_first(boxes)


def _rect(box: Box):
    return _dlib().rectangle(box.left, box.top, box.right - 1, box.bottom - 1)  # dlib: inclusive


def detect_faces_dlib(image: Any, *, upsample: int = 1, detector: str = "auto") -> list[Box]:
    """Faces found by dlib, largest first (``[]`` when none).

    ``detector``: ``"hog"`` (dlib's frontal HOG detector, fast), ``"mmod"`` (dlib's CNN
    detector from ``face_recognition_models``, finds turned faces too, ~1 s per 256 px image on
    a CPU) or ``"auto"`` (HOG, then MMOD when HOG finds nothing). ``upsample``: how many times
    the image is doubled before searching (1 finds faces down to about 40 px; 0 is faster).
    Boxes are clipped to the image.
    """
    if upsample < 0:
        raise ValueError(f"upsample must be >= 0, got {upsample}")
    return _dlib_boxes(_as_uint8(image), upsample, detector)


def _landmarks(arr: np.ndarray, box: Box | Sequence[int] | None,
               what: str = "the image") -> np.ndarray:
    if box is None:
        found = _dlib_boxes(arr, 1)
        if not found:
            raise NoFaceFound(f"no face found in {what} ({arr.shape[1]}x{arr.shape[0]} px) "
                              "by dlib's HOG or CNN (MMOD) detector")
        box = found[0]
    elif not isinstance(box, Box):
        box = Box(*box)
    shape = _shape_predictor()(arr, _rect(box))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def landmarks_5(image: Any, box: Box | Sequence[int] | None = None) -> np.ndarray:
    """dlib's 5 landmarks as a float array (5, 2) of (x, y) pixels (order: module docstring).

    ``box`` defaults to the largest face of :func:`detect_faces_dlib`; raises
    :class:`NoFaceFound` when there is none.
    """
    return _landmarks(_as_uint8(image), box)


def eye_centers(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(centre of the eye on the image's left, on the image's right), each (x, y)."""
    pts = _check_landmarks(landmarks)
    return (pts[2] + pts[3]) / 2.0, (pts[0] + pts[1]) / 2.0


def eye_line_angle(landmarks: np.ndarray) -> float:
    """Angle in degrees of the line from the left to the right eye centre; 0 = level.

    Positive when the right eye (in the image) is lower, i.e. the face is turned clockwise.
    """
    a, b = eye_centers(landmarks)
    return math.degrees(math.atan2(b[1] - a[1], b[0] - a[0]))


def _check_landmarks(landmarks: Any) -> np.ndarray:
    pts = np.asarray(landmarks, dtype=np.float64)
    if pts.shape != (5, 2) or not np.isfinite(pts).all():
        raise ValueError("landmarks must be a finite (5, 2) array of (x, y); "
                         f"got shape {pts.shape}")
    return pts


def alignment_matrix(landmarks: np.ndarray, size: int = 256) -> np.ndarray:
    """The 2x3 similarity (rotation, uniform scale, translation) for :func:`align_face`.

    Least-squares fit mapping the 5 ``landmarks`` (pixels of the source) onto
    ``TEMPLATE_5 * size``. Written with complex numbers: with z = x + iy, the similarity is
    w = a z + b; a = sum(conj(z - mean z) (w - mean w)) / sum |z - mean z|^2, b = mean w - a mean z.
    Returns float64 (2, 3) usable by ``cv2.warpAffine``.
    """
    src = _check_landmarks(landmarks)
    dst = TEMPLATE_5 * float(size)
    z = src[:, 0] + 1j * src[:, 1]
    w = dst[:, 0] + 1j * dst[:, 1]
    zc, wc = z - z.mean(), w - w.mean()
    denom = float(np.sum(np.abs(zc) ** 2))
    if denom < 1e-9:
        raise ValueError("landmarks are all at one point; cannot align")
    a = np.sum(np.conj(zc) * wc) / denom
    b = w.mean() - a * z.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]], dtype=np.float64)


def align_face(image: Any, *, size: int = 256, landmarks: np.ndarray | None = None,
               border: str = "reflect") -> torch.Tensor:
    """FFHQ-like aligned face: float tensor (1, 3, size, size) in [0, 1].

    A similarity transform (:func:`alignment_matrix`) maps the 5 landmarks onto
    :data:`TEMPLATE_5`, so the eyes are level, a quarter of the width apart, at 47 % height.
    ``landmarks`` (5, 2) in source pixels default to :func:`landmarks_5` of the largest
    face (raises :class:`NoFaceFound`). ``border``: ``"reflect"`` (mirror the image, like FFHQ)
    or ``"constant"`` (black). A large reduction is first done with area averaging, so the
    result is not aliased.
    """
    import cv2

    modes = {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT}
    if border not in modes:
        raise ValueError(f"border must be one of {sorted(modes)}, got {border!r}")
    if int(size) < MIN_SIZE:
        raise ValueError(f"size must be at least {MIN_SIZE}, got {size}")
    arr = _as_uint8(image)
    pts = _landmarks(arr, None) if landmarks is None else _check_landmarks(landmarks)
    matrix = alignment_matrix(pts, size)
    scale = math.hypot(matrix[0, 0], matrix[1, 0])
    if scale < 0.5:  # shrink first so the warp itself reduces by at most 2x
        h, w = arr.shape[:2]
        nh, nw = max(1, round(h * 2 * scale)), max(1, round(w * 2 * scale))
        arr = cv2.resize(arr, (nw, nh), interpolation=cv2.INTER_AREA)
        pts = pts * np.array([nw / w, nh / h])
        matrix = alignment_matrix(pts, size)
    out = cv2.warpAffine(arr, matrix, (int(size), int(size)), flags=cv2.INTER_CUBIC,
                         borderMode=modes[border], borderValue=(0, 0, 0))
    return _uint8_to_tensor(out)


# --------------------------------------------------------------------------- identity
def _descriptor(arr: np.ndarray, index: int, on_missing: str, detector: str = "auto") -> np.ndarray:
    found = _dlib_boxes(arr, 1, detector)
    if found:
        box = found[0]
    elif on_missing == "whole":
        h, w = arr.shape[:2]
        box = Box(0, 0, w, h)
    elif on_missing == "nan":
        return np.full(128, np.nan, dtype=np.float32)
    else:
        raise NoFaceFound(f"no face found in image {index} ({arr.shape[1]}x{arr.shape[0]} px); "
                          "pass on_missing='nan' to get a NaN row instead")
    shape = _shape_predictor()(arr, _rect(box))
    return np.asarray(_recognizer().compute_face_descriptor(arr, shape), dtype=np.float32)


def identity_embedding(images: Any, *, on_missing: str = "raise", detector: str = "auto") -> torch.Tensor:
    """dlib face-recognition descriptors: float32 tensor (N, 128), rows of norm about 1.

    ``images``: tensor (N, 3, H, W) in [0, 1], a list of image-likes, or one image-like.
    Each row is the ResNet descriptor of the largest dlib face, aligned by its 5 landmarks
    (dlib's face chip, padding 0.25, no jitter). Where no face is found: ``on_missing="raise"``
    raises :class:`NoFaceFound` naming the image index, ``"nan"`` gives a NaN row, and
    ``"whole"`` treats the whole image as the face box (for images already cropped to a face,
    e.g. stylized outputs the detector misses). ``detector``: as :func:`detect_faces_dlib`;
    ``"hog"`` skips the CNN fallback (about a second per 256 px image on a CPU), the right
    choice with ``"whole"`` for many generated face crops the HOG detector misses anyway.
    """
    if on_missing not in _ON_MISSING:
        raise ValueError(f"on_missing must be one of {_ON_MISSING}, got {on_missing!r}")
    if detector not in DETECTORS:
        raise ValueError(f"detector must be one of {', '.join(DETECTORS)}; got {detector!r}")
    rows = [_descriptor(arr, i, on_missing, detector) for i, arr in _batch(images)]
    if not rows:  # an empty (0, 3, H, W) batch
        return torch.zeros(0, 128)
    return torch.from_numpy(np.stack(rows))


def identity_distance(a: Any, b: Any, *, on_missing: str = "raise", detector: str = "auto") -> torch.Tensor:
    """Euclidean distance between the identities of paired images a[i], b[i]: tensor (N,).

    0 = same descriptor; below :data:`SAME_PERSON_THRESHOLD` (0.6) dlib calls it the same
    person. NaN where a face was missing and ``on_missing="nan"``. ``detector``: as
    :func:`identity_embedding`.
    """
    ea = identity_embedding(a, on_missing=on_missing, detector=detector)
    eb = identity_embedding(b, on_missing=on_missing, detector=detector)
    if ea.shape[0] != eb.shape[0]:
        raise ValueError(f"a and b must pair up; got {ea.shape[0]} and {eb.shape[0]} images")
    return (ea - eb).norm(dim=1)


def identity_distance_matrix(images: Any, *, on_missing: str = "raise") -> torch.Tensor:
    """All pairwise identity distances: symmetric tensor (N, N), zero diagonal (NaN rows and
    columns for missing faces with ``on_missing="nan"``)."""
    emb = identity_embedding(images, on_missing=on_missing).double()
    diff = emb[:, None, :] - emb[None, :, :]
    return diff.norm(dim=-1).float()

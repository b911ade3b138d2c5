"""Lu & Zhou's identity term on dlib's face-recognition ResNet (comicutils.stylegan.losses).

References come from dlib itself: HOG detector, 5-point landmarks, ``get_face_chip`` (150 px,
padding 0.25) and ``compute_face_descriptor`` on that chip. The portraits are the course's CC0
portraits at 256 px; the quick tests use a few of them (seconds), the slow one all 90.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from comicutils import data, faces, runtime
from comicutils import stylegan as sg
from comicutils.images import resize
from comicutils.stylegan import losses

ID_TOLERANCE = 2e-3  # |L_ID ours - L_ID from dlib's chips and descriptors|, absolute (measured: 7.3e-4 on 76 pairs)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dlib_tools():
    dlib = pytest.importorskip("dlib")
    try:
        paths = faces.model_paths()
    except faces.FaceModelMissing as exc:
        pytest.skip(str(exc))
    return (dlib, dlib.get_frontal_face_detector(), dlib.shape_predictor(str(paths["shape_predictor_5"])),
            dlib.face_recognition_model_v1(str(paths["face_recognition"])))


@pytest.fixture(scope="module")
def identity(dlib_tools):
    return losses.IdentityLoss()


def _uint8(image: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(image.mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy())


def _with_dlib_faces(images: torch.Tensor, dlib_tools, limit: int | None = None):
    """(indices, dlib shapes) of the images where dlib's HOG detector (no upsampling) finds a face."""
    _, detector, predictor, _ = dlib_tools
    keep, shapes = [], []
    for i, image in enumerate(images):
        arr = _uint8(image)
        rects = detector(arr, 0)
        if rects:
            keep.append(i)
            shapes.append(predictor(arr, max(rects, key=lambda r: r.area())))
        if limit and len(keep) == limit:
            break
    return keep, shapes


def _dlib_identity_term(a: torch.Tensor, b: torch.Tensor, shape, dlib_tools) -> float:
    """1 - cos of dlib's own descriptors of dlib's own chips of a and b, both cut at b's landmarks."""
    dlib, _, _, recognizer = dlib_tools
    da, db = (np.asarray(recognizer.compute_face_descriptor(dlib.get_face_chip(_uint8(x), shape, size=150, padding=0.25)))
              for x in (a, b))
    return float(1 - da @ db / (np.linalg.norm(da) * np.linalg.norm(db)))


@pytest.fixture(scope="module")
def portraits(mirror):
    return data.portraits(256, data.ALL_PORTRAIT_NAMES[:12])[1]


# --------------------------------------------------------------------------- the chip
def test_chip_matrix_and_extract_chips_reproduce_dlibs_face_chip(portraits, dlib_tools):
    dlib = dlib_tools[0]
    keep, shapes = _with_dlib_faces(portraits, dlib_tools, limit=4)
    assert len(keep) == 4
    for i, shape in zip(keep, shapes):
        landmarks = np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)
        matrix = losses.chip_matrix(landmarks)
        details = dlib.get_face_chip_details(shape, 150, 0.25)
        assert np.hypot(*matrix[:, 0]) * 149 + 1 == pytest.approx(details.rect.width(), abs=1e-6)   # corner to corner
        assert np.arctan2(matrix[1, 0], matrix[0, 0]) == pytest.approx(details.angle, abs=1e-9)
        ours = losses.extract_chips(portraits[i:i + 1], matrix[None])[0].permute(1, 2, 0).numpy() * 255
        theirs = dlib.get_face_chip(_uint8(portraits[i]), shape, size=150, padding=0.25).astype(np.float64)
        assert np.abs(ours - theirs).max() <= 1.0 + 1e-3        # dlib truncates to whole grey levels


def test_chips_of_a_large_image_are_averaged_down_first(portraits, dlib_tools):
    keep, shapes = _with_dlib_faces(portraits, dlib_tools, limit=1)
    landmarks = np.array([[p.x, p.y] for p in shapes[0].parts()], dtype=np.float64)
    small = losses.extract_chips(portraits[keep], losses.chip_matrix(landmarks)[None])
    big = F.interpolate(portraits[keep], scale_factor=4, mode="bicubic", align_corners=False).clamp(0, 1)
    large = losses.extract_chips(big, losses.chip_matrix((landmarks + 0.5) * 4 - 0.5)[None])
    assert large.shape == small.shape == (1, 3, 150, 150)
    assert (large - small).abs().mean() < 0.01


def test_reference_landmarks_on_small_images_and_the_template_fallback(portraits, dlib_tools):
    keep, shapes = _with_dlib_faces(portraits, dlib_tools)
    full = np.stack([np.array([[p.x, p.y] for p in s.parts()], dtype=np.float64) for s in shapes])
    pts, found = losses.reference_landmarks(resize(portraits[keep], 64))
    assert pts.shape == (len(keep), 5, 2) and found.mean() >= 0.75          # measured on 90 portraits: 74 of 76
    err = np.abs(pts[found] * 4 - full[found]).mean()                         # in pixels of the 256 px originals
    assert err < 2.0
    tiny, found16 = losses.reference_landmarks(resize(portraits[:3], 16))
    assert not found16.any() and np.allclose(tiny, faces.TEMPLATE_5 * 16)      # below MIN_DETECT_SIZE: the template
    noise, found_noise = losses.reference_landmarks(torch.full((2, 3, 64, 64), 0.5))
    assert not found_noise.any() and np.allclose(noise, faces.TEMPLATE_5 * 64)


# --------------------------------------------------------------------------- the identity term
def test_identity_term_is_zero_for_identical_images_and_grows_for_another_person(portraits, identity):
    a, b = portraits[:1], portraits[1:2]
    with torch.no_grad():
        same = identity(a, a).item()
        similar = identity((a * 0.9 + 0.05), a).item()      # the same photo, less contrast
        other = identity(b, a).item()
    assert abs(same) < 1e-5
    assert 0 < similar < other
    assert other > 0.05                                    # dlib's descriptors: cos > 0.75 even across people
    assert identity.landmark_sources["dlib"] >= 1


def test_identity_term_has_gradients_for_the_generated_image_only(portraits, identity):
    ref = portraits[2:3]
    gen = (portraits[3:4] * 1.1 - 0.05).requires_grad_(True)     # a raw generator output overshoots [0, 1]
    value = identity(gen, ref)
    assert value.shape == (1,) and value.requires_grad
    value.sum().backward()
    assert gen.grad is not None and torch.isfinite(gen.grad).all() and gen.grad.abs().sum() > 0
    with torch.no_grad():
        stepped = identity(gen - 0.5 * gen.grad / gen.grad.abs().max(), ref)
    assert stepped.item() < value.item()                   # a step against the gradient brings the faces closer


def test_identity_term_agrees_with_dlibs_own_chips_and_descriptors(portraits, identity, dlib_tools):
    keep, shapes = _with_dlib_faces(portraits, dlib_tools, limit=6)
    a = portraits[keep[1:] + keep[:1]]          # pair i: another person, cut at portrait keep[i]'s landmarks
    b = portraits[keep]
    with torch.no_grad():
        ours = identity(a, b).double().numpy()
    theirs = np.array([_dlib_identity_term(x, y, s, dlib_tools) for x, y, s in zip(a, b, shapes)])
    assert np.abs(ours - theirs).max() < ID_TOLERANCE


@pytest.mark.slow
def test_identity_term_agrees_with_dlib_on_all_portraits(mirror, dlib_tools):
    images = data.portraits(256, data.ALL_PORTRAIT_NAMES)[1]
    keep, shapes = _with_dlib_faces(images, dlib_tools)
    assert len(keep) >= 70                        # dlib's HOG detector without upsampling finds 76 of the 90
    loss = losses.IdentityLoss()
    a, b = images[keep[1:] + keep[:1]], images[keep]
    with torch.no_grad():
        ours = torch.cat([loss(a[i:i + 16], b[i:i + 16]) for i in range(0, len(keep), 16)]).double().numpy()
    theirs = np.array([_dlib_identity_term(x, y, s, dlib_tools) for x, y, s in zip(a, b, shapes)])
    assert np.abs(ours - theirs).max() < ID_TOLERANCE
    assert loss.landmark_sources["dlib"] == len(keep)


def test_identity_term_writes_out_as_the_cosine_of_descriptors(portraits, identity):
    """The term by hand: chips at the reference's landmarks, descriptors, 1 - a.b / (|a| |b|)."""
    a, b = portraits[4:6], portraits[6:8]
    pts, _ = losses.reference_landmarks(b)
    matrices = np.stack([losses.chip_matrix(p) for p in pts])
    with torch.no_grad():
        ea, eb = (identity.model(losses.extract_chips(x, matrices)) for x in (a, b))
        by_hand = 1 - (ea * eb).sum(1) / (ea.norm(dim=1) * eb.norm(dim=1))
        torch.testing.assert_close(identity(a, b), by_hand)


# --------------------------------------------------------------------------- the semantic constraint
def test_semantic_loss_uses_the_dlib_identity_term_with_no_banner(portraits, identity):
    distances = sg.FeatureDistances(feature_size=32)
    loss = sg.SemanticLoss(distances, identity=identity)
    a, b = portraits[:2], portraits[2:4]
    with torch.no_grad():
        want = loss.perceptual_distance(a, b) + sg.LAMBDA_ID * identity(a, b)
        torch.testing.assert_close(loss(a, b), want)
    assert not any("identity" in s.wanted.lower() for s in runtime.substitutes_in_use())
    assert sg.SemanticLoss(distances, lambda_id=0.0, announce=False).identity is None


def test_full_mode_accepts_the_identity_term(monkeypatch, identity):
    monkeypatch.setenv("COMICUTILS_MODE", "full")
    monkeypatch.setattr(losses, "_lpips_available", lambda: None)      # as if the VGG-16 weights were here
    loss = sg.SemanticLoss(lambda_id=sg.LAMBDA_ID, identity=identity)
    assert loss.perceptual == "lpips-vgg" and loss.identity is identity and loss.lambda_id == sg.LAMBDA_ID

"""Tests of comicutils.faces on the course's real CC0 portraits (a few seconds on CPU)."""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from comicutils import faces
from comicutils.assets import AssetUnavailable
from comicutils.faces import Box, NoFaceFound
from comicutils.images import ImageError, load_tensor

# 001 and 006: two different people that both Haar and dlib find (the 30 portraits: Haar finds
# 20, dlib's HOG detector 23).


@pytest.fixture(scope="module")
def face_a(portrait_paths):
    return load_tensor(portrait_paths[0])  # (1, 3, 256, 256)


@pytest.fixture(scope="module")
def face_b(portrait_paths):
    return load_tensor(portrait_paths[5])


@pytest.fixture(scope="module")
def blank():
    return np.full((256, 256, 3), 255, dtype=np.uint8)


@pytest.fixture(scope="module")
def noise():
    return np.random.default_rng(0).random((128, 128, 3)).astype(np.float32)


def _inside(box: Box, h: int, w: int) -> bool:
    return 0 <= box.left < box.right <= w and 0 <= box.top < box.bottom <= h


# --------------------------------------------------------------------------- boxes
def test_box_properties():
    b = Box(10, 20, 50, 80)
    assert (b.width, b.height, b.area, b.center) == (40, 60, 2400, (30.0, 50.0))
    assert b.as_tuple() == (10, 20, 50, 80)
    with pytest.raises(ValueError):
        Box(5, 5, 5, 10)


def test_enlarge_box_square_inside_and_margin_shrinks_with_size():
    small, large = Box(108, 108, 148, 148), Box(68, 68, 188, 188)
    out_small = faces.enlarge_box(small, (256, 256))
    out_large = faces.enlarge_box(large, (256, 256))
    for box, out in ((small, out_small), (large, out_large)):
        assert out.width == out.height and _inside(out, 256, 256)
        assert out.width > box.width
        assert out.center == pytest.approx(box.center, abs=1)
    frac_small = (out_small.width / small.width - 1) / 2
    frac_large = (out_large.width / large.width - 1) / 2
    assert frac_small > frac_large
    assert faces.MARGIN_MIN <= frac_large and frac_small <= faces.MARGIN_MAX + 0.02


def test_enlarge_box_at_border_and_factor_override():
    corner = faces.enlarge_box(Box(0, 0, 60, 60), (200, 300))
    assert corner.left == 0 and corner.top == 0 and corner.width == corner.height
    huge = faces.enlarge_box(Box(50, 20, 250, 180), (200, 300), factor=3.0)
    assert huge.width == huge.height == 200 and _inside(huge, 200, 300)
    same = faces.enlarge_box((100, 100, 140, 140), 256, factor=1.0)
    assert same.as_tuple() == (100, 100, 140, 140)
    with pytest.raises(ValueError):
        faces.enlarge_box(Box(0, 0, 10, 10), 64, factor=0)


# --------------------------------------------------------------------------- Haar
def test_haar_finds_face_with_seed_parameters(portrait_paths, face_a):
    boxes = faces.detect_faces_haar(portrait_paths[0], scale_factor=1.1, min_neighbors=4)
    assert boxes and all(_inside(b, 256, 256) for b in boxes)
    assert [b.area for b in boxes] == sorted((b.area for b in boxes), reverse=True)
    assert 60 <= boxes[0].width <= 200
    assert faces.detect_faces_haar(face_a[0]) == faces.detect_faces_haar(face_a)


def test_crop_faces_haar_keeps_faces_and_reports_skips(portrait_paths, blank):
    inputs = {p.stem: p for p in portrait_paths[:3]} | {"blank": blank}
    report = faces.crop_faces_haar(inputs, min_side=64, out_size=96)
    assert report.skipped["blank"] == "no face"
    assert len(report) == report.crops.shape[0] >= 1
    assert report.crops.shape[1:] == (3, 96, 96)
    assert 0.0 <= float(report.crops.min()) and float(report.crops.max()) <= 1.0
    assert set(report.kept) | set(report.skipped) == set(inputs)
    assert all(b.width == b.height for b in report.boxes)
    assert report.summary().startswith(f"kept {len(report)} of 4")

    strict = faces.crop_faces_haar(torch.cat([load_tensor(portrait_paths[0])] * 2), min_side=300)
    assert strict.crops.shape == (0, 3, 512, 512) and strict.kept == []
    assert set(strict.skipped) == {0, 1}
    assert strict.skipped[0].startswith("too small (") and strict.skipped[0].endswith(" px)")


# --------------------------------------------------------------------------- dlib
def test_dlib_detection_and_landmarks(face_a):
    boxes = faces.detect_faces_dlib(face_a)
    assert boxes and _inside(boxes[0], 256, 256)
    pts = faces.landmarks_5(face_a)
    assert pts.shape == (5, 2) and pts.dtype == np.float64
    assert (pts >= 0).all() and (pts < 256).all()
    left_eye, right_eye = faces.eye_centers(pts)
    assert left_eye[0] < pts[4, 0] < right_eye[0]  # nose between the eyes ...
    assert pts[4, 1] > max(left_eye[1], right_eye[1])  # ... and below them
    np.testing.assert_allclose(faces.landmarks_5(face_a, boxes[0]), pts)


def test_alignment_matrix_recovers_a_similarity():
    size = 128
    theta, scale, shift = math.radians(20), 1.7, np.array([30.0, -12.0])
    c, s = math.cos(theta), math.sin(theta)
    rot = scale * np.array([[c, -s], [s, c]])
    template = faces.TEMPLATE_5 * size
    src = (template - shift) @ np.linalg.inv(rot).T  # rot @ src + shift == template
    matrix = faces.alignment_matrix(src, size)
    np.testing.assert_allclose(src @ matrix[:, :2].T + matrix[:, 2], template, atol=1e-9)
    np.testing.assert_allclose(matrix[:, :2], rot, atol=1e-9)


def test_align_face_levels_a_rotated_portrait(portrait_paths):
    rotated = Image.open(portrait_paths[0]).convert("RGB").rotate(15, resample=Image.BICUBIC)
    assert abs(faces.eye_line_angle(faces.landmarks_5(rotated))) > 10
    aligned = faces.align_face(rotated, size=128)
    assert aligned.shape == (1, 3, 128, 128) and aligned.dtype == torch.float32
    assert 0.0 <= float(aligned.min()) and float(aligned.max()) <= 1.0
    pts = faces.landmarks_5(aligned)
    assert abs(faces.eye_line_angle(pts)) < 4
    eye_gap = np.linalg.norm(np.subtract(*faces.eye_centers(pts)))
    assert eye_gap == pytest.approx(0.25 * 128, rel=0.15)
    black = faces.align_face(rotated, size=64, landmarks=pts * 4, border="constant")
    assert black.shape == (1, 3, 64, 64)


# --------------------------------------------------------------------------- identity
def test_identity_distances(face_a, face_b):
    emb = faces.identity_embedding(torch.cat([face_a, face_a.flip(-1), face_b]))
    assert emb.shape == (3, 128) and emb.dtype == torch.float32 and torch.isfinite(emb).all()
    pair = faces.identity_distance(torch.cat([face_a, face_a]),
                                   torch.cat([face_a, face_a.flip(-1)]))
    assert pair.shape == (2,)
    assert float(pair[0]) < 1e-5
    assert float(pair[1]) < faces.SAME_PERSON_THRESHOLD
    other = float((emb[0] - emb[2]).norm())
    assert other > float(pair[1])
    matrix = faces.identity_distance_matrix([face_a, face_b])
    assert matrix.shape == (2, 2) and torch.allclose(matrix, matrix.T)
    assert float(matrix.diagonal().abs().max()) < 1e-6
    assert float(matrix[0, 1]) == pytest.approx(other, abs=1e-5)


def test_no_face_is_a_result_not_a_crash(face_a, blank, noise):
    for img in (blank, noise):
        assert faces.detect_faces_haar(img) == [] and faces.detect_faces_dlib(img) == []
        with pytest.raises(NoFaceFound):
            faces.landmarks_5(img)
        with pytest.raises(NoFaceFound):
            faces.align_face(img)
    with pytest.raises(NoFaceFound, match="image 1"):
        faces.identity_embedding([face_a, blank])
    emb = faces.identity_embedding([face_a, blank], on_missing="nan")
    assert torch.isfinite(emb[0]).all() and torch.isnan(emb[1]).all()
    dist = faces.identity_distance([blank], [face_a], on_missing="nan")
    assert torch.isnan(dist).all()
    assert torch.isfinite(faces.identity_embedding(blank, on_missing="whole")).all()
    with pytest.raises(ValueError):
        faces.identity_embedding(face_a, on_missing="zero")
    assert issubclass(NoFaceFound, LookupError)


@pytest.mark.parametrize("bad", [np.zeros((8, 8, 3), np.uint8), torch.rand(1, 3, 8, 8),
                                 torch.rand(1, 3, 64, 64) * 2 - 1],
                         ids=["tiny-array", "tiny-tensor", "minus1-1"])
def test_bad_images_raise_image_error(bad):
    for fn in (faces.detect_faces_haar, faces.detect_faces_dlib, faces.landmarks_5,
               faces.identity_embedding):
        with pytest.raises(ImageError):
            fn(bad)
    with pytest.raises(ImageError):
        faces.crop_faces_haar(bad)


def test_model_paths_and_missing_model_error(monkeypatch, face_a, tmp_path):
    paths = faces.model_paths()
    assert set(paths) == {"haar_frontalface", "shape_predictor_5", "face_recognition", "mmod_face_detector"}
    assert all(p.is_file() for p in paths.values())
    assert "68" not in "".join(p.name for p in paths.values())
    assert issubclass(faces.FaceModelMissing, AssetUnavailable)
    missing = dict(paths, shape_predictor_5=tmp_path / "nope.dat")
    monkeypatch.setattr(faces, "model_paths", lambda: missing)
    faces._shape_predictor.cache_clear()
    try:
        with pytest.raises(faces.FaceModelMissing, match="face_recognition_models"):
            faces.landmarks_5(face_a)
    finally:
        faces._shape_predictor.cache_clear()


def test_turned_face_missed_by_hog_is_found_by_the_mmod_fallback(mirror):
    # CC0 portrait 048: the head is turned; HOG (even upsampled) finds nothing, MMOD does.
    path = mirror / "interfaces" / "256-extra" / "048.jpg"
    if not path.is_file():
        pytest.skip("the mirror has no interfaces/256-extra/")
    assert faces.detect_faces_dlib(path, detector="hog") == []
    boxes = faces.detect_faces_dlib(path)                      # "auto": HOG, then MMOD
    assert len(boxes) == 1 and boxes[0].width > 40
    assert faces.detect_faces_dlib(path, detector="mmod")[0] == boxes[0]
    aligned = faces.align_face(path, size=64)
    assert aligned.shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="detector must be one of"):
        faces.detect_faces_dlib(path, detector="cnn")


def test_identity_embedding_with_hog_only_never_runs_the_cnn_detector(monkeypatch):
    def no_cnn():
        raise AssertionError("the CNN detector ran")

    monkeypatch.setattr(faces, "_mmod_detector", no_cnn)
    grey = torch.full((2, 3, 96, 96), 0.5)                 # no face for HOG to find
    whole = faces.identity_embedding(grey, on_missing="whole", detector="hog")
    assert whole.shape == (2, 128) and torch.isfinite(whole).all()
    assert torch.isnan(faces.identity_distance(grey, grey, on_missing="nan", detector="hog")).all()
    with pytest.raises(AssertionError, match="CNN"):
        faces.identity_embedding(grey[:1], on_missing="whole")          # "auto" falls back to it
    with pytest.raises(ValueError, match="detector"):
        faces.identity_embedding(grey, detector="haar")


def test_haar_faces_are_the_same_with_opencv_5s_numpy_cascade(portrait_paths, monkeypatch):
    """OpenCV 5 has no CascadeClassifier: faces then runs the same cascade file in NumPy, box for box."""
    images = portrait_paths[:6]
    if faces.haar_backend() != "opencv":
        pytest.skip("this OpenCV has no CascadeClassifier to compare with (tests/test_haar.py checks the NumPy cascade)")
    reference = [faces.detect_faces_haar(p) for p in images]
    monkeypatch.setattr(faces, "haar_backend", lambda: "numpy")
    assert [faces.detect_faces_haar(p) for p in images] == reference
    assert sum(map(len, reference)) >= 5


def portrait_paths_first(mirror):
    return sorted((mirror / "interfaces" / "256").glob("*.jpg"))[0]


def test_the_haar_cascade_comes_from_the_registry_where_opencv_ships_none(monkeypatch, tmp_path, mirror):
    monkeypatch.setattr(faces, "_opencv_haar_file", lambda: None)
    internet = tmp_path / "internet" / "opencv"
    internet.mkdir(parents=True)
    import cv2

    shutil.copy(Path(cv2.data.__file__).parent / faces.HAAR_FILE, internet / faces.HAAR_FILE)
    monkeypatch.setenv("COMICUTILS_MIRROR", str(internet.parent))
    faces._haar.cache_clear()
    try:
        path = Path(faces._model_file("haar_frontalface"))           # found through the registry, checksum verified
        assert path.name == faces.HAAR_FILE and path.parent.parent == internet.parent
        assert faces.detect_faces_haar(portrait_paths_first(mirror))
        monkeypatch.setenv("COMICUTILS_MIRROR", str(tmp_path / "empty"))
        with pytest.raises(faces.FaceModelMissing, match="OpenCV 5 ships none"):
            faces._model_file("haar_frontalface")
    finally:
        faces._haar.cache_clear()

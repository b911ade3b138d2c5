"""comicutils.haar: the pure-NumPy Haar cascade, checked box for box against OpenCV 4's CascadeClassifier.

The comparison tests need an OpenCV that still has ``cv2.CascadeClassifier`` (OpenCV 4; the dev
extra pins it); they skip, saying why, where OpenCV is missing or is OpenCV 5. The file, argument
and blank-image tests need no OpenCV at all except, for the blank image, its XML file.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from comicutils import haar

FRONTAL = "haarcascade_frontalface_default.xml"
# 12 CC0 portraits of the mirror: one face on most, two on 256/004 and 256-extra/046, none on 256/008 and 256-extra/095
PORTRAITS = ["256/001", "256/004", "256/008", "256/011", "256/016", "256/022",
             "256-extra/041", "256-extra/046", "256-extra/048", "256-extra/060", "256-extra/083", "256-extra/095"]


def _boxes(found) -> list[tuple[int, int, int, int]]:
    """OpenCV's or our result ((), or (N, 4)) -> sorted list of (x, y, w, h)."""
    return sorted(map(tuple, np.asarray(found, dtype=np.int64).reshape(-1, 4).tolist()))


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def cv2():
    """OpenCV with a CascadeClassifier to compare with (skips otherwise, saying why)."""
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed: nothing to compare the NumPy cascade with")
    if not hasattr(cv2, "CascadeClassifier"):
        pytest.skip(f"OpenCV {cv2.__version__} has no cv2.CascadeClassifier (OpenCV 5 removed it): nothing to compare with")
    return cv2


def _cascade_dir() -> Path:
    cv2 = pytest.importorskip("cv2", reason="the Haar cascade XML files ship with OpenCV, which is not installed")
    return Path(cv2.data.haarcascades)


@pytest.fixture(scope="module")
def frontal_path() -> Path:
    path = _cascade_dir() / FRONTAL
    if not path.is_file():
        pytest.skip(f"{path} is not installed")
    return path


@pytest.fixture(scope="module")
def frontal(frontal_path) -> haar.HaarCascade:
    return haar.load_cascade(frontal_path)


@pytest.fixture(scope="module")
def reference(cv2, frontal_path):
    ref = cv2.CascadeClassifier(str(frontal_path))
    assert not ref.empty()
    return ref


@pytest.fixture(scope="module")
def portraits(cv2, mirror) -> dict[str, np.ndarray]:
    """The 12 portraits as faces.py sees them: RGB uint8 from PIL, then cv2's RGB -> grey."""
    from PIL import Image

    out = {}
    for name in PORTRAITS:
        path = mirror / "interfaces" / f"{name}.jpg"
        if not path.is_file():
            pytest.skip(f"the mirror has no {path}")
        rgb = np.asarray(Image.open(path).convert("RGB"))
        out[name] = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    return out


@pytest.fixture(scope="module")
def astronaut(cv2) -> np.ndarray:
    skdata = pytest.importorskip("skimage.data")
    return cv2.cvtColor(skdata.astronaut(), cv2.COLOR_RGB2GRAY)  # (512, 512)


# --------------------------------------------------------------------------- agreement with OpenCV
def test_portraits_match_opencv_exactly(portraits, frontal, reference):
    """The write-up's settings (1.1, 4): the same boxes, to the pixel, on all 12 portraits."""
    faces = 0
    for name, gray in portraits.items():
        ours = haar.detect_multiscale(gray, frontal, scale_factor=1.1, min_neighbors=4)
        assert ours.dtype == np.int32 and ours.shape[1:] == (4,)
        assert _boxes(ours) == _boxes(reference.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=4)), name
        faces += len(ours)
    assert faces == 12  # 9 portraits with one face, two with two, two with none (see PORTRAITS)


def test_raw_hits_match_opencv_exactly(portraits, frontal, reference):
    """min_neighbors=0 returns every window the cascade accepts, ungrouped: the same set as OpenCV's."""
    for name in ("256/001", "256/008", "256-extra/046"):
        gray = portraits[name]
        raw = haar.detect_multiscale(gray, frontal, 1.1, 0)
        assert _boxes(raw) == _boxes(reference.detectMultiScale(gray, 1.1, 0)), name


def test_astronaut_matches_opencv_and_is_fast(astronaut, frontal, reference):
    start = time.perf_counter()
    ours = haar.detect_multiscale(astronaut, frontal, 1.1, 4)
    seconds = time.perf_counter() - start
    assert _boxes(ours) == _boxes(reference.detectMultiScale(astronaut, 1.1, 4)) == [(177, 66, 95, 95)]
    assert seconds < 10, f"512x512 took {seconds:.1f} s (about 0.5 s on one core expected)"


def test_same_order_as_single_threaded_opencv(cv2, astronaut, portraits, frontal, reference):
    """With one thread OpenCV's order is deterministic (scale, row, column, then group order): ours is the same."""
    threads = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        for gray, mn in ((astronaut, 0), (portraits["256/004"], 4)):  # the astronaut's raw hits; two faces
            theirs = np.asarray(reference.detectMultiScale(gray, 1.1, mn)).reshape(-1, 4)
            assert len(theirs) >= 2 and np.array_equal(haar.detect_multiscale(gray, frontal, 1.1, mn), theirs)
    finally:
        cv2.setNumThreads(threads)


@pytest.mark.parametrize("kwargs", [
    dict(scale_factor=1.3, min_neighbors=2),
    dict(scale_factor=1.05, min_neighbors=5),
    dict(scale_factor=1.1, min_neighbors=4, min_size=(30, 30)),          # faces.py's min_size
    dict(scale_factor=1.2, min_neighbors=1, min_size=(40, 50), max_size=(150, 120)),
    dict(scale_factor=1.1, min_neighbors=0, min_size=(100, 100), max_size=(100, 100)),  # off the pyramid: closest scale
    dict(scale_factor=1.1, min_neighbors=0, min_size=(300, 300)),                      # bigger than the image: likewise
])
def test_other_settings_match_opencv(kwargs, portraits, astronaut, frontal, reference):
    gray_list = [portraits["256/004"], portraits["256-extra/083"], astronaut[37:300, 11:250]]  # last: not square
    cv_kwargs = dict(scaleFactor=kwargs["scale_factor"], minNeighbors=kwargs["min_neighbors"],
                     minSize=kwargs.get("min_size", (0, 0)), maxSize=kwargs.get("max_size", (0, 0)))
    for gray in gray_list:
        assert _boxes(haar.detect_multiscale(gray, frontal, **kwargs)) == _boxes(reference.detectMultiScale(gray, **cv_kwargs))


def test_other_stump_cascades_match_opencv(cv2, portraits):
    """Any stump-based, untilted cascade reads and agrees: the eye and the 'alt' frontal-face cascade."""
    for xml in ("haarcascade_eye.xml", "haarcascade_frontalface_alt.xml"):
        path = _cascade_dir() / xml
        if not path.is_file():
            continue
        ref, ours = cv2.CascadeClassifier(str(path)), haar.load_cascade(path)
        for name in ("256/001", "256-extra/046"):
            gray = portraits[name]
            assert _boxes(haar.detect_multiscale(gray, ours, 1.1, 3)) == _boxes(ref.detectMultiScale(gray, 1.1, 3)), (xml, name)


def test_group_rectangles_matches_opencv():
    cv2 = pytest.importorskip("cv2", reason="OpenCV is not installed: nothing to compare groupRectangles with")
    if not hasattr(cv2, "groupRectangles"):
        pytest.skip(f"OpenCV {cv2.__version__} has no cv2.groupRectangles")
    rng = np.random.default_rng(0)
    centres = rng.integers(20, 200, (6, 2))
    boxes = []
    for (cx, cy), n in zip(centres, (1, 2, 3, 5, 8, 12)):
        size = rng.integers(20, 60)
        for _ in range(n):
            s = int(size + rng.integers(-3, 4))
            boxes.append([int(cx + rng.integers(-3, 4)), int(cy + rng.integers(-3, 4)), s, s])
    big = boxes[-1]
    inner = [[big[0] + 5 + d, big[1] + 5, 16, 16] for d in (0, 1, 2)]  # a group of 3 small boxes inside the 12-box group
    boxes[20:20] = inner
    for threshold in (1, 2, 4):
        theirs, _ = cv2.groupRectangles(boxes, threshold, 0.2)
        ours = haar.group_rectangles(boxes, threshold, 0.2)
        assert np.array_equal(ours, np.asarray(theirs).reshape(-1, 4)), threshold  # same boxes, same order
        assert not any(w == 16 for _, _, w, _ in ours.tolist())  # the small group inside a bigger one is dropped
    assert len(haar.group_rectangles(inner, 2)) == 1 and len(haar.group_rectangles(boxes, 0)) == len(boxes)


def test_tiny_image_and_noise_match_opencv(portraits, frontal, reference):
    noise = np.random.default_rng(1).integers(0, 256, (90, 140), dtype=np.uint8)
    for gray in (portraits["256/001"][:30, :25], portraits["256/001"][:20, :], noise):
        assert _boxes(haar.detect_multiscale(gray, frontal, 1.1, 3)) == _boxes(reference.detectMultiScale(gray, 1.1, 3))


# --------------------------------------------------------------------------- without OpenCV's detector
def test_blank_images_find_no_face(frontal):
    for value in (0, 128, 255):
        found = haar.detect_multiscale(np.full((256, 256), value, np.uint8), frontal, 1.1, 4)
        assert found.shape == (0, 4) and found.dtype == np.int32
    gradient = np.tile(np.linspace(0, 255, 200).astype(np.uint8), (150, 1))
    assert len(haar.detect_multiscale(gradient, frontal, 1.1, 4)) == 0


def test_loaded_cascade_structure(frontal, frontal_path):
    assert frontal.window == (24, 24) and frontal.n_stages == 25
    assert frontal.stage_ends[-1] == len(frontal.feature) == 2913
    assert frontal.rects.shape == (len(frontal.weights), 3, 4) and frontal.path == str(frontal_path)
    assert len(haar.detect_multiscale(np.zeros((10, 10), np.uint8), frontal_path)) == 0  # a path works too


def _xml(stage_type="BOOST", feature_type="HAAR", nodes="0 -1 0 -1.5e-02", tilted="0", rect="6 4 12 9 -1.",
         width="24", threshold="-1.0e+00", feature_idx="1") -> str:
    """A small valid cascade (one stage, two stumps, two features) with one field replaceable."""
    return f"""<?xml version="1.0"?>
<opencv_storage>
<cascade type_id="opencv-cascade-classifier"><stageType>{stage_type}</stageType>
  <featureType>{feature_type}</featureType>
  <height>24</height>
  <width>{width}</width>
  <stageParams><maxWeakCount>2</maxWeakCount></stageParams>
  <featureParams><maxCatCount>0</maxCatCount></featureParams>
  <stageNum>1</stageNum>
  <stages>
    <_>
      <maxWeakCount>2</maxWeakCount>
      <stageThreshold>{threshold}</stageThreshold>
      <weakClassifiers>
        <_><internalNodes>{nodes}</internalNodes><leafValues>-1.0e+00 1.0e+00</leafValues></_>
        <_><internalNodes>0 -1 {feature_idx} 5.0e-03</internalNodes><leafValues>1.0e+00 -1.0e+00</leafValues></_></weakClassifiers></_></stages>
  <features>
    <_><rects><_>{rect}</_><_>6 7 12 3 3.</_></rects><tilted>{tilted}</tilted></_>
    <_><rects><_>3 3 18 18 -1.</_><_>9 9 6 6 9.</_><_>0 0 2 2 1.</_></rects><tilted>0</tilted></_></features></cascade>
</opencv_storage>
"""


OLD_FORMAT = """<?xml version="1.0"?>
<opencv_storage>
<haarcascade_old type_id="opencv-haar-classifier"><size>24 24</size><stages><_><trees><_><_>
  <feature><rects><_>0 0 2 2 -1.</_></rects><tilted>0</tilted></feature><threshold>0.</threshold>
  <left_val>1.</left_val><right_val>-1.</right_val></_></_></trees><stage_threshold>0.</stage_threshold>
  <parent>-1</parent><next>-1</next></_></stages></haarcascade_old>
</opencv_storage>
"""


def test_small_valid_cascade_loads(tmp_path):
    path = tmp_path / "ok.xml"
    path.write_text(_xml())
    c = haar.load_cascade(path)
    assert c.n_stages == 1 and list(c.feature) == [0, 1] and c.weights[1, 2] == 1.0
    assert c.stage_thresholds.dtype == np.float32 and c.stage_thresholds[0] == np.float32(-1.0) - np.float32(1e-5)


def test_small_valid_cascade_matches_opencv(cv2, tmp_path, portraits):
    """Our own 2-stump cascade (a 3-rectangle feature included) gives OpenCV's raw hits too."""
    path = tmp_path / "ok.xml"
    path.write_text(_xml())
    gray = portraits["256/011"][40:160, 60:180]
    theirs = cv2.CascadeClassifier(str(path)).detectMultiScale(gray, 1.2, 0)
    assert len(_boxes(theirs)) > 0 and _boxes(haar.detect_multiscale(gray, haar.load_cascade(path), 1.2, 0)) == _boxes(theirs)


@pytest.mark.parametrize("text, words", [
    (_xml()[: len(_xml()) // 2], "well-formed"),                          # truncated
    ("", "well-formed"),                                                  # empty file
    ("\x00\x01 not xml at all", "well-formed"),
    ("<?xml version='1.0'?><something/>", "not an OpenCV cascade"),
    (OLD_FORMAT, "old-format"),
    (_xml(feature_type="LBP"), "LBP"),
    (_xml(stage_type="GAB"), "stageType"),
    (_xml(tilted="1"), "tilted"),
    (_xml(nodes="1 -1 0 -1.5e-02 0 -2 0 3.0e-02"), "stumps"),             # a tree with 2 nodes
    (_xml(threshold="abc"), "malformed number"),
    (_xml(width=""), "malformed number"),
    (_xml(rect="6 4 12 -1."), "x y w h weight"),
    (_xml(rect="20 4 12 9 -1."), "not inside"),
    (_xml(feature_idx="7"), "refers to feature"),
])
def test_bad_cascade_files_raise_one_line_cascade_error(tmp_path, text, words):
    path = tmp_path / "bad cascade.xml"
    path.write_text(text)
    with pytest.raises(haar.CascadeError) as err:
        haar.load_cascade(path)
    message = str(err.value)
    assert isinstance(err.value, ValueError) and "\n" not in message
    assert str(path) in message and words in message, message


def test_unsupported_opencv_cascades_are_refused_clearly():
    folder = _cascade_dir()
    for xml, words in (("haarcascade_smile.xml", "tilted"), ("haarcascade_eye_tree_eyeglasses.xml", "stumps"),
                       ("haarcascade_license_plate_rus_16stages.xml", "old-format")):
        if (folder / xml).is_file():
            with pytest.raises(haar.CascadeError, match=words):
                haar.load_cascade(folder / xml)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        haar.load_cascade(tmp_path / "nope.xml")


@pytest.mark.parametrize("kwargs, words", [
    (dict(gray=np.zeros((64, 64), np.float32)), "uint8"),
    (dict(gray=np.zeros((64, 64, 3), np.uint8)), "2-D"),
    (dict(gray=np.zeros(64, np.uint8)), "2-D"),
    (dict(scale_factor=1.0), "scale_factor"),
    (dict(scale_factor=0.9), "scale_factor"),
    (dict(scale_factor=float("nan")), "scale_factor"),
    (dict(scale_factor="1.1"), "scale_factor"),
    (dict(min_neighbors=-1), "min_neighbors"),
    (dict(min_neighbors=2.5), "min_neighbors"),
    (dict(min_neighbors=None), "min_neighbors"),
    (dict(min_size=(-1, 0)), "min_size"),
    (dict(min_size=(30,)), "min_size"),
    (dict(min_size=30), "min_size"),
    (dict(max_size=(30.5, 30)), "max_size"),
])
def test_bad_arguments_raise_value_error(tmp_path, kwargs, words):
    path = tmp_path / "ok.xml"
    path.write_text(_xml())
    args = {"gray": np.zeros((64, 64), np.uint8), "cascade": haar.load_cascade(path), **kwargs}
    gray = args.pop("gray")
    with pytest.raises(ValueError, match=words):
        haar.detect_multiscale(gray, **args)

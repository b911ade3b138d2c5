"""comicutils.dlib_resnet: the PyTorch copy of dlib's face-recognition ResNet against dlib itself.

The references come from dlib: HOG detector (upsample 1), 5-point landmarks, ``get_face_chip``
(150 px, padding 0.25 -- what ``compute_face_descriptor(image, shape)`` uses by default) and
``compute_face_descriptor(chip)``. The quick tests use 5 portraits (about 2 s); the test marked
slow runs all 90 CC0 portraits of the mirror (about 15 s on 2 cores).
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from comicutils import dlib_resnet
from comicutils.dlib_resnet import (DlibModelError, FaceRecognitionResNet, descriptor_distance, load_face_recognition_resnet,
                                    parse_dlib_network, read_dlib_network)

TOLERANCE = 1e-3  # per number, absolute (measured: 6e-7)
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model_path():
    try:
        path = dlib_resnet.default_model_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    if not path.is_file():
        pytest.skip(f"{path} is missing")
    return path


@pytest.fixture(scope="module")
def model(model_path):
    return load_face_recognition_resnet(model_path)


@pytest.fixture(scope="module")
def dlib_tools(model_path):
    dlib = pytest.importorskip("dlib")
    return (dlib, dlib.get_frontal_face_detector(),
            dlib.shape_predictor(str(model_path.parent / "shape_predictor_5_face_landmarks.dat")),
            dlib.face_recognition_model_v1(str(model_path)))


@pytest.fixture(scope="module")
def all_portraits(mirror):
    paths = sorted((mirror / "interfaces" / "256").glob("*.jpg")) + sorted((mirror / "interfaces" / "256-extra").glob("*.jpg"))
    assert len(paths) == 90, "the mirror should hold the 90 CC0 portraits"
    return paths


def _dlib_chips(paths, dlib_tools, limit=None):
    """Aligned uint8 chips (N, 150, 150, 3) and dlib's descriptors (N, 128) for the portraits
    where dlib's HOG detector finds a face (the largest face of each)."""
    dlib, detector, predictor, recognizer = dlib_tools
    chips, refs = [], []
    for path in paths:
        image = dlib.load_rgb_image(str(path))
        rects = detector(image, 1)
        if not rects:
            continue
        shape = predictor(image, max(rects, key=lambda r: r.area()))
        chip = dlib.get_face_chip(image, shape, size=150, padding=0.25)
        chips.append(chip)
        refs.append(np.asarray(recognizer.compute_face_descriptor(chip), dtype=np.float64))
        if limit and len(chips) == limit:
            break
    return np.stack(chips), np.stack(refs)


def _as_tensor(chips_uint8: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(chips_uint8).permute(0, 3, 1, 2).float() / 255


def _pairwise(d: np.ndarray) -> np.ndarray:
    return np.linalg.norm(d[:, None, :] - d[None, :, :], axis=-1)


@pytest.fixture(scope="module")
def few(all_portraits, dlib_tools):
    return _dlib_chips(all_portraits, dlib_tools, limit=5)


# --------------------------------------------------------------------------- the file
def test_file_is_parsed_as_dlibs_network(model_path, model):
    net = read_dlib_network(model_path)
    assert net.input_size == (150, 150)
    assert net.channel_means == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    assert net.loss["dist_thresh"] == pytest.approx(0.6) and model.same_person_threshold == pytest.approx(0.6)
    kinds = [layer.kind for layer in net.layers]
    assert kinds.count("con") == 29 and kinds.count("add_prev") == 14 and kinds[-1] == "fc"
    assert len(model.blocks) == 14
    assert sum(p.numel() for p in model.parameters()) == 5_614_592
    assert not model.training and not any(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------- against dlib
def test_descriptors_match_dlib_on_five_portraits(model, few):
    chips, refs = few
    assert len(chips) == 5
    with torch.no_grad():
        ours = model(_as_tensor(chips)).double().numpy()
    assert ours.shape == (5, 128)
    assert np.abs(ours - refs).max() < TOLERANCE


def test_identity_distances_match_dlib(model, few):
    chips, refs = few
    with torch.no_grad():
        ours = model(_as_tensor(chips))
    dist = descriptor_distance(ours[:, None, :], ours[None, :, :]).double().numpy()
    assert dist.shape == (5, 5) and np.allclose(np.diag(dist), 0)
    assert np.abs(dist - _pairwise(refs)).max() < TOLERANCE
    assert (dist[~np.eye(5, dtype=bool)] > 0.3).all()  # five different people


@pytest.mark.slow
def test_descriptors_and_distances_match_dlib_on_all_portraits(model, all_portraits, dlib_tools):
    chips, refs = _dlib_chips(all_portraits, dlib_tools)
    assert len(chips) >= 75  # dlib's HOG detector (upsample 1) finds a face in 78 of the 90
    with torch.no_grad():
        ours = torch.cat([model(_as_tensor(chips[i:i + 16])) for i in range(0, len(chips), 16)]).double().numpy()
    assert np.abs(ours - refs).max() < TOLERANCE
    assert np.abs(_pairwise(ours) - _pairwise(refs)).max() < TOLERANCE


def test_module_level_descriptors_use_the_installed_model(model, few):
    chips = _as_tensor(few[0][:2])
    with torch.no_grad():
        assert torch.allclose(dlib_resnet.descriptors(chips), model(chips), atol=1e-6)


# --------------------------------------------------------------------------- gradients
def test_gradients_flow_to_the_chips_and_match_finite_differences(model_path, few):
    model64 = load_face_recognition_resnet(model_path).double()
    chip = _as_tensor(few[0][:1]).double().clamp(0.02, 0.98).requires_grad_(True)
    target = torch.from_numpy(few[1][1:2])  # another person's dlib descriptor

    def loss_of(x):
        return descriptor_distance(model64(x), target).sum()

    loss_of(chip).backward()
    grad = chip.grad
    assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0
    eps = 1e-6
    rng = np.random.default_rng(0)
    for c, y, x in [(0, 75, 75), (1, 60, 50), (2, 100, 90), (0, 40, 110)] + [tuple(rng.integers([0, 20, 20], [3, 130, 130])) for _ in range(2)]:
        with torch.no_grad():
            plus, minus = chip.clone(), chip.clone()
            plus[0, c, y, x] += eps
            minus[0, c, y, x] -= eps
            numeric = (loss_of(plus) - loss_of(minus)).item() / (2 * eps)
        assert numeric == pytest.approx(grad[0, c, y, x].item(), rel=1e-4, abs=1e-9), (c, y, x)


# --------------------------------------------------------------------------- errors
def _one_line_error(path) -> str:
    with pytest.raises(DlibModelError) as info:
        read_dlib_network(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    return message


@pytest.mark.parametrize("keep", [1, 40, 600, 10_000_000, -1])
def test_truncated_file_is_a_one_line_error(model_path, tmp_path, keep):
    data = model_path.read_bytes()
    cut = tmp_path / "truncated.dat"
    cut.write_bytes(data[:keep])
    message = _one_line_error(cut)
    assert "corrupt or truncated" in message


@pytest.mark.parametrize("offset, replacement, says", [
    (0, b"\x02", "unexpected first version"),                  # loss layer version
    (4, b"loss_metrix_2", "expected dlib's metric-learning loss"),  # loss layer name
    (2, b"\x7f", "bad integer control byte"),                  # length of the loss layer name
])
def test_corrupted_header_is_a_one_line_error(model_path, tmp_path, offset, replacement, says):
    data = bytearray(model_path.read_bytes())
    data[offset:offset + len(replacement)] = replacement
    bad = tmp_path / "corrupt.dat"
    bad.write_bytes(bytes(data))
    assert says in _one_line_error(bad)


def test_corrupted_layer_and_foreign_files_are_one_line_errors(model_path, tmp_path, all_portraits):
    data = model_path.read_bytes()
    at = data.index(b"con_4")
    bad = tmp_path / "layer.dat"
    bad.write_bytes(data[:at] + b"cox_4" + data[at + 5:])
    assert "unsupported dlib layer 'cox_4'" in _one_line_error(bad)
    longer = tmp_path / "longer.dat"
    longer.write_bytes(data + b"\x00")
    assert "1 unexpected bytes" in _one_line_error(longer)
    _one_line_error(all_portraits[0])  # a JPEG is not a dlib network
    with pytest.raises(FileNotFoundError, match="face_recognition_models"):
        load_face_recognition_resnet(tmp_path / "missing.dat")


def test_damaged_bytes_give_nothing_but_a_one_line_dlib_model_error(model_path):
    data = model_path.read_bytes()
    rng = np.random.default_rng(1)
    # the structure-dense parts: wrapper versions, input layer, first con_ record; the fc record's tail
    offsets = list(rng.integers(0, 0x160, 16)) + list(rng.integers(len(data) - 80, len(data), 8))
    errors = 0
    for offset in offsets:
        damaged = bytearray(data)
        damaged[offset] ^= 0xFF
        try:
            FaceRecognitionResNet(parse_dlib_network(bytes(damaged), "damaged.dat"))
        except DlibModelError as exc:
            assert "\n" not in str(exc) and str(exc).startswith("damaged.dat: "), offset
            errors += 1
    assert errors >= len(offsets) // 2  # a damaged float (a channel mean, a weight) still parses


def test_chips_outside_the_contract_are_rejected(model):
    with pytest.raises(ValueError, match=r"\(N, 3, 150, 150\)"):
        model(torch.rand(1, 3, 128, 128))
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        model(torch.rand(1, 3, 150, 150) * 255)
    with pytest.raises(ValueError, match="end in 128"):
        descriptor_distance(torch.zeros(2, 64), torch.zeros(2, 64))
    assert model(torch.rand(0, 3, 150, 150)).shape == (0, 128)
    assert math.isclose(descriptor_distance(torch.zeros(128), torch.full((128,), 0.05)).item(), 0.05 * math.sqrt(128), rel_tol=1e-6)

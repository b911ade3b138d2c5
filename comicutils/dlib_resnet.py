"""dlib's face-recognition ResNet as a differentiable PyTorch module, read from dlib's own file.

dlib (Davis King, public domain) ships ``dlib_face_recognition_resnet_model_v1.dat`` in the pip
package ``face_recognition_models``; :mod:`comicutils.faces` runs it through dlib's C++ code,
which gives numbers but no gradients. This module reads the same file with a small byte parser
and rebuilds the network in PyTorch, so an identity loss can be back-propagated into an image.

The network (dlib's ``examples/dnn_face_recognition_ex.cpp``), 29 convolutions::

    chip (N, 3, 150, 150) RGB -> (255 * chip - channel mean) / 256
    con 7x7/2, 32 filters -> affine -> relu -> max_pool 3x3/2            (N, 32, 35, 35)
    3 x ares 32 | ares_down 64 + 3 x ares 64 | ares_down 128 + 2 x ares 128
      | ares_down 256 + 2 x ares 256 | ares_down 256                     (N, 256, 2, 2)
    avg_pool_everything -> fc_no_bias 128                                (N, 128)

``ares`` is ``relu(x + affine(con3x3(relu(affine(con3x3(x))))))``; ``ares_down`` has a stride-2
first convolution and adds ``avg_pool 2x2/2 (x)`` instead of ``x``. ``affine`` is dlib's
inference-time batch norm, ``gamma * x + beta`` per channel. dlib adds tensors of different
sizes by zero-padding the smaller at the end of each dimension (channels, rows, columns), which
this network relies on: the first ``ares_down 64`` adds a 32-channel shortcut to 64 channels,
and ``ares_down 256`` at 8x8 adds a 3x3 block output to a 4x4 pooled shortcut.

The descriptor is the fc output itself, not normalised (on the course's portraits the rows
have norms of 1.27 to 1.62); dlib calls two faces the same person when the Euclidean distance
is below 0.6 (``dist_thresh`` of the file's metric loss,
:attr:`FaceRecognitionResNet.same_person_threshold`). On the 78 course portraits dlib's HOG
detector finds, the descriptors agree with dlib's ``compute_face_descriptor`` to 6e-7.

The file format (dlib's ``serialize.h``, ``dnn/core.h``, ``dnn/layers.h``, ``dnn/tensor.h``):
integers are a control byte (bit 7 = negative, low 4 bits = byte count) and that many
little-endian bytes; floats are two such integers, mantissa and exponent; strings a length and
bytes; bools the characters ``'1'``/``'0'``; tensors a version (2), four dimensions and raw
little-endian float32. A network is written from the loss layer down: the loss layer, then
each wrapper's version, outermost first, down to the input layer, and then, innermost first,
each layer's own record (a name such as ``"con_4"`` and its fields). Tag and skip layers
(``tag1``, ``skip1``) are only a version number (1), so the residual wiring is recognised by
its pattern of layers. A corrupt, truncated or different file raises :class:`DlibModelError`
naming the file.

Public: :func:`load_face_recognition_resnet`, :class:`FaceRecognitionResNet`,
:func:`descriptors`, :func:`descriptor_distance`, :func:`read_dlib_network` /
:func:`parse_dlib_network`, :func:`default_model_path`, :class:`DlibModelError`.
"""
from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MODEL_FILE = "dlib_face_recognition_resnet_model_v1.dat"
DESCRIPTOR_SIZE = 128


class DlibModelError(ValueError):
    """A dlib model file that is corrupt, truncated, or not the face-recognition ResNet."""


def default_model_path() -> Path:
    """The ResNet file inside the installed ``face_recognition_models`` package.

    The package is located, not imported: its ``__init__`` needs ``pkg_resources``.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("dlib's face-recognition model is missing: pip install face_recognition_models")
    return Path(list(spec.submodule_search_locations)[0]) / "models" / MODEL_FILE


# --------------------------------------------------------------------------- the byte stream
class _Stream:
    """Reads dlib's serialization primitives from bytes; every failure is a DlibModelError."""

    def __init__(self, data: bytes, name: str):
        self.data, self.name, self.pos = data, name, 0

    def fail(self, what: str):
        raise DlibModelError(f"{self.name}: {what} at byte {self.pos} (corrupt or truncated dlib model file)")

    def take(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            self.fail(f"file ends inside {what}")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def read_int(self, what: str) -> int:
        control = self.take(1, what)[0]
        size = control & 0x0F
        if control & 0x70 or size > 8:  # the three middle bits are always 0 in dlib's format
            self.fail(f"bad integer control byte 0x{control:02x} for {what}")
        value = int.from_bytes(self.take(size, what), "little")
        return -value if control & 0x80 else value

    def read_count(self, what: str) -> int:
        value = self.read_int(what)
        if value < 0:
            self.fail(f"negative {what} ({value})")
        return value

    def read_float(self, what: str) -> float:
        mantissa, exponent = self.read_int(what), self.read_int(what)
        special = {32000: math.inf, 32001: -math.inf, 32002: math.nan}  # float_details.h
        if exponent in special:
            return special[exponent]
        try:
            return math.ldexp(mantissa, exponent)
        except OverflowError:
            self.fail(f"bad float exponent {exponent} for {what}")

    def read_bool(self, what: str) -> bool:
        ch = self.take(1, what)
        if ch not in (b"0", b"1"):
            self.pos -= 1
            self.fail(f"bad bool {ch!r} for {what}")
        return ch == b"1"

    def read_string(self, what: str) -> str:
        raw = self.take(self.read_count(f"length of {what}"), what)
        try:
            return raw.decode("ascii")
        except UnicodeDecodeError:
            self.fail(f"non-text {what}")

    def peek_string_startswith(self, prefix: bytes) -> bool:
        start = self.pos
        try:
            return self.read_count("name") < 200 and self.data.startswith(prefix, self.pos)
        except DlibModelError:
            return False
        finally:
            self.pos = start

    def read_tensor(self, what: str) -> np.ndarray:
        """A resizable_tensor: version 2, (num_samples, k, nr, nc), raw float32 little-endian."""
        start = self.pos
        if self.read_int(what) != 2:
            self.pos = start
            self.fail(f"unknown tensor version for {what}")
        shape = tuple(self.read_count(f"size of {what}") for _ in range(4))
        raw = self.take(4 * math.prod(shape), what)
        return np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(shape)

    def read_alias(self, what: str) -> tuple[int, int, int, int]:
        """An alias_tensor: version 1 and four dimensions (a view into a layer's params)."""
        if self.read_int(what) != 1:
            self.fail(f"unknown alias_tensor version for {what}")
        return tuple(self.read_count(f"size of {what}") for _ in range(4))


# --------------------------------------------------------------------------- layer records
@dataclass
class DlibLayer:
    """One layer as dlib stored it. ``kind``: con, affine, relu, max_pool, avg_pool, add_prev,
    fc, or tag_or_skip (dlib's tagN/skipN wrappers, which store nothing but a version)."""

    kind: str
    options: dict = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class DlibNetwork:
    """A parsed dlib network: input normalisation, layers bottom-up (input side first), loss."""

    channel_means: tuple[float, float, float]  # R, G, B on the 0..255 scale
    input_size: tuple[int, int]                # rows, columns
    layers: list[DlibLayer]
    loss: dict[str, float]
    source: str = "<bytes>"                    # the file it came from, for error messages


def _slice(params: np.ndarray, offset: int, shape: tuple[int, ...]) -> np.ndarray:
    flat = params.reshape(-1)
    return flat[offset:offset + math.prod(shape)].reshape(shape)


def _con(s: _Stream, version: str) -> DlibLayer:
    params = s.read_tensor("con params")
    num_filters = s.read_count("num_filters")
    nr, nc, stride_y, stride_x, pad_y, pad_x = (s.read_count("con geometry") for _ in range(6))
    filters = s.read_alias("con filters")
    s.read_alias("con biases")  # (1, num_filters), right after the filters in params
    for _ in range(4):
        s.read_float("learning-rate multipliers")
    use_bias = s.read_bool("use_bias") if version in ("con_5", "con_6") else True
    if version == "con_6" and s.read_bool("use_relu"):
        s.fail("con_ with a fused relu is not supported")
    if filters[0] != num_filters or filters[2:] != (nr, nc) or math.prod(filters) + use_bias * num_filters != params.size:
        s.fail(f"con filter sizes {filters} do not match its {params.size} parameters")
    arrays = {"weight": _slice(params, 0, filters)}
    if use_bias:
        arrays["bias"] = _slice(params, math.prod(filters), (num_filters,))
    return DlibLayer("con", dict(kernel=(nr, nc), stride=(stride_y, stride_x), padding=(pad_y, pad_x)), arrays)


def _affine(s: _Stream, version: str) -> DlibLayer:
    params = s.read_tensor("affine params")
    gamma, beta = s.read_alias("affine gamma"), s.read_alias("affine beta")
    s.read_int("affine mode")  # CONV_MODE (per channel) or FC_MODE (per element): the alias shapes say which
    if version == "affine_2" and s.read_bool("affine disabled"):
        s.fail("disabled affine_ layers are not supported")
    if gamma != beta or 2 * math.prod(gamma) != params.size:
        s.fail(f"affine sizes {gamma} / {beta} do not match its {params.size} parameters")
    size = math.prod(gamma)
    return DlibLayer("affine", arrays={"gamma": _slice(params, 0, gamma), "beta": _slice(params, size, gamma)})


def _relu(s: _Stream, version: str) -> DlibLayer:
    if version == "relu_2" and s.read_bool("relu disabled"):
        s.fail("disabled relu_ layers are not supported")
    return DlibLayer("relu")


def _pool(s: _Stream, version: str) -> DlibLayer:
    nr, nc, stride_y, stride_x, pad_y, pad_x = (s.read_count("pool geometry") for _ in range(6))
    return DlibLayer(version[:-2], dict(kernel=(nr, nc), stride=(stride_y, stride_x), padding=(pad_y, pad_x)))


def _fc(s: _Stream, version: str) -> DlibLayer:
    num_outputs, num_inputs = s.read_count("fc outputs"), s.read_count("fc inputs")
    params = s.read_tensor("fc params")
    s.read_alias("fc weights")
    s.read_alias("fc biases")
    has_bias = s.read_int("fc bias mode") == 0  # FC_HAS_BIAS = 0, FC_NO_BIAS = 1
    for _ in range(4):
        s.read_float("learning-rate multipliers")
    if version == "fc_3":
        has_bias = s.read_bool("use_bias") and has_bias
    if params.size != (num_inputs + has_bias) * num_outputs:
        s.fail(f"fc sizes {num_inputs}x{num_outputs} do not match its {params.size} parameters")
    table = params.reshape(num_inputs + has_bias, num_outputs)  # x @ table (+ last row as bias)
    arrays = {"weight": table[:num_inputs]}
    if has_bias:
        arrays["bias"] = table[num_inputs]
    return DlibLayer("fc", arrays=arrays)


_LAYER_READERS = {
    **dict.fromkeys(("con_4", "con_5", "con_6"), _con),
    **dict.fromkeys(("affine_", "affine_2"), _affine),
    **dict.fromkeys(("relu_", "relu_2"), _relu),
    "max_pool_2": _pool, "avg_pool_2": _pool,
    "add_prev_": lambda s, version: DlibLayer("add_prev"),
    **dict.fromkeys(("fc_2", "fc_3"), _fc),
}


def _layer_record(s: _Stream, bottom_version: int | None = None) -> DlibLayer:
    """One add_layer's own part: the layer record, three bools, cached tensors (empty here)."""
    name = s.read_string("layer name")
    if name not in _LAYER_READERS:
        s.fail(f"unsupported dlib layer {name!r}")
    layer = _LAYER_READERS[name](s, name)
    for _ in range(3):
        s.read_bool("layer flags")
    for _ in range(3):
        s.read_tensor("cached tensor")
    if bottom_version == 3:
        s.read_count("sample expansion factor")
    return layer


def read_dlib_network(path: str | Path) -> DlibNetwork:
    """Parse a dlib DNN file with a metric loss and an RGB input layer (no C++ involved).

    Raises :class:`DlibModelError` (one line, naming the file) if the bytes are not such a file.
    """
    return parse_dlib_network(Path(path).read_bytes(), str(path))


def parse_dlib_network(data: bytes, source: str = "<bytes>") -> DlibNetwork:
    """:func:`read_dlib_network` on bytes already read; ``source`` names them in errors."""
    s = _Stream(data, source)
    if s.read_int("loss layer version") != 1:
        s.fail("not a dlib network (unexpected first version number)")
    loss_name = s.read_string("loss layer name")
    if loss_name == "loss_metric_2":
        loss = {"margin": s.read_float("margin"), "dist_thresh": s.read_float("dist_thresh")}
    elif loss_name == "loss_metric_":
        loss = {"margin": 0.1, "dist_thresh": 0.75}  # the values dlib hard-coded for this version
    else:
        s.fail(f"expected dlib's metric-learning loss, found {loss_name!r}")
    wrappers = []  # versions, outermost first, until the add_layer that sits on the input layer
    while True:
        version = s.read_int("layer version")
        if s.peek_string_startswith(b"input_"):
            break
        if version not in (1, 2) or len(wrappers) > 10_000:
            s.fail(f"unexpected layer version {version}")
        wrappers.append(version)
    if version not in (2, 3):
        s.fail(f"unexpected input add_layer version {version}")
    input_name = s.read_string("input layer name")
    if input_name not in ("input_rgb_image_sized", "input_rgb_image"):
        s.fail(f"expected an RGB input layer, found {input_name!r}")
    means = tuple(s.read_float("channel mean") for _ in range(3))
    size = (s.read_count("input rows"), s.read_count("input columns")) if input_name.endswith("_sized") else (150, 150)  # dlib's chips
    layers = [_layer_record(s, bottom_version=version)]
    for version in reversed(wrappers):  # 1: a tag/skip wrapper; 2: an add_layer (older dlib's add_layer 1 is not read)
        layers.append(DlibLayer("tag_or_skip") if version == 1 else _layer_record(s))
    if s.pos != len(s.data):
        s.fail(f"{len(s.data) - s.pos} unexpected bytes after the network")
    return DlibNetwork(means, size, layers, loss, source)


# --------------------------------------------------------------------------- the PyTorch network
class Affine(nn.Module):
    """dlib's ``affine_`` layer: ``gamma * x + beta`` (batch norm folded for inference).

    ``gamma``/``beta``: (1, C, 1, 1) per channel, or (1, C, H, W) per element."""

    def __init__(self, gamma: np.ndarray, beta: np.ndarray):
        super().__init__()
        self.gamma = nn.Parameter(torch.from_numpy(gamma.copy()))
        self.beta = nn.Parameter(torch.from_numpy(beta.copy()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.beta


def add_zero_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's ``add_prev_``: the sum of (N, C, H, W) tensors whose C, H, W may differ; the
    result takes the larger size and the smaller tensor counts as 0 past its end."""
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def pad(t):
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))
    return pad(a) + pad(b)


def _conv(layer: DlibLayer) -> nn.Conv2d:
    weight = layer.arrays["weight"]
    conv = nn.Conv2d(weight.shape[1], weight.shape[0], layer.options["kernel"], layer.options["stride"],
                     layer.options["padding"], bias="bias" in layer.arrays)
    with torch.no_grad():
        conv.weight.copy_(torch.from_numpy(weight.copy()))
        if conv.bias is not None:
            conv.bias.copy_(torch.from_numpy(layer.arrays["bias"].copy()))
    return conv


def _affine_module(layer: DlibLayer) -> Affine:
    return Affine(layer.arrays["gamma"], layer.arrays["beta"])


class ResidualBlock(nn.Module):
    """dlib's ``ares`` (``shortcut`` = identity) or ``ares_down`` (stride-2 first convolution,
    ``shortcut`` = avg_pool 2x2/2): ``relu(block(x) + shortcut(x))``, added zero-padded."""

    def __init__(self, main: list[DlibLayer], pool: DlibLayer | None):
        super().__init__()
        self.conv1, self.affine1 = _conv(main[0]), _affine_module(main[1])
        self.conv2, self.affine2 = _conv(main[3]), _affine_module(main[4])
        self.shortcut = nn.Identity() if pool is None else nn.AvgPool2d(
            pool.options["kernel"], pool.options["stride"], pool.options["padding"], count_include_pad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.affine2(self.conv2(F.relu(self.affine1(self.conv1(x)))))
        return F.relu(add_zero_padded(y, self.shortcut(x)))


_STEM = ("con", "affine", "relu", "max_pool")
_BLOCK = ("tag_or_skip", "con", "affine", "relu", "con", "affine")
_SAME_TAIL = ("add_prev", "relu")                                         # add_prev1<... tag1<x>>
_DOWN_TAIL = ("tag_or_skip", "tag_or_skip", "avg_pool", "add_prev", "relu")  # tag2, skip1, avg_pool, add_prev2
_HEAD = ("avg_pool", "fc")


class FaceRecognitionResNet(nn.Module):
    """dlib's face-recognition ResNet: chips (N, 3, 150, 150) RGB in [0, 1] -> descriptors (N, 128).

    Built from a :class:`DlibNetwork` (checked by running one blank chip; layers that do not fit
    raise :class:`DlibModelError`); differentiable with respect to the chips. The chips must be
    aligned as ``dlib.get_face_chip(image, landmarks, size=150, padding=0.25)`` makes them.
    """

    def __init__(self, network: DlibNetwork):
        super().__init__()
        layers, kinds = network.layers, [layer.kind for layer in network.layers]

        def fail(i: int, expected: tuple[str, ...]):
            raise DlibModelError(f"{network.source}: layers {kinds[i:i + len(expected)]} at layer {i}, expected {list(expected)}: "
                                 "not dlib's face-recognition ResNet")
        if tuple(kinds[:4]) != _STEM:
            fail(0, _STEM)
        pool = layers[3].options
        self.stem = nn.Sequential(_conv(layers[0]), _affine_module(layers[1]), nn.ReLU(),
                                  nn.MaxPool2d(pool["kernel"], pool["stride"], pool["padding"]))
        blocks, i = [], 4
        while tuple(kinds[i:i + 6]) == _BLOCK:
            main, i = layers[i + 1:i + 6], i + 6
            if tuple(kinds[i:i + 2]) == _SAME_TAIL:
                blocks.append(ResidualBlock(main, None))
                i += 2
            elif tuple(kinds[i:i + 5]) == _DOWN_TAIL:
                blocks.append(ResidualBlock(main, layers[i + 2]))
                i += 5
            else:
                fail(i, _SAME_TAIL)
        self.blocks = nn.Sequential(*blocks)
        if tuple(kinds[i:]) != _HEAD or layers[i].options["kernel"] != (0, 0) or "bias" in layers[i + 1].arrays:
            fail(i, _HEAD)
        weight = layers[i + 1].arrays["weight"]  # (inputs, outputs): dlib computes x @ weight
        self.fc = nn.Linear(*weight.shape, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.from_numpy(weight.T.copy()))
        self.register_buffer("channel_means", torch.tensor(network.channel_means, dtype=torch.float32).view(1, 3, 1, 1))
        self.input_size = network.input_size
        self.same_person_threshold = float(network.loss["dist_thresh"])
        try:  # one blank chip: layers whose sizes do not fit together fail here, not in a notebook
            with torch.no_grad():
                out_shape = tuple(self(torch.zeros(1, 3, *self.input_size)).shape)
        except (RuntimeError, ValueError) as exc:
            raise DlibModelError(f"{network.source}: layer sizes do not fit together ({str(exc).splitlines()[0]})") from None
        if out_shape != (1, DESCRIPTOR_SIZE):
            raise DlibModelError(f"{network.source}: the network gives {out_shape[1]} numbers, not {DESCRIPTOR_SIZE}")

    def forward(self, chips: torch.Tensor) -> torch.Tensor:
        """chips: float (N, 3, 150, 150) RGB in [0, 1] -> descriptors (N, 128), not normalised."""
        rows, cols = self.input_size
        if not torch.is_tensor(chips) or chips.ndim != 4 or tuple(chips.shape[1:]) != (3, rows, cols) or not chips.is_floating_point():
            got = tuple(chips.shape) if torch.is_tensor(chips) else type(chips).__name__
            raise ValueError(f"chips must be a float tensor (N, 3, {rows}, {cols}) in [0, 1]; got {got}")
        if chips.numel() and (chips.min() < -1e-3 or chips.max() > 1 + 1e-3):
            raise ValueError(f"chips must be in [0, 1]; got values in [{chips.min():.3g}, {chips.max():.3g}]")
        x = chips.to(self.channel_means.dtype)
        x = (x * 255 - self.channel_means) / 256  # dlib's input_rgb_image_sized: (pixel - mean) / 256
        x = self.blocks(self.stem(x))
        return self.fc(x.mean(dim=(2, 3)))      # avg_pool_everything, then fc_no_bias


def load_face_recognition_resnet(path: str | Path | None = None) -> FaceRecognitionResNet:
    """Read dlib's ``.dat`` (default: :func:`default_model_path`) into an eval-mode module whose
    parameters do not require grad (gradients still flow to the input chips)."""
    path = default_model_path() if path is None else Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dlib face-recognition model not found at {path}; pip install face_recognition_models")
    model = FaceRecognitionResNet(read_dlib_network(path))
    return model.eval().requires_grad_(False)


@functools.lru_cache(maxsize=1)
def _shared_model() -> FaceRecognitionResNet:
    return load_face_recognition_resnet()


def descriptors(chips: torch.Tensor, model: FaceRecognitionResNet | None = None) -> torch.Tensor:
    """Face descriptors (N, 128) of aligned chips (N, 3, 150, 150) RGB in [0, 1], differentiable.

    ``model``: default, the installed model loaded once and shared (load your own with
    :func:`load_face_recognition_resnet` to move or change it). Runs on the model's device.
    """
    return (model if model is not None else _shared_model())(chips)


def descriptor_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Euclidean distance between descriptors (..., 128) -> (...); below 0.6 dlib says same person.

    (:func:`comicutils.faces.identity_distance` is the same measure computed from images by dlib.)
    """
    if a.shape[-1] != DESCRIPTOR_SIZE or b.shape[-1] != DESCRIPTOR_SIZE:
        raise ValueError(f"descriptors must end in {DESCRIPTOR_SIZE} values; got {tuple(a.shape)} and {tuple(b.shape)}")
    return torch.linalg.vector_norm(a - b, dim=-1)

"""Neural style transfer (Gatys et al.) with Gram matrices: chapter 01.

The method, in the words of the Ding et al. report: pass the style image through a frozen CNN and keep the
Gram matrices of the first layers' feature maps (texture statistics); pass the content image
through the same network and keep a deeper layer's feature maps (structure); then optimise
the *pixels* of an output image so that

    L = λ_c · L_content + λ_s · L_style (+ λ_tv · L_tv)

is minimal (Gatys et al. call λ_c and λ_s α and β; the course keeps α for ComicDiff's blend). Nothing is trained; the network only measures.

Backbones (``backbone=``)
-------------------------
============== ==================================================================
``"vgg16"``    VGG-16 ImageNet (the Ding et al. report); weights ``assets.fetch("vgg16-imagenet")``
``"vgg19"``    VGG-19 ImageNet (Gatys et al. 2016); ``"vgg19-imagenet"``
``"taef2"``    the TAESD taef2 encoder's blocks (real learned features, offline)
``"vgg16-random"``, ``"vgg19-random"``  VGG with explicit random (Kaiming) weights: the
               smoke mode, and the demonstration that *untrained* features give noise
============== ==================================================================

When VGG weights cannot be had, :func:`resolve_backbone` falls back to taef2 and shows the
"substitute in use" banner (``auto``/``smoke`` mode), or raises the
:class:`~comicutils.assets.AssetUnavailable` with download instructions (``full`` mode).

Every feature network maps an image batch (N, 3, H, W) in [0, 1] to a dict
``{layer name: (N, C, h, w) activations}``. VGG layers are named ``conv1_1`` ... ``conv5_3``
(``conv5_4`` for VGG-19), ``relu1_1`` ..., ``pool1`` ...; ``conv`` names are the
convolution outputs *before* the ReLU (as in the PyTorch NST tutorial). The ImageNet
normalisation happens inside the VGG networks; taef2 takes [0, 1] directly.
taef2 layers are ``block1``, ``block5``, ``block9``, ``block13`` (outputs of encoder modules
1, 5, 9 and 13: full, 1/2, 1/4 and 1/8 resolution, 64 channels each).

Units of the style weight
-------------------------
:func:`gram_matrix` divides by C*H*W and :func:`style_loss` averages over the C*C entries, so
the style term is tiny (~1e-6..1e-3) and style weights are large numbers. The seed's
nominal weights (10, 100, 5000 against content weight 1) are on another, unpublished scale;
:data:`SEED_STYLE_WEIGHT_SCALE` maps them to ours (``ours = seed * scale``); see
:func:`seed_style_weight` and the calibration notes there.
"""
from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from . import assets
from .images import check_image_tensor, resize
from .runtime import get_device, get_mode, progress, substitute_banner

__all__ = [
    "BACKBONES", "DEFAULT_LAYERS", "DEFAULT_STYLE_WEIGHT", "SEED_STYLE_WEIGHT_SCALE",
    "IMAGENET_MEAN", "IMAGENET_STD", "BackboneInfo", "NSTResult", "VGGFeatures", "TaeFeatures",
    "resolve_backbone", "load_backbone", "vgg_layer_names", "load_vgg_features",
    "gram_matrix", "style_loss", "content_loss", "total_variation", "seed_style_weight",
    "stylize",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_VGG_BLOCKS = {  # convolutions per block; channels 64, 128, 256, 512, 512
    "vgg16": (2, 2, 3, 3, 3),
    "vgg19": (2, 2, 4, 4, 4),
}
_VGG_CHANNELS = (64, 128, 256, 512, 512)
_VGG_ASSET = {"vgg16": "vgg16-imagenet", "vgg19": "vgg19-imagenet"}
_VGG_HUMAN = {"vgg16": "VGG-16", "vgg19": "VGG-19"}
TAEF2_HUMAN = "TAESD taef2 encoder features (pretrained, offline)"

BACKBONES = ("vgg16", "vgg19", "taef2", "vgg16-random", "vgg19-random")

DEFAULT_LAYERS: dict[str, dict[str, tuple[str, ...]]] = {
    # the Ding et al. report: style from the first five conv layers, content from the fifth and sixth
    "vgg16": {"style": ("conv1_1", "conv1_2", "conv2_1", "conv2_2", "conv3_1"),
              "content": ("conv3_1", "conv3_2")},
    # Gatys et al. 2016
    "vgg19": {"style": ("conv1_1", "conv2_1", "conv3_1", "conv4_1", "conv5_1"),
              "content": ("conv4_2",)},
    # the four feature blocks of the taef2 encoder; content at 1/4 resolution
    "taef2": {"style": ("block1", "block5", "block9", "block13"),
              "content": ("block9",)},
}
DEFAULT_LAYERS["vgg16-random"] = DEFAULT_LAYERS["vgg16"]
DEFAULT_LAYERS["vgg19-random"] = DEFAULT_LAYERS["vgg19"]

# Calibrated on a face2comics v2 pair at 256 px (see seed_style_weight): a clear comic look
# (ink-like dark lines, flattened skin) that keeps the face.
DEFAULT_STYLE_WEIGHT: dict[str, float] = {
    "taef2": 1e4,
    "vgg16": 1e5, "vgg19": 1e5,            # not measured here (no VGG weights offline)
    "vgg16-random": 1e4, "vgg19-random": 1e4,
}

SEED_STYLE_WEIGHT_SCALE: dict[str, float] = {
    "taef2": 20.0,
    "vgg16": 20.0, "vgg19": 20.0,
    "vgg16-random": 20.0, "vgg19-random": 20.0,
}
"""``our style weight = seed style weight * scale`` (content weight 1 in both).

taef2: measured (see :func:`seed_style_weight`): the seed's 10 / 100 / 5000 become
200 / 2,000 / 100,000. VGG: not measured (no ImageNet weights offline); the same scale is only
a starting point -- re-run the sweep when the weights are available.
"""


def seed_style_weight(seed_weight: float, backbone: str = "taef2") -> float:
    """Translate one of the Ding et al. report's style weights (10, 100, 5000) into this module's units.

    Calibration (taef2, default layers, Adam lr 0.02 from the content image, 200 steps,
    256 px; content = face2comics v2 photo ``v2_r0c0``, style = comic ``v2_r1c2``):

    ============  ===============  =====  =========  ==================================
    seed weight   our weight       SSIM   PSNR dB    look
    ============  ===============  =====  =========  ==================================
    10            200              0.70   22.9       weak: darker outlines, photo kept
    --            1,000            0.56   17.8       weak-medium
    100           2,000            0.52   16.8       medium: ink lines, flatter skin
    --            10,000           0.46   16.3       medium-strong (DEFAULT_STYLE_WEIGHT)
    5000          100,000          0.36   16.4       strong: comic texture over everything
    --            1e6, 1e7         0.33   16.3       same as 1e5: Adam saturates
    ============  ===============  =====  =========  ==================================

    SSIM/PSNR are against the content photo (:mod:`comicutils.metrics`). With Adam the
    step size is bounded by ``lr``, so once the style term dominates (above ~1e5) a larger
    weight changes nothing: sweep 1e2..1e5.
    """
    if backbone not in SEED_STYLE_WEIGHT_SCALE:
        raise ValueError(f"unknown backbone {backbone!r}; choose from {', '.join(BACKBONES)}")
    return float(seed_weight) * SEED_STYLE_WEIGHT_SCALE[backbone]


# --------------------------------------------------------------------------- backbones
@dataclass(frozen=True)
class BackboneInfo:
    """What feature network a run used.

    ``requested``: the name asked for; ``used``: the name that runs (``"taef2"`` after a
    fallback); ``weights``: ``"ImageNet"``, ``"taef2 pretrained"`` or ``"random"``;
    ``substitute``: True when ``used`` replaced ``requested`` because weights were missing;
    ``path``: the weight file (None for random weights).
    """

    requested: str
    used: str
    weights: str
    substitute: bool = False
    path: str | None = None

    def label(self) -> str:
        """Short text for figure captions, e.g. ``"taef2 (taef2 pretrained) for vgg16"``."""
        base = f"{self.used} ({self.weights})"
        return f"{base} instead of {self.requested}" if self.substitute else base


def resolve_backbone(requested: str = "vgg16") -> BackboneInfo:
    """Decide which feature network runs for ``requested`` and fetch its weights.

    VGG without weights: ``full`` mode raises :class:`~comicutils.assets.AssetUnavailable`
    (its message says where to download the file and where to put it); ``auto`` and
    ``smoke`` fall back to taef2 and show the substitute banner (never silently).
    """
    if requested not in BACKBONES:
        raise ValueError(f"unknown backbone {requested!r}; choose from {', '.join(BACKBONES)}")
    if requested.endswith("-random"):
        return BackboneInfo(requested, requested, "random")
    if requested == "taef2":
        return BackboneInfo("taef2", "taef2", "taef2 pretrained",
                            path=str(assets.fetch("taef2-encoder", quiet=True)))
    try:
        path = assets.fetch(_VGG_ASSET[requested], quiet=True)
    except assets.AssetUnavailable as err:
        if get_mode() == "full":
            raise
        substitute_banner(
            wanted=f"{_VGG_HUMAN[requested]} ImageNet features", used=TAEF2_HUMAN,
            reason=f"asset {_VGG_ASSET[requested]!r} not in cache or mirror and not "
                   f"downloadable here ({type(err).__name__})")
        return BackboneInfo(requested, "taef2", "taef2 pretrained", substitute=True,
                            path=str(assets.fetch("taef2-encoder", quiet=True)))
    return BackboneInfo(requested, requested, "ImageNet", path=str(path))


def vgg_layer_names(arch: str = "vgg16") -> list[str]:
    """Names of the modules of torchvision's ``vgg16().features`` / ``vgg19().features``, in order.

    ``conv{b}_{i}``, ``relu{b}_{i}`` for block b, convolution i, and ``pool{b}``; index k of
    this list is index k of torchvision's ``features`` (so ``features.k.weight`` maps to
    ``<name k>.weight``).
    """
    if arch not in _VGG_BLOCKS:
        raise ValueError(f"unknown VGG {arch!r}; use vgg16 or vgg19")
    names = []
    for b, n_conv in enumerate(_VGG_BLOCKS[arch], start=1):
        for i in range(1, n_conv + 1):
            names += [f"conv{b}_{i}", f"relu{b}_{i}"]
        names.append(f"pool{b}")
    return names


def _vgg_modules(arch: str) -> "OrderedDict[str, nn.Module]":
    mods: OrderedDict[str, nn.Module] = OrderedDict()
    c_in = 3
    for b, (n_conv, c_out) in enumerate(zip(_VGG_BLOCKS[arch], _VGG_CHANNELS), start=1):
        for i in range(1, n_conv + 1):
            mods[f"conv{b}_{i}"] = nn.Conv2d(c_in, c_out, 3, padding=1)
            # not in-place: an in-place ReLU would overwrite the conv output we keep
            mods[f"relu{b}_{i}"] = nn.ReLU(inplace=False)
            c_in = c_out
        mods[f"pool{b}"] = nn.MaxPool2d(2, 2)
    return mods


class VGGFeatures(nn.Module):
    """VGG-16/19 convolutional trunk, truncated after the deepest layer asked for.

    ``forward(x)``: x (N, 3, H, W) in [0, 1] -> ``{name: (N, C, h, w)}`` for ``layers``.
    ImageNet normalisation ``(x - mean) / std`` is applied inside. Built random (Kaiming
    normal, fan-out, as torchvision initialises VGG, seeded); load weights with
    :func:`load_vgg_features`. Frozen (``requires_grad=False``) and in eval mode.
    """

    def __init__(self, arch: str = "vgg16", layers: Iterable[str] = ("conv5_3",), *, seed: int = 0):
        super().__init__()
        names = vgg_layer_names(arch)
        self.arch = arch
        self.layers = tuple(dict.fromkeys(layers))
        unknown = [n for n in self.layers if n not in names]
        if not self.layers or unknown:
            raise ValueError(f"unknown {arch} layer(s) {unknown or '(none given)'}; "
                             f"available: {', '.join(names)}")
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1))
        mods = _vgg_modules(arch)
        last = max(names.index(n) for n in self.layers)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            for m in mods.values():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
        self.body = nn.Sequential(OrderedDict(list(mods.items())[: last + 1]))
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (x - self.mean) / self.std
        out = {}
        for name, module in self.body.named_children():
            x = module(x)
            if name in self.layers:
                out[name] = x
        return out


def load_vgg_features(model: VGGFeatures, path) -> VGGFeatures:
    """Load a torchvision ImageNet VGG file (``features.K.weight`` keys) into ``model``.

    The file is read with ``torch.load(weights_only=True)``; its ``classifier.*`` keys are
    ignored; ``features.K.*`` maps to the K-th named module. Every key of the (possibly
    truncated) model must be present with the right shape, or a ``RuntimeError`` says which.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    names = vgg_layer_names(model.arch)
    mapped = {}
    for key, value in state.items():
        parts = key.split(".")
        if len(parts) != 3 or parts[0] != "features":
            continue
        k = int(parts[1])
        if k >= len(names):
            raise RuntimeError(f"{path}: key {key} beyond the {len(names)} modules of {model.arch}")
        if names[k] in model.body._modules:
            mapped[f"{names[k]}.{parts[2]}"] = value.float()
    missing, unexpected = model.body.load_state_dict(mapped, strict=False)
    if missing or unexpected:
        raise RuntimeError(f"{path} does not fit {model.arch}: missing {missing}, "
                           f"unexpected {unexpected}")
    return model.requires_grad_(False).eval()


class TaeFeatures(nn.Module):
    """taef2 encoder block activations under names ``"block<k>"``.

    ``forward(x)``: x (N, 3, H, W) in [0, 1], H and W multiples of 8 ->
    ``{"block<k>": (N, 64, H/2^j, W/2^j)}``. No ImageNet normalisation (taef2 takes [0, 1]).
    """

    def __init__(self, layers: Iterable[str] = ("block1", "block5", "block9", "block13")):
        super().__init__()
        from .taesd import FeatureExtractor

        self.layers = tuple(dict.fromkeys(layers))
        try:
            blocks = tuple(sorted({int(n.removeprefix("block")) for n in self.layers}))
        except ValueError:
            raise ValueError(f"taef2 layers are named 'block<k>'; got {self.layers}") from None
        if any(not n.startswith("block") for n in self.layers):
            raise ValueError(f"taef2 layers are named 'block<k>'; got {self.layers}")
        self.extractor = FeatureExtractor(blocks)
        self.requires_grad_(False).eval()

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {f"block{k}": v for k, v in self.extractor(x).items()}


def load_backbone(info: BackboneInfo | str, layers: Iterable[str], *, seed: int = 0) -> nn.Module:
    """Build the feature network of ``info`` (from :func:`resolve_backbone`) for ``layers``.

    A string is resolved first. Returns a frozen module in eval mode mapping (N, 3, H, W) in
    [0, 1] to ``{layer: activations}``; random VGGs are seeded with ``seed``.
    """
    if isinstance(info, str):
        info = resolve_backbone(info)
    layers = tuple(layers)
    if info.used == "taef2":
        return TaeFeatures(layers)
    arch = info.used.removesuffix("-random")
    model = VGGFeatures(arch, layers, seed=seed)
    if info.weights == "ImageNet":
        load_vgg_features(model, info.path)
    return model


# --------------------------------------------------------------------------- losses
def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Gram matrix of feature maps: (N, C, H, W) -> (N, C, C).

    With F the features reshaped to (N, C, H*W): ``G = F @ F^T / (C * H * W)``. Entry (i, j)
    is the inner product of channels i and j over all positions, divided by the number of
    feature values C*H*W (PyTorch-tutorial normalisation; the seed's eq. 1 has no divisor).
    Dividing makes the value independent of image size, so one style weight serves 256 and
    512 px; it also makes the style term small, hence large style weights.
    Symmetric and positive semi-definite; invariant to permuting the H*W positions.
    """
    if features.ndim != 4:
        raise ValueError(f"gram_matrix expects (N, C, H, W); got {tuple(features.shape)}")
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)
    return flat @ flat.transpose(1, 2) / (c * h * w)


def style_loss(features: Mapping[str, torch.Tensor], target_grams: Mapping[str, torch.Tensor],
               layer_weights: Mapping[str, float] | None = None) -> torch.Tensor:
    """Seed eq. 2: ``sum_l w_l * mean((G(F_l) - G_target_l)^2)`` over the layers of ``target_grams``.

    ``features[l]``: (N, C, H, W); ``target_grams[l]``: (N or 1, C, C). The squared difference
    is averaged over the C*C entries (and N); ``layer_weights`` default to 1 per layer.
    Returns a scalar tensor, 0 for identical statistics.
    """
    total = None
    for name, target in target_grams.items():
        w = 1.0 if layer_weights is None else float(layer_weights.get(name, 0.0))
        term = w * F.mse_loss(gram_matrix(features[name]), target.expand(features[name].shape[0], -1, -1))
        total = term if total is None else total + term
    if total is None:
        raise ValueError("style_loss needs at least one target layer")
    return total


def content_loss(features, target_features) -> torch.Tensor:
    """Seed eq. 3: mean squared difference of feature maps (summed over layers for dicts).

    ``features``, ``target_features``: tensors (N, C, H, W), or dicts ``{layer: tensor}``
    (the layers of ``target_features`` count). The gradient w.r.t. x is ``2 (x - t) / n``
    with n the number of elements.
    """
    if isinstance(target_features, Mapping):
        terms = [F.mse_loss(features[k], t) for k, t in target_features.items()]
        if not terms:
            raise ValueError("content_loss needs at least one target layer")
        return torch.stack(terms).sum()
    return F.mse_loss(features, target_features)


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Smoothness penalty of images (N, C, H, W): mean squared difference of vertical
    neighbours plus that of horizontal neighbours (0 for a constant image)."""
    dh = (x[..., 1:, :] - x[..., :-1, :]).pow(2).mean()
    dw = (x[..., :, 1:] - x[..., :, :-1]).pow(2).mean()
    return dh + dw


# --------------------------------------------------------------------------- optimisation
@dataclass
class NSTResult:
    """Outcome of :func:`stylize`.

    ``image``: (1, 3, H, W) in [0, 1] (CPU, detached); ``history``: per-step lists
    ``total``, ``content``, ``style``, ``tv`` (weighted terms as optimised; ``content``,
    ``style``, ``tv`` are *unweighted*, ``total`` the weighted sum) measured at the start of each
    step; ``snapshots``: ``{step: image}`` after that many steps (0 = the initial image);
    ``backbone``: the :class:`BackboneInfo`; ``seconds``: wall time of the optimisation loop
    (targets excluded); ``steps``: steps taken; ``settings``: the arguments used.
    """

    image: torch.Tensor
    history: dict[str, list[float]]
    snapshots: dict[int, torch.Tensor]
    backbone: BackboneInfo
    seconds: float
    steps: int
    settings: dict = field(default_factory=dict)


def _as_image(x: torch.Tensor, what: str) -> torch.Tensor:
    if isinstance(x, torch.Tensor) and x.ndim == 3:
        x = x.unsqueeze(0)
    x = check_image_tensor(x, what)
    if x.shape[0] != 1:
        raise ValueError(f"{what}: stylize takes one image; got a batch of {x.shape[0]}")
    return x


def stylize(content: torch.Tensor, style: torch.Tensor, *, backbone: str | nn.Module = "vgg16",
            steps: int = 300, style_weight: float | None = None, content_weight: float = 1.0,
            tv_weight: float = 0.0, optimizer: str = "adam", lr: float | None = None,
            init: str = "content", snapshots: Iterable[int] = (), seed: int = 0,
            style_layers: Sequence[str] | None = None, content_layers: Sequence[str] | None = None,
            layer_weights: Mapping[str, float] | None = None,
            device: str | torch.device | None = None, show_progress: bool = True,
            callback: Callable[[int, torch.Tensor, dict], None] | None = None) -> NSTResult:
    """Optimise an image so its content features match ``content`` and its Grams match ``style``.

    ``content``, ``style``: (1, 3, H, W) or (3, H, W) in [0, 1]; the style image is resized to
    the content's H x W. Neither is modified. ``backbone``: a name from :data:`BACKBONES`
    (resolved with :func:`resolve_backbone`; VGG may fall back to taef2 with a banner), or a
    module returning ``{layer: features}`` (then give ``style_layers`` and
    ``content_layers``). ``style_weight`` (λ_s) defaults to :data:`DEFAULT_STYLE_WEIGHT` of the
    backbone that actually runs; ``content_weight`` is λ_c.

    ``optimizer``: ``"adam"`` (``lr`` default 0.02, in [0, 1] pixel units) or ``"lbfgs"``
    (``lr`` default 1; ``max_iter=1``, no line search, so **one step = one optimiser step =
    one forward/backward pass** for both). The image is optimised directly in pixel space and
    clamped to [0, 1] after every step. ``init``: ``"content"`` (a copy of the content
    image) or ``"noise"`` (uniform noise, as the Ding et al. report; seeded). ``snapshots``: steps after which
    to keep a copy (0 = the start). A non-finite loss raises ``FloatingPointError``.
    """
    if optimizer not in ("adam", "lbfgs"):
        raise ValueError(f"optimizer must be 'adam' or 'lbfgs'; got {optimizer!r}")
    if init not in ("content", "noise"):
        raise ValueError(f"init must be 'content' or 'noise'; got {init!r}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0; got {steps}")
    want = sorted({int(s) for s in snapshots})
    if want and (want[0] < 0 or want[-1] > steps):
        raise ValueError(f"snapshot steps must lie in 0..{steps}; got {want}")
    dev = torch.device(device) if device is not None else get_device()
    content = _as_image(content, "content").detach()
    style = _as_image(style, "style").detach()
    h, w = content.shape[-2:]

    if isinstance(backbone, nn.Module):
        if not style_layers or not content_layers:
            raise ValueError("a custom backbone module needs style_layers and content_layers")
        info = BackboneInfo(type(backbone).__name__, type(backbone).__name__, "custom")
        net = backbone
    else:
        info = resolve_backbone(backbone)
        defaults = DEFAULT_LAYERS[info.used]
        style_layers = tuple(style_layers or defaults["style"])
        content_layers = tuple(content_layers or defaults["content"])
        net = load_backbone(info, (*style_layers, *content_layers), seed=seed)
    net = net.to(dev).eval()
    if style_weight is None:
        style_weight = DEFAULT_STYLE_WEIGHT.get(info.used, 1e5)
    if lr is None:
        lr = 0.02 if optimizer == "adam" else 1.0

    c = content.to(dev, torch.float32)
    s = resize(style.to(dev, torch.float32), (h, w))
    with torch.no_grad():  # targets are computed once
        c_feats = net(c)
        s_feats = net(s)
        content_targets = {k: c_feats[k].detach() for k in content_layers}
        style_grams = {k: gram_matrix(s_feats[k]).detach() for k in style_layers}
    del c_feats, s_feats

    gen = torch.Generator().manual_seed(seed)  # local: no global seeding side effect
    if init == "content":
        start = c.clone()
    else:
        start = torch.rand(c.shape, generator=gen).to(dev)
    x = nn.Parameter(start)
    if optimizer == "adam":
        opt = torch.optim.Adam([x], lr=lr)
    else:
        opt = torch.optim.LBFGS([x], lr=lr, max_iter=1, history_size=50)

    history: dict[str, list[float]] = {"total": [], "content": [], "style": [], "tv": []}
    kept: dict[int, torch.Tensor] = {}
    if 0 in want:
        kept[0] = x.detach().cpu().clone()

    def closure():
        opt.zero_grad(set_to_none=True)
        feats = net(x)
        lc = content_loss(feats, content_targets)
        ls = style_loss(feats, style_grams, layer_weights)
        ltv = total_variation(x) if tv_weight else x.new_zeros(())
        total = content_weight * lc + style_weight * ls + tv_weight * ltv
        if not torch.isfinite(total):
            raise FloatingPointError(
                f"NST loss became {total.item()} at step {len(history['total']) + 1} "
                f"(content {lc.item():.4g}, style {ls.item():.4g}); lower lr (now {lr}) or "
                f"style_weight (now {style_weight:g}), or use optimizer='adam'.")
        total.backward()
        history["total"].append(total.item())
        history["content"].append(lc.item())
        history["style"].append(ls.item())
        history["tv"].append(ltv.item())
        return total

    bar = progress(range(1, steps + 1), desc=f"NST {info.used} {optimizer}", total=steps,
                   **({} if show_progress else {"disable": True}))
    t0 = time.perf_counter()
    for step in bar:
        opt.step(closure)
        with torch.no_grad():
            if not torch.isfinite(x).all():
                raise FloatingPointError(f"NST image became non-finite at step {step}; lower lr "
                                         f"(now {lr}) or style_weight (now {style_weight:g}).")
            x.clamp_(0.0, 1.0)
        if step in want:
            kept[step] = x.detach().cpu().clone()
        if callback is not None:
            callback(step, x.detach(), history)
        if show_progress and (step % 10 == 0 or step == steps):
            bar.set_postfix(loss=f"{history['total'][-1]:.4g}")
    seconds = time.perf_counter() - t0
    settings = dict(steps=steps, style_weight=style_weight, content_weight=content_weight,
                    tv_weight=tv_weight, optimizer=optimizer, lr=lr, init=init, seed=seed,
                    style_layers=tuple(style_layers), content_layers=tuple(content_layers),
                    size=(h, w), device=str(dev))
    return NSTResult(image=x.detach().cpu().clamp(0, 1).clone(), history=history, snapshots=kept,
                     backbone=info, seconds=seconds, steps=steps, settings=settings)

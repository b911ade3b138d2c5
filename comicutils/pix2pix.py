"""pix2pix for photo -> comic: generators, PatchGAN, losses and a trainer (chapters 02 and 03).

The Human-to-Anime report (Arcane pix2pix) trains a conditional GAN on aligned (photo, comic) pairs:

* a **generator** G maps a photo to a comic: the pix2pix U-Net, a U-Net with 9 residual
  blocks in its bridge (U-Res9), or a U-Net whose encoder is an ImageNet ResNet-50 (U-Res50);
* a **PatchGAN discriminator** D sees ``cat(photo, comic)`` and gives one real/fake logit
  per 70 x 70 patch;
* the generator minimises seed eq. 1, ``total = adv + ALPHA * perc + LAMBDA * l1`` with
  LAMBDA = 100, ALPHA = 0.001 (``perc``: VGG-16 feature distance, MSE or MAE), D minimises
  ``0.5 * (BCE(D(x, y), 1) + BCE(D(x, G(x)), 0))``; Adam(2e-4, betas (0.5, 0.999)), batch 1.

Value ranges
------------
Images cross module boundaries in [0, 1] (the course convention). **All networks here work
in [-1, 1]**: generators map (N, 3, H, W) in [-1, 1] to (N, 3, H, W) in [-1, 1] (Tanh
output), D takes [-1, 1] photos and comics. The conversion happens in two places only:
:func:`translate` (inference) and :meth:`Pix2PixTrainer.train_step` (training).
:func:`generator_loss` hands the perceptual network its [0, 1] view of the images.

BatchNorm and dropout follow the module's mode: :func:`translate` switches the generator to
``eval()`` explicitly (running BatchNorm statistics, no dropout) and restores the mode after.

The Human-to-Anime report's experiments: :data:`TABLE1_ROWS` (its Table 1 with the published numbers),
:func:`table1_config` and :func:`build_trainer` (train any row), ``Pix2PixTrainer.train(...,
eval_pairs=...)`` (its per-epoch metric curve on a test image, Fig. 5) and
:func:`loss_term_magnitudes` (what ALPHA and LAMBDA do to the balance of eq. 1 here).

Sections: helpers -- generators -- discriminator -- losses -- inference and files -- trainer --
the Human-to-Anime report's experiments.
"""
from __future__ import annotations

import contextlib
import math
import os
import re
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from . import assets
from .checkpoints import (checkpoint_exists, deferred_interrupt, load_latest, output_lock, restore_trainer, save_state,
                          trainer_state)
from .images import check_image_tensor
from .runtime import get_device, progress

__all__ = [
    "GENERATORS", "PERCEPTUAL_LAYERS", "CHECKPOINT_FORMAT",
    "UNetGenerator", "unet_channels", "ResidualBlock", "UResNetGenerator", "UResNet50Generator",
    "build_generator", "count_parameters",
    "PatchDiscriminator", "patch_layer_specs", "receptive_field", "patch_output_size",
    "GANLoss", "PerceptualLoss", "generator_loss", "discriminator_loss",
    "translate", "save_generator", "load_generator", "Pix2PixTrainer",
    "TABLE1_ROWS", "TABLE1_REPORT_RANGES", "KERAS_VGG_MEAN", "table1_config", "build_trainer",
    "loss_term_magnitudes",
]

CHECKPOINT_FORMAT = "comicutils.pix2pix/1"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- helpers
def _to_model(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> [-1, 1] network input (a new tensor; the input is untouched)."""
    return images01 * 2.0 - 1.0


def _to_image(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] network output -> [0, 1] (not clamped: keeps gradients; Tanh stays inside)."""
    return (x + 1.0) / 2.0


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters of ``module`` (only those with ``requires_grad`` if asked)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def _check_input(model: nn.Module, x: torch.Tensor, multiple: int) -> None:
    """ValueError naming the allowed sizes unless x is (N, 3, H, W) with H, W multiples of
    ``multiple``."""
    name = type(model).__name__
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3:
        raise ValueError(f"{name} expects images (N, 3, H, W) in [-1, 1]; got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__}")
    h, w = x.shape[-2:]
    if h % multiple or w % multiple or h == 0 or w == 0:
        raise ValueError(
            f"{name} (config {model.config}) halves the image {int(math.log2(multiple))} "
            f"times, so H and W must be positive multiples of {multiple} (e.g. {multiple}, "
            f"{2 * multiple} or {4 * multiple} px); got {h}x{w}. Resize first, e.g. "
            f"comicutils.images.resize(x, {model.config.get('size', multiple)}).")


def _down(c_in: int, c_out: int, *, norm: bool, act: nn.Module) -> nn.Sequential:
    """4x4 stride-2 convolution (halves H, W) [+ BatchNorm] + activation."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=not norm)]
    if norm:
        layers.append(nn.BatchNorm2d(c_out))
    return nn.Sequential(*layers, act)


def _up(c_in: int, c_out: int, *, dropout: float = 0.0) -> nn.Sequential:
    """4x4 stride-2 transposed convolution (doubles H, W) + BatchNorm [+ dropout] + ReLU."""
    layers: list[nn.Module] = [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                               nn.BatchNorm2d(c_out)]
    if dropout > 0:
        layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers, nn.ReLU(inplace=True))


def _decoder(chans: list[int], dropout: float, *, dropout_levels: int):
    """Decoder of a U-Net whose encoder levels have ``chans`` channels -> (ups, final).

    Level j (innermost first) upsamples to ``chans[j-1]`` channels; its input is the bridge
    output (innermost) or the previous level concatenated with its skip (2 * chans[j]).
    The ``dropout_levels`` innermost levels use ``dropout``. ``final``: ConvTranspose to RGB + Tanh.
    """
    ups = nn.ModuleList()
    n = len(chans)
    for k, j in enumerate(range(n - 1, 0, -1)):
        c_in = chans[j] if j == n - 1 else 2 * chans[j]
        ups.append(_up(c_in, chans[j - 1], dropout=dropout if k < dropout_levels else 0.0))
    final = nn.Sequential(nn.ConvTranspose2d(2 * chans[0], 3, 4, 2, 1), nn.Tanh())
    return ups, final


def _run_unet(x: torch.Tensor, downs: nn.ModuleList, bridge: nn.Module, ups: nn.ModuleList,
              final: nn.Module) -> torch.Tensor:
    """Encoder -> bridge -> decoder; decoder level k is concatenated with encoder level k."""
    skips = []
    for layer in downs:
        x = layer(x)
        skips.append(x)
    skips.pop()                                   # the deepest level feeds the bridge only
    x = bridge(x)
    for layer in ups:
        x = torch.cat([layer(x), skips.pop()], dim=1)
    return final(x)


# --------------------------------------------------------------------------- generators
def unet_channels(size: int, ngf: int = 64) -> list[int]:
    """Encoder channels of :class:`UNetGenerator`, outermost first (one entry per level).

    Up to 256 px: ``ngf * min(2**i, 8)`` for the ``log2(size)`` levels (pix2pix). Above: one
    outer level per doubling, each with half the filters of the next, in front of the 256 px
    list (the Human-to-Anime report's 512 px U-Net: 32, 64, 128, 256, 512, 512, 512, 512, 512 at ngf=64).
    """
    n = int(math.log2(size))
    base = [ngf * min(2 ** i, 8) for i in range(min(n, 8))]
    extra = [max(1, ngf >> (n - 8 - i)) for i in range(max(0, n - 8))]
    return extra + base


class UNetGenerator(nn.Module):
    """The pix2pix U-Net: ``log2(size)`` 4x4 stride-2 downsamplings to a 1x1 bottleneck.

    ``forward(x)``: (N, 3, H, W) in [-1, 1] -> (N, 3, H, W) in [-1, 1] (Tanh). H and W must be
    multiples of ``size`` (128 -> 7 levels, 256 -> 8, 512 -> 9); anything else is a ValueError
    naming the allowed sizes.

    At 256 px this is the pix2pix generator of the TensorFlow tutorial the Human-to-Anime report started from:
    encoder level i has ``ngf * min(2**i, 8)`` channels (64, 128, 256, 512, 512, 512, 512, 512
    at ngf=64); 128 px keeps its first seven levels. Conv 4x4/2 + BatchNorm + LeakyReLU(0.2); no
    BatchNorm on the first level nor on the 1x1 bottleneck (a batch of one 1x1 map has no spread
    to normalise), whose activation is ReLU. Decoder: ConvTranspose 4x4/2 + BatchNorm + ReLU,
    dropout ``dropout`` in the three innermost decoder blocks (pix2pix's noise source), each
    output concatenated with the encoder map of the same size (skip connection); last:
    ConvTranspose to 3 channels + Tanh.

    **512 px** (the Human-to-Anime report, sec. 4.1 "U-Net"): "The input layer was resized to 512x512x3.
    Additionally, a downsample layer was incorporated, utilizing a 2D convolution with 32
    filters of size 4x4, employing 'same' padding, a stride of 2. Similarly, an upsample layer
    was introduced to reverse the operation just described." So the 512 px U-Net is the 256 px
    one with an outer level in front: encoder 32, 64, 128, 256, 512 x 5 (a 4x4/2 conv 512 -> 256
    px with ``ngf // 2`` = 32 filters, then the 256 px network unchanged), decoder ending in an
    upsampling to 32 channels at 256 px whose output is concatenated with the 32-filter skip
    before the final ConvTranspose to 512 px. The seed gives the filters, kernel, padding and
    stride only; that the new level is the outermost one (filters grow with depth, and 32 is
    fewer than the 64 of the old first level) and its normalisation are the course's reading:
    as in pix2pix, the level that sees the image has no BatchNorm, so the 64-filter level, now
    second, gets one. Each further doubling (1024 px) adds one more outer level with half the
    filters again.

    Parameters at ngf=64: 41.8 M at 128 px, 54.4 M at 256 px, 54.5 M at 512 px (the extra
    level adds 0.1 M).
    """

    def __init__(self, size: int = 256, ngf: int = 64, dropout: float = 0.5):
        super().__init__()
        if not isinstance(size, int) or size < 4 or size & (size - 1):
            raise ValueError(f"UNetGenerator size must be a power of two >= 4 (128, 256, 512); "
                             f"got {size!r}")
        self.config = {"name": "unet", "size": size, "ngf": ngf, "dropout": dropout}
        self.n_downs = int(math.log2(size))
        self.downs = nn.ModuleList()
        chans = unet_channels(size, ngf)
        c_in = 3
        for i, c in enumerate(chans):
            inner = i == self.n_downs - 1
            act = nn.ReLU(inplace=False) if inner else nn.LeakyReLU(0.2, inplace=False)
            self.downs.append(_down(c_in, c, norm=0 < i < self.n_downs - 1, act=act))
            c_in = c
        self.ups, self.final = _decoder(chans, dropout, dropout_levels=3)

    @property
    def multiple(self) -> int:
        return 2 ** self.n_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.multiple)
        return _run_unet(x, self.downs, nn.Identity(), self.ups, self.final)


def _same_conv4(channels: int) -> nn.Sequential:
    """4x4 stride-1 convolution with TensorFlow 'same' padding (1 before, 2 after)."""
    return nn.Sequential(nn.ZeroPad2d((1, 2, 1, 2)), nn.Conv2d(channels, channels, 4, bias=False))


class ResidualBlock(nn.Module):
    """The Human-to-Anime report's U-Res9 block: ``ReLU(x + BN(conv(ReLU(BN(conv(x))))))``, 4x4 'same' convs.

    (N, C, H, W) -> (N, C, H, W). The seed names two 4x4 'same' convolutions, BatchNorm after
    each, the sum with the input and a final ReLU; the ReLU between the two convolutions is
    the usual residual-block choice (the seed does not say).
    """

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(_same_conv4(channels), nn.BatchNorm2d(channels),
                                  nn.ReLU(inplace=True),
                                  _same_conv4(channels), nn.BatchNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.body(x))


class UResNetGenerator(nn.Module):
    """U-Res9: a U-Net with ``n_blocks`` residual blocks in its bridge (the Human-to-Anime report, after [7]).

    ``forward(x)``: (N, 3, H, W) in [-1, 1] -> (N, 3, H, W) in [-1, 1]; H, W multiples of
    ``2**n_downs`` (16 by default).

    Depth: the encoder stops at 1/16 resolution (``n_downs=4``: 8x8 at 128 px, 16x16 at 256 px)
    so the 4x4 convolutions of the blocks still see spatial context (on the pix2pix U-Net's
    1x1 bottleneck they would reduce to 1x1 convolutions). Channels ``ngf * min(2**i,
    max_mult)``: 64, 128, 256, 256, so the nine blocks hold 256 channels (19 M parameters;
    512 channels would make them 75 M). Encoder and decoder levels are those of
    :class:`UNetGenerator` (same skips); ``dropout`` (default off) in the decoder blocks.
    ``size`` is the training size, recorded in ``config`` and checked to fit.
    """

    def __init__(self, n_blocks: int = 9, ngf: int = 64, *, size: int = 256, n_downs: int = 4,
                 max_mult: int = 4, dropout: float = 0.0):
        super().__init__()
        if n_downs < 1 or size % (2 ** n_downs):
            raise ValueError(f"UResNetGenerator: size must be a multiple of 2**n_downs = "
                             f"{2 ** n_downs}; got size={size}")
        self.config = {"name": "ures9", "size": size, "n_blocks": n_blocks, "ngf": ngf,
                       "n_downs": n_downs, "max_mult": max_mult, "dropout": dropout}
        self.n_downs = n_downs
        chans = [ngf * min(2 ** i, max_mult) for i in range(n_downs)]
        self.downs = nn.ModuleList()
        c_in = 3
        for i, c in enumerate(chans):
            self.downs.append(_down(c_in, c, norm=i > 0, act=nn.LeakyReLU(0.2)))
            c_in = c
        self.bridge = nn.Sequential(*[ResidualBlock(chans[-1]) for _ in range(n_blocks)])
        self.ups, self.final = _decoder(chans, dropout, dropout_levels=len(chans))

    @property
    def multiple(self) -> int:
        return 2 ** self.n_downs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.multiple)
        return _run_unet(x, self.downs, self.bridge, self.ups, self.final)


class _UpBlock(nn.Module):
    """ConvTranspose 4x4/2 + BN + ReLU, concatenate the skip, Conv 3x3 + BN + ReLU."""

    def __init__(self, c_in: int, c_skip: int, c_out: int):
        super().__init__()
        self.up = _up(c_in, c_out)
        self.fuse = nn.Sequential(nn.Conv2d(c_out + c_skip, c_out, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.up(x), skip], dim=1))


class UResNet50Generator(nn.Module):
    """U-Res50: torchvision's ResNet-50 as the encoder of a U-Net (the Human-to-Anime report, Fig. 3).

    ``forward(x)``: (N, 3, H, W) in [-1, 1] -> (N, 3, H, W) in [-1, 1]; H, W multiples of 32.
    Inside, x is mapped to [0, 1] and ImageNet-normalised for the encoder. Encoder maps: conv1
    (1/2, 64 ch), layer1 (1/4, 256), layer2 (1/8, 512), layer3 (1/16, 1024), layer4 (1/32,
    2048). Decoder: 1x1 conv 2048 -> 512, then five up blocks (ConvTranspose 4x4/2, concatenate
    layer3, layer2, layer1, conv1 and finally the input image, Conv 3x3 + BN + ReLU) to 16
    channels at full size, Conv 3x3 -> 3, Tanh. About 31 M parameters (23.5 M encoder).

    ``pretrained=True`` loads ImageNet weights into the encoder (asset ``resnet50-imagenet``,
    ``torch.load(weights_only=True)``, strict except the classifier ``fc.*``). Offline in
    smoke/auto mode the encoder stays random and the substitute banner says so; in full mode a
    missing file raises :class:`~comicutils.assets.AssetUnavailable`. ``self.weights`` says
    which: ``"ImageNet"``, ``"random (substitute)"`` or ``"random"``.
    """

    multiple = 32

    def __init__(self, pretrained: bool = True, *, size: int = 256):
        super().__init__()
        from torchvision.models import resnet50

        if size % 32:
            raise ValueError(f"UResNet50Generator: size must be a multiple of 32; got {size}")
        self.config = {"name": "ures50", "size": size, "pretrained": bool(pretrained)}
        path = None
        if pretrained:  # first, so that full mode fails before building anything
            path = assets.fetch_or_substitute(
                "resnet50-imagenet", wanted="ResNet-50 ImageNet weights",
                substitute="randomly initialised ResNet-50 encoder")
        enc = resnet50(weights=None)
        del enc.fc, enc.avgpool                      # the classifier is not used
        self.encoder = enc
        self.weights = "random (substitute)" if pretrained else "random"
        if path is not None:
            self.load_encoder_weights(path)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.bridge = nn.Sequential(nn.Conv2d(2048, 512, 1, bias=False), nn.BatchNorm2d(512),
                                    nn.ReLU(inplace=True))
        self.ups = nn.ModuleList([_UpBlock(512, 1024, 256), _UpBlock(256, 512, 128),
                                  _UpBlock(128, 256, 64), _UpBlock(64, 64, 32),
                                  _UpBlock(32, 3, 16)])
        self.final = nn.Sequential(nn.Conv2d(16, 3, 3, padding=1), nn.Tanh())

    def load_encoder_weights(self, path: str | os.PathLike) -> None:
        """Load a torchvision ResNet-50 state dict (``fc.*`` ignored) strictly into the encoder."""
        state = torch.load(path, map_location="cpu", weights_only=True)
        self.encoder.load_state_dict({k: v for k, v in state.items() if not k.startswith("fc.")},
                                     strict=True)
        self.weights = "ImageNet"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(self, x, self.multiple)
        e = self.encoder
        h = (_to_image(x) - self.mean) / self.std
        c1 = e.relu(e.bn1(e.conv1(h)))               # 1/2
        l1 = e.layer1(e.maxpool(c1))                 # 1/4
        l2 = e.layer2(l1)                            # 1/8
        l3 = e.layer3(l2)                            # 1/16
        y = self.bridge(e.layer4(l3))                # 1/32
        for block, skip in zip(self.ups, (l3, l2, l1, c1, x)):
            y = block(y, skip)
        return self.final(y)


GENERATORS = {"unet": UNetGenerator, "ures9": UResNetGenerator, "ures50": UResNet50Generator}

_STAGE_PATTERN = re.compile(r"^(downs\.\d+|encoder\.(conv1|layer[1-4])|bridge|ups\.\d+|final)$")


def stage_shapes(generator: nn.Module, size: int = 128):
    """Trace one (1, 3, size, size) input through a generator's stages -> pandas DataFrame.

    One row per stage in execution order (encoder levels, bridge, decoder levels, output) with
    its output resolution, channels and parameter count: the data of an architecture diagram.
    Decoder rows show the channels *before* the skip concatenation.
    """
    import pandas as pd

    rows = []
    modules = {name: m for name, m in generator.named_modules() if _STAGE_PATTERN.match(name)}

    def hook(name):
        def record(module, inputs, output):
            part = ("encoder" if name.startswith(("downs", "encoder")) else
                    "decoder" if name.startswith(("ups", "final")) else "bridge")
            rows.append({"stage": name, "part": part, "resolution": int(output.shape[-1]),
                         "channels": int(output.shape[1]), "parameters": count_parameters(module)})
        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in modules.items()]
    was_training = generator.training
    try:
        generator.eval()
        with torch.no_grad():
            generator(torch.zeros(1, 3, size, size))
    finally:
        for h in handles:
            h.remove()
        generator.train(was_training)
    return pd.DataFrame(rows)


def build_generator(name: str, size: int = 256, **kw: Any) -> nn.Module:
    """``"unet"`` (pix2pix U-Net), ``"ures9"`` (U-Res9) or ``"ures50"`` (U-Res50) for ``size`` px.

    Keyword arguments go to the class (e.g. ``ngf=8`` for a tiny test model).
    """
    if name not in GENERATORS:
        raise ValueError(f"unknown generator {name!r}; choose from {', '.join(GENERATORS)}")
    return GENERATORS[name](size=size, **kw)


# --------------------------------------------------------------------------- discriminator
def patch_layer_specs(n_layers: int = 3) -> list[tuple[int, int]]:
    """(kernel, stride) of the PatchGAN's convolutions: ``n_layers`` x (4, 2), then (4, 1) twice.

    Every convolution has padding 1. :class:`PatchDiscriminator` is built from this list.
    """
    if n_layers < 1:
        raise ValueError(f"n_layers must be >= 1; got {n_layers}")
    return [(4, 2)] * n_layers + [(4, 1), (4, 1)]


def receptive_field(n_layers: int = 3) -> int:
    """Side in px of the input patch that one output logit sees: 70 for 3 layers.

    From the last layer back: ``r <- (r - 1) * stride + kernel`` starting at r = 1, so
    n_layers = 2, 3, 4 give 34, 70, 142.
    """
    r = 1
    for kernel, stride in reversed(patch_layer_specs(n_layers)):
        r = (r - 1) * stride + kernel
    return r


def patch_output_size(size: int, n_layers: int = 3) -> int:
    """Side of D's logit map for a ``size`` px input: ``(s + 2 - 4) // stride + 1`` per layer.

    n_layers=3: 256 -> 30 (the classic 30 x 30 patches), 128 -> 14, 512 -> 62.
    """
    for kernel, stride in patch_layer_specs(n_layers):
        size = (size + 2 - kernel) // stride + 1
    return size


class PatchDiscriminator(nn.Module):
    """PatchGAN: one real/fake logit per overlapping ``receptive_field(n_layers)`` px patch.

    ``forward(photo, comic)``: two (N, 3, H, W) tensors in [-1, 1], concatenated on channels
    (D judges the *pair*: is this comic the photo's comic?) -> logits (N, 1, h, w) with
    h = :func:`patch_output_size` (30 x 30 at 256 px). Layers from :func:`patch_layer_specs`:
    channels ``ndf * min(2**i, 8)``, BatchNorm on all but the first and the last convolution,
    LeakyReLU(0.2), no sigmoid (the losses take logits).
    """

    def __init__(self, in_channels: int = 6, ndf: int = 64, n_layers: int = 3):
        super().__init__()
        self.config = {"in_channels": in_channels, "ndf": ndf, "n_layers": n_layers}
        specs = patch_layer_specs(n_layers)
        layers: list[nn.Module] = []
        c_in = in_channels
        for i, (kernel, stride) in enumerate(specs):
            last = i == len(specs) - 1
            c_out = 1 if last else ndf * min(2 ** i, 8)
            norm = 0 < i < len(specs) - 1
            layers.append(nn.Conv2d(c_in, c_out, kernel, stride, 1, bias=not norm))
            if norm:
                layers.append(nn.BatchNorm2d(c_out))
            if not last:
                layers.append(nn.LeakyReLU(0.2, inplace=True))
            c_in = c_out
        self.net = nn.Sequential(*layers)

    def forward(self, photo: torch.Tensor, comic: torch.Tensor) -> torch.Tensor:
        if photo.shape != comic.shape:
            raise ValueError(f"photo {tuple(photo.shape)} and comic {tuple(comic.shape)} differ")
        return self.net(torch.cat([photo, comic], dim=1))


# --------------------------------------------------------------------------- losses
class GANLoss(nn.Module):
    """Adversarial loss on logits: ``"vanilla"`` (BCE with logits, pix2pix) or ``"lsgan"`` (MSE).

    ``loss(logits, real)`` compares every patch logit with 1 (``real=True``) or 0; mean over
    patches and batch. Vanilla at logit 0 is log 2 = 0.693 for either label.
    """

    def __init__(self, mode: str = "vanilla"):
        super().__init__()
        if mode not in ("vanilla", "lsgan"):
            raise ValueError(f"gan mode must be 'vanilla' or 'lsgan'; got {mode!r}")
        self.mode = mode

    def forward(self, logits: torch.Tensor, real: bool) -> torch.Tensor:
        target = torch.full_like(logits, 1.0 if real else 0.0)
        if self.mode == "vanilla":
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.mse_loss(logits, target)


PERCEPTUAL_LAYERS: dict[str, tuple[str, ...]] = {
    "vgg16": ("relu1_2", "relu2_2", "relu3_3", "relu4_3"),   # four maps, as the Human-to-Anime report
    "vgg19": ("relu1_2", "relu2_2", "relu3_4", "relu4_4"),
    "taef2": ("block1", "block5", "block9", "block13"),
}
PERCEPTUAL_LAYERS["vgg16-random"] = PERCEPTUAL_LAYERS["vgg16"]
PERCEPTUAL_LAYERS["vgg19-random"] = PERCEPTUAL_LAYERS["vgg19"]


class PerceptualLoss(nn.Module):
    """Feature distance of a frozen network: ``sum_l crit(phi_l(pred), phi_l(target))``.

    ``pred``, ``target``: (N, 3, H, W) in [0, 1] (H, W multiples of 8 for taef2); ``crit`` is
    the mean squared (``criterion="mse"``) or mean absolute (``"mae"``) difference over all
    elements of layer l; the target's features carry no gradient. Returns a scalar.

    ``backbone``: a name of :data:`comicutils.nst.BACKBONES`, resolved by
    :func:`comicutils.nst.resolve_backbone` (offline, VGG falls back to the pretrained taef2
    encoder with the substitute banner; full mode raises), or any module mapping images to
    ``{layer: features}`` (then give ``layers``). Default layers: :data:`PERCEPTUAL_LAYERS`
    of the network that actually runs (after a fallback, VGG layer names are replaced by
    taef2's). The network is frozen and stays in eval mode. ``self.info`` is its
    :class:`~comicutils.nst.BackboneInfo`.
    """

    def __init__(self, backbone: str | nn.Module = "vgg16", criterion: str = "mse",
                 layers: Iterable[str] | None = None):
        super().__init__()
        from . import nst

        if criterion not in ("mse", "mae"):
            raise ValueError(f"criterion must be 'mse' or 'mae'; got {criterion!r}")
        self.criterion = criterion
        if isinstance(backbone, nn.Module):
            if not layers:
                raise ValueError("a custom backbone module needs layers=[...]")
            name = type(backbone).__name__
            self.info = nst.BackboneInfo(name, name, "custom")
            self.layers = tuple(layers)
            self.net = backbone
        else:
            self.info = nst.resolve_backbone(backbone)
            if layers is None or self.info.substitute:
                layers = PERCEPTUAL_LAYERS[self.info.used]
            self.layers = tuple(layers)
            self.net = nst.load_backbone(self.info, self.layers)
        self.net.requires_grad_(False).eval()

    def train(self, mode: bool = True) -> "PerceptualLoss":
        super().train(mode)
        self.net.eval()                           # a measuring network: BN/dropout fixed
        return self

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        dist = F.mse_loss if self.criterion == "mse" else F.l1_loss
        fp = self.net(pred)
        with torch.no_grad():
            ft = self.net(target)
        return torch.stack([dist(fp[k], ft[k]) for k in self.layers]).sum()


def generator_loss(d_fake_logits: torch.Tensor, fake: torch.Tensor, target: torch.Tensor, *,
                   gan_loss: GANLoss, perceptual: PerceptualLoss | None = None,
                   lambda_l1: float = 100.0, alpha: float = 0.001) -> dict[str, torch.Tensor]:
    """The Human-to-Anime report's eq. 1: ``total = adv + alpha * perc + lambda_l1 * l1``.

    ``d_fake_logits``: D(photo, fake); ``fake``, ``target``: (N, 3, H, W) in [-1, 1].
    ``adv`` = gan_loss(d_fake_logits, real=True) (G wants D to say "real"); ``l1`` = mean
    |fake - target| in [-1, 1] units (twice the [0, 1] error); ``perc`` = perceptual(fake01,
    target01) on the [0, 1] images, 0 without a perceptual loss. Returns scalar tensors
    ``{"adv", "l1", "perc", "total"}``.
    """
    adv = gan_loss(d_fake_logits, True)
    l1 = F.l1_loss(fake, target)
    if perceptual is not None:
        perc = perceptual(_to_image(fake), _to_image(target))
    else:
        perc = fake.new_zeros(())
    return {"adv": adv, "l1": l1, "perc": perc, "total": adv + alpha * perc + lambda_l1 * l1}


def discriminator_loss(d_real_logits: torch.Tensor, d_fake_logits: torch.Tensor,
                       gan_loss: GANLoss) -> torch.Tensor:
    """``0.5 * (gan_loss(D(x, y), real) + gan_loss(D(x, G(x)), fake))``: pix2pix halves D's
    objective so D learns at half the generator's rate."""
    return 0.5 * (gan_loss(d_real_logits, True) + gan_loss(d_fake_logits, False))


# --------------------------------------------------------------------------- inference and files
@contextlib.contextmanager
def _inference_mode(*modules: nn.Module, batch_norm: str = "running"):
    """Run ``modules`` in ``eval()`` (dropout off); restore each one's mode afterwards.

    ``batch_norm="batch"``: BatchNorm layers normalise with the statistics of the batch they
    see (as in training) while their running averages and counters stay exactly as they were.
    """
    modes = [m.training for m in modules]
    norms = [n for m in modules for n in m.modules() if isinstance(n, nn.modules.batchnorm._BatchNorm)]
    momenta = [n.momentum for n in norms]
    counts = [None if n.num_batches_tracked is None else n.num_batches_tracked.clone() for n in norms]
    for m in modules:
        m.eval()
    if batch_norm == "batch":
        for n in norms:
            n.train()          # batch statistics ...
            n.momentum = 0.0   # ... without touching the running averages
    try:
        yield
    finally:
        for n, momentum, count in zip(norms, momenta, counts):
            n.momentum = momentum
            if count is not None:
                n.num_batches_tracked.copy_(count)
        for m, mode in zip(modules, modes):
            m.train(mode)


@torch.no_grad()
def translate(generator: nn.Module, images01: torch.Tensor, batch_size: int = 8, *,
              norm_stats: str = "running") -> torch.Tensor:
    """Photos -> comics with a trained generator; dropout off, BatchNorm statistics explicit.

    ``images01``: (N, 3, H, W) or (3, H, W) in [0, 1] (not modified). Returns a CPU tensor of
    the same shape in [0, 1]. ``norm_stats``:

    * ``"running"`` - plain ``eval()``: BatchNorm uses the statistics averaged during training;
    * ``"image"`` - the pix2pix paper's inference (Isola et al., sec. 3.3): BatchNorm normalises
      each image with its own statistics, exactly as in training at batch size 1 (instance
      normalisation); images run one at a time and the stored running statistics are not
      changed. Dropout stays off in both, so the output is deterministic.

    The generator's previous mode is restored afterwards.
    """
    if norm_stats not in ("running", "image"):
        raise ValueError(f"norm_stats must be 'running' or 'image'; got {norm_stats!r}")
    single = images01.ndim == 3
    x = check_image_tensor(images01.unsqueeze(0) if single else images01, "translate input")
    device = next(generator.parameters()).device
    if norm_stats == "image":
        batch_size = 1
    with _inference_mode(generator, batch_norm="batch" if norm_stats == "image" else "running"):
        outs = [_to_image(generator(_to_model(chunk.to(device, torch.float32)))).clamp(0, 1).cpu()
                for chunk in x.split(batch_size)]
    out = torch.cat(outs)
    return out[0] if single else out


def save_generator(generator: nn.Module, path: str | os.PathLike) -> Path:
    """Save ``{"format", "generator": state dict, "config": {"generator": config}}`` atomically."""
    return save_state({"format": CHECKPOINT_FORMAT, "generator": generator.state_dict(),
                       "config": {"generator": dict(generator.config)}}, path, keep_previous=False)


def load_generator(path: str | os.PathLike, name: str | None = None, size: int | None = None,
                   *, device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild and load a generator from :func:`save_generator` or a trainer checkpoint.

    The file is read with ``torch.load(weights_only=True)``. ``name``/``size`` may be omitted
    (the file's config says); given, they must agree with it. A bare state dict needs both.
    U-Res50 is rebuilt without fetching ImageNet weights (the file holds them). Returns the
    generator in eval mode on ``device``.
    """
    ckpt, path = load_latest(path)
    if isinstance(ckpt, Mapping) and "generator" in ckpt:
        state = ckpt["generator"]
        config = dict(ckpt.get("config", {}).get("generator", {}))
    else:
        state, config = ckpt, {}
    for key, given in (("name", name), ("size", size)):
        if given is not None and key in config and config[key] != given:
            raise ValueError(f"{path} holds a {config.get('name')} generator at "
                             f"{config.get('size')} px, not {key}={given!r}")
        if given is not None:
            config[key] = given
    if "name" not in config or "size" not in config:
        raise ValueError(f"{path} has no generator config: pass name= and size=")
    kwargs = {k: v for k, v in config.items() if k not in ("name", "size")}
    if config["name"] == "ures50":
        kwargs["pretrained"] = False
    generator = build_generator(config["name"], config["size"], **kwargs)
    generator.config.update(config)
    try:
        generator.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = " ".join(str(err).split())[:160]
        raise ValueError(f"{path}: its weights do not fit a {config['name']} generator at {config['size']} px "
                         f"({first})") from err
    return generator.to(device).eval()


# --------------------------------------------------------------------------- trainer
def _sample_photos(sample_pairs) -> torch.Tensor | None:
    """Photos (N, 3, H, W) in [0, 1] from a PairSet, a (photos, comics) tuple or a tensor."""
    if sample_pairs is None:
        return None
    if hasattr(sample_pairs, "photos"):
        return sample_pairs.photos
    if isinstance(sample_pairs, (tuple, list)):
        return sample_pairs[0]
    if isinstance(sample_pairs, Mapping):
        return sample_pairs["photo"]
    return sample_pairs


def _eval_pairs(eval_pairs) -> tuple[torch.Tensor, torch.Tensor]:
    """(photos, comics), each (N, 3, H, W) in [0, 1], from a PairSet, a (photos, comics) tuple
    or a ``{"photo", "comic"}`` mapping; a single (3, H, W) pair becomes N = 1."""
    if hasattr(eval_pairs, "photos") and hasattr(eval_pairs, "comics"):
        photos, comics = eval_pairs.photos, eval_pairs.comics
    elif isinstance(eval_pairs, Mapping):
        photos, comics = eval_pairs["photo"], eval_pairs["comic"]
    elif isinstance(eval_pairs, (tuple, list)) and len(eval_pairs) == 2:
        photos, comics = eval_pairs
    else:
        raise ValueError("eval_pairs must be a PairSet, a (photos, comics) tuple or a "
                         f"{{'photo', 'comic'}} mapping; got {type(eval_pairs).__name__}")
    photos = check_image_tensor(photos.unsqueeze(0) if photos.ndim == 3 else photos, "eval photos")
    comics = check_image_tensor(comics.unsqueeze(0) if comics.ndim == 3 else comics, "eval comics")
    if photos.shape != comics.shape:
        raise ValueError(f"eval photos {tuple(photos.shape)} and comics {tuple(comics.shape)} differ")
    return photos, comics


def _metric_names(metrics: Iterable[str]) -> list[str]:
    from .metrics import METRICS

    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if m not in METRICS]
    if not names or unknown:
        raise ValueError(f"eval metrics {unknown or '(none)'} unknown; choose from {', '.join(METRICS)}")
    if "id_dist" in names:
        raise ValueError("id_dist compares with the photo, not the comic; it is not an eval metric here")
    return names


class _Skip:
    """A batch sampler without its first ``skip`` batches (a resume in the middle of an epoch)."""

    def __init__(self, batches, skip: int):
        self.batches, self.skip = batches, int(skip)

    def __iter__(self):
        for i, batch in enumerate(self.batches):
            if i >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.skip)


class Pix2PixTrainer:
    """Trains a generator and a PatchGAN with the Human-to-Anime report's Algorithm 1 (D step, then G step).

    ``generator``, ``discriminator``: modules from this file (any module with a ``config``
    dict). ``perceptual``: a :class:`PerceptualLoss` or None. ``lambda_l1``, ``alpha``: the
    weights of eq. 1. Adam(``lr``, ``betas``) for each network. ``device`` defaults to
    :func:`comicutils.runtime.get_device`. Beyond the report (0: off), chapter 01's two terms:
    ``style_weight`` · :func:`comicutils.comicdiff.model.relative_gram_distance` between the
    output's and its own target comic's taef2 features (blocks 1, 5, 9; blind to where a texture
    sits), and ``content_weight`` · :func:`comicutils.taesd.feature_distance` between the output's
    and the *photo's* features on one of those blocks (``content_block``: 9, the deepest, keeps the
    layout; a shallower one keeps more of the photo's detail), not its colours. And an ink term,
    ``edge_weight`` · :func:`comicutils.metrics.edge_histogram_distance` between the output's and
    its comic's edge strengths, sorted (blind to where the lines sit; asks for flat areas and
    strong lines in a comic's proportions).

    State: ``step`` (optimiser steps done), ``epoch`` (complete epochs), ``history`` (one dict
    per step: step, epoch, d, g_total, g_adv, g_l1, g_perc, and g_style / g_content / g_edges when on; ``pandas.DataFrame(history)``
    plots the curves), ``samples`` ({epoch: (N, 3, H, W) in [0, 1]} generator outputs on the
    fixed sample photos; 0 = before training), ``metric_history`` (one dict per epoch trained
    with ``eval_pairs``: epoch, step and the mean of each metric over the eval pairs; seed
    003's Fig. 5 curve, see :meth:`evaluate`). ``history`` and ``metric_history`` are kept in
    the checkpoint; ``samples`` are not.
    """

    FEATURE_BLOCKS = (1, 5, 9)          # the taef2 blocks of chapter 01's two terms

    def __init__(self, generator: nn.Module, discriminator: nn.Module, *,
                 perceptual: PerceptualLoss | None = None, lambda_l1: float = 100.0,
                 alpha: float = 0.001, lr: float = 2e-4, betas: tuple[float, float] = (0.5, 0.999),
                 gan_mode: str = "vanilla", device: str | torch.device | None = None,
                 style_weight: float = 0.0, content_weight: float = 0.0, content_block: int = 9,
                 edge_weight: float = 0.0):
        self.device = get_device(str(device) if device is not None else None)
        self.generator = generator.to(self.device)
        self.discriminator = discriminator.to(self.device)
        self.perceptual = perceptual.to(self.device) if perceptual is not None else None
        self.gan_loss = GANLoss(gan_mode)
        self.lambda_l1, self.alpha = float(lambda_l1), float(alpha)
        self.style_weight, self.content_weight = float(style_weight), float(content_weight)
        self.edge_weight = float(edge_weight)
        for name, w in (("style_weight", self.style_weight), ("content_weight", self.content_weight),
                        ("edge_weight", self.edge_weight)):
            if not w >= 0:
                raise ValueError(f"{name} must be >= 0; got {w}")
        if content_block not in self.FEATURE_BLOCKS:
            raise ValueError(f"content_block must be one of the taef2 blocks "
                             f"{', '.join(map(str, self.FEATURE_BLOCKS))}; got {content_block!r}")
        self.content_block = int(content_block)
        self.style_features = None
        if self.style_weight or self.content_weight:
            from .taesd import FeatureExtractor, load_encoder

            # its own encoder copy: building it draws the same random numbers in every process, so
            # the dropout masks that follow do not depend on what ran before (the shared one draws
            # them only on its first use)
            self.style_features = FeatureExtractor(blocks=self.FEATURE_BLOCKS, encoder=load_encoder(fresh=True)).requires_grad_(
                False).eval().to(self.device)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=tuple(betas))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=tuple(betas))
        self.step, self.epoch = 0, 0
        self.epoch_step = 0                 # steps done in the current (unfinished) epoch
        self.history: list[dict[str, float]] = []
        self.samples: dict[int, torch.Tensor] = {}
        self.metric_history: list[dict[str, float]] = []
        self.config = {
            "generator": dict(getattr(generator, "config", {})),
            "discriminator": dict(getattr(discriminator, "config", {})),
            "trainer": {"lambda_l1": self.lambda_l1, "alpha": self.alpha, "lr": float(lr),
                        "betas": [float(b) for b in betas], "gan_mode": gan_mode,
                        "perceptual": None if perceptual is None else
                        f"{perceptual.info.label()} {perceptual.criterion}",
                        **({"style_weight": self.style_weight} if self.style_weight else {}),
                        **({"content_weight": self.content_weight, "content_block": self.content_block}
                           if self.content_weight else {}),
                        **({"edge_weight": self.edge_weight} if self.edge_weight else {})},
        }

    # one step ------------------------------------------------------------------
    def train_step(self, photo01: torch.Tensor, comic01: torch.Tensor) -> dict[str, float]:
        """One D update then one G update on a batch; photos and comics (N, 3, H, W) in [0, 1].

        Appends and returns the history row. A non-finite loss raises ``FloatingPointError``
        before any weight is changed by it.
        """
        G, D = self.generator, self.discriminator
        photo = _to_model(photo01.to(self.device, torch.float32))
        comic = _to_model(comic01.to(self.device, torch.float32))
        G.train()
        D.train()
        fake = G(photo)

        # D step: real pair -> 1, generated pair -> 0 (fake detached: G is not updated here)
        self.opt_d.zero_grad(set_to_none=True)
        loss_d = discriminator_loss(D(photo, comic), D(photo, fake.detach()), self.gan_loss)
        self._guard(loss_d, "discriminator loss")
        loss_d.backward()
        self.opt_d.step()

        # G step: fool the updated D, stay close to the target (L1, perceptual)
        self.opt_g.zero_grad(set_to_none=True)
        D.requires_grad_(False)
        try:
            parts = generator_loss(D(photo, fake), fake, comic, gan_loss=self.gan_loss,
                                   perceptual=self.perceptual, lambda_l1=self.lambda_l1,
                                   alpha=self.alpha)
            if self.style_features is not None or self.edge_weight:
                parts.update(self._chapter01_terms(photo, fake, comic))
                parts["total"] = (parts["total"] + self.style_weight * parts.get("style", 0.0)
                                  + self.content_weight * parts.get("content", 0.0)
                                  + self.edge_weight * parts.get("edges", 0.0))
            self._guard(parts["total"], "generator loss", parts)
            parts["total"].backward()
        finally:
            D.requires_grad_(True)
        self.opt_g.step()

        self.step += 1
        row = {"step": self.step, "epoch": self.epoch + 1, "d": loss_d.item(),
               "g_total": parts["total"].item(), "g_adv": parts["adv"].item(),
               "g_l1": parts["l1"].item(), "g_perc": parts["perc"].item()}
        for k in ("style", "content", "edges"):
            if k in parts:
                row[f"g_{k}"] = parts[k].item()
        self.history.append(row)
        return row

    def _chapter01_terms(self, photo: torch.Tensor, fake: torch.Tensor, comic: torch.Tensor) -> dict:
        """The Gram term (output vs its comic), the content term (output vs its photo, one block)
        and the edge term (output's edge strengths vs its comic's, position-blind)."""
        from .comicdiff.model import relative_gram_distance
        from .metrics import edge_histogram_distance
        from .taesd import feature_distance

        terms = {}
        if self.edge_weight:
            terms["edges"] = edge_histogram_distance(_to_image(fake), _to_image(comic)).mean()
        if self.style_features is None:
            return terms
        out = self.style_features(_to_image(fake))
        if self.style_weight:
            with torch.no_grad():
                target = self.style_features(_to_image(comic))
            terms["style"] = relative_gram_distance(out, target).mean()
        if self.content_weight:
            with torch.no_grad():
                source = self.style_features(_to_image(photo))
            terms["content"] = feature_distance(out, source, blocks=(self.content_block,)).mean()
        return terms

    def _guard(self, loss: torch.Tensor, what: str, parts: dict | None = None) -> None:
        if torch.isfinite(loss).all():
            return
        terms = "" if parts is None else " (" + ", ".join(
            f"{k} {v.item():.4g}" for k, v in parts.items()) + ")"
        raise FloatingPointError(
            f"pix2pix {what} became {loss.item()} at step {self.step + 1} (epoch "
            f"{self.epoch + 1}){terms}. Lower the learning rate (now "
            f"{self.config['trainer']['lr']}), check the inputs are images in [0, 1], or resume "
            f"from the last checkpoint.")

    # the loop --------------------------------------------------------------------
    def train(self, dataset, *, epochs: int | None = None, steps: int | None = None,
              batch_size: int = 1, sample_pairs=None, checkpoint: str | os.PathLike | None = None,
              resume: bool = True, show_progress: bool = True, seed: int = 0,
              eval_pairs=None, eval_metrics: Iterable[str] = ("ssim", "psnr"),
              checkpoint_every: int = 1, checkpoint_every_steps: int | None = None) -> list[dict]:
        """Train until ``epochs`` complete epochs and/or ``steps`` optimiser steps *in total*.

        ``dataset``: a :class:`comicutils.data.PairDataset` (or any map-style dataset of
        ``{"photo", "comic"}`` dicts, (3, H, W) in [0, 1]); augmentation belongs to the dataset
        (:class:`comicutils.data.JointAugment`), whose ``epoch`` is set before each epoch.
        Batches are reshuffled each epoch with ``seed + epoch``. Counts include what an earlier
        call or a resumed checkpoint did, so re-running the same call after an interruption
        finishes the run. With both limits, training stops at the first one reached.

        ``sample_pairs``: fixed photos (PairSet, (photos, comics) or a tensor in [0, 1]) whose
        translations (per-image BatchNorm statistics, as :meth:`evaluate` and the CLI's ``stylize`` and
        ``evaluate`` give) are kept in ``samples[epoch]`` after every epoch. ``eval_pairs``: test
        pairs (PairSet, (photos, comics) or ``{"photo", "comic"}``, in [0, 1]) scored after every
        epoch with ``eval_metrics`` (names of :data:`comicutils.metrics.METRICS`); the row is
        appended to ``metric_history`` (see :meth:`evaluate`) before the checkpoint is written.
        ``checkpoint``: a file written atomically after every ``checkpoint_every``-th epoch and
        at the end (a 512 px trainer state is several hundred MB, so a long run may save less
        often: an interruption then repeats at most ``checkpoint_every`` epochs); with
        ``resume=True`` an existing one is loaded first (step count, history, metric history,
        both networks and optimisers, the random states and the place in the epoch, so the
        resumed run repeats an uninterrupted one; said on screen); other loss settings than the
        checkpoint's are refused, a new learning rate is applied and said. ``checkpoint_every_steps``
        also writes it after every that many steps. Ctrl-C or SIGTERM finishes the current step,
        writes the checkpoint and stops; the checkpoint's folder is locked while training
        (:func:`comicutils.checkpoints.output_lock`). Returns ``history``.
        """

        if epochs is None and steps is None:
            raise ValueError("give epochs=, steps= or both")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1; got {batch_size}")
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1 epoch; got {checkpoint_every}")
        if eval_pairs is not None:
            eval_photos, eval_comics = _eval_pairs(eval_pairs)
            eval_metrics = _metric_names(eval_metrics)
        if checkpoint_every_steps is not None and checkpoint_every_steps < 1:
            raise ValueError(f"checkpoint_every_steps must be >= 1 step; got {checkpoint_every_steps}")
        if len(dataset) == 0:
            raise ValueError("the dataset is empty")
        if checkpoint is None:
            return self._train(dataset, epochs, steps, batch_size, sample_pairs, None, show_progress, seed,
                               eval_pairs, eval_metrics, checkpoint_every, checkpoint_every_steps)
        with output_lock(Path(checkpoint).parent):
            if resume and checkpoint_exists(checkpoint):
                self.load_checkpoint(checkpoint)
            return self._train(dataset, epochs, steps, batch_size, sample_pairs, checkpoint, show_progress, seed,
                               eval_pairs, eval_metrics, checkpoint_every, checkpoint_every_steps)

    def _train(self, dataset, epochs, steps, batch_size, sample_pairs, checkpoint, show_progress, seed,
               eval_pairs, eval_metrics, checkpoint_every, checkpoint_every_steps) -> list[dict]:
        from torch.utils.data import BatchSampler, DataLoader, RandomSampler

        if eval_pairs is not None:
            eval_photos, eval_comics = _eval_pairs(eval_pairs)
        n = len(dataset)
        per_epoch = math.ceil(n / batch_size)

        def done() -> bool:
            return ((epochs is not None and self.epoch >= epochs)
                    or (steps is not None and self.step >= steps))

        total = math.inf
        if epochs is not None:
            total = self.step + max(0, epochs - self.epoch) * per_epoch - self.epoch_step
        if steps is not None:
            total = min(total, max(steps, self.step))
        photos = _sample_photos(sample_pairs)
        if photos is not None and 0 not in self.samples and self.step == 0:
            self.samples[0] = translate(self.generator, photos, norm_stats="image")
        name = self.config["generator"].get("name", "G")
        bar = progress(total=int(total), initial=self.step, desc=f"pix2pix {name}",
                       **({} if show_progress else {"disable": True}))
        saved = self.step

        def save() -> None:
            nonlocal saved
            if checkpoint is not None and self.step != saved:
                self.save_checkpoint(checkpoint)
                saved = self.step

        try:
            with deferred_interrupt() as stop:
                while not done():
                    if hasattr(dataset, "epoch"):
                        dataset.epoch = self.epoch
                    order = torch.Generator().manual_seed(seed + self.epoch)
                    # the batches shuffle=True would give, less those this epoch already trained on
                    batches = _Skip(BatchSampler(RandomSampler(dataset, generator=order), batch_size, False),
                                    self.epoch_step)
                    loader = DataLoader(dataset, batch_sampler=batches, generator=order)
                    finished = True
                    for batch in loader:
                        if steps is not None and self.step >= steps:
                            finished = False
                            break
                        row = self.train_step(batch["photo"], batch["comic"])
                        self.epoch_step += 1
                        bar.update(1)
                        bar.set_postfix(d=f"{row['d']:.3f}", g=f"{row['g_total']:.3f}",
                                        l1=f"{row['g_l1']:.3f}", refresh=False)
                        if checkpoint_every_steps and self.step % checkpoint_every_steps == 0 and not done():
                            save()
                        stop.check(save)
                    if not finished:
                        break
                    self.epoch += 1
                    self.epoch_step = 0
                    if photos is not None:
                        self.samples[self.epoch] = translate(self.generator, photos, norm_stats="image")
                    if eval_pairs is not None:
                        self.metric_history.append(
                            {"epoch": self.epoch, "step": self.step,
                             **self.evaluate(eval_photos, eval_comics, eval_metrics)})
                    if self.epoch % checkpoint_every == 0 and not done():
                        save()                              # the last one is written below
                    stop.check(save)
        finally:
            bar.close()
        if checkpoint is not None:
            self.save_checkpoint(checkpoint)
        return self.history

    def evaluate(self, photos01: torch.Tensor, comics01: torch.Tensor,
                 metrics: Iterable[str] = ("ssim", "psnr")) -> dict[str, float]:
        """Score the generator's translations of ``photos01`` against ``comics01`` -> {metric: mean}.

        Photos and comics: (N, 3, H, W) in [0, 1]. The translations are those of the pix2pix
        stylizer (:class:`comicutils.stylizers.Pix2Pix`: resized to the generator's training
        size and back, ``norm_stats="image"``, dropout off; nothing in the generator changes).
        Each metric is :func:`comicutils.metrics.score_pairs`'s, averaged over the N pairs; a
        metric that cannot be computed here is NaN (offline LPIPS), or raises in full mode.
        The Human-to-Anime report scored one test image per epoch (N = 1, sec. 4.3).
        """
        from . import metrics as _metrics
        from .stylizers import Pix2Pix

        photos01, comics01 = _eval_pairs((photos01, comics01))
        names = _metric_names(metrics)
        preds = Pix2Pix(generator=self.generator, norm_stats="image")(photos01)
        table = _metrics.score_pairs(preds, comics01, metrics=names)
        return {m: float(table[m].mean()) for m in names}

    # files -----------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to resume, as plain tensors, numbers, strings, lists and dicts."""
        return trainer_state(self, CHECKPOINT_FORMAT, epoch_step=self.epoch_step,
                             metric_history=[dict(r) for r in self.metric_history])

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state` atomically (temp file + ``os.replace``)."""
        return save_state(self.state(), path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore networks, optimisers, step, epoch, history and metric history
        (``weights_only=True``).

        The checkpoint's generator and discriminator configs must equal this trainer's.
        """
        ckpt = restore_trainer(self, path, CHECKPOINT_FORMAT)
        self.metric_history = [dict(r) for r in ckpt.get("metric_history", [])]
        self.epoch_step = int(ckpt.get("epoch_step", 0))

    def save_generator(self, path: str | os.PathLike) -> Path:
        """The generator alone (for ``stylize --method pix2pix``): see :func:`save_generator`."""
        return save_generator(self.generator, path)


# --------------------------------------------------------------------------- the Human-to-Anime report's experiments
TABLE1_ROWS: dict[str, dict[str, Any]] = {
    "U-Net": {"generator": "unet", "perceptual": None,
              "psnr": 18.66, "rmse": 29.76, "ssim": 0.107, "fsim": 0.383},
    "U-Res9": {"generator": "ures9", "perceptual": None,
               "psnr": 18.25, "rmse": 31.19, "ssim": 0.126, "fsim": 0.384},
    "U-Res50": {"generator": "ures50", "perceptual": None,
                "psnr": 18.86, "rmse": 29.07, "ssim": 0.169, "fsim": 0.418},
    "U-Res9-VGG-mse": {"generator": "ures9", "perceptual": "mse",
                       "psnr": 20.38, "rmse": 24.42, "ssim": 0.208, "fsim": 0.443},
    "U-Res50-VGG-mae": {"generator": "ures50", "perceptual": "mae",
                        "psnr": 18.48, "rmse": 30.37, "ssim": 0.211, "fsim": 0.457},
    "U-Res50-VGG-mse": {"generator": "ures50", "perceptual": "mse",
                        "psnr": 19.98, "rmse": 25.56, "ssim": 0.242, "fsim": 0.486},
}
"""The Human-to-Anime report's Table 1, row by row: generator, perceptual criterion on VGG-16 features (None:
no perceptual term) and the reported PSNR, RMSE, SSIM and FSIM of one test image after 20
epochs at 512 px. The seed's RMSE is in 0-255 grey levels (``255 * 10**(-PSNR / 20)``
reproduces it to 0.04); :func:`comicutils.metrics.rmse` is in [0, 1] units, so multiply by
255 to compare. Settings for training a row: :func:`table1_config`."""

TABLE1_REPORT_RANGES = {"unet": "[-1, 1]", "ures9": "[-1, 1]", "ures50": "[0, 1]"}
"""Input range of each generator in the Human-to-Anime report (sec. 3.3): U-Net and U-Res9 [-1, 1], U-Res50
[0, 1]. Here every generator takes [-1, 1] (U-Res50 maps to [0, 1] and ImageNet-normalises
inside), and L1 is measured in [-1, 1] units for all of them."""


def table1_config(row: str, size: int = 512) -> dict[str, Any]:
    """Settings that train one of :data:`TABLE1_ROWS` -> dict of plain values.

    Keys: ``generator`` (:func:`build_generator` keywords), ``discriminator``
    (:class:`PatchDiscriminator` keywords), ``perceptual`` (:class:`PerceptualLoss` keywords or
    None), ``trainer`` (:class:`Pix2PixTrainer` keywords), ``train`` (:meth:`Pix2PixTrainer.train`
    keywords), ``report`` (the row's published metrics), ``report_input_range`` and ``row``.
    :func:`build_trainer` turns it into a trainer; change entries first for a smaller run
    (e.g. ``cfg["generator"]["ngf"] = 8``).

    From the seed: 512 px images; LAMBDA = 100 and, for the VGG rows, ALPHA = 0.001 ("for the
    final configuration the value 0.001 was chosen", sec. 3.4); VGG-16 ImageNet features, four
    maps (here relu1_2, relu2_2, relu3_3, relu4_3: the seed does not name them) compared by MSE
    or MAE; Adam with learning rate 2e-4, batch size 1, 20 epochs (sec. 3.3); U-Res50's encoder
    is ImageNet-pretrained; at 512 px "a downsample layer was added" to the discriminator (sec.
    4.1), so ``n_layers`` is 3 up to 256 px and one more per doubling above (512 px: 4, whose
    logit map is 30 x 30 like the 256 px PatchGAN's). Adam's betas (0.5, 0.999) are the pix2pix
    ones (the seed does not give them). ``size``: the training size (512 as in the seed; 256 or
    128 for course runs).
    """
    if row not in TABLE1_ROWS:
        lookup = {k.lower(): k for k in TABLE1_ROWS}
        if str(row).lower() not in lookup:
            raise ValueError(f"unknown Table 1 row {row!r}; choose from {', '.join(TABLE1_ROWS)}")
        row = lookup[str(row).lower()]
    spec = TABLE1_ROWS[row]
    name = spec["generator"]
    generator: dict[str, Any] = {"name": name, "size": int(size)}
    if name == "ures50":
        generator["pretrained"] = True
    extra_layers = max(0, int(math.log2(size / 256))) if size > 256 else 0
    return {
        "row": row,
        "generator": generator,
        "discriminator": {"n_layers": 3 + extra_layers},
        "perceptual": None if spec["perceptual"] is None else
        {"backbone": "vgg16", "criterion": spec["perceptual"]},
        "trainer": {"lambda_l1": 100.0, "alpha": 0.001, "lr": 2e-4, "betas": (0.5, 0.999)},
        "train": {"epochs": 20, "batch_size": 1},
        "report": {k: spec[k] for k in ("psnr", "rmse", "ssim", "fsim")},
        "report_input_range": TABLE1_REPORT_RANGES[name],
    }


def build_trainer(config: Mapping[str, Any], *, device: str | torch.device | None = None) -> "Pix2PixTrainer":
    """A :class:`Pix2PixTrainer` from a :func:`table1_config` dict (generator, discriminator,
    perceptual loss and trainer settings; ``train`` holds the :meth:`Pix2PixTrainer.train`
    keywords, e.g. ``trainer.train(ds, **config["train"])``)."""
    generator = build_generator(**config["generator"])
    discriminator = PatchDiscriminator(**config.get("discriminator", {}))
    perceptual = None if not config.get("perceptual") else PerceptualLoss(**config["perceptual"])
    return Pix2PixTrainer(generator, discriminator, perceptual=perceptual, device=device,
                          **config.get("trainer", {}))


KERAS_VGG_MEAN = (123.68, 116.779, 103.939)
"""ImageNet mean (R, G, B) in 0-255 levels that Keras's ``vgg16.preprocess_input`` subtracts
("caffe" mode: no division by a standard deviation)."""


def _keras_like_perc(net: nn.Module, criterion: str, layers, pred01: torch.Tensor,
                     target01: torch.Tensor, value_range: tuple[float, float]) -> float:
    """The perceptual loss with the VGG input scaled as Keras's caffe preprocessing scales
    ``value_range`` images: ``v - KERAS_VGG_MEAN`` with ``v = lo + (hi - lo) * x`` (the
    course's RGB weights; channel order aside)."""
    lo, hi = value_range
    mean, std = net.mean.clone(), net.std.clone()
    keras_mean = torch.tensor(KERAS_VGG_MEAN, dtype=mean.dtype, device=mean.device).view(1, 3, 1, 1)
    dist = F.mse_loss if criterion == "mse" else F.l1_loss
    try:
        net.mean.copy_((keras_mean - lo) / (hi - lo))          # (x - mean') / std' = v - M
        net.std.fill_(1.0 / (hi - lo))
        fp, ft = net(pred01), net(target01)
        return float(sum(dist(fp[k], ft[k]).item() for k in layers))
    finally:
        net.mean.copy_(mean)
        net.std.copy_(std)


def loss_term_magnitudes(trainer: "Pix2PixTrainer", photos01: torch.Tensor, comics01: torch.Tensor, *,
                         perceptual: PerceptualLoss | None = None, alpha: float | None = None,
                         lambda_l1: float | None = None,
                         keras_ranges: Iterable[tuple[float, float]] = ((0, 255), (0, 1), (-1, 1)),
                         ) -> dict[str, Any]:
    """The three terms of seed eq. 1 on one batch, raw and weighted, with their gradients.

    ``photos01``, ``comics01``: (N, 3, H, W) in [0, 1]. The generator and discriminator of
    ``trainer`` run as in the G step (BatchNorm on the batch's statistics) but with dropout off
    and nothing updated. ``perceptual``, ``alpha``, ``lambda_l1`` default to the trainer's;
    pass a :class:`PerceptualLoss` to measure a trainer that has none. Returns floats:

    * ``adv``: adversarial term (weight 1); ``l1``: mean |G(x) - y| in the course's [-1, 1]
      units; ``l1_01``: the same in [0, 1] units (= l1 / 2: the units of a [0, 1] network such
      as the seed's U-Res50); ``perc``: the perceptual loss as the course computes it (VGG
      input ImageNet-standardised, ``(x - mean) / std``), ``perc_layers`` its per-layer parts;
    * ``w_adv``, ``w_l1`` (= ``lambda_l1 * l1``), ``w_perc`` (= ``alpha * perc``), ``total``
      and each weighted term's ``share_*`` of the total;
    * ``grad_adv``, ``grad_l1``, ``grad_perc``: L2 norm of each weighted term's gradient with
      respect to the generator output (what actually pulls on G);
    * ``alpha_matching_l1``: the alpha at which ``alpha * perc`` would equal ``lambda_l1 * l1``;
    * ``perc_keras``: {"lo-hi": perc} with the VGG input scaled as Keras's
      ``vgg16.preprocess_input`` (which the Human-to-Anime report used, sec. 3.3) scales images in the range
      lo..hi: minus the 0-255 ImageNet mean, no division by a std, so ``(0, 255)`` feeds VGG
      inputs about 58 times larger than the course's, ``(0, 1)`` (the seed's [0, 1] images
      passed as they are) about 4 times smaller and shifted by about -115. Only for a VGG backbone (empty otherwise:
      taef2 takes [0, 1] and has no such normalisation).

    ``backbone`` names the perceptual network that ran (a substitute shows here).
    """
    G, D = trainer.generator, trainer.discriminator
    perceptual = trainer.perceptual if perceptual is None else perceptual.to(trainer.device)
    alpha = trainer.alpha if alpha is None else float(alpha)
    lambda_l1 = trainer.lambda_l1 if lambda_l1 is None else float(lambda_l1)
    photos01, comics01 = _eval_pairs((photos01, comics01))
    photo = _to_model(photos01.to(trainer.device, torch.float32))
    comic = _to_model(comics01.to(trainer.device, torch.float32))
    with _inference_mode(G, D, batch_norm="batch"):
        with torch.no_grad():
            fake = G(photo)
        fake = fake.detach().requires_grad_(True)
        D.requires_grad_(False)
        try:
            parts = generator_loss(D(photo, fake), fake, comic, gan_loss=trainer.gan_loss,
                                   perceptual=perceptual, lambda_l1=lambda_l1, alpha=alpha)
            weighted = {"adv": parts["adv"], "l1": lambda_l1 * parts["l1"],
                        "perc": alpha * parts["perc"]}
            grads = {}
            for k, term in weighted.items():
                g = (torch.autograd.grad(term, fake, retain_graph=True, allow_unused=True)[0]
                     if term.requires_grad else None)
                grads[k] = 0.0 if g is None else float(g.norm())
        finally:
            D.requires_grad_(True)
    out: dict[str, Any] = {
        "adv": parts["adv"].item(), "l1": parts["l1"].item(), "l1_01": parts["l1"].item() / 2,
        "perc": parts["perc"].item(), "lambda_l1": lambda_l1, "alpha": alpha,
        **{f"w_{k}": v.item() for k, v in weighted.items()},
    }
    out["total"] = out["w_adv"] + out["w_l1"] + out["w_perc"]
    for k in weighted:
        out[f"share_{k}"] = out[f"w_{k}"] / out["total"] if out["total"] else float("nan")
    out.update({f"grad_{k}": v for k, v in grads.items()})
    out["alpha_matching_l1"] = out["w_l1"] / out["perc"] if out["perc"] > 0 else float("nan")
    out["perc_layers"], out["perc_keras"], out["backbone"] = {}, {}, None
    if perceptual is not None:
        out["backbone"] = f"{perceptual.info.label()} {perceptual.criterion}"
        pred01, target01 = _to_image(fake.detach()), _to_image(comic)
        dist = F.mse_loss if perceptual.criterion == "mse" else F.l1_loss
        with torch.no_grad():
            fp, ft = perceptual.net(pred01), perceptual.net(target01)
            out["perc_layers"] = {k: dist(fp[k], ft[k]).item() for k in perceptual.layers}
            from .nst import VGGFeatures

            if isinstance(perceptual.net, VGGFeatures):
                for lo, hi in keras_ranges:
                    out["perc_keras"][f"{lo:g}-{hi:g}"] = _keras_like_perc(
                        perceptual.net, perceptual.criterion, perceptual.layers, pred01, target01,
                        (float(lo), float(hi)))
    return out

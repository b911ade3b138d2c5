"""AnimeGANv2 (the GAN project report's fast GAN baseline): the generator, its weights, face2paint processing.

The PyTorch port of AnimeGANv2 (bryandlee/animegan2-pytorch) is a small feed-forward
generator: a strided convolutional encoder, four inverted residual blocks (MobileNetV2-style,
depthwise 3x3 between 1x1 convolutions) at 1/4 resolution, two bilinear upsamplings and a Tanh
output. Every convolution is followed by GroupNorm(1) (layer norm over C, H, W) and
LeakyReLU(0.2); padding is reflection. The module names below follow the published weight file
(``block_a`` ... ``block_e``, ``out_layer``) so ``face_paint_512_v2`` loads strictly.

``face2paint``: square centre crop, resize to 512, [-1, 1] in, [-1, 1] out, back to the
input size. Weights come through the asset registry; offline the generator is unavailable
(auto mode shows the substitute banner and the stylizer refuses to run; it never presents a
random generator's output as AnimeGAN). On a GPU the generator runs in fp16.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import assets
from .images import center_crop, check_image_tensor, resize
from .runtime import get_device, get_mode, substitute_banner

ASSET = "animeganv2-face-paint-512-v2"
FACE2PAINT_SIZE = 512


def conv_norm_act(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, padding=1,
                  groups: int = 1, bias: bool = False) -> nn.Sequential:
    """Reflection pad -> conv -> GroupNorm(1) -> LeakyReLU(0.2) (indices 0..3 in the weight file)."""
    return nn.Sequential(
        nn.ReflectionPad2d(padding),
        nn.Conv2d(c_in, c_out, kernel, stride=stride, padding=0, groups=groups, bias=bias),
        nn.GroupNorm(1, c_out),
        nn.LeakyReLU(0.2, inplace=True),
    )


class InvertedResidual(nn.Module):
    """1x1 expand -> depthwise 3x3 -> 1x1 project (+ GroupNorm); residual when shapes match."""

    def __init__(self, c_in: int, c_out: int, expansion: float = 2.0):
        super().__init__()
        hidden = int(round(c_in * expansion))
        layers = [conv_norm_act(c_in, hidden, kernel=1, padding=0)] if expansion != 1 else []
        layers += [conv_norm_act(hidden, hidden, groups=hidden, bias=True),
                   nn.Conv2d(hidden, c_out, 1, bias=False), nn.GroupNorm(1, c_out)]
        self.layers = nn.Sequential(*layers)
        self.residual = c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.layers(x)
        return x + y if self.residual else y


class AnimeGANv2Generator(nn.Module):
    """(N, 3, H, W) in [-1, 1] -> (N, 3, H, W) in [-1, 1]; any H, W (even sizes recommended)."""

    def __init__(self):
        super().__init__()
        down = (0, 1, 0, 1)  # pad right/bottom only before a stride-2 conv
        self.block_a = nn.Sequential(conv_norm_act(3, 32, 7, padding=3),
                                     conv_norm_act(32, 64, stride=2, padding=down),
                                     conv_norm_act(64, 64))
        self.block_b = nn.Sequential(conv_norm_act(64, 128, stride=2, padding=down),
                                     conv_norm_act(128, 128))
        self.block_c = nn.Sequential(conv_norm_act(128, 128),
                                     *[InvertedResidual(128 if i == 0 else 256, 256) for i in range(4)],
                                     conv_norm_act(256, 128))
        self.block_d = nn.Sequential(conv_norm_act(128, 128), conv_norm_act(128, 128))
        self.block_e = nn.Sequential(conv_norm_act(128, 64), conv_norm_act(64, 64),
                                     conv_norm_act(64, 32, 7, padding=3))
        self.out_layer = nn.Sequential(nn.Conv2d(32, 3, 1, bias=False), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.block_a(x)
        y = self.block_c(self.block_b(a))
        y = self.block_d(F.interpolate(y, a.shape[-2:], mode="bilinear", align_corners=True))
        y = self.block_e(F.interpolate(y, x.shape[-2:], mode="bilinear", align_corners=True))
        return self.out_layer(y)


def load_generator(device: str | torch.device | None = None) -> AnimeGANv2Generator | None:
    """The face_paint_512_v2 generator (eval, frozen), or ``None`` offline (banner; full mode raises)."""
    try:
        path = assets.fetch(ASSET, quiet=True)
    except assets.AssetUnavailable as err:
        if get_mode() == "full":
            raise
        substitute_banner(wanted="AnimeGANv2 face_paint_512_v2 weights", used="nothing (method skipped)",
                          reason=f"asset {ASSET!r} not in cache or mirror and not downloadable here "
                                 f"({type(err).__name__})")
        return None
    dev = torch.device(device) if device is not None else get_device()
    model = AnimeGANv2Generator()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    model = model.to(dev).eval().requires_grad_(False)
    return model.half() if dev.type == "cuda" else model


@torch.no_grad()
def face2paint(generator: nn.Module, images: torch.Tensor, size: int = FACE2PAINT_SIZE) -> torch.Tensor:
    """face2paint processing: images (N, 3, H, W) in [0, 1] -> same shape in [0, 1].

    Each image is centre-cropped to a square, resized to ``size``, mapped to [-1, 1], passed
    through the generator (fp16 when it is), and resized back to its own crop's size and
    pasted into a copy of the input (so non-square inputs keep their borders).
    """
    x = check_image_tensor(images, "face2paint input")
    p = next(generator.parameters())
    h, w = x.shape[-2:]
    side = min(h, w)
    square = center_crop(x, side)
    y = generator((resize(square, size) * 2 - 1).to(p.device, p.dtype))
    y = ((y.float().cpu() + 1) / 2).clamp(0, 1)
    out = x.clone()
    top, left = (h - side) // 2, (w - side) // 2
    out[..., top:top + side, left:left + side] = resize(y, side)
    return out

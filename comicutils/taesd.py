"""The TAESD "taef2" tiny autoencoder: a real pretrained latent space that works offline.

madebyollin/taesd publishes small convolutional encoders/decoders that mimic large VAEs.
*taef2* targets the FLUX.2 VAE latent space (not Stable Diffusion's): 3 -> 32 latent channels,
spatial /8. The course uses it

* as the frozen VAE of ComicDiff's offline path (chapters 04-05), and
* as the offline substitute for VGG features (chapter 01's Gram matrices, perceptual losses):
  its block activations are real learned features.

Architecture (read off the weight files, loaded strictly): the TAESD ``Encoder``/``Decoder``
``nn.Sequential`` of 3x3 convolutions and residual ``Block`` s, with ``latent_channels=32``; the
three blocks at the lowest resolution (encoder 11-13, decoder 3-5) carry a *pool* branch:
1x1 conv 64->256, GroupNorm(4 groups), ReLU, 1x1 conv 256->64, added to the block input before
the block's convolutions. The branch's wiring is not in the published ``taesd.py``; this
reading was chosen because it reproduces the autoencoder's quality (portrait reconstructions
at 256 px: PSNR 33-36 dB), which the tests pin.

Images in and out are (N, 3, H, W) in [0, 1], H and W multiples of 8. Weights are stored in
fp16 and loaded as fp32 by default.
"""
from __future__ import annotations

from functools import lru_cache

import torch
from torch import nn

from . import assets
from .images import check_image_tensor

LATENT_CHANNELS = 32
DOWNSCALE = 8
ENCODER_ASSET = "taef2-encoder"
DECODER_ASSET = "taef2-decoder"
FEATURE_BLOCKS = (1, 5, 9, 13)
"""Encoder blocks whose outputs serve as features (full, 1/2, 1/4 and 1/8 resolution)."""


def _conv(n_in: int, n_out: int, **kwargs) -> nn.Conv2d:
    return nn.Conv2d(n_in, n_out, 3, padding=1, **kwargs)


class Clamp(nn.Module):
    """Soft clamp of latents to (-3, 3): ``3 tanh(x / 3)``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x / 3) * 3


class PoolBranch(nn.Sequential):
    """1x1 conv 64->256, GroupNorm(4), ReLU, 1x1 conv 256->64 (per-pixel channel mixing)."""

    def __init__(self, channels: int = 64, hidden: int = 256, groups: int = 4):
        super().__init__(nn.Conv2d(channels, hidden, 1, bias=False), nn.GroupNorm(groups, hidden),
                         nn.ReLU(), nn.Conv2d(hidden, channels, 1, bias=False))


class Block(nn.Module):
    """Residual block: ReLU(conv-relu-conv-relu-conv(x) + x), optionally x += pool(x) first."""

    def __init__(self, channels: int = 64, pool: bool = False):
        super().__init__()
        self.conv = nn.Sequential(_conv(channels, channels), nn.ReLU(), _conv(channels, channels),
                                  nn.ReLU(), _conv(channels, channels))
        self.skip = nn.Identity()
        self.fuse = nn.ReLU()
        if pool:
            self.pool = PoolBranch(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "pool"):
            x = x + self.pool(x)
        return self.fuse(self.conv(x) + self.skip(x))


def build_encoder(latent_channels: int = LATENT_CHANNELS) -> nn.Sequential:
    """Untrained taef2 encoder: (N, 3, H, W) -> (N, latent_channels, H/8, W/8)."""
    def down():
        return _conv(64, 64, stride=2, bias=False)

    return nn.Sequential(
        _conv(3, 64), Block(),
        down(), Block(), Block(), Block(),
        down(), Block(), Block(), Block(),
        down(), Block(pool=True), Block(pool=True), Block(pool=True),
        _conv(64, latent_channels),
    )


def build_decoder(latent_channels: int = LATENT_CHANNELS) -> nn.Sequential:
    """Untrained taef2 decoder: (N, latent_channels, h, w) -> (N, 3, 8h, 8w), unclamped."""
    def up():
        return [nn.Upsample(scale_factor=2), _conv(64, 64, bias=False)]

    return nn.Sequential(
        Clamp(), _conv(latent_channels, 64), nn.ReLU(),
        Block(pool=True), Block(pool=True), Block(pool=True), *up(),
        Block(), Block(), Block(), *up(),
        Block(), Block(), Block(), *up(),
        Block(), _conv(64, 3),
    )


def _load(module: nn.Module, asset: str, dtype: torch.dtype) -> nn.Module:
    state = torch.load(assets.fetch(asset), map_location="cpu", weights_only=True)
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return module.to(dtype).eval().requires_grad_(False)


@lru_cache(maxsize=4)
def _cached(kind: str, dtype: torch.dtype) -> nn.Module:
    if kind == "encoder":
        return _load(build_encoder(), ENCODER_ASSET, dtype)
    return _load(build_decoder(), DECODER_ASSET, dtype)


def load_encoder(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, *,
                 fresh: bool = False) -> nn.Sequential:
    """The pretrained taef2 encoder, frozen, in eval mode (weights through the asset registry).

    Returns a shared instance per (dtype): do not modify it; ``copy.deepcopy`` it to fine-tune.
    ``fresh=True`` builds and loads a new copy every call, so it draws the same random numbers
    (from building the layers) wherever it is called, not only on the first call of a process.
    """
    if fresh:
        return _load(build_encoder(), ENCODER_ASSET, dtype).to(device)
    return _cached("encoder", dtype).to(device)


def load_decoder(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """The pretrained taef2 decoder, frozen, in eval mode (see :func:`load_encoder`)."""
    return _cached("decoder", dtype).to(device)


def _check_size(x: torch.Tensor) -> None:
    h, w = x.shape[-2:]
    if h % DOWNSCALE or w % DOWNSCALE:
        raise ValueError(f"taef2 needs H and W divisible by {DOWNSCALE}; got {h}x{w} "
                         "(resize or pad the image first)")


def encode(images: torch.Tensor, encoder: nn.Module | None = None) -> torch.Tensor:
    """Images (N, 3, H, W) in [0, 1] -> latents (N, 32, H/8, W/8). Deterministic."""
    check_image_tensor(images, "encode input")
    _check_size(images)
    encoder = encoder if encoder is not None else load_encoder(images.device)
    return encoder(images.to(next(encoder.parameters()).dtype))


def decode(latents: torch.Tensor, decoder: nn.Module | None = None) -> torch.Tensor:
    """Latents (N, 32, h, w) -> images (N, 3, 8h, 8w) clamped to [0, 1]."""
    if latents.ndim != 4 or latents.shape[1] != LATENT_CHANNELS:
        raise ValueError(f"expected latents (N, {LATENT_CHANNELS}, h, w); got {tuple(latents.shape)}")
    decoder = decoder if decoder is not None else load_decoder(latents.device)
    return decoder(latents.to(next(decoder.parameters()).dtype)).float().clamp(0.0, 1.0)


class FeatureExtractor(nn.Module):
    """Activations of chosen encoder blocks: ``forward(x) -> {block_index: (N, 64, h, w)}``.

    ``x`` is (N, 3, H, W) in [0, 1]. Runs the encoder only as far as the deepest block asked for.
    Used as the offline stand-in for VGG features in Gram-matrix style transfer and perceptual
    losses.
    """

    def __init__(self, blocks: tuple[int, ...] = FEATURE_BLOCKS, encoder: nn.Sequential | None = None):
        super().__init__()
        enc = encoder if encoder is not None else load_encoder()
        if not blocks or max(blocks) >= len(enc) - 1 or min(blocks) < 0:
            raise ValueError(f"blocks must lie in 0..{len(enc) - 2}; got {blocks}")
        self.blocks = tuple(sorted(blocks))
        self.layers = enc[: self.blocks[-1] + 1]

    def forward(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        out = {}
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i in self.blocks:
                out[i] = x
        return out


def feature_distance(features_a: dict[int, torch.Tensor], features_b: dict[int, torch.Tensor],
                     blocks: tuple[int, ...] | None = None) -> torch.Tensor:
    """The LPIPS recipe without its learned channel weights, on feature dicts from
    :class:`FeatureExtractor`: per block, unit-normalise each position's channel vector, sum the
    squared differences over channels, average over positions; then average over blocks.
    Returns (N,), 0 for identical features, at most 4."""
    blocks = tuple(features_a) if blocks is None else tuple(blocks)
    if not blocks:
        raise ValueError("feature_distance needs at least one block")
    total = 0.0
    for k in blocks:
        a, b = features_a[k], features_b[k]
        a = a / (a.norm(dim=1, keepdim=True) + 1e-10)
        b = b / (b.norm(dim=1, keepdim=True) + 1e-10)
        total = total + ((a - b) ** 2).sum(dim=1).mean(dim=(1, 2))
    return total / len(blocks)


class PerceptualDistance(nn.Module):
    """:func:`feature_distance` between two image batches (N, 3, H, W) in [0, 1] -> (N,).

    The course's offline stand-in for LPIPS-VGG *as a training loss* (ComicDiff, StyleGAN
    fine-tuning); never reported as an LPIPS metric. Frozen; gradients flow to the inputs.
    """

    def __init__(self, blocks: tuple[int, ...] = (1, 5, 9), encoder: nn.Sequential | None = None):
        super().__init__()
        self.features = FeatureExtractor(blocks=blocks, encoder=encoder)
        self.requires_grad_(False).eval()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return feature_distance(self.features(pred), self.features(target))

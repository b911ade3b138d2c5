"""A compact StyleGAN2 generator in plain PyTorch, with rosinality-format checkpoints.

Architecture (Karras et al., 2020, config f), built from a plain :class:`GeneratorConfig` so the
same code runs a 32 px test model and the 1024 px FFHQ network:

* **mapping network** ``style``: pixel norm, then ``n_mlp`` equalised linear layers with leaky
  ReLU (learning-rate multiplier 0.01): ``z (N, style_dim) -> w (N, style_dim)``.
* **synthesis network**: a learned 4x4 constant ``input``; per resolution 8, 16, ... ``size`` one
  upsampling and one plain *styled convolution*, each a modulated / demodulated 3x3 conv + noise
  + bias + leaky ReLU; a 1x1 *ToRGB* per resolution whose outputs are summed through upsampled
  skips. ``n_latent = 2 log2(size) - 2`` latents drive the layers (one per conv, the ToRGB of a
  resolution shares its latent with the next resolution's first conv).
* the FIR filter of upfirdn2d (``[1, 3, 3, 1]``) done with ordinary ops: zero insertion, padding and
  a depthwise ``conv2d`` (:func:`upfirdn2d`) -- no CUDA extension to compile.

Modulation is applied to activations rather than to weights (``x * s``, shared conv,
``* demodulation``), which equals the grouped-conv form exactly and runs faster on a CPU.

Parameter and buffer names are those of rosinality/stylegan2-pytorch (``style.1.weight``,
``conv1.conv.modulation.weight``, ``convs.0.conv.blur.kernel``, ``to_rgbs.0.bias``,
``noises.noise_0`` ...), so its checkpoints (``{"g_ema": state_dict, "latent_avg": w}``) load
strictly; a checkpoint whose keys or shapes do not fit raises :class:`CheckpointMismatch`.

Images come out as (N, 3, size, size) in [0, 1] (the network's [-1, 1] is mapped in one place,
:meth:`Generator.forward`); latents are ``z``/``w`` (N, style_dim) or ``z+``/``w+``
(N, n_latent, style_dim).
"""
from __future__ import annotations

import math
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping

import torch
import torch.nn.functional as F
from torch import nn

BLUR_KERNEL = (1, 3, 3, 1)
SQRT2 = math.sqrt(2.0)


class CheckpointMismatch(ValueError):
    """A state dict does not fit the generator (missing / unexpected keys, wrong shapes)."""


def rosinality_channels(size: int, channel_multiplier: int = 2) -> dict[int, int]:
    """rosinality's channel table: 512 up to 32 px, then 256·m, 128·m, 64·m, 32·m, 16·m."""
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256 * channel_multiplier,
             128: 128 * channel_multiplier, 256: 64 * channel_multiplier,
             512: 32 * channel_multiplier, 1024: 16 * channel_multiplier}
    return {r: c for r, c in table.items() if r <= size}


@dataclass
class GeneratorConfig:
    """What a generator looks like. ``channels`` maps resolution -> feature maps (4 ... size).

    ``GeneratorConfig(1024)`` is FFHQ config f (style_dim 512, 8 mapping layers, multiplier 2);
    ``GeneratorConfig(32, style_dim=32, n_mlp=2, channels={4: 32, 8: 32, 16: 16, 32: 8})`` is a
    test-sized one.
    """

    size: int = 1024
    style_dim: int = 512
    n_mlp: int = 8
    channels: dict[int, int] = field(default_factory=dict)
    channel_multiplier: int = 2
    lr_mlp: float = 0.01

    def __post_init__(self):
        if self.size < 8 or self.size & (self.size - 1):
            raise ValueError(f"size must be a power of two >= 8, got {self.size}")
        if not self.channels:
            self.channels = rosinality_channels(self.size, self.channel_multiplier)
        self.channels = {int(r): int(c) for r, c in self.channels.items()}
        missing = [r for r in self.resolutions if r not in self.channels]
        if missing:
            raise ValueError(f"channels has no entry for resolutions {missing}")

    @property
    def log_size(self) -> int:
        return int(math.log2(self.size))

    @property
    def resolutions(self) -> list[int]:
        """4, 8, ..., size."""
        return [2 ** i for i in range(2, self.log_size + 1)]

    @property
    def n_latent(self) -> int:
        return 2 * self.log_size - 2

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------- FIR filtering
def fir_kernel(taps=BLUR_KERNEL) -> torch.Tensor:
    """The separable 2-D FIR kernel ``outer(k, k)`` normalised to sum 1."""
    k = torch.tensor(taps, dtype=torch.float32)
    k2 = k[None, :] * k[:, None]
    return k2 / k2.sum()


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1, pad: tuple[int, int] = (0, 0)) -> torch.Tensor:
    """Upsample by zero insertion, pad (before, after) on both axes, convolve with ``kernel``.

    ``x`` (N, C, H, W); output side ``H * up + pad[0] + pad[1] - k + 1``. The kernel is flipped
    (true convolution, as upfirdn2d); every channel is filtered separately.
    """
    n, c, h, w = x.shape
    if up > 1:
        x = x.reshape(n, c, h, 1, w, 1)
        x = F.pad(x, (0, up - 1, 0, 0, 0, up - 1))
        x = x.reshape(n, c, h * up, w * up)
    x = F.pad(x, (pad[0], pad[1], pad[0], pad[1]))
    k = torch.flip(kernel, (0, 1)).to(x.dtype)[None, None].expand(c, 1, *kernel.shape)
    return F.conv2d(x, k, groups=c)


class Blur(nn.Module):
    """FIR low-pass filter with padding (keys: ``kernel``)."""

    def __init__(self, pad: tuple[int, int], upsample_factor: int = 1, taps=BLUR_KERNEL):
        super().__init__()
        self.register_buffer("kernel", fir_kernel(taps) * upsample_factor ** 2)
        self.pad = pad

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """2x upsampling by zero insertion + FIR filter (the ToRGB skip path; keys: ``kernel``)."""

    def __init__(self, taps=BLUR_KERNEL, factor: int = 2):
        super().__init__()
        self.register_buffer("kernel", fir_kernel(taps) * factor ** 2)
        p = len(taps) - factor
        self.factor, self.pad = factor, ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


# --------------------------------------------------------------------------- layers
class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weight stored / lr_mul, scaled at run time."""

    def __init__(self, in_dim: int, out_dim: int, *, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale, self.lr_mul, self.activation = lr_mul / math.sqrt(in_dim), lr_mul, activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight * self.scale)
        b = self.bias * self.lr_mul
        if self.activation:
            return F.leaky_relu(out + b, 0.2) * SQRT2
        return out + b


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class ModulatedConv2d(nn.Module):
    """Conv whose input channels are scaled by a style (modulation), output renormalised
    (demodulation). ``upsample`` = stride-2 transposed conv followed by the FIR blur.

    Keys: ``weight`` (1, out, in, k, k), ``modulation.weight/bias``, ``blur.kernel`` if upsampling.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, style_dim: int, *,
                 demodulate: bool = True, upsample: bool = False, taps=BLUR_KERNEL):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_ch, in_ch, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_ch, bias_init=1.0)
        self.scale = 1.0 / math.sqrt(in_ch * kernel_size ** 2)
        self.demodulate, self.upsample, self.padding = demodulate, upsample, kernel_size // 2
        if upsample:
            factor = 2
            p = (len(taps) - factor) - (kernel_size - 1)
            self.blur = Blur(((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor, taps=taps)

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        s = self.modulation(w)                                   # (N, in)
        weight = self.weight[0] * self.scale                     # (out, in, k, k)
        x = x * s[:, :, None, None]
        if self.upsample:
            x = F.conv_transpose2d(x, weight.transpose(0, 1), stride=2)
            x = self.blur(x)
        else:
            x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:                                      # 1 / |w * s| per (N, out)
            d = torch.rsqrt((weight.pow(2).sum((2, 3))[None] * s.pow(2)[:, None, :]).sum(2) + 1e-8)
            x = x * d[:, :, None, None]
        return x


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        if noise is None:
            noise = x.new_empty(x.shape[0], 1, *x.shape[2:]).normal_()
        return x + self.weight * noise


class BiasLeakyReLU(nn.Module):
    """``leaky_relu(x + bias, 0.2) * sqrt(2)`` (rosinality's FusedLeakyReLU; key ``bias``)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(x + self.bias[None, :, None, None], 0.2) * SQRT2


class StyledConv(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, style_dim: int, *, upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_ch, out_ch, 3, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = BiasLeakyReLU(out_ch)

    def forward(self, x, w, noise=None):
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    def __init__(self, in_ch: int, style_dim: int, *, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_ch, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x, w, skip=None):
        out = self.conv(x, w) + self.bias
        if skip is not None:
            out = out + self.upsample(skip)
        return out


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, n: int) -> torch.Tensor:
        return self.input.expand(n, -1, -1, -1)


# --------------------------------------------------------------------------- generator
class Generator(nn.Module):
    """StyleGAN2 generator. ``G(z)`` -> images (N, 3, size, size) in [0, 1].

    ``w_avg`` (style_dim,) is the mean of the mapping network's output, used by the truncation
    trick; it is a plain attribute (not in the state dict, as in rosinality's ``g_ema``), set by
    :meth:`update_w_avg` or by the checkpoint's ``latent_avg``.
    """

    def __init__(self, config: GeneratorConfig | None = None, **kwargs):
        super().__init__()
        cfg = config if config is not None else GeneratorConfig(**kwargs)
        self.config = cfg
        ch, sd = cfg.channels, cfg.style_dim
        self.style = nn.Sequential(PixelNorm(), *[EqualLinear(sd, sd, lr_mul=cfg.lr_mlp, activation=True)
                                                  for _ in range(cfg.n_mlp)])
        self.input = ConstantInput(ch[4])
        self.conv1 = StyledConv(ch[4], ch[4], sd)
        self.to_rgb1 = ToRGB(ch[4], sd, upsample=False)
        self.convs, self.to_rgbs = nn.ModuleList(), nn.ModuleList()
        self.noises = nn.Module()
        self.num_layers = 2 * (cfg.log_size - 2) + 1
        for i in range(self.num_layers):
            r = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, r, r))
        in_ch = ch[4]
        for res in cfg.resolutions[1:]:
            self.convs.append(StyledConv(in_ch, ch[res], sd, upsample=True))
            self.convs.append(StyledConv(ch[res], ch[res], sd))
            self.to_rgbs.append(ToRGB(ch[res], sd))
            in_ch = ch[res]
        self.w_avg = torch.zeros(sd)

    # ---- latents
    @property
    def n_latent(self) -> int:
        return self.config.n_latent

    @property
    def style_dim(self) -> int:
        return self.config.style_dim

    @property
    def size(self) -> int:
        return self.config.size

    def _apply(self, fn, *args, **kwargs):  # keep w_avg on the module's device
        super()._apply(fn, *args, **kwargs)
        self.w_avg = fn(self.w_avg)
        return self

    def sample_z(self, n: int, seed: int | None = None, generator: torch.Generator | None = None,
                 plus: bool = False) -> torch.Tensor:
        """Standard normal ``z`` (n, style_dim), or ``z+`` (n, n_latent, style_dim) with ``plus``.

        ``seed`` makes it reproducible (same seed, same z); drawn on the CPU, then moved.
        """
        if seed is not None:
            generator = torch.Generator().manual_seed(int(seed))
        shape = (n, self.n_latent, self.style_dim) if plus else (n, self.style_dim)
        return torch.randn(*shape, generator=generator).to(self.w_avg.device)

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z (N, D) -> w (N, D); z+ (N, L, D) -> w+ (N, L, D) (each layer's z mapped alone)."""
        if z.shape[-1] != self.style_dim or z.ndim not in (2, 3):
            raise ValueError(f"z must be (N, {self.style_dim}) or (N, L, {self.style_dim}); got {tuple(z.shape)}")
        return self.style(z.reshape(-1, self.style_dim)).reshape(z.shape)

    @torch.no_grad()
    def update_w_avg(self, n: int = 4096, seed: int = 0) -> torch.Tensor:
        """Set ``w_avg`` to the mean of ``mapping(z)`` over ``n`` seeded samples; return it."""
        self.w_avg = self.mapping(self.sample_z(n, seed=seed)).mean(0)
        return self.w_avg

    def truncate(self, w: torch.Tensor, psi: float = 1.0) -> torch.Tensor:
        """The truncation trick: ``w_avg + psi (w - w_avg)`` (psi = 1: unchanged, 0: the average)."""
        if psi == 1.0:
            return w
        return self.w_avg + psi * (w - self.w_avg)

    def to_wplus(self, w: torch.Tensor) -> torch.Tensor:
        """w (N, D) -> w+ (N, n_latent, D) by repetition; w+ is checked and returned as is."""
        if w.ndim == 2:
            return w[:, None, :].expand(-1, self.n_latent, -1)
        if w.ndim != 3 or w.shape[1] != self.n_latent or w.shape[2] != self.style_dim:
            raise ValueError(f"w+ must be (N, {self.n_latent}, {self.style_dim}); got {tuple(w.shape)}")
        return w

    # ---- synthesis
    def _noise_list(self, noise_mode: str, n: int):
        if noise_mode == "const":
            return [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]
        if noise_mode == "random":
            return [None] * self.num_layers
        if noise_mode == "none":
            return [torch.zeros_like(getattr(self.noises, f"noise_{i}")) for i in range(self.num_layers)]
        raise ValueError(f"noise_mode must be 'const', 'random' or 'none'; got {noise_mode!r}")

    def synthesis(self, wplus: torch.Tensor, noise_mode: str = "const", return_raw: bool = False) -> torch.Tensor:
        """w+ (N, n_latent, D) (or w (N, D)) -> images (N, 3, size, size) in [0, 1].

        ``noise_mode``: ``"const"`` the stored noise maps (deterministic, default), ``"random"``
        fresh noise each call, ``"none"`` no noise. ``return_raw`` gives the unclamped [-1, 1]
        network output (for training losses).
        """
        wplus = self.to_wplus(wplus)
        noise = self._noise_list(noise_mode, wplus.shape[0])
        x = self.input(wplus.shape[0])
        x = self.conv1(x, wplus[:, 0], noise[0])
        skip = self.to_rgb1(x, wplus[:, 1])
        i = 1
        for k, to_rgb in enumerate(self.to_rgbs):
            x = self.convs[2 * k](x, wplus[:, i], noise[2 * k + 1])
            x = self.convs[2 * k + 1](x, wplus[:, i + 1], noise[2 * k + 2])
            skip = to_rgb(x, wplus[:, i + 2], skip)
            i += 2
        if return_raw:
            return skip
        return ((skip + 1) / 2).clamp(0, 1)

    def forward(self, z: torch.Tensor, *, psi: float = 1.0, noise_mode: str = "const",
                input_space: str = "z", return_raw: bool = False) -> torch.Tensor:
        """Latents -> images (N, 3, size, size) in [0, 1].

        ``input_space``: ``"z"`` (N, D), ``"z+"`` (N, L, D), ``"w"`` (N, D) or ``"w+"`` (N, L, D).
        ``psi`` truncates in W (only for z / z+ inputs, as the latents of W/W+ are used as given).
        """
        if input_space in ("z", "z+"):
            if (z.ndim == 3) != (input_space == "z+"):
                raise ValueError(f"input_space={input_space!r} but latents have shape {tuple(z.shape)}")
            w = self.truncate(self.mapping(z), psi)
        elif input_space in ("w", "w+"):
            w = z
        else:
            raise ValueError(f"input_space must be z, z+, w or w+; got {input_space!r}")
        return self.synthesis(w, noise_mode=noise_mode, return_raw=return_raw)

    @torch.no_grad()
    def generate(self, seeds, *, psi: float = 1.0, batch_size: int = 16) -> torch.Tensor:
        """Images for a list of integer seeds (one z per seed, stored noise): deterministic."""
        zs = torch.cat([self.sample_z(1, seed=s) for s in seeds])
        out = [self(zs[i:i + batch_size], psi=psi) for i in range(0, len(zs), batch_size)]
        return torch.cat(out).cpu()

    # ---- layer bookkeeping
    def layer_resolutions(self) -> dict[str, int]:
        """Module prefix -> the resolution it works at: ``conv1``/``to_rgb1``/``input`` 4,
        ``convs.0`` and ``convs.1`` and ``to_rgbs.0`` 8, and so on; ``noises.noise_i`` too."""
        out = {"input": 4, "conv1": 4, "to_rgb1": 4}
        for k, res in enumerate(self.config.resolutions[1:]):
            out[f"convs.{2 * k}"] = out[f"convs.{2 * k + 1}"] = out[f"to_rgbs.{k}"] = res
        for i in range(self.num_layers):
            out[f"noises.noise_{i}"] = 2 ** ((i + 5) // 2)
        return out

    def latent_resolutions(self) -> list[int]:
        """Resolution at which each of the n_latent latents acts (its convolution's output)."""
        res = [4, 4]
        for r in self.config.resolutions[1:]:
            res += [r, r]
        return res[: self.n_latent]


# --------------------------------------------------------------------------- checkpoints
def config_from_state_dict(state: Mapping[str, torch.Tensor]) -> GeneratorConfig:
    """Read size, style_dim, n_mlp and channels off a rosinality generator state dict."""
    try:
        sd = state["style.1.weight"].shape[1]
        n_mlp = len([k for k in state if re.fullmatch(r"style\.\d+\.weight", k)])
        channels = {4: state["input.input"].shape[1]}
        n_rgb = len([k for k in state if re.fullmatch(r"to_rgbs\.\d+\.bias", k)])
        for k in range(n_rgb):
            channels[2 ** (k + 3)] = state[f"convs.{2 * k}.conv.weight"].shape[1]
    except KeyError as err:
        raise CheckpointMismatch(f"not a rosinality StyleGAN2 generator state dict: no key {err}") from None
    return GeneratorConfig(size=2 ** (n_rgb + 2), style_dim=sd, n_mlp=n_mlp, channels=channels)


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointMismatch` naming missing, unexpected and mis-shaped keys."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        parts = []
        for what, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", shapes)):
            if items:
                more = f" (+{len(items) - 8} more)" if len(items) > 8 else ""
                parts.append(f"{len(items)} {what}: {', '.join(items[:8])}{more}")
        raise CheckpointMismatch("checkpoint does not fit the generator -- " + "; ".join(parts))


def load_state(G: Generator, state: Mapping[str, torch.Tensor], latent_avg: torch.Tensor | None = None) -> Generator:
    """Load a rosinality-format state dict into ``G`` strictly (after :func:`check_state_dict`)."""
    check_state_dict(G, state)
    G.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    if latent_avg is not None:
        G.w_avg = latent_avg.float().reshape(-1).to(G.w_avg.device)
    else:
        G.update_w_avg()
    return G


def save_checkpoint(G: Generator, path: str | os.PathLike, **extra) -> Path:
    """Write ``{"g_ema": state_dict, "latent_avg": w_avg, "config": ...}`` atomically."""
    from ..runtime import atomic_path

    payload = {"g_ema": {k: v.detach().cpu() for k, v in G.state_dict().items()},
               "latent_avg": G.w_avg.detach().cpu(), "config": G.config.to_dict(), **extra}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def load_checkpoint(path: str | os.PathLike, config: GeneratorConfig | None = None, *,
                    key: str = "g_ema") -> Generator:
    """Build a generator from a rosinality-format checkpoint and load it strictly.

    The file is read with ``weights_only=True``; ``key`` picks the state dict (``"g_ema"``,
    or ``"g"``). Without ``config`` the architecture is read off the state dict; with one, a
    checkpoint that does not fit raises :class:`CheckpointMismatch`.
    """
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise CheckpointMismatch(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    if key not in ckpt:
        if "style.1.weight" in ckpt:        # a bare state dict
            state = ckpt
        else:
            raise CheckpointMismatch(f"{path}: no {key!r} entry (keys: {sorted(ckpt)[:8]})")
    else:
        state = ckpt[key]
    if config is None:
        saved = ckpt.get("config")
        config = GeneratorConfig(**saved) if isinstance(saved, dict) else config_from_state_dict(state)
    return load_state(Generator(config), state, ckpt.get("latent_avg"))

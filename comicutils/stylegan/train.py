"""Training and fine-tuning a (micro) StyleGAN2 on CPU-sized data.

* :class:`Discriminator`: a small residual discriminator (equalised learning rate, 2x average-pool
  downsampling, minibatch standard deviation), the StyleGAN2 "resnet" design at micro scale.
* :func:`diff_augment`: the same random flip / translation / brightness / saturation applied to
  real and generated images before the discriminator, differentiably, so that 100 photos are
  enough to train on without the discriminator memorising them (DiffAugment's idea).
* :class:`GANTrainer`: non-saturating logistic GAN loss, lazy R1 penalty on real images, style
  mixing regularisation (two latents per image, cut at a random layer), an exponential moving
  average of the generator (``G_ema``, what is sampled from). ``extra_losses`` adds weighted
  terms to the generator step -- that is how seed 001's fine-tuning constraints plug in:
  :func:`semantic_term` (``L_semantic(G(z), G'(z))``) and :func:`paired_term`
  (``LPIPS(G'(w+), S)``).

* :func:`fit_reconstruction`: a regression warm start (GLO) that gives a micro generator a face
  manifold in minutes of CPU, and :func:`reconstruction_term` to anchor it during GAN steps.

Images given to the trainer are (N, 3, H, W) in [0, 1]; the networks see [-1, 1] (converted in
:meth:`GANTrainer._real` and by ``return_raw``). Offline, pretrained FFHQ weights cannot be had,
so chapter 03 warm-starts a micro generator on the course's photos, trains it briefly with this
loop and fine-tunes copies on the comics -- a small stand-in for FFHQ-StyleGAN2, said so on screen.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..runtime import progress
from .model import SQRT2, Generator


class EqualConv2d(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, k: int, *, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_ch, in_ch, k, k))
        self.bias = nn.Parameter(torch.zeros(out_ch)) if bias else None
        self.scale, self.padding = 1 / math.sqrt(in_ch * k * k), k // 2

    def forward(self, x):
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


def _act(x):
    return F.leaky_relu(x, 0.2) * SQRT2


class _DBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int):
        super().__init__()
        self.conv1, self.conv2 = EqualConv2d(in_ch, in_ch, 3), EqualConv2d(in_ch, out_ch, 3)
        self.skip = EqualConv2d(in_ch, out_ch, 1, bias=False)

    def forward(self, x):
        y = F.avg_pool2d(_act(self.conv2(_act(self.conv1(x)))), 2)
        return (y + F.avg_pool2d(self.skip(x), 2)) / SQRT2


class Discriminator(nn.Module):
    """Images (N, 3, size, size) in [-1, 1] -> realness logits (N,). ``channels`` as the generator's."""

    def __init__(self, size: int, channels: dict[int, int], mbstd_group: int = 4):
        super().__init__()
        res = [2 ** i for i in range(int(math.log2(size)), 1, -1)]     # size ... 4
        self.from_rgb = EqualConv2d(3, channels[size], 1)
        self.blocks = nn.ModuleList(_DBlock(channels[r], channels[r // 2]) for r in res[:-1])
        c4 = channels[4]
        self.final_conv = EqualConv2d(c4 + 1, c4, 3)
        self.fc1, self.fc2 = nn.Linear(c4 * 16, c4), nn.Linear(c4, 1)
        self.mbstd_group = mbstd_group

    def forward(self, x):
        x = _act(self.from_rgb(x))
        for block in self.blocks:
            x = block(x)
        n, c, h, w = x.shape
        g = min(self.mbstd_group, n)
        while n % g:
            g -= 1
        std = x.reshape(g, -1, c, h, w).var(0, unbiased=False).add(1e-8).sqrt().mean((1, 2, 3))
        x = torch.cat([x, std.repeat(g)[:, None, None, None].expand(n, 1, h, w)], 1)
        x = _act(self.final_conv(x)).flatten(1)
        return self.fc2(F.leaky_relu(self.fc1(x), 0.2)).flatten()


def diff_augment(x: torch.Tensor, generator: torch.Generator | None = None, *, translate: float = 0.125) -> torch.Tensor:
    """Random flip, translation (zero padding), brightness and saturation per image, differentiable
    in ``x`` (N, 3, H, W) in [-1, 1]."""
    n, _, h, w = x.shape
    dev = x.device

    def rand(*shape):
        return torch.rand(*shape, generator=generator).to(dev)

    flip = rand(n) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(3), x)
    x = x + (rand(n, 1, 1, 1) - 0.5) * 0.4                                   # brightness
    mean = x.mean(1, keepdim=True)
    x = (x - mean) * (rand(n, 1, 1, 1) * 1.5 + 0.25) + mean                 # saturation
    s = max(1, int(h * translate))
    shifts = (rand(n, 2) * (2 * s + 1)).long() - s
    pad = F.pad(x, (s, s, s, s))
    iy = torch.arange(h, device=dev)[None, :] + s - shifts[:, :1]           # (n, h)
    ix = torch.arange(w, device=dev)[None, :] + s - shifts[:, 1:]
    idx = torch.arange(n, device=dev)[:, None, None]
    return pad.permute(0, 2, 3, 1)[idx, iy[:, :, None], ix[:, None, :]].permute(0, 3, 1, 2)


def _mixed_zplus(G: Generator, n: int, prob: float, gen: torch.Generator) -> torch.Tensor:
    """z+ (n, L, D): one z per image, or with probability ``prob`` two z cut at a random layer."""
    z1 = torch.randn(n, G.style_dim, generator=gen)
    z2 = torch.randn(n, G.style_dim, generator=gen)
    cut = torch.randint(1, G.n_latent, (n,), generator=gen)
    cut = torch.where(torch.rand(n, generator=gen) < prob, cut, torch.full_like(cut, G.n_latent))
    layer = torch.arange(G.n_latent)[None, :, None]
    return torch.where(layer < cut[:, None, None], z1[:, None], z2[:, None]).to(G.w_avg.device)


# an extra generator loss: (trainer, generator batch size, step) -> per-image losses (N,) or scalar
ExtraLoss = Callable[["GANTrainer", int, int], torch.Tensor]


@dataclass
class GANTrainer:
    """Adversarial training of ``G`` against ``D`` (both modified in place); see the module doc.

    ``extra_losses``: {name: (weight, fn)} added to the generator loss each step; every term is
    logged in ``history`` (one dict per step).
    """

    G: Generator
    D: Discriminator
    lr: float = 0.002
    batch_size: int = 8
    r1_gamma: float = 1.0
    r1_every: int = 4
    mixing_prob: float = 0.9
    ema_beta: float = 0.99
    augment: bool = True
    extra_losses: dict[str, tuple[float, ExtraLoss]] = field(default_factory=dict)
    seed: int = 0

    def __post_init__(self):
        betas = (0.0, 0.99)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=self.lr, betas=betas)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=self.lr, betas=betas)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.history: list[dict] = []
        self.step = 0

    def _aug(self, x):
        return diff_augment(x, self.gen) if self.augment else x

    def _real(self, images: torch.Tensor) -> torch.Tensor:
        idx = torch.randint(0, len(images), (self.batch_size,), generator=self.gen)
        return images[idx].to(self.G.w_avg.device) * 2 - 1

    def fake_raw(self, n: int, mixing: bool = True) -> torch.Tensor:
        zplus = _mixed_zplus(self.G, n, self.mixing_prob if mixing else 0.0, self.gen)
        return self.G(zplus, input_space="z+", noise_mode="random", return_raw=True)

    def train_step(self, images: torch.Tensor) -> dict:
        G, D = self.G, self.D
        G.requires_grad_(False)
        D.requires_grad_(True)
        real = self._real(images)
        with torch.no_grad():
            fake = self.fake_raw(self.batch_size)
        d_loss = F.softplus(D(self._aug(fake))).mean() + F.softplus(-D(self._aug(real))).mean()
        log = {"step": self.step, "d": d_loss.item()}
        if self.r1_gamma and self.step % self.r1_every == 0:
            real_r1 = real.detach().requires_grad_(True)
            grad, = torch.autograd.grad(D(self._aug(real_r1)).sum(), real_r1, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            d_loss = d_loss + self.r1_gamma / 2 * r1 * self.r1_every
            log["r1"] = r1.item()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()

        G.requires_grad_(True)
        D.requires_grad_(False)
        fake = self.fake_raw(self.batch_size)
        g_loss = F.softplus(-D(self._aug(fake))).mean()
        log["g_adv"] = g_loss.item()
        for name, (weight, fn) in self.extra_losses.items():
            term = fn(self, self.batch_size, self.step).mean()
            log[name] = term.item()
            g_loss = g_loss + weight * term
        self.opt_g.zero_grad(set_to_none=True)
        g_loss.backward()
        self.opt_g.step()
        self._update_ema()
        self.step += 1
        self.history.append(log)
        return log

    @torch.no_grad()
    def _update_ema(self):
        for pe, p in zip(self.G_ema.parameters(), self.G.parameters()):
            pe.lerp_(p, 1 - self.ema_beta)
        for be, b in zip(self.G_ema.buffers(), self.G.buffers()):
            be.copy_(b)

    def fit(self, images: torch.Tensor, steps: int, *, desc: str = "GAN training",
            snapshot_every: int | None = None, snapshot_seeds=(0, 1, 2, 3)) -> "GANTrainer":
        """``steps`` training steps on ``images`` (N, 3, size, size) in [0, 1].

        With ``snapshot_every``, ``self.snapshots[step]`` keeps G_ema's images of fixed seeds.
        """
        if images.ndim != 4 or images.shape[-1] != self.G.size or images.shape[-2] != self.G.size:
            raise ValueError(f"training images must be (N, 3, {self.G.size}, {self.G.size}); "
                             f"got {tuple(images.shape)}")
        self.snapshots = getattr(self, "snapshots", {})
        self.G.train()
        bar = progress(range(steps), desc=desc)
        for _ in bar:
            log = self.train_step(images)
            if self.step % 10 == 0 and hasattr(bar, "set_postfix"):
                bar.set_postfix(d=f"{log['d']:.2f}", g=f"{log['g_adv']:.2f}")
            if snapshot_every and (self.step % snapshot_every == 0 or self.step == steps):
                self.G_ema.update_w_avg(1024)
                self.snapshots[self.step] = self.G_ema.generate(snapshot_seeds)
        self.G_ema.update_w_avg()
        self.G.update_w_avg()
        return self


# --------------------------------------------------------------------------- seed 001's constraints
def semantic_term(G_frozen: Generator, loss: nn.Module, *, psi: float = 1.0, batch: int | None = None) -> ExtraLoss:
    """``L_semantic(G(z), G'(z))`` with the same z for the frozen pretrained G and the trained G'
    (``batch`` latents per step; default the trainer's batch size)."""
    G_frozen = G_frozen.eval().requires_grad_(False)

    def term(trainer: GANTrainer, n: int, step: int) -> torch.Tensor:
        n = batch or n
        z = torch.randn(n, trainer.G.style_dim, generator=trainer.gen).to(trainer.G.w_avg.device)
        with torch.no_grad():
            ref = G_frozen(z, psi=psi)
        out = (trainer.G(z, psi=psi, return_raw=True) + 1) / 2
        return loss(out, ref)

    return term


def paired_term(wplus: torch.Tensor, comics: torch.Tensor, loss: nn.Module, *, batch: int | None = None) -> ExtraLoss:
    """``LPIPS(G'(w+), S)`` on a random batch of pseudo pairs (w+ (M, L, D), S (M, 3, H, W) in [0, 1])."""
    if len(wplus) != len(comics):
        raise ValueError(f"{len(wplus)} latents but {len(comics)} comics")

    def term(trainer: GANTrainer, n: int, step: int) -> torch.Tensor:
        n = batch or n
        idx = torch.randint(0, len(wplus), (min(n, len(wplus)),), generator=trainer.gen)
        dev = trainer.G.w_avg.device
        out = (trainer.G.synthesis(wplus[idx].to(dev), return_raw=True) + 1) / 2
        return loss(out, comics[idx].to(dev))

    return term


def finetune(G_base: Generator, D_base: Discriminator, comics: torch.Tensor, steps: int, *,
             semantic: nn.Module | None = None, lambda_semantic: float = 1.0,
             pairs: tuple[torch.Tensor, torch.Tensor] | None = None, paired_loss: nn.Module | None = None,
             lambda_paired: float = 1.0, constraint_batch: int | None = None, desc: str = "fine-tuning",
             **trainer_kwargs) -> GANTrainer:
    """Fine-tune copies of ``G_base`` / ``D_base`` on ``comics`` (seed 001, eq. 3).

    ``L = L_adv + lambda_semantic L_semantic + lambda_paired L_paired``: pass ``semantic`` (a
    :class:`~comicutils.stylegan.losses.SemanticLoss`) for +SC, ``pairs = (w+, S)`` and
    ``paired_loss`` for +PC, neither for the Toonify baseline. The inputs are not modified;
    the fine-tuned generator is ``trainer.G_ema``. ``constraint_batch``: latents / pairs per
    step for the two constraints (seed 001 fine-tunes with batch 4); default the GAN batch.
    """
    extra = {}
    if semantic is not None:
        extra["semantic"] = (lambda_semantic, semantic_term(copy.deepcopy(G_base), semantic,
                                                                   batch=constraint_batch))
    if pairs is not None:
        if paired_loss is None:
            raise ValueError("pairs given without a paired_loss")
        extra["paired"] = (lambda_paired, paired_term(pairs[0].detach(), pairs[1], paired_loss,
                                                                 batch=constraint_batch))
    trainer = GANTrainer(copy.deepcopy(G_base), copy.deepcopy(D_base), extra_losses=extra, **trainer_kwargs)
    return trainer.fit(comics, steps, desc=desc)


# --------------------------------------------------------------------------- reconstruction warm start
@dataclass
class LatentFit:
    """Result of :func:`fit_reconstruction`: one learned z per training image (N, D) and the log."""

    z: torch.Tensor
    history: list[dict]


def fit_reconstruction(G: Generator, images: torch.Tensor, steps: int, *, batch_size: int = 16,
                       lr: float = 0.002, latent_lr: float = 0.01, latent_noise: float = 0.8,
                       loss: Callable | None = None, seed: int = 0,
                       desc: str = "reconstruction warm start") -> LatentFit:
    """Warm-start ``G`` (in place) by regression: every image gets a learnable z, and G and the
    z's are fitted together so that ``G(z_i)`` reproduces image i (Bojanowski et al.'s "GLO").

    A GAN learns faces only after hundreds of thousands of images; regression on 130 photos
    gives a face manifold in minutes of CPU. ``latent_noise``: each step decodes
    ``z_i + latent_noise * eps`` instead of ``z_i`` (as a VAE decoder sees posterior samples),
    so whole neighbourhoods of the sphere decode to faces and random z give plausible (blurry)
    in-between faces, not only the 130 fitted points; a small ``style_dim`` helps the same way. Adversarial training afterwards (:class:`GANTrainer`, with
    :func:`reconstruction_term` to stay anchored) sharpens them. ``loss(pred, target)`` per
    image (default MSE); images (N, 3, size, size) in [0, 1].
    """
    from .invert import mse_loss

    loss = loss or mse_loss
    gen = torch.Generator().manual_seed(seed)
    dev = G.w_avg.device
    z = torch.randn(len(images), G.style_dim, generator=gen).to(dev).requires_grad_(True)
    opt = torch.optim.Adam([{"params": G.parameters(), "lr": lr}, {"params": [z], "lr": latent_lr}],
                           betas=(0.9, 0.99))
    G.train().requires_grad_(True)
    history = []
    for step in progress(range(steps), desc=desc):
        idx = torch.randperm(len(images), generator=gen)[:batch_size]
        eps = torch.randn(len(idx), G.style_dim, generator=gen).to(dev) * latent_noise
        pred = (G(z[idx] + eps, return_raw=True) + 1) / 2
        value = loss(pred, images[idx].to(dev)).mean()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        history.append({"step": step, "reconstruction": value.item()})
    G.eval().requires_grad_(False)
    G.update_w_avg()
    return LatentFit(z.detach(), history)


def reconstruction_term(z: torch.Tensor, images: torch.Tensor, loss: Callable | None = None, *,
                        batch: int | None = None) -> ExtraLoss:
    """Keep ``G(z_i)`` close to image i during adversarial training (anchors the warm start)."""
    from .invert import mse_loss

    loss = loss or mse_loss

    def term(trainer: GANTrainer, n: int, step: int) -> torch.Tensor:
        idx = torch.randint(0, len(z), (batch or n,), generator=trainer.gen)
        dev = trainer.G.w_avg.device
        pred = (trainer.G(z[idx].to(dev), return_raw=True) + 1) / 2
        return loss(pred, images[idx].to(dev))

    return term

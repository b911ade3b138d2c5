"""Training and fine-tuning a (micro) StyleGAN2 on CPU-sized data.

* :class:`Discriminator`: a small residual discriminator (equalised learning rate, 2x average-pool
  downsampling, minibatch standard deviation), the StyleGAN2 "resnet" design at micro scale.
* :func:`diff_augment`: the same random flip / translation / brightness / saturation applied to
  real and generated images before the discriminator, differentiably, so that 100 photos are
  enough to train on without the discriminator memorising them (DiffAugment's idea).
* :class:`GANTrainer`: non-saturating logistic GAN loss, lazy R1 penalty on real images, style
  mixing regularisation (two latents per image, cut at a random layer), an exponential moving
  average of the generator (``G_ema``, what is sampled from). ``extra_losses`` adds weighted
  terms to the generator step -- that is how Lu & Zhou's fine-tuning constraints plug in:
  :func:`semantic_term` (``L_semantic(G(z), G'(z))``) and :func:`paired_term`
  (``LPIPS(G'(w+), S)``).

* :func:`fit_reconstruction`: a regression warm start (GLO) that gives a micro generator a face
  manifold in minutes of CPU, and :func:`reconstruction_term` to anchor it during GAN steps.

A NaN or infinite loss term stops training before the optimiser step it would spoil
(:class:`comicutils.checkpoints.NonFiniteState`); :meth:`GANTrainer.save_checkpoint` /
:meth:`GANTrainer.load_checkpoint` and ``fit(..., checkpoint=...)`` let a long run be interrupted
and finished later (:mod:`comicutils.checkpoints`' format rules: atomic writes, ``weights_only``
reads, the architecture checked before any weight is loaded).

Images given to the trainer are (N, 3, H, W) in [0, 1]; the networks see [-1, 1] (converted in
:meth:`GANTrainer._real` and by ``return_raw``). Offline, pretrained FFHQ weights cannot be had,
so chapter 03 warm-starts a micro generator on the course's photos, trains it briefly with this
loop and fine-tunes copies on the comics -- a small stand-in for FFHQ-StyleGAN2, said so on screen.
"""
from __future__ import annotations

import contextlib
import copy
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoints
from ..runtime import progress
from .model import SQRT2, Generator

CHECKPOINT_FORMAT = "comicutils.stylegan.trainer/1"


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
        missing = [r for r in res if r not in channels]
        if missing:
            raise ValueError(f"channels has no entry for resolutions {missing}")
        # what the network is built from (checkpoints compare it before loading weights)
        self.config = {"size": int(size), "channels": {int(r): int(channels[r]) for r in sorted(res)},
                       "mbstd_group": int(mbstd_group)}
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

    ``extra_losses``: {name: (weight, fn)} added to the generator loss each step; ``fn(trainer,
    batch size, step)`` gets the number of steps done before this one. Every term is logged in
    ``history``: one dict per step, ``step`` being the step count after it (1, 2, ...), as in
    the other course trainers. ``self.step`` is the number of steps done.

    A NaN or infinite term (``d``, ``r1``, ``g_adv``, an extra term or the weighted generator
    total) raises :class:`comicutils.checkpoints.NonFiniteState`, naming the term and the step,
    before the optimiser step it would spoil: a discriminator term leaves both networks as they
    were, a generator term leaves ``G`` and ``G_ema`` as they were (the discriminator has taken
    that step's update by then). Resume from the last checkpoint, with a lower ``lr`` if the
    run diverged.
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

    BETAS = (0.0, 0.99)

    def __post_init__(self):
        if self.D.config["size"] != self.G.size:
            raise ValueError(f"the generator makes {self.G.size} px images, the discriminator reads "
                             f"{self.D.config['size']} px")
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=self.lr, betas=self.BETAS)
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=self.lr, betas=self.BETAS)
        self.G_ema = copy.deepcopy(self.G).eval().requires_grad_(False)
        self.gen = torch.Generator().manual_seed(self.seed)
        self.history: list[dict] = []
        self.snapshots: dict[int, torch.Tensor] = {}
        self.step = 0

    @property
    def config(self) -> dict:
        """The networks' build parameters and this trainer's settings (saved in checkpoints)."""
        return {"generator": self.G.config.to_dict(), "discriminator": copy.deepcopy(self.D.config),
                "trainer": {"lr": float(self.lr), "betas": list(self.BETAS), "batch_size": int(self.batch_size),
                            "r1_gamma": float(self.r1_gamma), "r1_every": int(self.r1_every),
                            "mixing_prob": float(self.mixing_prob), "ema_beta": float(self.ema_beta),
                            "augment": bool(self.augment), "seed": int(self.seed),
                            "extra_losses": {name: float(w) for name, (w, _) in self.extra_losses.items()}}}

    def _aug(self, x):
        return diff_augment(x, self.gen) if self.augment else x

    def _real(self, images: torch.Tensor) -> torch.Tensor:
        idx = torch.randint(0, len(images), (self.batch_size,), generator=self.gen)
        return images[idx].to(self.G.w_avg.device) * 2 - 1

    def fake_raw(self, n: int, mixing: bool = True) -> torch.Tensor:
        """``n`` generated images in [-1, 1] (style mixing with ``mixing_prob``, fresh noise maps).

        All randomness comes from ``self.gen``: the noise maps are drawn under a seed taken from
        it, so a resumed run repeats an uninterrupted one and the global generator is untouched.
        """
        zplus = _mixed_zplus(self.G, n, self.mixing_prob if mixing else 0.0, self.gen)
        noise_seed = int(torch.randint(0, 2 ** 62, (1,), generator=self.gen))
        dev = self.G.w_avg.device
        devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(noise_seed)
            return self.G(zplus, input_space="z+", noise_mode="random", return_raw=True)

    def _check(self, value: torch.Tensor, what: str) -> None:
        checkpoints.check_finite(value, what, self.step + 1,
                                 hint=f"Lower the learning rate (now {self.lr:g}), check the images are in "
                                      "[0, 1], or resume from the last checkpoint.")

    def train_step(self, images: torch.Tensor) -> dict:
        """One discriminator and one generator update; appends and returns the history row."""
        G, D = self.G, self.D
        G.requires_grad_(False)
        D.requires_grad_(True)
        real = self._real(images)
        with torch.no_grad():
            fake = self.fake_raw(self.batch_size)
        d_loss = F.softplus(D(self._aug(fake))).mean() + F.softplus(-D(self._aug(real))).mean()
        self._check(d_loss, "StyleGAN discriminator loss 'd'")
        log = {"step": self.step + 1, "d": d_loss.item()}
        if self.r1_gamma and self.step % self.r1_every == 0:
            real_r1 = real.detach().requires_grad_(True)
            grad, = torch.autograd.grad(D(self._aug(real_r1)).sum(), real_r1, create_graph=True)
            r1 = grad.pow(2).flatten(1).sum(1).mean()
            self._check(r1, "StyleGAN R1 penalty 'r1'")
            d_loss = d_loss + self.r1_gamma / 2 * r1 * self.r1_every
            self._check(d_loss, "StyleGAN discriminator loss with R1")
            log["r1"] = r1.item()
        self.opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        self.opt_d.step()

        G.requires_grad_(True)
        D.requires_grad_(False)
        fake = self.fake_raw(self.batch_size)
        g_loss = F.softplus(-D(self._aug(fake))).mean()
        self._check(g_loss, "StyleGAN generator loss 'g_adv'")
        log["g_adv"] = g_loss.item()
        for name, (weight, fn) in self.extra_losses.items():
            term = fn(self, self.batch_size, self.step).mean()
            self._check(term, f"StyleGAN generator term {name!r}")
            log[name] = term.item()
            g_loss = g_loss + weight * term
        self._check(g_loss, "StyleGAN generator loss (weighted total)")
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
            snapshot_every: int | None = None, snapshot_seeds=(0, 1, 2, 3),
            checkpoint: str | os.PathLike | None = None, resume: bool = True,
            checkpoint_every: int | None = None) -> "GANTrainer":
        """Train on ``images`` (N, 3, size, size) in [0, 1] until ``steps`` steps *in total*.

        The count includes what an earlier call or a resumed checkpoint did, so re-running the
        same call after an interruption finishes the run (and a finished run is not extended).
        With ``snapshot_every``, ``self.snapshots[step]`` keeps G_ema's images of fixed seeds.

        ``checkpoint``: a file (see :meth:`save_checkpoint`) written every ``checkpoint_every``
        steps and at the end; with ``resume=True`` an existing one is loaded first. The
        ``extra_losses`` are functions and are not saved: pass the same ones again to resume.
        """
        if images.ndim != 4 or images.shape[-1] != self.G.size or images.shape[-2] != self.G.size:
            raise ValueError(f"training images must be (N, 3, {self.G.size}, {self.G.size}); "
                             f"got {tuple(images.shape)}")
        if checkpoint_every is not None and checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be >= 1; got {checkpoint_every}")
        if checkpoint is None:
            return self._fit(images, steps, desc, snapshot_every, snapshot_seeds, None, checkpoint_every)
        with checkpoints.output_lock(Path(checkpoint).parent):     # one run per output folder
            if resume and checkpoints.checkpoint_exists(checkpoint):
                self.load_checkpoint(checkpoint)
            return self._fit(images, steps, desc, snapshot_every, snapshot_seeds, checkpoint, checkpoint_every)

    def _fit(self, images, steps, desc, snapshot_every, snapshot_seeds, checkpoint, checkpoint_every) -> "GANTrainer":
        self.G.train()
        bar = progress(total=max(int(steps), self.step), initial=self.step, desc=desc)
        try:
            while self.step < steps:
                log = self.train_step(images)
                bar.update(1)
                if self.step % 10 == 0:
                    bar.set_postfix(d=f"{log['d']:.2f}", g=f"{log['g_adv']:.2f}", refresh=False)
                if snapshot_every and (self.step % snapshot_every == 0 or self.step == steps):
                    self.G_ema.update_w_avg(1024)
                    self.snapshots[self.step] = self.G_ema.generate(snapshot_seeds)
                if checkpoint is not None and checkpoint_every and self.step % checkpoint_every == 0 \
                        and self.step < steps:
                    self.save_checkpoint(checkpoint)
        finally:
            bar.close()
        self.G_ema.update_w_avg()
        self.G.update_w_avg()
        if checkpoint is not None:
            self.save_checkpoint(checkpoint)
        return self

    # files -------------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to resume, as plain tensors, numbers, strings, lists and dicts."""
        return {"format": CHECKPOINT_FORMAT, "config": self.config,
                "G": self.G.state_dict(), "D": self.D.state_dict(), "G_ema": self.G_ema.state_dict(),
                "w_avg": {"G": self.G.w_avg, "G_ema": self.G_ema.w_avg},
                "opt_g": self.opt_g.state_dict(), "opt_d": self.opt_d.state_dict(),
                "step": int(self.step), "history": [dict(r) for r in self.history],
                "rng": self.gen.get_state(), "snapshots": {int(k): v for k, v in self.snapshots.items()}}

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state` to ``path`` all-or-nothing (:func:`comicutils.checkpoints.save_state`).

        Saved: ``G``, ``D``, ``G_ema`` (with their ``w_avg``), both optimisers, ``step``,
        ``history``, ``snapshots``, the random generator's state, the networks' build parameters
        and the trainer settings. Not saved: ``extra_losses`` (functions; only their names and
        weights are recorded). NaN or infinite weights raise ``NonFiniteState`` and nothing is
        written; temporary files left by a killed save are removed.
        """
        return checkpoints.save_state(self.state(), path)

    def load_checkpoint(self, path: str | os.PathLike) -> dict:
        """Restore a :meth:`save_checkpoint` file (read with ``weights_only=True``); returns its dict.

        The file is checked before any weight is loaded: an unreadable one raises a one-line
        ``ValueError``, one for another generator or discriminator configuration raises
        :class:`comicutils.checkpoints.ProvenanceMismatch` naming both sides. The trainer's own
        learning rate is kept (so a diverged run can resume with a lower one); the other recorded
        settings are informative. ``extra_losses`` are not in the file: this trainer's are used.
        """
        ckpt, path = checkpoints.load_latest(path)      # CPU; load_state_dict moves to the device
        if not isinstance(ckpt, Mapping) or ckpt.get("format") != CHECKPOINT_FORMAT:
            found = ckpt.get("format") if isinstance(ckpt, Mapping) else type(ckpt).__name__
            raise ValueError(f"{path} is not a micro StyleGAN trainer checkpoint "
                             f"(expected format {CHECKPOINT_FORMAT!r}, found {found!r})")
        lacking = [k for k in ("config", "G", "D", "G_ema", "w_avg", "opt_g", "opt_d", "step", "history", "rng")
                   if k not in ckpt]
        if lacking:
            raise ValueError(f"{path} is an incomplete micro StyleGAN trainer checkpoint (no {', '.join(lacking)})")
        saved, now = ckpt["config"], self.config
        checkpoints.check_provenance(_flat(saved, ("generator", "discriminator")),
                                     _flat(now, ("generator", "discriminator")), f"checkpoint {path}")
        for key, module in (("G", self.G), ("D", self.D), ("G_ema", self.G_ema)):
            _check_fits(module, ckpt[key], f"{path} ({key})")
        for key, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            sizes = [len(g["params"]) for g in ckpt[key]["param_groups"]]
            if sizes != [len(g["params"]) for g in opt.param_groups]:
                raise ValueError(f"{path}: optimiser {key} has parameter groups of {sizes}, this trainer's "
                                 f"{[len(g['params']) for g in opt.param_groups]}")

        self.G.load_state_dict(ckpt["G"])
        self.D.load_state_dict(ckpt["D"])
        self.G_ema.load_state_dict(ckpt["G_ema"])
        dev = self.G.w_avg.device
        self.G.w_avg = ckpt["w_avg"]["G"].to(dev)
        self.G_ema.w_avg = ckpt["w_avg"]["G_ema"].to(self.G_ema.w_avg.device)
        for key, opt in (("opt_g", self.opt_g), ("opt_d", self.opt_d)):
            opt.load_state_dict(ckpt[key])
            for group in opt.param_groups:
                group["lr"], group["betas"] = self.lr, self.BETAS
        self.step = int(ckpt["step"])
        self.history = [dict(r) for r in ckpt["history"]]
        self.snapshots = {int(k): v for k, v in ckpt.get("snapshots", {}).items()}
        self.gen.set_state(ckpt["rng"])
        old_lr = dict(saved.get("trainer", {})).get("lr")
        changed = f"; learning rate now {self.lr:g} (the checkpoint trained with {old_lr:g})" \
            if old_lr is not None and old_lr != self.lr else ""
        print(f"resuming from {path} at step {self.step}{changed}")
        return ckpt


def _flat(config: Mapping, parts) -> dict:
    """``{"generator": {"size": 16}}`` -> ``{"generator.size": 16}`` (one entry per build parameter)."""
    return {f"{part}.{k}": v for part in parts for k, v in dict(config.get(part, {})).items()}


def _check_fits(module: nn.Module, state: Mapping[str, Any], what: str) -> None:
    """Raise ``ValueError`` unless ``state`` has exactly ``module``'s keys and shapes."""
    own = module.state_dict()
    if not isinstance(state, Mapping):
        raise ValueError(f"{what}: not a state dict")
    wrong = sorted(set(own) ^ set(state)) + [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if wrong:
        raise ValueError(f"{what} does not fit this network ({len(wrong)} keys differ, e.g. {', '.join(wrong[:4])})")


# --------------------------------------------------------------------------- Lu & Zhou's constraints
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
    """Fine-tune copies of ``G_base`` / ``D_base`` on ``comics`` (Lu & Zhou's write-up, eq. 3).

    ``L = L_adv + lambda_semantic L_semantic + lambda_paired L_paired``: pass ``semantic`` (a
    :class:`~comicutils.stylegan.losses.SemanticLoss`) for +SC, ``pairs = (w+, S)`` and
    ``paired_loss`` for +PC, neither for the Toonify baseline. The inputs are not modified;
    the fine-tuned generator is ``trainer.G_ema``. ``constraint_batch``: latents / pairs per
    step for the two constraints (Lu & Zhou's write-up fine-tunes with batch 4); default the GAN batch.
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


RECONSTRUCTION_FORMAT = "comicutils-stylegan-reconstruction/1"


def fit_reconstruction(G: Generator, images: torch.Tensor, steps: int, *, batch_size: int = 16,
                       lr: float = 0.002, latent_lr: float = 0.01, latent_noise: float = 0.8,
                       loss: Callable | None = None, seed: int = 0,
                       desc: str = "reconstruction warm start", latents: torch.Tensor | None = None,
                       learn_latents: bool = True, checkpoint: str | os.PathLike | None = None,
                       checkpoint_every: int = 100, resume: bool = True) -> LatentFit:
    """Warm-start ``G`` (in place) by regression: every image gets a learnable z, and G and the
    z's are fitted together so that ``G(z_i)`` reproduces image i (Bojanowski et al.'s "GLO").

    A GAN learns faces only after hundreds of thousands of images; regression on 130 photos
    gives a face manifold in minutes of CPU. ``latent_noise``: each step decodes
    ``z_i + latent_noise * eps`` instead of ``z_i`` (as a VAE decoder sees posterior samples),
    so whole neighbourhoods of the sphere decode to faces and random z give plausible (blurry)
    in-between faces, not only the 130 fitted points; a small ``style_dim`` helps the same way. Adversarial training afterwards (:class:`GANTrainer`, with
    :func:`reconstruction_term` to stay anchored) sharpens them. ``loss(pred, target)`` per
    image (default MSE); images (N, 3, size, size) in [0, 1].

    ``latents``: start from these z's (N, style_dim) instead of random ones; with
    ``learn_latents=False`` they stay fixed and only G moves (e.g. teach a copy of the photo
    generator that the photo's z_i should give comic i). ``checkpoint``: a file written
    atomically every ``checkpoint_every`` steps and at the end (G, z, optimiser, random state,
    history); an existing one is resumed, and ``steps`` counts in total.
    """
    from .invert import mse_loss

    loss = loss or mse_loss
    gen = torch.Generator().manual_seed(seed)
    dev = G.w_avg.device
    if latents is not None:
        if latents.shape != (len(images), G.style_dim):
            raise ValueError(f"latents must be ({len(images)}, {G.style_dim}); got {tuple(latents.shape)}")
        z = latents.detach().clone().to(dev)
    else:
        z = torch.randn(len(images), G.style_dim, generator=gen).to(dev)
    z.requires_grad_(learn_latents)
    groups = [{"params": G.parameters(), "lr": lr}] + ([{"params": [z], "lr": latent_lr}] if learn_latents else [])
    opt = torch.optim.Adam(groups, betas=(0.9, 0.99))
    settings = {"images": list(images.shape), "batch_size": batch_size, "lr": lr, "latent_lr": latent_lr,
                "latent_noise": latent_noise, "seed": seed, "learn_latents": learn_latents}
    history, done = [], 0
    if checkpoint is None:
        lock = contextlib.nullcontext()
    else:
        lock = checkpoints.output_lock(Path(checkpoint).parent)     # one run per output folder
    with lock:
        if checkpoint is not None and resume and checkpoints.checkpoint_exists(checkpoint):
            state, source = checkpoints.load_latest(checkpoint)
            history, done = _resume_reconstruction(state, source, settings, G, z, opt, gen)
            print(f"resuming from {source} at step {done}")
        return _fit_reconstruction(G, images, steps, z, opt, gen, loss, batch_size, latent_noise, desc, checkpoint,
                                   checkpoint_every, settings, history, done)


def _resume_reconstruction(state, checkpoint, settings, G, z, opt, gen) -> tuple[list, int]:
    """Load a :func:`fit_reconstruction` checkpoint into G, z, the optimiser and the generator; -> (history, steps)."""
    if not isinstance(state, dict) or state.get("format") != RECONSTRUCTION_FORMAT:
        raise ValueError(f"{checkpoint} is not a reconstruction checkpoint")
    if state["settings"] != settings:
        raise ValueError(f"{checkpoint} was written with {state['settings']}, this run has {settings}; "
                         "use another checkpoint file or start afresh")
    G.load_state_dict(state["G"])
    with torch.no_grad():
        z.copy_(state["z"])
    opt.load_state_dict(state["opt"])
    gen.set_state(state["rng"])
    return [dict(r) for r in state["history"]], int(state["step"])


def _fit_reconstruction(G, images, steps, z, opt, gen, loss, batch_size, latent_noise, desc, checkpoint,
                        checkpoint_every, settings, history, done) -> "LatentFit":
    dev = G.w_avg.device
    G.train().requires_grad_(True)
    for step in progress(range(done, steps), desc=desc, initial=done, total=steps):
        idx = torch.randperm(len(images), generator=gen)[:batch_size]
        eps = torch.randn(len(idx), G.style_dim, generator=gen).to(dev) * latent_noise
        pred = (G(z[idx] + eps, return_raw=True) + 1) / 2
        value = loss(pred, images[idx].to(dev)).mean()
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        history.append({"step": step, "reconstruction": value.item()})
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            checkpoints.save_state({"format": RECONSTRUCTION_FORMAT, "settings": settings, "G": G.state_dict(),
                        "z": z.detach(), "opt": opt.state_dict(), "rng": gen.get_state(), "step": step + 1,
                        "history": history}, checkpoint)
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

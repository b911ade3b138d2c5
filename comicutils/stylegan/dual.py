"""DualStyleGAN at the course's scale: exemplar-based comic style on top of chapter 03's generator.

DualStyleGAN (Yang et al., CVPR 2022, "Pastiche Master") keeps a pretrained StyleGAN as the
**intrinsic** path -- the face's own latent, from inverting the photo -- and adds an
**extrinsic** path driven by one exemplar comic. The Ding et al. report describes it (Sec. 3.2): the coarse
layers (1-7 of 18) get modulated residual blocks *ModRes* fed by a structure transform of the
extrinsic code; the fine layers (8-18) take the extrinsic code as StyleGAN takes a style, through
a colour transform. One weight per layer (DualStyleGAN's ``interp_weights``) trades the
exemplar's structure against its colours.

Here, for a 64 px micro generator trained in chapter 03 (offline the StyleGAN2-FFHQ weights
cannot be had):

* :class:`DualStyleGenerator` wraps a frozen copy of a :class:`~comicutils.stylegan.Generator`.

  - **Layer groups.** Synthesis convolution ``i`` is driven by latent ``i`` (``conv1`` by 0,
    ``convs.j`` by ``j + 1``). Convolutions at resolutions up to ``coarse_resolution`` form the
    *structure* group (latents ``0 .. n_coarse - 1``); every later latent is in the *colour*
    group. Default ``coarse_resolution``: ``min(32, max(8, size // 4))`` -- 32 px for 1024 px
    (DualStyleGAN's 7 of 18 latents), 16 px for the 64 px micro generator (5 of 10 latents),
    8 px for test-sized ones. :meth:`DualStyleGenerator.layer_table` lists them.
  - **Structure path.** The extrinsic code of each structure latent goes through a small MLP,
    the *structure transform* ``T_s`` (shared over layers, ``n_mlp`` equalised linear layers);
    after convolution ``i`` a ModRes block adds ``s_i * R_i(x, T_s(e_i))``, where ``R_i`` is a
    modulated 3x3 convolution (StyleGAN2's modulation/demodulation, in place of DualStyleGAN's
    AdaIN), a biased leaky ReLU and a plain 3x3 convolution whose weights and bias start at
    **zero**. So a fresh model adds nothing and gives exactly the base generator's features.
  - **Colour path.** The latent of colour layer ``i`` becomes
    ``lerp(w_i, T_c,i(e_i), c_i)`` with ``T_c,i(e) = e + A_i e + b_i`` (``A_i``, ``b_i`` start
    at zero, so ``T_c`` starts as the identity): colour weight 0 keeps the photo's latent,
    colour weight 1 at initialisation is chapter 03's style mixing (fine latents from the comic).
    The structure latents are never changed by the colour weights, so the features of the
    coarse layers do not depend on them.

* :func:`photo_code` / :func:`exemplar_code` -- **the course's code representation.** Both
  codes are W+ latents (N, n_latent, style_dim) found by optimisation through the frozen base
  generator (:func:`comicutils.stylegan.invert`, ``space="w+"`` by default; ``"z+"`` gives
  DualStyleGAN's choice of a Z+ latent, mapped to W+ by the base mapping network). DualStyleGAN
  encodes into Z+ with a pSp encoder; a micro generator has no encoder, and optimisation in W+
  reconstructs both photos and comics best (measured on held-out face2comics comics at 64 px,
  100 steps: mean L1 0.08 in W+, 0.12 in Z+, 0.13 in W), so the W+ latent itself is the
  extrinsic code ``e`` that ``T_s`` and ``T_c`` read.

* :func:`train_dual` -- teaches the extrinsic path (ModRes blocks, ``T_s``, ``T_c``; the base
  stays frozen) to turn *(photo code, comic code)* into the comic, on face2comics' real
  photo-comic pairs: ``L = l1 |y - S|_1 + perc D(y, S) (+ adv L_adv + reg R)`` with ``D`` the
  course's perceptual distance (:class:`comicutils.taesd.PerceptualDistance`, the offline
  stand-in for DualStyleGAN's VGG perceptual loss), optionally the non-saturating adversarial
  term of chapter 03's :class:`~comicutils.stylegan.Discriminator` and a weight regulariser
  ``R`` (:meth:`DualStyleGenerator.departure`, in the place of DualStyleGAN's
  ``lambda_reg ||W||``).

* :func:`stylize_with_exemplar` -- photo + exemplar comic -> comic, with the two weights.
* :func:`comparison_rows` -- SSIM / PSNR of DualStyleGAN (micro) and NST (VGG-16, or its taef2
  stand-in offline) on held-out pairs, beside :data:`SEED004_COMPARISON`, what the Ding et al. report says.

What is not here (and why): facial destylization and the three-stage progressive fine-tuning
(face2comics has real photo-comic pairs, so supervision is direct); the contextual, feature
matching and identity losses of the style stage (no differentiable face recogniser offline); the
sampling network for random extrinsic styles; a pSp encoder (optimisation instead).

What to expect at this scale: the micro generator's latent space is far from FFHQ-StyleGAN's.
Mixing the coarse W+ latents of a photo with the fine ones of a comic -- what the colour path
does before training -- already gives colour blotches rather than a face, and the extrinsic path
fits its 40 training pairs much better than it generalises. Measured (64 px base warm-started
for 200 steps, 40 training / 10 held-out face2comics v2 pairs, 150 steps, batch 8): mean L1 to
the comic 0.21 -> 0.10 on the training pairs; on held-out pairs 0.20 (style mixing, untrained)
-> 0.16 (trained), against 0.26 for the photo's own reconstruction. The chapter shows the
mechanism -- two paths, per-layer weights -- not the paper's image quality.

Images in and out are (N, 3, H, W) in [0, 1]; the networks see [-1, 1] only inside the generator.
"""
from __future__ import annotations

import copy
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import checkpoints
from ..images import check_image_tensor, resize
from ..runtime import by_mode, progress, substitute_banner
from .invert import invert, mse_loss
from .model import BiasLeakyReLU, EqualLinear, Generator, ModulatedConv2d
from .train import Discriminator, EqualConv2d, diff_augment

__all__ = ["ModRes", "DualStyleGenerator", "DualFit", "photo_code", "exemplar_code", "train_dual",
           "stylize_with_exemplar", "comparison_rows", "summarize_comparison", "save_dual", "load_dual",
           "base_fingerprint", "default_coarse_resolution", "SEED004_COMPARISON", "DUAL_FORMAT"]

DUAL_FORMAT = "comicutils.stylegan.dual/1"

SEED004_COMPARISON = {
    "methods": ("VGG-16 NST", "DualStyleGAN"),
    "metrics": ("SSIM", "PSNR"),
    "reference": "the content photo: SSIM and PSNR 'evaluate the content loss' (Secs. 4-5)",
    "test_images": 15,
    "training_images": 317,
    "dataset": "Toonify Cartoon",
    "dualstylegan": "pretrained (the authors did not train it themselves, Sec. 3.2.5)",
    "numbers": None,
    "finding": "'No matter SSIM or PSNR validate that DualStyleGAN has a better performance than VGG-16' (Sec. 6.2)",
}
"""What the Ding et al. report says about its SSIM/PSNR comparison. Its numbers appear only in a figure (Fig. 9)
that the text does not reproduce, so ``numbers`` is ``None``: only the direction is known."""

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def default_coarse_resolution(size: int) -> int:
    """The last resolution whose convolutions carry structure: ``min(32, max(8, size // 4))``."""
    return min(32, max(8, size // 4))


def _conv_resolution(i: int) -> int:
    """Resolution at which synthesis convolution ``i`` (driven by latent ``i``) outputs."""
    return 2 ** ((i + 5) // 2)


# --------------------------------------------------------------------------- blocks
class ModRes(nn.Module):
    """Residual block modulated by a structure code: ``x + weight * R(x, s)``.

    ``R``: modulated/demodulated 3x3 convolution (style ``s`` (N, style_dim)), biased leaky ReLU,
    plain 3x3 convolution initialised to zero (weights and bias) -- so ``R`` is exactly 0 until
    trained. ``x`` (N, C, h, w) -> same shape.
    """

    def __init__(self, channels: int, style_dim: int):
        super().__init__()
        self.conv = ModulatedConv2d(channels, channels, 3, style_dim)
        self.act = BiasLeakyReLU(channels)
        self.out = EqualConv2d(channels, channels, 3)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def residual(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return self.out(self.act(self.conv(x, s)))

    def forward(self, x: torch.Tensor, s: torch.Tensor, weight: float = 1.0) -> torch.Tensor:
        if weight == 0:
            return x
        return x + weight * self.residual(x, s)


class ColorTransform(nn.Module):
    """``e + A e + b`` with ``A``, ``b`` initialised to zero (the identity until trained)."""

    def __init__(self, style_dim: int):
        super().__init__()
        self.linear = nn.Linear(style_dim, style_dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e + self.linear(e)


# --------------------------------------------------------------------------- generator
class DualStyleGenerator(nn.Module):
    """Chapter 03's generator (frozen copy, ``self.base``) plus DualStyleGAN's extrinsic path.

    ``dual(w_plus, extrinsic, structure_weights, color_weights)`` -> images (N, 3, size, size)
    in [0, 1]. ``w_plus``: the photo's intrinsic code (N, L, D) (or w (N, D)); ``extrinsic``: the
    exemplar's code from :func:`exemplar_code` (N, L, D), or (1, L, D) for one exemplar for all.
    Weights: a number for every layer of the group, or one per layer of the group
    (``n_coarse`` structure / ``n_fine`` colour values), or a DualStyleGAN-style vector over all
    ``n_latent`` latents (only the group's entries are read). Weight 0 turns the path off for
    that layer: structure 0 and colour 0 everywhere give exactly ``base.synthesis(w_plus)``.

    ``G_base`` is copied (the original stays as it was); ``coarse_resolution`` see the module
    doc; ``n_mlp``: layers of the structure transform; ``seed``: initialisation of the new
    layers (the global random state is left alone).
    """

    def __init__(self, G_base: Generator, *, coarse_resolution: int | None = None, n_mlp: int = 2,
                 seed: int = 0):
        super().__init__()
        size = G_base.size
        coarse_resolution = default_coarse_resolution(size) if coarse_resolution is None else int(coarse_resolution)
        if coarse_resolution not in G_base.config.resolutions or coarse_resolution >= size:
            raise ValueError(f"coarse_resolution must be one of {G_base.config.resolutions[:-1]}; "
                             f"got {coarse_resolution}")
        self.base = copy.deepcopy(G_base).eval().requires_grad_(False)
        self.coarse_resolution, self.n_mlp, self.seed = coarse_resolution, int(n_mlp), int(seed)
        self.n_coarse = sum(1 for i in range(self.base.num_layers) if _conv_resolution(i) <= coarse_resolution)
        D, ch = self.base.style_dim, self.base.config.channels
        device = self.base.w_avg.device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.structure_map = nn.Sequential(*[EqualLinear(D, D, activation=True) for _ in range(self.n_mlp)])
            self.modres = nn.ModuleList(ModRes(ch[_conv_resolution(i)], D) for i in range(self.n_coarse))
            self.color = nn.ModuleList(ColorTransform(D) for _ in range(self.n_latent - self.n_coarse))
        for m in (self.structure_map, self.modres, self.color):
            m.to(device)

    # ---- bookkeeping
    @property
    def size(self) -> int:
        return self.base.size

    @property
    def n_latent(self) -> int:
        return self.base.n_latent

    @property
    def style_dim(self) -> int:
        return self.base.style_dim

    @property
    def n_fine(self) -> int:
        return self.n_latent - self.n_coarse

    def config(self) -> dict:
        """What the model is built from (saved with it, compared when loading)."""
        return {"generator": self.base.config.to_dict(), "coarse_resolution": self.coarse_resolution,
                "n_mlp": self.n_mlp}

    def extrinsic_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters: ModRes blocks, structure and colour transforms (not the base)."""
        return [p for m in (self.structure_map, self.modres, self.color) for p in m.parameters()]

    def departure(self) -> torch.Tensor:
        """How far the extrinsic path is from doing nothing: the sum over the zero-initialised
        weights (ModRes output convolutions, colour transforms) of their mean square. 0 at
        initialisation; :func:`train_dual`'s ``lambda_reg`` penalises it."""
        tensors = [m.out.weight for m in self.modres] + [t.linear.weight for t in self.color]
        return sum(t.pow(2).mean() for t in tensors)

    def extrinsic_state(self) -> dict[str, torch.Tensor]:
        """The state dict without the frozen base generator (what :func:`save_dual` writes)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("base.")}

    def train(self, mode: bool = True):
        super().train(mode)
        self.base.eval()
        return self

    def layer_table(self):
        """One row per latent: its index, the resolution of the convolution it drives (the last
        one drives only the final ToRGB), its group (structure / colour) and what it gets."""
        import pandas as pd

        rows = []
        for i in range(self.n_latent):
            conv = _conv_resolution(i) if i < self.base.num_layers else None
            coarse = i < self.n_coarse
            rows.append({"latent": i, "conv resolution": conv if conv is not None else "ToRGB only",
                         "group": "structure" if coarse else "colour",
                         "extrinsic path": "ModRes(x, T_s(e_i)) after the conv" if coarse
                         else "w_i <- lerp(w_i, T_c(e_i), c_i)"})
        return pd.DataFrame(rows).set_index("latent")

    def _weights(self, value, group: str) -> list[float]:
        idx = range(self.n_coarse) if group == "structure" else range(self.n_coarse, self.n_latent)
        n = len(idx)
        if isinstance(value, (int, float)):
            vals = [float(value)] * n
        else:
            vals = [float(v) for v in (value.reshape(-1).tolist() if isinstance(value, torch.Tensor) else value)]
            if len(vals) == self.n_latent:
                vals = [vals[i] for i in idx]
            elif len(vals) != n:
                raise ValueError(f"{group} weights: give one number, {n} values (one per {group} layer) "
                                 f"or {self.n_latent} (one per latent); got {len(vals)}")
        if not all(v == v and abs(v) != float("inf") for v in vals):
            raise ValueError(f"{group} weights must be finite; got {vals}")
        return vals

    def _codes(self, w_plus: torch.Tensor, extrinsic: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        w = self.base.to_wplus(w_plus)
        e = extrinsic
        if e.ndim == 2:
            e = self.base.to_wplus(e)
        if e.ndim != 3 or tuple(e.shape[1:]) != (self.n_latent, self.style_dim):
            raise ValueError(f"extrinsic code must be (N, {self.n_latent}, {self.style_dim}); got {tuple(extrinsic.shape)}")
        if e.shape[0] != w.shape[0]:
            if e.shape[0] != 1:
                raise ValueError(f"{w.shape[0]} intrinsic codes but {e.shape[0]} extrinsic codes (give N or 1)")
            e = e.expand(w.shape[0], -1, -1)
        return w, e.to(w.device, w.dtype)

    # ---- synthesis
    def forward(self, w_plus: torch.Tensor, extrinsic: torch.Tensor, structure_weights=1.0, color_weights=1.0,
                *, noise_mode: str = "const", return_raw: bool = False, return_features: bool = False):
        """Images (N, 3, size, size) in [0, 1] (``return_raw``: the unclamped [-1, 1] output).

        ``return_features`` also returns the feature maps after each synthesis convolution
        (after its ModRes block for structure layers): ``(images, [x_0, ..., x_{num_layers-1}])``.
        """
        G = self.base
        w, e = self._codes(w_plus, extrinsic)
        s = self._weights(structure_weights, "structure")
        c = self._weights(color_weights, "colour")
        latents = list(w.unbind(1))
        for j, i in enumerate(range(self.n_coarse, self.n_latent)):
            if c[j] != 0:
                latents[i] = torch.lerp(latents[i], self.color[j](e[:, i]), c[j])
        structure = [self.structure_map(e[:, i]) if s[i] != 0 else None for i in range(self.n_coarse)]

        feats: list[torch.Tensor] = []

        def after(i: int, x: torch.Tensor) -> torch.Tensor:
            if i < self.n_coarse and s[i] != 0:
                x = self.modres[i](x, structure[i], s[i])
            feats.append(x)
            return x

        noise = G._noise_list(noise_mode, w.shape[0])
        x = G.input(w.shape[0])
        x = after(0, G.conv1(x, latents[0], noise[0]))
        skip = G.to_rgb1(x, latents[1])
        i = 1
        for k, to_rgb in enumerate(G.to_rgbs):
            x = after(i, G.convs[2 * k](x, latents[i], noise[2 * k + 1]))
            x = after(i + 1, G.convs[2 * k + 1](x, latents[i + 1], noise[2 * k + 2]))
            skip = to_rgb(x, latents[i + 2], skip)
            i += 2
        out = skip if return_raw else ((skip + 1) / 2).clamp(0, 1)
        return (out, feats) if return_features else out


# --------------------------------------------------------------------------- codes
def _base(model: DualStyleGenerator | Generator) -> Generator:
    return model.base if isinstance(model, DualStyleGenerator) else model


def _batch(images: torch.Tensor, what: str) -> torch.Tensor:
    return check_image_tensor(images.unsqueeze(0) if images.ndim == 3 else images, what)


def _invert_codes(model, images: torch.Tensor, *, space: str, steps: int | None, lr: float,
                  loss: Loss | None, seed: int, desc: str, what: str) -> torch.Tensor:
    G = _base(model)
    if space not in ("w+", "z+"):
        raise ValueError(f"space must be 'w+' or 'z+'; got {space!r}")
    x = resize(_batch(images, what), G.size)
    steps = by_mode(smoke=10, auto=100) if steps is None else int(steps)
    inv = invert(G, x, space=space, steps=steps, lr=lr, loss=loss or mse_loss, seed=seed, desc=desc)
    return inv.wplus


def photo_code(model: DualStyleGenerator | Generator, photos: torch.Tensor, *, space: str = "w+",
               steps: int | None = None, lr: float = 0.05, loss: Loss | None = None, seed: int = 0) -> torch.Tensor:
    """The intrinsic code of photos (N, 3, H, W) in [0, 1]: their W+ inversion (N, L, D).

    Photos are resized to the generator's size; inversion through the frozen base generator
    (:func:`comicutils.stylegan.invert`, ``steps`` default 10 in smoke mode, 100 otherwise;
    ``loss`` default per-image MSE). ``space="z+"`` optimises a Z+ latent and returns its W+.
    """
    return _invert_codes(model, photos, space=space, steps=steps, lr=lr, loss=loss, seed=seed,
                         desc="intrinsic codes (photo inversion)", what="photos")


def exemplar_code(model: DualStyleGenerator | Generator, exemplars: torch.Tensor, *, space: str = "w+",
                  steps: int | None = None, lr: float = 0.05, loss: Loss | None = None, seed: int = 0) -> torch.Tensor:
    """The extrinsic code of exemplar comics (N, 3, H, W) in [0, 1] -> (N, L, D).

    The course's representation: the exemplar's W+ inversion through the same frozen base
    generator as the photos (as DualStyleGAN encodes exemplars with the same encoder as faces),
    used as is; the dual generator's structure transform reads its coarse vectors and its colour
    transforms its fine ones. Options as :func:`photo_code`.
    """
    return _invert_codes(model, exemplars, space=space, steps=steps, lr=lr, loss=loss, seed=seed,
                         desc="extrinsic codes (exemplar inversion)", what="exemplars")


# --------------------------------------------------------------------------- training
@dataclass
class DualFit:
    """Result of :func:`train_dual`: the log and the codes it trained on.

    ``history``: one dict per step (``step``, ``loss``, ``l1``, ``perceptual``, and when used
    ``reg``, ``adv`` and ``d``); ``photo_codes`` / ``comic_codes`` (N, L, D);
    ``discriminator`` (or None); ``seconds`` of the training loop (inversions excluded).
    """

    history: list[dict] = field(default_factory=list)
    photo_codes: torch.Tensor | None = None
    comic_codes: torch.Tensor | None = None
    discriminator: Discriminator | None = None
    seconds: float = 0.0

    def losses(self, key: str = "loss") -> list[float]:
        return [h[key] for h in self.history]


def _default_perceptual() -> nn.Module:
    from ..taesd import PerceptualDistance

    substitute_banner("DualStyleGAN's perceptual loss on VGG features",
                      "the course's perceptual distance on taef2 encoder features (blocks 1, 5, 9)",
                      "the course trains with the offline taef2 features; no VGG weights are needed")
    return PerceptualDistance()


def train_dual(dual: DualStyleGenerator, photos: torch.Tensor, comics: torch.Tensor, steps: int, *,
               batch_size: int = 4, lr: float = 0.002, lambda_l1: float = 1.0, lambda_perc: float = 1.0,
               lambda_adv: float = 0.0, lambda_reg: float = 0.0, perceptual: Loss | None = None,
               discriminator: Discriminator | None = None,
               structure_weights=1.0, color_weights=1.0, photo_codes: torch.Tensor | None = None,
               comic_codes: torch.Tensor | None = None, invert_steps: int | None = None,
               inversion_loss: Loss | None = None, seed: int = 0,
               desc: str = "DualStyleGAN extrinsic path") -> DualFit:
    """Train ``dual``'s extrinsic path (in place; the base stays frozen) on photo-comic pairs.

    ``photos``, ``comics``: aligned (N, 3, H, W) in [0, 1] (resized to the generator's size).
    Each photo's intrinsic code and each comic's extrinsic code are computed once (or given as
    ``photo_codes`` / ``comic_codes``; ``invert_steps``, ``inversion_loss`` as in
    :func:`photo_code`); then ``steps`` Adam steps (``lr``, betas (0, 0.99)) on random batches
    minimise, per pair, ``lambda_l1 |y - S|_1 + lambda_perc perceptual(y, S)`` with
    ``y = dual(w_photo, e_comic, structure_weights, color_weights)`` and ``S`` the comic, plus
    ``lambda_adv`` times the non-saturating GAN loss against ``discriminator`` (chapter 03's, new
    if None; it is trained in turn on the comics, both sides DiffAugment-ed), plus ``lambda_reg``
    times :meth:`DualStyleGenerator.departure` (DualStyleGAN's weight regulariser, which keeps the
    extrinsic path near the base generator on faces it was not trained on). ``perceptual``:
    ``(pred, target) -> (N,)``, default :class:`comicutils.taesd.PerceptualDistance` (a banner
    says so). A NaN or infinite loss raises :class:`comicutils.checkpoints.NonFiniteState`
    before the step it would spoil. Seeded: same inputs and seed, same result.
    """
    G = dual.base
    dev = G.w_avg.device
    S = resize(_batch(comics, "comics"), G.size).to(dev)
    P = resize(_batch(photos, "photos"), G.size)
    if len(S) != len(P):
        raise ValueError(f"{len(P)} photos but {len(S)} comics: give aligned pairs")
    if steps < 0 or batch_size < 1:
        raise ValueError(f"steps must be >= 0 and batch_size >= 1; got {steps}, {batch_size}")
    if photo_codes is None:
        photo_codes = photo_code(G, P, steps=invert_steps, loss=inversion_loss, seed=seed)
    if comic_codes is None:
        comic_codes = exemplar_code(G, S, steps=invert_steps, loss=inversion_loss, seed=seed)
    for name, codes in (("photo_codes", photo_codes), ("comic_codes", comic_codes)):
        if tuple(codes.shape) != (len(S), dual.n_latent, dual.style_dim):
            raise ValueError(f"{name} must be ({len(S)}, {dual.n_latent}, {dual.style_dim}); got {tuple(codes.shape)}")
    w_all, e_all = photo_codes.detach().to(dev), comic_codes.detach().to(dev)
    if lambda_perc and perceptual is None:
        perceptual = _default_perceptual().to(dev)

    gen = torch.Generator().manual_seed(seed)
    params = dual.extrinsic_parameters()
    opt = torch.optim.Adam(params, lr=lr, betas=(0.0, 0.99))
    D = opt_d = None
    if lambda_adv:
        if discriminator is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                discriminator = Discriminator(G.size, G.config.channels)
        D = discriminator.to(dev).train()
        opt_d = torch.optim.Adam(D.parameters(), lr=lr, betas=(0.0, 0.99))

    fit = DualFit(photo_codes=w_all.cpu(), comic_codes=e_all.cpu(), discriminator=D)
    dual.train()
    t0 = time.perf_counter()
    bar = progress(range(1, steps + 1), desc=desc, total=steps)
    try:
        for step in bar:
            idx = torch.randperm(len(S), generator=gen)[:batch_size]
            target = S[idx]
            log: dict = {"step": step}
            if D is not None:
                with torch.no_grad():
                    fake = dual(w_all[idx], e_all[idx], structure_weights, color_weights, return_raw=True)
                real_logits = D(diff_augment(target * 2 - 1, gen))
                fake_logits = D(diff_augment(fake, gen))
                d_loss = F.softplus(fake_logits).mean() + F.softplus(-real_logits).mean()
                checkpoints.check_finite(d_loss, "DualStyleGAN discriminator loss", step)
                opt_d.zero_grad(set_to_none=True)
                d_loss.backward()
                opt_d.step()
                log["d"] = d_loss.item()
                D.requires_grad_(False)
            raw = dual(w_all[idx], e_all[idx], structure_weights, color_weights, return_raw=True)
            pred = (raw + 1) / 2
            terms = {"l1": (pred - target).abs().flatten(1).mean(1).mean()}
            if lambda_perc:
                terms["perceptual"] = perceptual(pred, target).mean()
            if D is not None:
                terms["adv"] = F.softplus(-D(diff_augment(raw, gen))).mean()
                D.requires_grad_(True)
            if lambda_reg:
                terms["reg"] = dual.departure()
            weights = {"l1": lambda_l1, "perceptual": lambda_perc, "adv": lambda_adv, "reg": lambda_reg}
            loss = sum(weights[k] * v for k, v in terms.items())
            for k, v in terms.items():
                checkpoints.check_finite(v, f"DualStyleGAN loss term {k!r}", step)
            checkpoints.check_finite(loss, "DualStyleGAN loss (weighted total)", step)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            log.update({k: v.item() for k, v in terms.items()}, loss=loss.item())
            fit.history.append(log)
            if step % 10 == 0 or step == steps:
                bar.set_postfix(loss=f"{log['loss']:.4f}", refresh=False)
    finally:
        bar.close()
        dual.eval()
    fit.seconds = time.perf_counter() - t0
    return fit


# --------------------------------------------------------------------------- use
@torch.no_grad()
def stylize_with_exemplar(dual: DualStyleGenerator, photo: torch.Tensor, exemplar: torch.Tensor, *,
                          structure=1.0, color=1.0, steps: int | None = None, loss: Loss | None = None,
                          seed: int = 0) -> torch.Tensor:
    """A photo in the style of an exemplar comic -> (N, 3, size, size) in [0, 1] on the CPU.

    ``photo``: (N, 3, H, W) or (3, H, W) in [0, 1]; ``exemplar``: one comic for all photos or one
    per photo. Both are resized to the generator's size and inverted (:func:`photo_code`,
    :func:`exemplar_code` with ``steps``, ``loss``, ``seed``); ``structure`` and ``color`` are
    the weights of :class:`DualStyleGenerator`. A (3, H, W) photo gives a (3, size, size) image.
    To try many weights on the same pair, compute the two codes once and call ``dual`` directly.
    """
    single = photo.ndim == 3
    with torch.enable_grad():
        w = photo_code(dual, photo, steps=steps, loss=loss, seed=seed)
        e = exemplar_code(dual, exemplar, steps=steps, loss=loss, seed=seed)
    out = dual.eval()(w, e, structure, color).cpu()
    return out[0] if single else out


def comparison_rows(dual: DualStyleGenerator, photos: torch.Tensor, comics: torch.Tensor, *,
                    exemplars: str | torch.Tensor = "own", names: Sequence[str] | None = None,
                    structure=1.0, color=1.0, invert_steps: int | None = None, nst: dict | None = None,
                    against: Sequence[str] = ("photo", "comic"), metrics: Sequence[str] = ("ssim", "psnr")):
    """SSIM / PSNR rows of DualStyleGAN (micro) and NST (VGG-16) on held-out pairs -> DataFrame.

    ``photos``, ``comics``: aligned held-out pairs (N, 3, H, W) in [0, 1], compared at the
    generator's size. ``exemplars``: ``"own"`` (each photo with its own comic as the exemplar and
    NST style image), or comics (1 or N, 3, H, W). Both methods get the same exemplar.
    ``against``: the reference of the metrics -- ``"photo"`` (the Ding et al. report: SSIM/PSNR measure how
    much content is kept) and/or ``"comic"`` (the ground truth; with ``"own"`` exemplars the
    target is also the exemplar, so these scores are optimistic for both methods). ``nst``:
    options for ``stylizers.build("nst", ...)`` (default ``backbone="vgg16"``, which offline
    falls back to taef2 with a banner; ``size`` the generator's; ``steps`` 10 in smoke mode,
    200 otherwise). Columns: ``method``, ``weights``, ``pair``, ``against``, then ``metrics``.
    """
    import pandas as pd

    from .. import metrics as M
    from .. import stylizers

    size = dual.size
    P = resize(_batch(photos, "photos"), size)
    S = resize(_batch(comics, "comics"), size)
    n = len(P)
    if len(S) != n:
        raise ValueError(f"{n} photos but {len(S)} comics: give aligned pairs")
    if isinstance(exemplars, str):
        if exemplars != "own":
            raise ValueError(f"exemplars must be 'own' or a tensor of comics; got {exemplars!r}")
        E = S
    else:
        E = resize(_batch(exemplars, "exemplars"), size)
        if len(E) not in (1, n):
            raise ValueError(f"give 1 or {n} exemplars; got {len(E)}")
        E = E.expand(n, -1, -1, -1) if len(E) == 1 else E
    bad = [a for a in against if a not in ("photo", "comic")]
    if bad or not against:
        raise ValueError(f"against must name 'photo' and/or 'comic'; got {list(against)}")
    names = [str(i) for i in range(n)] if names is None else [str(k) for k in names]
    if len(names) != n:
        raise ValueError(f"{len(names)} names for {n} pairs")

    dual_out = stylize_with_exemplar(dual, P, E, structure=structure, color=color, steps=invert_steps)
    opts = {"backbone": "vgg16", "size": size, "steps": by_mode(smoke=10, auto=200), **(nst or {})}
    nst_out, nst_label = [], ""
    for i in progress(range(n), desc="NST, one exemplar per pair"):
        method = stylizers.build("nst", style=E[i:i + 1], **opts)
        nst_label = method.weights
        nst_out.append(method(P[i:i + 1]))
    outputs = {"DualStyleGAN (micro)": (dual_out, f"micro StyleGAN2 {size} px + extrinsic path"),
               "NST (VGG-16)": (torch.cat(nst_out), nst_label)}
    refs = {"photo": P, "comic": S}
    frames = []
    for method, (out, weights) in outputs.items():
        for ref in against:
            df = M.score_pairs(out, refs[ref], metrics=list(metrics), names=names).reset_index()
            df.insert(0, "against", ref)
            df.insert(0, "weights", weights)
            df.insert(0, "method", method)
            frames.append(df)
    rows = pd.concat(frames, ignore_index=True)
    return rows[["method", "weights", "pair", "against", *metrics]]


def summarize_comparison(rows):
    """Mean and std per method and reference of :func:`comparison_rows` (finite values only)."""
    import numpy as np

    value_cols = [c for c in rows.columns if c not in ("method", "weights", "pair", "against")]
    finite = rows.replace([np.inf, -np.inf], np.nan)
    return finite.groupby(["against", "method"])[value_cols].agg(["mean", "std"])


# --------------------------------------------------------------------------- files
def base_fingerprint(G: Generator) -> str:
    """sha256 (16 hex digits) of a generator's weights: which base an extrinsic path belongs to."""
    h = hashlib.sha256()
    for k, v in sorted(G.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_dual(dual: DualStyleGenerator, path: str | os.PathLike, **extra) -> Path:
    """Write the extrinsic path (not the base) with the base's config and fingerprint, atomically."""
    state = {"format": DUAL_FORMAT, "config": dual.config(), "base": base_fingerprint(dual.base),
             "state": {k: v.detach().cpu() for k, v in dual.extrinsic_state().items()}, **extra}
    return checkpoints.save_state(state, path)


def load_dual(path: str | os.PathLike, G_base: Generator) -> DualStyleGenerator:
    """Rebuild a :func:`save_dual` file on ``G_base``; refuses another base generator
    (:class:`comicutils.checkpoints.ProvenanceMismatch`) before any weight is loaded."""
    ckpt = checkpoints.load_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != DUAL_FORMAT:
        raise ValueError(f"{path} is not a DualStyleGAN extrinsic-path file ({DUAL_FORMAT})")
    cfg = ckpt["config"]
    checkpoints.check_provenance({"base generator": cfg["generator"], "base weights": ckpt["base"]},
                                 {"base generator": G_base.config.to_dict(), "base weights": base_fingerprint(G_base)},
                                 f"DualStyleGAN file {path}")
    dual = DualStyleGenerator(G_base, coarse_resolution=cfg["coarse_resolution"], n_mlp=cfg["n_mlp"])
    result = dual.load_state_dict(ckpt["state"], strict=False)
    if result.unexpected_keys or any(not k.startswith("base.") for k in result.missing_keys):
        raise ValueError(f"{path} does not fit this DualStyleGAN (unexpected {result.unexpected_keys}, "
                         f"missing {[k for k in result.missing_keys if not k.startswith('base.')]})")
    return dual.eval()

"""ComicDiff: single-step latent translation ẑ_y = z_x + α · U(z_x, t, c), ŷ = D(ẑ_y) (the ComicDiff report).

Forward, for photos x (N, 3, H, W) in [0, 1]:

1. z_x = E(x)                      frozen codec (VAE posterior mean × scaling factor)
2. Δz  = U(z_x, t, c)              the U-Net with its LoRA adapter, at a fixed timestep t
                                    (the ComicDiff report: t = 1) and the cached prompt embedding c
3. ẑ_y = z_x + α · Δz              α blends the learned residual (α = 0: the VAE reconstruction)
4. ŷ   = D(ẑ_y)                    frozen decoder, clamped to [0, 1]

No noise is added and no sampler runs: one U-Net call, deterministic. Training (see
:mod:`comicutils.comicdiff.train`) back-propagates the pixel-space loss
MSE(ŷ, y) + 0.8 · LPIPS_VGG(ŷ, y) through the frozen decoder into the LoRA parameters only.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..images import check_image_tensor
from ..taesd import PerceptualDistance
from ..runtime import substitute_banner
from . import lora
from .components import Components

__all__ = ["DEFAULT_TIMESTEP", "ComicDiff", "PerceptualDistance", "ComicDiffLoss", "perceptual_loss",
           "load_translator", "img2img", "unet_calls_img2img", "translate_faces"]

DEFAULT_TIMESTEP = 1
"""The ComicDiff report runs the U-Net once at t = 1 (the least-noisy training timestep)."""


def _base_dtype(module: nn.Module) -> torch.dtype:
    for name, p in module.named_parameters():
        if "lora_" not in name:
            return p.dtype
    return torch.float32


class ComicDiff(nn.Module):
    """The translator. ``components`` come from :func:`comicutils.comicdiff.load_components`.

    ``forward(x, alpha)`` is differentiable (training); :meth:`translate` is the inference API
    (any image size, no autograd, batched). ``alpha`` defaults to ``self.alpha``.
    """

    def __init__(self, components: Components, *, timestep: int = DEFAULT_TIMESTEP, alpha: float = 1.0):
        super().__init__()
        self.components = components
        self.codec = components.codec
        self.unet = components.unet
        self.path = components.path
        self.register_buffer("prompt_embeds", components.prompt_embeds.detach().clone(), persistent=False)
        n_train = int(components.scheduler_config.get("num_train_timesteps", 1000))
        if not 0 <= timestep < n_train:
            raise ValueError(f"timestep must be in [0, {n_train}); got {timestep}")
        self.timestep = int(timestep)
        self.alpha = float(alpha)

    # ------------------------------------------------------------------ the four steps
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Photos (N, 3, H, W) in [0, 1] -> z_x (N, C, H/f, W/f)."""
        return self.codec.encode(images)

    def delta(self, latents: torch.Tensor) -> torch.Tensor:
        """Δz = U(z_x, t, c): one U-Net call at the fixed timestep, output in fp32."""
        dtype = _base_dtype(self.unet)
        n = latents.shape[0]
        t = torch.full((n,), self.timestep, device=latents.device, dtype=torch.long)
        cond = self.prompt_embeds.to(latents.device, dtype).expand(n, -1, -1)
        return self.unet(latents.to(dtype), t, encoder_hidden_states=cond).sample.float()

    @staticmethod
    def blend(latents: torch.Tensor, delta: torch.Tensor, alpha: float) -> torch.Tensor:
        """ẑ_y = z_x + α · Δz."""
        return latents + alpha * delta

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """ẑ -> images (N, 3, H, W) in [0, 1] (fp32)."""
        return self.codec.decode(latents).float()

    def forward(self, images: torch.Tensor | None = None, alpha: float | None = None, *,
                latents: torch.Tensor | None = None) -> torch.Tensor:
        """ŷ = D(z_x + α · U(z_x, t, c)). Pass precomputed ``latents`` (z_x) to skip encoding."""
        alpha = self.alpha if alpha is None else float(alpha)
        if latents is None:
            if images is None:
                raise ValueError("pass images or latents")
            with torch.no_grad():
                latents = self.encode(images)
        if alpha == 0.0:                     # exactly the VAE reconstruction, no U-Net call
            return self.decode(latents)
        return self.decode(self.blend(latents, self.delta(latents), alpha))

    # ------------------------------------------------------------------ LoRA helpers
    def add_lora(self, rank: int = 8, alpha: float | None = None, **kwargs) -> "ComicDiff":
        lora.add_lora(self.unet, rank, alpha, **kwargs)
        return self

    def load_adapter(self, directory) -> "ComicDiff":
        lora.load_adapter(self.unet, directory)
        return self

    def save_adapter(self, directory, info: dict | None = None, **kwargs):
        """Save the LoRA weights and ``info``; the base they need (``provenance``: SD 2.1's id and
        revision, or the offline denoiser's sha256) is recorded when ``info`` does not carry it."""
        from .components import base_provenance

        info = dict(info or {})
        info.setdefault("provenance", base_provenance(self.components, self.unet))
        return lora.save_adapter(self.unet, directory, info, **kwargs)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def pad_multiple(self) -> int:
        """Image sides are padded to a multiple of this: the codec's downscale factor times the
        U-Net's total downsampling (2 ** (levels - 1))."""
        levels = len(self.unet.config.block_out_channels)
        return self.codec.downscale_factor * 2 ** (levels - 1)

    # ------------------------------------------------------------------ inference
    @torch.inference_mode()
    def translate(self, images: torch.Tensor, alpha: float | None = None, *,
                  batch_size: int = 8, return_latents: bool = False):
        """Photos (3, H, W) or (N, 3, H, W) in [0, 1] -> comics of the same shape in [0, 1].

        Any size: each side is padded at the bottom/right by reflection up to a multiple of
        :attr:`pad_multiple`, translated, and cropped back, so the output has the input's size
        and the content is never resized. Deterministic; processed in batches of ``batch_size``.
        With ``return_latents=True`` also returns (z_x, Δz) for cheap re-blending.
        """
        single = images.ndim == 3
        x = check_image_tensor(images.unsqueeze(0) if single else images, "translate input")
        alpha = self.alpha if alpha is None else float(alpha)
        was_training = self.training
        self.eval()
        device = self.prompt_embeds.device
        h, w = x.shape[-2:]
        m = self.pad_multiple
        ph, pw = (-h) % m, (-w) % m
        outs, zs, dzs = [], [], []
        for start in range(0, x.shape[0], batch_size):
            xb = x[start:start + batch_size].to(device)
            if ph or pw:
                mode = "reflect" if ph < h and pw < w else "replicate"
                xb = F.pad(xb, (0, pw, 0, ph), mode=mode)
            z = self.encode(xb)
            dz = self.delta(z) if (alpha != 0.0 or return_latents) else torch.zeros_like(z)
            y = self.decode(self.blend(z, dz, alpha))[..., :h, :w]
            outs.append(y.cpu())
            if return_latents:
                zs.append(z.cpu())
                dzs.append(dz.cpu())
        self.train(was_training)
        out = torch.cat(outs)
        out = out[0] if single else out
        if return_latents:
            return out, torch.cat(zs), torch.cat(dzs)
        return out


# --------------------------------------------------------------------------- losses
class _LPIPSLoss(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model.requires_grad_(False).eval()

    def forward(self, pred, target):
        # lpips wants [-1, 1]; normalize=True maps our [0, 1] images there (one place).
        return self.model(pred, target, normalize=True).flatten()


def perceptual_loss(kind: str = "auto", device: str | torch.device | None = None) -> tuple[nn.Module, str]:
    """The perceptual term: ``"lpips-vgg"`` (needs VGG-16 ImageNet weights), ``"taef2"``
    (offline stand-in) or ``"auto"`` (LPIPS-VGG when available, else taef2 with a banner; in
    ``full`` mode LPIPS-VGG or the error saying how to get its weights). Returns (module, name)."""
    from ..metrics import MetricUnavailable, lpips_model
    from ..runtime import get_mode

    if kind not in ("auto", "lpips-vgg", "taef2"):
        raise ValueError(f"perceptual kind must be 'auto', 'lpips-vgg' or 'taef2'; got {kind!r}")
    if kind in ("auto", "lpips-vgg"):
        try:
            return _LPIPSLoss(lpips_model("vgg", device)), "lpips-vgg"
        except MetricUnavailable:
            if kind == "lpips-vgg" or get_mode() == "full":
                raise
            substitute_banner(wanted="LPIPS-VGG as the perceptual loss (VGG-16 ImageNet trunk)",
                              used="LPIPS-shaped distance on taef2 encoder features (blocks 1, 5, 9)",
                              reason="VGG-16 ImageNet weights are not available offline")
    return PerceptualDistance().to(device or "cpu"), "taef2"


def relative_gram_distance(features_a: dict, features_b: dict) -> torch.Tensor:
    """Chapter 01's Gram-matrix style distance made scale-free, per image: the mean over feature
    blocks of ``||G(a) - G(b)||² / ||G(b)||²`` (G the Gram matrix of one image's block). Blind to
    *where* a texture sits, so misaligned targets do not average into blur. Returns (N,), 0 for
    identical statistics."""
    from ..nst import gram_matrix

    terms = []
    for k, fb in features_b.items():
        ga, gb = gram_matrix(features_a[k].float()), gram_matrix(fb.float())
        terms.append((ga - gb).pow(2).sum((1, 2)) / gb.pow(2).sum((1, 2)).clamp_min(1e-20))
    return torch.stack(terms).mean(0)


class ComicDiffLoss(nn.Module):
    """MSE(ŷ, y) + λ · perceptual(ŷ, y) in pixel space, both images in [0, 1] (the ComicDiff report: λ = 0.8),
    plus, beyond the report, ``style_weight`` · :func:`relative_gram_distance` on taef2 features
    (blocks 1, 5, 9) between the output and its target comic, and ``edge_weight`` ·
    :func:`comicutils.metrics.edge_histogram_distance`, the output's sorted edge strengths against
    its comic's (flat areas and ink lines in a comic's proportions, wherever they sit),
    ``palette_weight`` · :func:`comicutils.metrics.palette_distance` (its colours, sorted, against
    its comic's) and ``flat_weight`` · :func:`comicutils.metrics.flatness_distance` (against its own
    superpixel-flattened copy) (each 0: off).

    Returns a dict of scalars: ``loss``, ``mse``, ``perceptual`` (and ``style`` / ``edges`` /
    ``palette`` / ``flat`` when on).
    """

    def __init__(self, perceptual: nn.Module | None, lpips_weight: float = 0.8, name: str = "lpips-vgg",
                 style_weight: float = 0.0, edge_weight: float = 0.0, palette_weight: float = 0.0,
                 flat_weight: float = 0.0):
        super().__init__()
        if lpips_weight and perceptual is None:
            raise ValueError("a perceptual module is needed when lpips_weight > 0")
        self.perceptual, self.lpips_weight, self.name = perceptual, float(lpips_weight), name
        self.style_weight, self.edge_weight = float(style_weight), float(edge_weight)
        self.palette_weight, self.flat_weight = float(palette_weight), float(flat_weight)
        self.style_features = None
        if self.style_weight:
            from ..taesd import FeatureExtractor

            self.style_features = FeatureExtractor(blocks=(1, 5, 9)).requires_grad_(False).eval()

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        mse = F.mse_loss(pred.float(), target.float())
        if self.lpips_weight:
            perc = self.perceptual(pred.float(), target.float()).mean()
        else:
            perc = torch.zeros((), device=pred.device)
        out = {"loss": mse + self.lpips_weight * perc, "mse": mse, "perceptual": perc}
        if self.style_weight:
            style = relative_gram_distance(self.style_features(pred.float()), self.style_features(target.float())).mean()
            out["loss"] = out["loss"] + self.style_weight * style
            out["style"] = style
        from ..metrics import edge_histogram_distance, flatness_distance, palette_distance

        p, t = pred.float(), target.float()
        for key, weight, term in (("edges", self.edge_weight, lambda: edge_histogram_distance(p, t)),
                                  ("palette", self.palette_weight, lambda: palette_distance(p, t)),
                                  ("flat", self.flat_weight, lambda: flatness_distance(p))):
            if weight:                                  # each position-blind term, when on
                out[key] = term().mean()
                out["loss"] = out["loss"] + weight * out[key]
        return out


# --------------------------------------------------------------------------- loading, img2img
def _find_denoiser(adapter_dir) -> Path | None:
    here = Path(adapter_dir).resolve()
    for parent in [here, *here.parents][:4]:
        if (parent / "denoiser" / "config.json").is_file():
            return parent / "denoiser"
    return None


def load_translator(adapter_dir, *, denoiser=None, merge: bool = False, alpha: float = 1.0,
                    device: str | torch.device = "cpu") -> ComicDiff:
    """A ready-to-use :class:`ComicDiff` from an adapter folder written by ``train_lora``.

    The adapter's JSON says which path trained it. Offline adapters need the pre-trained
    denoiser they were trained on: ``denoiser`` or, by default, a ``denoiser/`` folder next to
    the run (``data/runs/04/denoiser`` for chapter 04's adapters). ``merge=True`` folds the
    LoRA update into the U-Net weights (faster; the adapter can no longer be switched off).
    """
    from .components import load_components, offline_components

    info = lora.read_adapter_info(adapter_dir)
    path = info.get("path", "offline")
    if path == "offline":
        denoiser = denoiser or _find_denoiser(adapter_dir)
        if denoiser is None:
            raise FileNotFoundError(f"adapter {adapter_dir} was trained on the offline path's pre-trained "
                                    "denoiser; pass denoiser=DIR (chapter 04 writes data/runs/04/denoiser)")
        components = offline_components(denoiser=denoiser, announce=False)
    else:
        components = load_components("sd21", device=device)
    saved = info.get("provenance")
    if not saved:                                      # nothing to check it against: refuse, do not guess
        raise ValueError(f"adapter {adapter_dir} records no base model (no 'provenance' in its JSON), so it cannot "
                         "be checked against this denoiser; save adapters with ComicDiff.save_adapter or train_lora")
    from ..checkpoints import check_provenance
    from .components import base_provenance

    check_provenance(saved, base_provenance(components), f"adapter {adapter_dir}", keys=("path", "base"))
    model = ComicDiff(components, timestep=int(info.get("timestep", DEFAULT_TIMESTEP)), alpha=alpha)
    try:
        model.load_adapter(adapter_dir)
    except Exception as err:                           # corrupt or foreign weights file (safetensors, peft, torch)
        first = " ".join(str(err).split())[:160]
        raise ValueError(f"adapter {adapter_dir} cannot be loaded into this U-Net ({first})") from err
    model.info = info
    if merge:
        lora.merge(model.unet)
    return model.to(device).eval()


@torch.inference_mode()
def img2img(model: ComicDiff, images: torch.Tensor, *, steps: int = 50, strength: float = 0.75,
            seed: int = 0) -> torch.Tensor:
    """The multi-step alternative ComicDiff replaces: SDEdit-style img2img with DDIM.

    Encode, noise the latent to the timestep where ``strength`` of the schedule remains, and
    run DDIM from there: ``steps - int(steps * (1 - strength))`` U-Net calls (50 steps at
    strength 0.75: 38 calls), one condition, no classifier-free guidance. Images (N, 3, H, W)
    in [0, 1], sides divisible by :attr:`ComicDiff.pad_multiple`.
    """
    from diffusers import DDIMScheduler

    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1]; got {strength}")
    scheduler = DDIMScheduler.from_config(model.components.scheduler_config)
    scheduler.set_timesteps(steps)
    timesteps = scheduler.timesteps[int(steps * (1 - strength)):]
    z = model.encode(check_image_tensor(images, "img2img input"))
    noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed)).to(z)
    z = scheduler.add_noise(z, noise, timesteps[:1].repeat(z.shape[0]))
    dtype = _base_dtype(model.unet)
    cond = model.prompt_embeds.to(z.device, dtype).expand(z.shape[0], -1, -1)
    for t in timesteps:
        out = model.unet(z.to(dtype), t, encoder_hidden_states=cond).sample.float()
        z = scheduler.step(out, t, z).prev_sample
    return model.decode(z)


def unet_calls_img2img(steps: int = 50, strength: float = 0.75) -> int:
    """How many U-Net calls :func:`img2img` makes."""
    return steps - int(steps * (1 - strength))


def translate_faces(model: ComicDiff, images, *, size: int | None = None, alpha: float | None = None,
                    batch_size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Face-aligned translation: each image's largest face is found and aligned with dlib's
    5 landmarks (:func:`comicutils.faces.align_face`, FFHQ-like framing, as the training
    pairs are framed), then translated. ``size`` defaults to the adapter's training size.

    ``images``: (N, 3, H, W) in [0, 1] or a list of image-likes. Returns (aligned, comics),
    both (N, 3, size, size). Raises :class:`comicutils.faces.NoFaceFound` naming the image.
    """
    from ..faces import NoFaceFound, align_face

    size = int(size or (getattr(model, "info", {}) or {}).get("size", [256])[0])
    items = list(images) if not isinstance(images, torch.Tensor) or images.ndim == 4 else [images]
    aligned = []
    for i, img in enumerate(items):
        try:
            aligned.append(align_face(img, size=size))
        except NoFaceFound as err:
            raise NoFaceFound(f"image {i}: {err}") from err
    aligned = torch.cat(aligned)
    return aligned, model.translate(aligned, alpha, batch_size=batch_size)

"""Training ComicDiff: denoiser pre-training (offline path) and LoRA fine-tuning, on Accelerate.

The same :func:`train_lora` runs in a notebook on one CPU and on several GPUs::

    accelerate launch -m comicutils.comicdiff.train --data DIR --out runs/comicdiff --rank 8

The ComicDiff report's settings are the defaults of :class:`TrainConfig` (AdamW, lr 1e-5, batch 4, 5 epochs,
loss MSE + 0.8 · LPIPS-VGG, t = 1, AMP on GPU); the notebook says what it changed for CPU.
A checkpoint is one folder written as a unit (``checkpoint-latest``; the one it replaces is kept
as ``checkpoint-latest.previous``): Accelerate's ``save_state`` (optimizer, random states) with a
hook that writes the LoRA tensors and a usable ``adapter/`` instead of the frozen U-Net, the step
count and history, and ``provenance.json`` (base model or denoiser sha256, rank, size). A kill at
any moment leaves a complete checkpoint; ``resume=True`` continues from the newest complete one and
refuses one made with another base, rank or size. A non-finite loss stops training with
:class:`NonFiniteLoss` before anything is written.
"""
from __future__ import annotations

import argparse
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

import contextlib

from ..checkpoints import NonFiniteState, checkpoint_exists, load_latest, output_lock, save_state
from ..runtime import progress, seed_everything
from . import lora
from .model import ComicDiff, ComicDiffLoss, perceptual_loss

__all__ = ["NonFiniteLoss", "TrainConfig", "TrainResult", "LatentPairs", "encode_pairs", "encode_images",
           "pretrain_denoiser", "predict_clean", "alpha_sweep", "add_noise", "denoising_error", "train_lora", "evaluate_translation", "main"]

CHECKPOINT_NAME = "checkpoint-latest"
STATE_JSON = "training_state.json"
LORA_STATE_NAME = "lora_state.safetensors"
PROVENANCE_NAME = "provenance.json"


class NonFiniteLoss(NonFiniteState):
    """The loss became NaN or infinite; training stopped and no checkpoint was written."""


# --------------------------------------------------------------------------- data
class LatentPairs(Dataset):
    """Pairs with the photo already encoded: items ``{"key", "latent", "comic"}``.

    Encoding a small dataset once (and each augmented copy once) makes every training step
    skip the VAE encoder, the most expensive frozen part on a CPU.
    """

    def __init__(self, keys: list[str], latents: torch.Tensor, comics: torch.Tensor,
                 photos: torch.Tensor | None = None):
        if not (len(keys) == latents.shape[0] == comics.shape[0]):
            raise ValueError("keys, latents and comics must have the same length")
        if photos is not None and photos.shape[0] != len(keys):
            raise ValueError("photos must have one image per key")
        self.keys, self.latents, self.comics, self.photos = list(keys), latents, comics, photos

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> dict:
        item = {"key": self.keys[i], "latent": self.latents[i], "comic": self.comics[i]}
        if self.photos is not None:                  # the adversarial option's discriminator sees the photo
            item["photo_image"] = self.photos[i]
        return item


@torch.no_grad()
def encode_pairs(codec, pairs, *, augment=None, copies: int = 0, flip: bool = True, seed: int = 0,
                 batch_size: int = 8, show_progress: bool = True) -> LatentPairs:
    """Encode the photos of a :class:`~comicutils.data.PairSet` once: the originals, their
    horizontal mirrors (``flip``) and ``copies`` augmented versions (``augment``, e.g.
    :class:`~comicutils.data.JointAugment`, drawn from ``seed``)."""
    photos, comics, keys = [pairs.photos], [pairs.comics], list(pairs.keys)
    if flip:
        photos.append(pairs.photos.flip(-1))
        comics.append(pairs.comics.flip(-1))
        keys += [f"{k}_flip" for k in pairs.keys]
    if copies and augment is not None:
        g = torch.Generator().manual_seed(seed)
        for c in range(copies):
            p, q = augment(pairs.photos, pairs.comics, g)
            photos.append(p)
            comics.append(q)
            keys += [f"{k}_aug{c}" for k in pairs.keys]
    photos, comics = torch.cat(photos), torch.cat(comics)
    return LatentPairs(keys, encode_images(codec, photos, batch_size=batch_size, show_progress=show_progress),
                       comics, photos)


def _bar(iterable=None, show: bool = True, **kwargs):
    """A progress bar that honours COMICUTILS_PROGRESS; ``show=False`` silences it."""
    if not show:
        kwargs["disable"] = True
    return progress(iterable, **kwargs)


@torch.no_grad()
def encode_images(codec, images: torch.Tensor, *, batch_size: int = 8, show_progress: bool = True) -> torch.Tensor:
    """Latents of (N, 3, H, W) images in [0, 1], computed in batches on the codec's device."""
    device = next(codec.parameters()).device
    out = [codec.encode(images[s:s + batch_size].to(device)).float().cpu()
           for s in _bar(range(0, images.shape[0], batch_size), show_progress, desc="encoding")]
    return torch.cat(out)


# --------------------------------------------------------------------------- accelerate
def _accelerator(mixed_precision: str = "no", cpu: bool | None = None):
    from accelerate import Accelerator

    cpu = (not torch.cuda.is_available()) if cpu is None else cpu
    if mixed_precision == "auto":
        if cpu:
            mixed_precision = "no"
        else:
            mixed_precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def _check_finite(value: torch.Tensor, step: int, what: str = "loss") -> None:
    if not torch.isfinite(value).all():
        raise NonFiniteLoss(f"{what} became {value.item() if value.numel() == 1 else 'non-finite'} "
                            f"at step {step}; training stopped and no checkpoint was written. "
                            "Lower the learning rate or check the inputs.")


# --------------------------------------------------------------------------- pre-training
@dataclass
class PretrainResult:
    history: list[dict]
    seconds: float


PRETRAIN_FORMAT = "comicutils-denoiser-pretrain/1"


def pretrain_denoiser(unet, latents: torch.Tensor, prompt_embeds: torch.Tensor, scheduler_config: dict, *,
                      steps: int = 500, batch_size: int = 16, lr: float = 3e-4, seed: int = 0,
                      flip: bool = True, show_progress: bool = True, checkpoint: str | Path | None = None,
                      checkpoint_every: int = 50, resume: bool = True) -> PretrainResult:
    """Train a U-Net from scratch as a latent denoiser (DDPM objective), in place.

    Each step draws latents, timesteps t ~ U{0..T-1} and noise ε, forms
    z_t = √ᾱ_t z + √(1-ᾱ_t) ε with diffusers' ``DDPMScheduler``, and regresses the U-Net output
    on the target the scheduler config names: ε (``epsilon``) or v = √ᾱ_t ε − √(1-ᾱ_t) z
    (``v_prediction``). This gives the offline path what SD 2.1 brings pretrained: a U-Net that
    already understands this latent space, before LoRA adapts it.

    ``checkpoint``: a file written atomically every ``checkpoint_every`` steps and at the end
    (U-Net, optimiser, random-number state, history); with ``resume`` an existing one is
    continued, so re-running the same call after an interruption finishes the same run.
    ``steps`` counts in total, including what the checkpoint already did.
    """
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_config(scheduler_config)
    prediction = scheduler.config.prediction_type
    if prediction not in ("epsilon", "v_prediction"):
        raise ValueError(f"unsupported prediction_type {prediction!r}")
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be >= 1; got {checkpoint_every}")
    device = next(unet.parameters()).device
    unet.train().requires_grad_(True)
    opt = torch.optim.AdamW(unet.parameters(), lr=lr, weight_decay=1e-2)
    g = torch.Generator().manual_seed(seed)
    cond = prompt_embeds.to(device)
    settings = {"batch_size": batch_size, "lr": lr, "seed": seed, "flip": flip, "latents": list(latents.shape),
                "prediction_type": prediction}
    lock = output_lock(Path(checkpoint).parent) if checkpoint is not None else contextlib.nullcontext()
    with lock:                                          # one run per output folder
        return _pretrain(unet, latents, cond, scheduler, prediction, opt, g, settings, steps, batch_size, flip,
                         checkpoint, checkpoint_every, resume, show_progress, device)


def _pretrain(unet, latents, cond, scheduler, prediction, opt, g, settings, steps, batch_size, flip, checkpoint,
              checkpoint_every, resume, show_progress, device) -> "PretrainResult":
    history, done, spent = [], 0, 0.0
    if checkpoint is not None and resume and checkpoint_exists(checkpoint):
        state, checkpoint_used = load_latest(checkpoint)
        if not isinstance(state, dict) or state.get("format") != PRETRAIN_FORMAT:
            raise ValueError(f"{checkpoint} is not a denoiser pre-training checkpoint")
        if state["settings"] != settings:
            raise ValueError(f"{checkpoint} was written with {state['settings']}, this run has {settings}; "
                             "use another checkpoint file or start afresh")
        unet.load_state_dict(state["unet"])
        opt.load_state_dict(state["opt"])
        g.set_state(state["rng"])
        history, done, spent = [dict(r) for r in state["history"]], int(state["step"]), float(state["seconds"])
        print(f"resuming from {checkpoint_used} at step {done}")
    start = time.perf_counter()

    def save(step: int) -> None:
        save_state({"format": PRETRAIN_FORMAT, "settings": settings, "unet": unet.state_dict(),
                    "opt": opt.state_dict(), "rng": g.get_state(), "step": step, "history": history,
                    "seconds": spent + time.perf_counter() - start}, checkpoint)

    bar = _bar(range(done, steps), show_progress, desc="pre-training the denoiser", initial=done, total=steps)
    for step in bar:
        idx = torch.randint(0, latents.shape[0], (batch_size,), generator=g)
        z = latents[idx].to(device)
        if flip:
            mirror = torch.rand(batch_size, generator=g) < 0.5
            z = torch.where(mirror[:, None, None, None].to(device), z.flip(-1), z)
        noise = torch.randn(z.shape, generator=g).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=g).to(device)
        zt = scheduler.add_noise(z, noise, t)
        target = noise if prediction == "epsilon" else scheduler.get_velocity(z, noise, t)
        out = unet(zt, t, encoder_hidden_states=cond.expand(batch_size, -1, -1)).sample
        loss = F.mse_loss(out.float(), target.float())
        _check_finite(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        opt.step()
        history.append({"step": step + 1, "loss": loss.item()})
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss.item():.4f}")
        if checkpoint is not None and ((step + 1) % checkpoint_every == 0 or step + 1 == steps):
            save(step + 1)
    unet.eval().requires_grad_(False)
    return PretrainResult(history, spent + time.perf_counter() - start)


def _alphas(scheduler_config: dict, t: torch.Tensor) -> torch.Tensor:
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(scheduler_config).alphas_cumprod[t.cpu()]


@torch.no_grad()
def predict_clean(unet, noisy: torch.Tensor, t: int, prompt_embeds: torch.Tensor, scheduler_config: dict) -> torch.Tensor:
    """The U-Net's estimate of the clean latent from z_t at timestep ``t``:
    ẑ_0 = (z_t − √(1-ᾱ_t) ε̂) / √ᾱ_t for ε-prediction, √ᾱ_t z_t − √(1-ᾱ_t) v̂ for v-prediction."""
    n = noisy.shape[0]
    tt = torch.full((n,), int(t), dtype=torch.long)
    a = _alphas(scheduler_config, tt)[0].item()
    out = unet(noisy, tt.to(noisy.device), encoder_hidden_states=prompt_embeds.to(noisy.device).expand(n, -1, -1)).sample
    if scheduler_config.get("prediction_type", "epsilon") == "v_prediction":
        return a ** 0.5 * noisy - (1 - a) ** 0.5 * out
    return (noisy - (1 - a) ** 0.5 * out) / a ** 0.5


def add_noise(latents: torch.Tensor, t: int, scheduler_config: dict, seed: int = 0) -> torch.Tensor:
    """z_t = √ᾱ_t z + √(1-ᾱ_t) ε with ε drawn from ``seed``."""
    a = _alphas(scheduler_config, torch.tensor([int(t)]))[0].item()
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    return a ** 0.5 * latents + (1 - a) ** 0.5 * noise.to(latents)


@torch.no_grad()
def denoising_error(unet, latents: torch.Tensor, prompt_embeds: torch.Tensor, scheduler_config: dict, *,
                    timesteps=(50, 200, 400, 600, 800), seed: int = 0) -> float:
    """Mean squared error of ẑ_0 against the clean latents, averaged over fixed timesteps and
    fixed noise: a held-out check that a pre-trained denoiser learned the latent space."""
    errs = [F.mse_loss(predict_clean(unet, add_noise(latents, t, scheduler_config, seed + i), t,
                                     prompt_embeds, scheduler_config), latents).item()
            for i, t in enumerate(timesteps)]
    return sum(errs) / len(errs)


# --------------------------------------------------------------------------- LoRA training
@dataclass
class TrainConfig:
    """LoRA fine-tuning settings. Defaults are the ComicDiff report's (rank 8, AdamW lr 1e-5, batch 4,
    5 epochs, λ_LPIPS 0.8, t = 1, mixed precision where a GPU is present)."""

    rank: int = 8
    lora_alpha: float | None = None          # peft's lora_alpha; default = rank, so the LoRA scale κ = lora_alpha / r = 1
    feed_forward: bool = True                # also adapt ff.net.0.proj / ff.net.2 (the ComicDiff report: attention and
                                             # selected feed-forward layers); False: attention only
    lr: float = 1e-5
    weight_decay: float = 1e-2
    batch_size: int = 4
    epochs: int = 5
    max_steps: int | None = None             # stop early (smoke runs, CPU budgets)
    blend_alpha: float = 1.0                 # α, ComicDiff's photo/comic latent blend, in the training forward
    lpips_weight: float = 0.8
    perceptual: str = "auto"                 # "lpips-vgg", "taef2" or "auto"
    grad_clip: float | None = 1.0
    mixed_precision: str = "auto"            # "no", "fp16", "bf16" or "auto"
    gradient_checkpointing: bool = False
    checkpoint_every: int | None = None      # steps; None: only at the end
    seed: int = 0
    # beyond the ComicDiff report (Parmar et al. 2024): a conditional PatchGAN (chapter 02's) on (photo, output)
    # pairs; its term's weight ramps linearly from 0 over adversarial_warmup steps. 0: off (as in the report).
    adversarial_weight: float = 0.0
    adversarial_warmup: int = 0
    # beyond the report: chapter 01's Gram-matrix statistics, output against its own target comic, on taef2
    # features (model.relative_gram_distance); position-blind, so misalignment does not blur. 0: off.
    style_weight: float = 0.0
    # beyond the report: the output's sorted edge strengths against its comic's (metrics.edge_histogram_distance):
    # flat areas and ink lines in a comic's proportions, wherever they sit. 0: off.
    edge_weight: float = 0.0
    # beyond the report: the output's sorted colours against its comic's (metrics.palette_distance): a comic's
    # few flat tones, wherever they sit. 0: off.
    palette_weight: float = 0.0
    # beyond the report: the output against its own superpixel-flattened copy (metrics.flatness_distance, the
    # "structure" term of white-box cartoonization): flat colour inside regions. 0: off.
    flat_weight: float = 0.0
    discriminator_ndf: int = 32
    discriminator_lr: float = 2e-4

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)   # one row per step
    steps: int = 0
    seconds: float = 0.0
    perceptual: str = ""
    adapter_dir: Path | None = None

    def frame(self):
        import pandas as pd
        return pd.DataFrame(self.history)


def _lora_state(unet: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().float().cpu().contiguous().clone() for n, p in unet.named_parameters() if "lora_" in n}


def provenance(model: ComicDiff, config: TrainConfig, size) -> dict:
    """What a checkpoint or adapter depends on; resuming or loading with anything else is refused."""
    from .components import base_provenance

    unet = model.unet.module if hasattr(model.unet, "module") else model.unet
    return {**base_provenance(model.components, unet), "rank": config.rank,
            "lora_alpha": config.lora_alpha if config.lora_alpha is not None else config.rank,
            "feed_forward": config.feed_forward, "size": list(size) if size is not None else None,
            "timestep": model.timestep, "adversarial": config.adversarial_weight > 0}


# the keys that must agree to resume a run (lr, steps etc. may change between calls)
RESUME_KEYS = ("path", "base", "rank", "lora_alpha", "feed_forward", "size", "timestep", "adversarial")


def _write_checkpoint(model, out_dir: Path, config: TrainConfig, step: int, epoch: int, history: list[dict],
                      prov: dict, accelerator) -> Path | None:
    """One checkpoint folder, written as a unit (:func:`comicutils.checkpoints.write_checkpoint_dir`):
    Accelerate's ``save_state`` (optimizer, random states; the U-Net itself is *not* written: a hook
    writes only the LoRA tensors and the usable ``adapter/``), ``training_state.json`` (step, epoch,
    history) and ``provenance.json``. Only the main process writes."""
    import json

    from ..checkpoints import write_checkpoint_dir

    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return None
    unet = accelerator.unwrap_model(model.unet)
    info = {"step": step, "epoch": epoch, "config": config.to_dict(), "path": model.path,
            "timestep": model.timestep, "provenance": prov}

    def save_hook(models, weights, output_dir):        # LoRA only, never the frozen U-Net
        from safetensors.torch import save_file

        for i in reversed(range(len(models))):         # the discriminator, if any, is saved by Accelerate
            if accelerator.unwrap_model(models[i]) is unet:
                weights.pop(i)
        save_file(_lora_state(unet), str(Path(output_dir) / LORA_STATE_NAME))
        lora.save_adapter(unet, Path(output_dir) / "adapter", info)

    def fill(tmp: Path) -> None:
        handle = accelerator.register_save_state_pre_hook(save_hook)
        try:
            accelerator.save_state(str(tmp))
        finally:
            handle.remove()
        (tmp / STATE_JSON).write_text(json.dumps({"step": step, "epoch": epoch, "history": history}))
        (tmp / PROVENANCE_NAME).write_text(json.dumps(prov, indent=1))

    return write_checkpoint_dir(out_dir, CHECKPOINT_NAME, fill, info={"step": step})


def _resume(model, out_dir: Path, accelerator, prov: dict) -> tuple[int, int, list[dict]]:
    """Continue from the newest complete checkpoint (``checkpoint-latest``, else the previous one,
    said on screen); its provenance must match this run's (``RESUME_KEYS``)."""
    import json

    from ..checkpoints import check_provenance, latest_checkpoint_dir

    found = latest_checkpoint_dir(out_dir, CHECKPOINT_NAME)
    if found is None:
        if (out_dir / CHECKPOINT_NAME / "training_state.pt").is_file():
            print(f"{out_dir / CHECKPOINT_NAME} is in an older format without provenance; starting from step 0")
        return 0, 0, []
    folder, _ = found
    saved = json.loads((folder / PROVENANCE_NAME).read_text())
    check_provenance(saved, prov, f"checkpoint {folder}", keys=RESUME_KEYS)
    state = json.loads((folder / STATE_JSON).read_text())
    params = dict(accelerator.unwrap_model(model.unet).named_parameters())

    def load_hook(models, input_dir):                  # LoRA only; the frozen U-Net is not in the checkpoint
        from safetensors.torch import load_file

        lora_state = load_file(str(Path(input_dir) / LORA_STATE_NAME))
        mine = {n for n in params if "lora_" in n}
        if set(lora_state) != mine:
            raise ValueError(f"checkpoint {folder} does not match this adapter (rank or target layers differ)")
        with torch.no_grad():
            for n, v in lora_state.items():
                params[n].copy_(v.to(params[n]))
        unet = accelerator.unwrap_model(model.unet)
        models[:] = [m for m in models if accelerator.unwrap_model(m) is not unet]

    handle = accelerator.register_load_state_pre_hook(load_hook)
    try:
        accelerator.load_state(str(folder))
    finally:
        handle.remove()
    print(f"resuming from {folder} at step {state['step']}")
    return int(state["step"]), int(state["epoch"]), [dict(r) for r in state["history"]]


class _Adversary:
    """The optional adversarial term: chapter 02's conditional PatchGAN judges (photo, output) against
    (photo, comic); the LoRA loss gets ``w(step) · GAN(D(photo, output), real)`` with w ramping from 0
    to ``adversarial_weight`` over ``adversarial_warmup`` steps. D has its own Adam optimiser; both are
    prepared by Accelerate, so ``save_state`` checkpoints them with the rest."""

    def __init__(self, config: TrainConfig, accelerator):
        from ..pix2pix import GANLoss, PatchDiscriminator

        g = torch.Generator().manual_seed(config.seed + 1)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
            disc = PatchDiscriminator(ndf=config.discriminator_ndf)
        opt = torch.optim.Adam(disc.parameters(), lr=config.discriminator_lr, betas=(0.5, 0.999))
        self.disc, self.opt = accelerator.prepare(disc, opt)
        self.gan = GANLoss("vanilla")
        self.config, self.accelerator = config, accelerator

    def weight(self, step: int) -> float:
        c = self.config
        return c.adversarial_weight * (min(1.0, (step + 1) / c.adversarial_warmup) if c.adversarial_warmup else 1.0)

    def step(self, batch: dict, pred: torch.Tensor, target: torch.Tensor, terms: dict, step: int) -> dict:
        from ..pix2pix import discriminator_loss

        if "photo_image" not in batch:
            raise ValueError("the adversarial option needs the photos in the dataset (encode_pairs keeps them)")
        photo = batch["photo_image"].to(pred.device) * 2 - 1
        fake, real = pred * 2 - 1, target * 2 - 1
        self.disc.train()
        d_loss = discriminator_loss(self.disc(photo, real), self.disc(photo, fake.detach()), self.gan)
        _check_finite(d_loss, step + 1, "discriminator loss")
        self.opt.zero_grad(set_to_none=True)
        self.accelerator.backward(d_loss)
        self.opt.step()
        self.disc.requires_grad_(False)
        try:
            adv = self.gan(self.disc(photo, fake), True)
        finally:
            self.disc.requires_grad_(True)
        w = self.weight(step)
        return {**terms, "loss": terms["loss"] + w * adv, "adversarial": adv.detach(), "discriminator": d_loss.detach(),
                "adversarial_weight": w}


def train_lora(model: ComicDiff, dataset: Dataset, config: TrainConfig | None = None, *,
               out_dir: str | Path | None = None, resume: bool = True, loss_fn: ComicDiffLoss | None = None,
               show_progress: bool = True) -> TrainResult:
    """Fine-tune the LoRA adapter of ``model`` (added here if absent) on ``dataset``.

    An adapter already in ``model`` (e.g. loaded with :func:`load_translator`, which freezes it)
    is trained on from its current values: a warm start; nothing but LoRA is ever unfrozen.

    Dataset items are dicts with ``"comic"`` (3, H, W) in [0, 1] and either ``"latent"`` (z_x,
    see :func:`encode_pairs`) or ``"photo"`` (encoded on the fly). Only LoRA parameters train:
    the VAE/codec, the U-Net's own weights and the prompt embedding stay frozen. Returns the
    per-step history (loss, mse, perceptual, grad norm, seconds). ``out_dir`` is locked while
    training (:func:`comicutils.checkpoints.output_lock`): a second run on it fails at once.
    """
    lock = output_lock(out_dir) if out_dir is not None else contextlib.nullcontext()
    with lock:
        return _train_lora(model, dataset, config, out_dir=out_dir, resume=resume, loss_fn=loss_fn,
                           show_progress=show_progress)


def _train_lora(model: ComicDiff, dataset: Dataset, config: TrainConfig | None, *, out_dir, resume: bool,
                loss_fn: ComicDiffLoss | None, show_progress: bool) -> TrainResult:
    config = config or TrainConfig()
    seed_everything(config.seed)
    if not lora.has_lora(model.unet):
        model.add_lora(config.rank, config.lora_alpha, feed_forward=config.feed_forward, seed=config.seed)
    accelerator = _accelerator(config.mixed_precision)
    device = accelerator.device
    model.to(device)
    if loss_fn is None:
        perc, name = perceptual_loss(config.perceptual if config.lpips_weight else "taef2", device)
        loss_fn = ComicDiffLoss(perc, config.lpips_weight, name, style_weight=config.style_weight,
                                edge_weight=config.edge_weight, palette_weight=config.palette_weight,
                                flat_weight=config.flat_weight)
    loss_fn.to(device)
    if accelerator.mixed_precision in ("fp16", "bf16"):      # frozen weights in half precision,
        half = torch.float16 if accelerator.mixed_precision == "fp16" else torch.bfloat16
        model.unet.to(half)                                 # LoRA parameters kept in fp32
        for p in lora.lora_parameters(model.unet):
            p.data = p.data.float()
    if config.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    params = lora.lora_parameters(model.unet)
    if not params:
        raise RuntimeError("the U-Net has no LoRA parameters; nothing would train")
    for p in params:                                  # an adapter loaded for inference comes frozen:
        p.requires_grad_(True)                        # training it on (a warm start) unfreezes only LoRA
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    order = torch.Generator().manual_seed(config.seed)     # reseeded each epoch: resume sees the same order
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=False, generator=order)
    adversary = _Adversary(config, accelerator) if config.adversarial_weight > 0 else None
    unet, optimizer, loader = accelerator.prepare(model.unet, optimizer, loader)
    model.unet = unet
    out_dir = Path(out_dir) if out_dir is not None else None
    size = list(dataset[0]["comic"].shape[-2:]) if len(dataset) else None
    prov = provenance(model, config, size)
    step, epoch0, history = (0, 0, [])
    if out_dir is not None and resume:
        step, epoch0, history = _resume(model, out_dir, accelerator, prov)
    steps_per_epoch = len(loader)
    total = config.epochs * steps_per_epoch
    if config.max_steps is not None:
        total = min(total, config.max_steps)
    start, result = time.perf_counter(), TrainResult(perceptual=loss_fn.name)
    model.train()
    model.codec.eval()
    bar = _bar(None, show_progress, total=total, initial=step, desc=f"LoRA r={config.rank}")
    epoch = epoch0                                  # complete epochs so far
    while step < total:
        order.manual_seed(config.seed + epoch)
        done_here = min(max(step - epoch * steps_per_epoch, 0), steps_per_epoch)   # resumed mid-epoch
        finished = True
        for i, batch in enumerate(loader):
            if i < done_here:
                continue
            if step >= total:
                finished = False
                break
            t0 = time.perf_counter()
            y = batch["comic"].to(device)
            with torch.no_grad():
                z = batch["latent"].to(device) if "latent" in batch else model.encode(batch["photo"].to(device))
            with accelerator.autocast():
                pred = model(latents=z, alpha=config.blend_alpha)
                terms = loss_fn(pred.float(), y)
            if adversary is not None:
                terms = adversary.step(batch, pred.float(), y, terms, step)
            _check_finite(terms["loss"], step + 1)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(terms["loss"])
            gnorm = (accelerator.clip_grad_norm_(params, config.grad_clip) if config.grad_clip
                     else torch.sqrt(sum((p.grad.float() ** 2).sum() for p in params if p.grad is not None)))
            optimizer.step()
            step += 1
            row = {"step": step, "epoch": epoch + 1, "loss": terms["loss"].item(),
                   "mse": terms["mse"].item(), "perceptual": terms["perceptual"].item(),
                   "grad_norm": float(gnorm), "seconds": time.perf_counter() - t0}
            for k in ("style", "edges", "palette", "flat"):
                if k in terms:
                    row[k] = terms[k].item()
            if adversary is not None:
                row.update({k: terms[k].item() for k in ("adversarial", "discriminator")})
                row["adversarial_weight"] = float(terms["adversarial_weight"])
            history.append(row)
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss'].item():.4f}")
            if out_dir is not None and config.checkpoint_every and step % config.checkpoint_every == 0:
                _write_checkpoint(model, out_dir, config, step, epoch, history, prov, accelerator)
        if finished:
            epoch += 1
    bar.close()
    if out_dir is not None:
        _write_checkpoint(model, out_dir, config, step, epoch, history, prov, accelerator)
    model.unet = accelerator.unwrap_model(model.unet)
    model.eval()
    result.history, result.steps, result.seconds = history, step, time.perf_counter() - start
    if out_dir is not None and accelerator.is_main_process:
        result.adapter_dir = model.save_adapter(
            out_dir / "adapter", {"step": step, "config": config.to_dict(), "path": model.path,
                                  "timestep": model.timestep, "perceptual": loss_fn.name,
                                  "size": size, "provenance": prov}, overwrite=True)
    return result


# --------------------------------------------------------------------------- evaluation
def evaluate_translation(model: ComicDiff, photos: torch.Tensor, comics: torch.Tensor, *,
                         alpha: float | None = None, metrics=("ssim", "psnr", "mse", "lpips_vgg"),
                         batch_size: int = 8) -> dict[str, float]:
    """Mean metrics of ``model.translate(photos, alpha)`` against ``comics`` (both [0, 1]).
    LPIPS is ``nan`` where its weights are unavailable (reported as n/a, never substituted)."""
    from .. import metrics as M

    pred = model.translate(photos, alpha, batch_size=batch_size)
    out = {}
    for name in metrics:
        try:
            if name == "lpips_vgg":
                out[name] = float(M.lpips(pred, comics, "vgg").mean())
            else:
                out[name] = float(getattr(M, name)(pred, comics).mean())
        except M.MetricUnavailable:
            out[name] = math.nan
    return out


# --------------------------------------------------------------------------- CLI
SD21_TRAIN_SIZE = 768      # the ComicDiff report trains and infers at SD 2.1's native 768 x 768
OFFLINE_TRAIN_SIZE = 256

NEEDS_DENOISER = ("the offline path needs a pre-trained denoiser: --denoiser DIR (notebook 04 writes "
                  "data/runs/04/denoiser), or --random-unet to train LoRA on a random U-Net on purpose")


def _parser() -> argparse.ArgumentParser:
    from ..cli import Parser

    p = Parser(prog="comicutils.comicdiff.train",
                                description="LoRA fine-tuning of ComicDiff on paired photo/comic folders "
                                            "(run with `accelerate launch -m comicutils.comicdiff.train`).")
    p.add_argument("--data", required=True, help="folder with photos/ and comics/ (pairs matched by basename)")
    p.add_argument("--out", required=True, help="output folder (adapter/, checkpoint-latest/)")
    p.add_argument("--path", default="auto", choices=["auto", "sd21", "offline"])
    p.add_argument("--model-id", default=None, help="diffusers model id for --path sd21")
    p.add_argument("--denoiser", default=None, help="offline path: the pre-trained U-Net folder "
                                                    "(chapter 04 writes data/runs/04/denoiser)")
    p.add_argument("--random-unet", action="store_true", help="offline path without --denoiser: train LoRA on a "
                   "random (not pre-trained) U-Net, chapter 04's ablation")
    p.add_argument("--skip-bad", action="store_true", help="train without the unreadable or unpaired files of "
                   "--data (listed) instead of refusing to start")
    p.add_argument("--size", type=int, default=None, help="training size in px (default: 768, SD 2.1's native "
                   "size and the report's, on Stable Diffusion 2.1; 256 on the offline path)")
    p.add_argument("--test-fraction", type=float, default=0.05, help="held-out fraction (the ComicDiff report: 5 %%)")
    for f in ("rank", "batch_size", "epochs", "max_steps", "checkpoint_every", "seed", "adversarial_warmup"):
        p.add_argument("--" + f.replace("_", "-"), type=int, default=getattr(TrainConfig, f, None))
    for f in ("lr", "lpips_weight", "blend_alpha", "weight_decay", "adversarial_weight"):
        p.add_argument("--" + f.replace("_", "-"), type=float, default=getattr(TrainConfig, f))
    p.add_argument("--feed-forward", action=argparse.BooleanOptionalAction, default=True,
                   help="LoRA also in the feed-forward projections, as in the ComicDiff report (default); "
                        "--no-feed-forward: attention only")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--mixed-precision", default="auto", choices=["auto", "no", "fp16", "bf16"])
    p.add_argument("--perceptual", default="auto", choices=["auto", "lpips-vgg", "taef2"])
    p.add_argument("--no-resume", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    """``accelerate launch -m comicutils.comicdiff.train ...``; errors are one line (exit 1), bad
    arguments exit 2, ``COMICUTILS_DEBUG=1`` shows tracebacks."""
    from ..cli import run_command

    parser = _parser()
    args = parser.parse_args(argv)
    return run_command(lambda: _train_main(args, parser), debug=False)


def _train_main(args, parser) -> int:
    from .. import data as D
    from ..cli import check_finite_args, check_range
    from .components import load_components

    if args.size is not None:
        check_range(parser, "--size", args.size, 8)
    check_range(parser, "--rank", args.rank, 1)
    check_range(parser, "--batch-size", args.batch_size, 1)
    check_range(parser, "--epochs", args.epochs, 1)
    if args.max_steps is not None:
        check_range(parser, "--max-steps", args.max_steps, 1)
    check_finite_args(parser, args, ("lr", "lpips_weight", "blend_alpha", "weight_decay", "test_fraction",
                                     "adversarial_weight"))
    if args.adversarial_weight < 0 or args.adversarial_warmup < 0:
        parser.error("--adversarial-weight and --adversarial-warmup must be >= 0")
    if not 0 < args.lr:
        parser.error(f"--lr must be > 0; got {args.lr}")
    if not 0 <= args.test_fraction < 1:
        parser.error(f"--test-fraction must be in [0, 1); got {args.test_fraction}")
    if args.path == "offline" and not (args.denoiser or args.random_unet):
        parser.error(NEEDS_DENOISER)
    root = Path(args.data)
    photo_dir, comic_dir = root / "photos", root / "comics"
    if not (photo_dir.is_dir() and comic_dir.is_dir()):
        parser.error(f"--data: expected {photo_dir} and {comic_dir} (pairs matched by basename)")
    folder = D.PairedFolder(photo_dir, comic_dir, size=args.size or 8)   # size set below, once the path is known
    folder.check(skip_bad=args.skip_bad)                 # every image opened before the first step
    train_keys, test_keys = D.split_keys(folder.keys, args.test_fraction)
    kwargs = {"model_id": args.model_id} if args.model_id else {}
    if args.denoiser:
        if not (Path(args.denoiser) / "config.json").is_file():
            parser.error(f"--denoiser {args.denoiser}: no saved U-Net there (expected config.json + safetensors)")
        kwargs["denoiser"] = args.denoiser
    components = load_components(args.path, **kwargs)
    if components.path == "offline" and not (args.denoiser or args.random_unet):
        parser.error(NEEDS_DENOISER)
    model = ComicDiff(components)
    if args.size is None:
        args.size = SD21_TRAIN_SIZE if components.path == "sd21" else OFFLINE_TRAIN_SIZE
        print(f"training at {args.size} px ({components.path} path)", flush=True)
    if args.size % model.pad_multiple:
        parser.error(f"--size must be a multiple of {model.pad_multiple} on the {components.path} path; got {args.size}")
    folder.size = args.size
    cfg = TrainConfig(rank=args.rank, batch_size=args.batch_size, epochs=args.epochs, max_steps=args.max_steps,
                      lr=args.lr, lpips_weight=args.lpips_weight, blend_alpha=args.blend_alpha,
                      weight_decay=args.weight_decay, feed_forward=args.feed_forward,
                      gradient_checkpointing=args.gradient_checkpointing, mixed_precision=args.mixed_precision,
                      perceptual=args.perceptual, checkpoint_every=args.checkpoint_every, seed=args.seed,
                      adversarial_weight=args.adversarial_weight, adversarial_warmup=args.adversarial_warmup)
    result = train_lora(model, folder.subset(train_keys), cfg, out_dir=args.out, resume=not args.no_resume)
    print(f"trained {result.steps} steps in {result.seconds:.0f} s on {len(train_keys)} pairs "
          f"({len(test_keys)} held out); adapter: {result.adapter_dir}")
    return 0



def alpha_sweep(model: ComicDiff, photos: torch.Tensor, comics: torch.Tensor | None = None,
                alphas=(0.0, 0.25, 0.5, 0.75, 1.0, 1.25), *, identity: bool = True):
    """Translate once, re-blend for every α (one decode each), and score.

    Returns (rows, images): one dict per α with SSIM/PSNR/MSE against ``comics`` (if given),
    SSIM to the photo, and the mean dlib identity distance to the photo over the images where
    a face is found (with that count); ``images[α]`` is the (N, 3, H, W) batch.
    """
    from .. import metrics as M

    _, z, dz = model.translate(photos, return_latents=True)
    device = model.prompt_embeds.device
    rows, outs = [], {}
    emb_photo = None
    if identity:
        from ..faces import identity_embedding
        emb_photo = identity_embedding(photos, on_missing="nan")
    for a in alphas:
        with torch.inference_mode():
            y = model.decode(model.blend(z.to(device), dz.to(device), a)).cpu()
        h, w = photos.shape[-2:]
        y = y[..., :h, :w]
        outs[a] = y
        row = {"alpha": a, "SSIM to photo": float(M.ssim(y, photos).mean())}
        if comics is not None:
            row.update({"SSIM": float(M.ssim(y, comics).mean()), "PSNR": float(M.psnr(y, comics).mean()),
                        "MSE": float(M.mse(y, comics).mean())})
        if emb_photo is not None:
            from ..faces import identity_embedding
            d = (identity_embedding(y, on_missing="nan") - emb_photo).norm(dim=1)
            ok = ~torch.isnan(d)
            row["identity distance"] = float(d[ok].mean()) if ok.any() else math.nan
            row["faces found"] = int(ok.sum())
        rows.append(row)
    return rows, outs


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

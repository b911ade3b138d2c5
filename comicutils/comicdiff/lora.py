"""LoRA on the U-Net with peft: ΔW = κ · B · A with κ = lora_alpha / r, B initialised to zero.

Naming: ``alpha`` in this module is peft's ``lora_alpha``; the course writes the scale it gives
as κ = lora_alpha / r (notebook 00's table of symbols) and keeps α for ComicDiff's blend
between the photo's latent and the predicted comic latent.

For a targeted linear layer W (d_out x d_in) LoRA adds A (r x d_in, random) and B (d_out x r,
zeros), so a fresh adapter changes nothing and training moves only A and B:
r · (d_in + d_out) parameters per layer. Targets:

* ``ATTENTION`` — ``to_q``, ``to_k``, ``to_v``, ``to_out.0`` of every self- and cross-attention
  (the default; on SD 2.1 at r = 8: 1,659,904 trainable of 865,910,724, 0.19 %);
* ``FEED_FORWARD`` — the transformer blocks' ``ff.net.0.proj`` and ``ff.net.2`` (the ComicDiff report adds
  "selected feed-forward layers"; switch on with ``feed_forward=True``).

Adapters are saved alone (never the U-Net) as ``pytorch_lora_weights.safetensors`` in the
diffusers LoRA format (``unet.``-prefixed keys, the peft config in the safetensors metadata),
written atomically, and load back into a U-Net with ``load_adapter``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from ..runtime import atomic_dir

__all__ = ["ATTENTION", "FEED_FORWARD", "ADAPTER_NAME", "WEIGHT_NAME", "lora_config", "add_lora",
           "lora_parameters", "count_trainable", "expected_lora_parameters", "targeted_layers",
           "save_adapter", "load_adapter", "read_adapter_info", "merge", "unmerge", "has_lora"]

ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")
FEED_FORWARD = ("ff.net.0.proj", "ff.net.2")
ADAPTER_NAME = "comic"
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
INFO_NAME = "comicdiff_adapter.json"


def lora_config(rank: int = 8, alpha: float | None = None, *, feed_forward: bool = False,
                init: str = "gaussian"):
    """A peft ``LoraConfig``. ``alpha`` (peft's ``lora_alpha``) defaults to ``rank``, so the scale
    κ = lora_alpha / r is 1. ``init`` is
    peft's: ``"gaussian"`` or ``True`` (Kaiming) for A; B always starts at zero. Initialising
    both to zero (a known ComicDiff bug: nothing can train) is refused."""
    from peft import LoraConfig

    if rank < 1:
        raise ValueError(f"LoRA rank must be >= 1; got {rank}")
    if init is False or init == "zeros":
        raise ValueError("init must give A random values (B starts at zero); with A = B = 0 the "
                         "gradients of both vanish and nothing trains")
    targets = list(ATTENTION) + (list(FEED_FORWARD) if feed_forward else [])
    return LoraConfig(r=rank, lora_alpha=float(alpha if alpha is not None else rank),
                      init_lora_weights=init, target_modules=targets, lora_dropout=0.0)


def add_lora(unet: nn.Module, rank: int = 8, alpha: float | None = None, *, feed_forward: bool = False,
             init: str = "gaussian", seed: int | None = 0, adapter_name: str = ADAPTER_NAME) -> nn.Module:
    """Freeze the U-Net and inject a LoRA adapter in place; only LoRA parameters stay trainable
    (kept in fp32 even when the U-Net is half precision). ``seed`` makes A's draw reproducible."""
    unet.requires_grad_(False)
    config = lora_config(rank, alpha, feed_forward=feed_forward, init=init)
    if seed is not None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet.add_adapter(config, adapter_name=adapter_name)
    else:
        unet.add_adapter(config, adapter_name=adapter_name)
    for p in lora_parameters(unet):
        p.data = p.data.float()
    return unet


def lora_parameters(unet: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in unet.named_parameters() if "lora_" in n]


def count_trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def targeted_layers(unet: nn.Module, *, feed_forward: bool = False) -> dict[str, nn.Linear]:
    """The ``nn.Linear`` layers LoRA targets in a (LoRA-free) U-Net, by qualified name."""
    targets = ATTENTION + (FEED_FORWARD if feed_forward else ())
    return {name: m for name, m in unet.named_modules()
            if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets)}


def expected_lora_parameters(unet: nn.Module, rank: int, *, feed_forward: bool = False) -> int:
    """Σ r · (d_in + d_out) over the targeted layers: what :func:`add_lora` should add."""
    return sum(rank * (m.in_features + m.out_features)
               for m in targeted_layers(unet, feed_forward=feed_forward).values())


def has_lora(unet: nn.Module) -> bool:
    return any("lora_" in n for n, _ in unet.named_parameters())


def save_adapter(unet: nn.Module, directory: str | os.PathLike, info: dict | None = None,
                 adapter_name: str = ADAPTER_NAME, *, overwrite: bool = False) -> Path:
    """Write the adapter alone (diffusers LoRA format, safetensors) plus a small JSON with
    ``info`` (rank, alpha, training settings, metrics); all-or-nothing. An existing adapter
    folder is replaced only with ``overwrite=True`` (the new one is complete before the swap)."""
    from diffusers import StableDiffusionPipeline
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    if not state:
        raise ValueError("the U-Net carries no LoRA adapter to save")
    for k, v in state.items():
        if not torch.isfinite(v).all():
            raise ValueError(f"refusing to save a non-finite adapter tensor {k!r}")
    state = {k: v.detach().float().cpu().contiguous() for k, v in convert_state_dict_to_diffusers(state).items()}
    config = unet.peft_config[adapter_name]
    with atomic_dir(directory, overwrite=overwrite) as tmp:
        StableDiffusionPipeline.save_lora_weights(tmp, unet_lora_layers=state, weight_name=WEIGHT_NAME,
                                                  unet_lora_adapter_metadata=config.to_dict())
        meta = {"rank": config.r, "alpha": config.lora_alpha,
                "target_modules": sorted(config.target_modules), **(info or {})}
        (Path(tmp) / INFO_NAME).write_text(json.dumps(meta, indent=2, default=str))
    return Path(directory)


def read_adapter_info(directory: str | os.PathLike) -> dict:
    path = Path(directory) / INFO_NAME
    if not (Path(directory) / WEIGHT_NAME).is_file():
        raise FileNotFoundError(f"no {WEIGHT_NAME} in {directory} (not a ComicDiff adapter folder)")
    return json.loads(path.read_text()) if path.is_file() else {}


def load_adapter(unet: nn.Module, directory: str | os.PathLike, adapter_name: str = ADAPTER_NAME) -> nn.Module:
    """Load an adapter written by :func:`save_adapter` into a LoRA-free U-Net (in place)."""
    read_adapter_info(directory)
    if has_lora(unet):
        raise ValueError("this U-Net already carries a LoRA adapter; load into a fresh copy")
    unet.load_lora_adapter(str(directory), weight_name=WEIGHT_NAME, prefix="unet",
                           adapter_name=adapter_name)
    unet.requires_grad_(False)
    return unet


def _lora_layers(unet: nn.Module):
    from peft.tuners.lora import LoraLayer
    return [m for m in unet.modules() if isinstance(m, LoraLayer)]


def merge(unet: nn.Module) -> nn.Module:
    """Fold ΔW into the base weights (faster inference; :func:`unmerge` undoes it)."""
    for m in _lora_layers(unet):
        m.merge()
    return unet


def unmerge(unet: nn.Module) -> nn.Module:
    for m in _lora_layers(unet):
        m.unmerge()
    return unet

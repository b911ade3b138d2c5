"""StyleGAN2 for chapter 03: generator, blending, inversion, pseudo pairs, fine-tuning.

* :mod:`.model` -- the generator (rosinality key names, strict checkpoint loading, truncation).
* :mod:`.blend` -- per-resolution model blending (Toonify, the Human-to-Anime report) and style mixing (Lu & Zhou).
* :mod:`.invert` -- inversion into W / W+ / Z+ and Lu & Zhou's multi-level pseudo pairs.
* :mod:`.losses` -- Lu & Zhou's semantic-preservation constraint (LPIPS + 0.1 ID) and its stand-ins.
* :mod:`.train` -- a micro discriminator and GAN trainer; fine-tuning with the constraints.
* :mod:`.pairs` -- paired (photo, comic) folders for chapter 02's loader; table measurements.

Pretrained FFHQ weights (asset ``stylegan2-ffhq-config-f``) load with :func:`load_ffhq`; offline
they cannot be had, and chapter 03 trains :func:`micro_config` generators instead.
"""
from __future__ import annotations

from .blend import (SEED003_CUSTOM_BLEND, SEED003_SWAP_RESOLUTION, blend, blend_table, mix_latents,
                    multimodal, reference_guided, resample_blend_weights, swap_weights)
from .invert import (Inversion, PseudoPairs, initial_latent, invert, latent_to_wplus, mse_loss,
                     multilevel_pseudo_pairs, perceptual_mse)
from .losses import LAMBDA_ID, FeatureDistances, IdentityLoss, SemanticLoss
from .model import (CheckpointMismatch, Generator, GeneratorConfig, check_state_dict,
                    config_from_state_dict, load_checkpoint, load_state, rosinality_channels,
                    save_checkpoint, upfirdn2d)
from .pairs import (feature_frechet_distance, identity_distance_between, pair_key, pooled_features,
                    upsample_for_display, write_pairs)
from .train import (Discriminator, GANTrainer, LatentFit, diff_augment, finetune, fit_reconstruction, paired_term,
                    reconstruction_term, semantic_term)
from .dual import (SEED004_COMPARISON, DualFit, DualStyleGenerator, ModRes, comparison_rows, exemplar_code,
                   load_dual, photo_code, save_dual, stylize_with_exemplar, summarize_comparison, train_dual)

from .invert import closed_form_basis, invert_v
from .losses import StyleSetDistances

FFHQ_ASSET = "stylegan2-ffhq-config-f"


def micro_config(size: int = 64, width: int = 128, style_dim: int = 128, n_mlp: int = 4) -> GeneratorConfig:
    """A CPU-sized StyleGAN2: ``width`` channels up to 16 px, then halved per resolution."""
    channels = {}
    for r in [2 ** i for i in range(2, size.bit_length())]:
        channels[r] = max(8, width // max(1, r // 16)) if r > 16 else width
    return GeneratorConfig(size=size, style_dim=style_dim, n_mlp=n_mlp, channels=channels)


CPU_MAX_SIZE = 256
"""Largest generator (px) that :func:`ffhq_or_none` uses on a CPU; FFHQ's 1024 px one needs a GPU."""


def load_ffhq(device="cpu") -> Generator:
    """StyleGAN2 FFHQ config f from the asset registry, loaded strictly.

    The architecture is read off the file (rosinality's checkpoint has no config): the real
    file gives the 1024 px network, a test stand-in a small one. Raises
    :class:`comicutils.assets.AssetUnavailable` (with instructions) where the file cannot be had.
    """
    from .. import assets

    return load_checkpoint(assets.fetch(FFHQ_ASSET, quiet=True)).to(device).eval()


def _checkpoint_size(path) -> int:
    """The generator resolution of a rosinality checkpoint, read without loading its tensors."""
    import torch

    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:                  # files in torch's legacy format cannot be memory-mapped
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("g_ema", ckpt) if isinstance(ckpt, dict) else {}
    return config_from_state_dict(state).size


def ffhq_or_none(device="cpu") -> Generator | None:
    """The FFHQ generator where it can be had and used, else ``None`` with a substitute banner.

    ``full`` mode: :func:`load_ffhq` or its error. ``smoke`` and ``auto``: the checkpoint when it
    is in the cache or mirror and can run here -- on a GPU, or on a CPU when it is at most
    :data:`CPU_MAX_SIZE` px (FFHQ's 1024 px network is not; fine-tuning it is out of a CPU's
    reach); otherwise ``None``, announcing the micro stand-in that chapter 03 trains instead.
    """
    import torch

    from .. import assets
    from ..runtime import get_mode, substitute_banner

    if get_mode() == "full":
        return load_ffhq(device)
    wanted = "StyleGAN2 FFHQ config-f (1024 px, pretrained on 70,000 faces)"
    used = ("micro StyleGAN2 trained for a few steps (almost random weights)" if get_mode() == "smoke"
            else "micro StyleGAN2 (64 px) trained on the course's photos: the course weights' "
                 "photo generator where it is shipped, else one trained in the notebook")
    path = assets.fetch_or_substitute(FFHQ_ASSET, wanted=wanted, substitute=used)
    if path is None:
        return None
    size = _checkpoint_size(path)
    if size > CPU_MAX_SIZE and torch.device(device).type != "cuda":
        substitute_banner(wanted, used, f"the FFHQ file is here, but fine-tuning its {size} px generator "
                                        "needs a GPU; on a CPU the notebook trains the micro stand-in")
        return None
    return load_checkpoint(path).to(device).eval()


__all__ = [n for n in dir() if not n.startswith("_")]

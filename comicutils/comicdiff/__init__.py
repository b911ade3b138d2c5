"""ComicDiff (the ComicDiff report): a Stable Diffusion U-Net fine-tuned with LoRA for single-step
photo -> comic translation, ẑ_y = z_x + α · U(z_x, t=1, c), ŷ = D(ẑ_y).

* :mod:`.components` — the frozen parts: SD 2.1 through diffusers, or the offline path (taef2
  VAE + small U-Net + fixed prompt embedding); configs, codecs.
* :mod:`.lora` — peft LoRA on the U-Net (B = 0 init), counting, save/load in the diffusers
  LoRA format, merge/unmerge.
* :mod:`.model` — :class:`ComicDiff` (forward and ``translate``), the MSE + 0.8·LPIPS loss.
* :mod:`.train` — denoiser pre-training, LoRA training on Accelerate, evaluation, the
  ``accelerate launch -m comicutils.comicdiff.train`` entry point.
"""
from .components import (DEFAULT_PROMPT, OFFLINE_SCHEDULER_CONFIG, SD21_MODEL_ID, SD21_REVISION,
                         SD21_SCHEDULER_CONFIG, SD21_UNET_CONFIG, SMALL_UNET_CONFIG, Components, SD21Unavailable,
                         SDVAECodec, TaefCodec, base_provenance, build_unet, fixed_prompt_embedding, hf_hub_cache, load_components,
                         load_denoiser, load_sd21, offline_components, save_denoiser, sd21_download_command,
                         training_memory, training_plan, unet_fingerprint)
from .lora import (ATTENTION, FEED_FORWARD, add_lora, count_trainable, expected_lora_parameters,
                   load_adapter, lora_config, lora_parameters, merge, read_adapter_info, save_adapter, unmerge)
from .model import (DEFAULT_TIMESTEP, ComicDiff, ComicDiffLoss, PerceptualDistance, img2img, load_translator,
                    perceptual_loss, translate_faces, unet_calls_img2img)
# .train is imported on first use, so that ``python -m comicutils.comicdiff.train`` runs it cleanly
_TRAIN_NAMES = ("LatentPairs", "NonFiniteLoss", "TrainConfig", "TrainResult", "encode_images", "encode_pairs",
                "add_noise", "alpha_sweep", "denoising_error", "evaluate_translation", "predict_clean",
                "pretrain_denoiser", "train_lora")


def __getattr__(name):
    if name in _TRAIN_NAMES:
        from . import train
        return getattr(train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [name for name in dir() if not name.startswith("_")] + list(_TRAIN_NAMES)

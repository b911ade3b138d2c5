"""Interactive explorers for ComicDiff (chapter 05): the blending factor α and the LoRA rank.

The logic lives in plain functions the notebook (and the tests) call directly; the ipywidgets
wrappers only wire sliders and buttons to them, so nbval exercises everything without a
browser.

* :func:`prepare_alpha` runs the U-Net **once** and caches z_x and Δz; :func:`render_alpha`
  then costs one decode per α (ẑ = z_x + α·Δz), which is what makes a live slider possible.
* :func:`rank_summary` / :func:`render_rank` compare adapters of several ranks: trainable
  parameters, held-out metrics and the translated image.
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field

import torch

from .images import check_image_tensor, to_pil

__all__ = ["AlphaState", "prepare_alpha", "render_alpha", "alpha_readout", "alpha_slider",
           "RankEntry", "rank_summary", "render_rank", "rank_explorer"]


@dataclass
class AlphaState:
    """Everything an α update needs: the model (for its decoder), the photo, z_x and Δz."""

    model: torch.nn.Module
    photo: torch.Tensor                 # (1, 3, H, W) in [0, 1]
    latents: torch.Tensor               # z_x
    delta: torch.Tensor                 # Δz
    target: torch.Tensor | None = None  # the artist's comic, if known
    photo_embedding: torch.Tensor | None = None
    cache: dict = field(default_factory=dict)


def prepare_alpha(model, photo: torch.Tensor, target: torch.Tensor | None = None, *,
                  identity: bool = True) -> AlphaState:
    """One encode and one U-Net call for ``photo`` ((3, H, W) or (1, 3, H, W) in [0, 1]; sides
    divisible by the model's ``pad_multiple``). ``identity`` also caches the photo's dlib
    identity descriptor for the readout (NaN when no face is found)."""
    x = check_image_tensor(photo.unsqueeze(0) if photo.ndim == 3 else photo, "photo")
    if x.shape[0] != 1:
        raise ValueError(f"prepare_alpha takes one photo; got a batch of {x.shape[0]}")
    if x.shape[-1] % model.pad_multiple or x.shape[-2] % model.pad_multiple:
        raise ValueError(f"photo sides must be multiples of {model.pad_multiple}; resize it first")
    _, z, dz = model.translate(x, return_latents=True)
    emb = None
    if identity:
        from .faces import identity_embedding
        emb = identity_embedding(x, on_missing="nan")
    t = None if target is None else check_image_tensor(target.unsqueeze(0) if target.ndim == 3 else target, "target")
    return AlphaState(model, x, z, dz, t, emb)


@torch.inference_mode()
def render_alpha(state: AlphaState, alpha: float) -> torch.Tensor:
    """The comic at ``alpha``: decode(z_x + α·Δz) -> (1, 3, H, W) in [0, 1]. Equals
    ``model.translate(photo, alpha)``; costs one decode."""
    model = state.model
    z = model.blend(state.latents.to(model.prompt_embeds.device), state.delta.to(model.prompt_embeds.device), alpha)
    return model.decode(z).cpu()


def alpha_readout(state: AlphaState, image: torch.Tensor) -> dict[str, float]:
    """SSIM to the photo and (if known) to the target comic, and the dlib identity distance to
    the photo (NaN when a face is not found)."""
    from . import metrics
    from .faces import identity_embedding

    out = {"SSIM to photo": float(metrics.ssim(image, state.photo))}
    if state.target is not None:
        out["SSIM to comic"] = float(metrics.ssim(image, state.target))
    if state.photo_embedding is not None:
        emb = identity_embedding(image, on_missing="nan")
        out["identity distance"] = float((emb - state.photo_embedding).norm(dim=1)[0])
    return out


DISPLAY_PX = 192
"""Side of each image in the explorers, in screen pixels: three images and the controls fit a
1366×768 screen without scrolling, whatever the model's resolution."""


def _png(image: torch.Tensor, size: int = DISPLAY_PX) -> bytes:
    """PNG bytes of one image resized to ``size`` × ``size`` (nearest-neighbour when enlarging,
    so small models show their real pixels)."""
    from PIL import Image

    pil = to_pil(image[0] if image.ndim == 4 else image)
    resample = Image.Resampling.NEAREST if pil.width < size else Image.Resampling.LANCZOS
    buf = io.BytesIO()
    pil.resize((size, size), resample).save(buf, format="PNG")
    return buf.getvalue()


def _fmt(readout: dict[str, float]) -> str:
    return "<br>".join(f"{k}: <b>{'n/a' if math.isnan(v) else f'{v:.3f}'}</b>" for k, v in readout.items())


def _panel(widget, title: str):
    import ipywidgets as W

    return W.VBox([W.HTML(f"<b>{title}</b>"), widget], layout=W.Layout(align_items="center"))


def _image_widget(png: bytes | None = None, size: int = DISPLAY_PX):
    import ipywidgets as W

    img = W.Image(format="png", layout=W.Layout(width=f"{size}px", height=f"{size}px"))
    if png is not None:
        img.value = png
    return img


def alpha_slider(state: AlphaState, *, alpha: float = 1.0, low: float = 0.0, high: float = 1.5,
                 step: float = 0.05, size: int = DISPLAY_PX):
    """An ipywidgets α explorer over a prepared state.

    One row: photo | ComicDiff at α | the artist's comic (when known), each ``size`` px square;
    below it the slider with the readout beside it. Moving the slider costs one decode.
    """
    import ipywidgets as W

    slider = W.FloatSlider(value=alpha, min=low, max=high, step=step, description="α (blend)",
                           continuous_update=True, readout_format=".2f",
                           layout=W.Layout(width=f"{2 * size}px"))
    image = _image_widget(size=size)
    text = W.HTML(layout=W.Layout(width=f"{size + 40}px"))
    panels = [_panel(_image_widget(_png(state.photo, size), size), "photo"),
              _panel(image, "ComicDiff at α")]
    if state.target is not None:
        panels.append(_panel(_image_widget(_png(state.target, size), size), "artist's comic"))

    def update(change=None):
        out = render_alpha(state, slider.value)
        image.value = _png(out, size)
        text.value = _fmt(alpha_readout(state, out))

    slider.observe(update, names="value")
    update()
    box = W.VBox([W.HBox(panels), W.HBox([slider, text], layout=W.Layout(align_items="center"))])
    box.slider, box.image, box.readout = slider, image, text      # handles for code and tests
    return box


# --------------------------------------------------------------------------- ranks
@dataclass
class RankEntry:
    rank: int
    model: torch.nn.Module
    trainable: int
    metrics: dict[str, float] = field(default_factory=dict)


def rank_summary(models: dict[int, torch.nn.Module], photos: torch.Tensor, comics: torch.Tensor) -> list[RankEntry]:
    """For each rank: LoRA parameter count and held-out SSIM/PSNR/MSE of the translations."""
    from .comicdiff import evaluate_translation
    from .comicdiff.lora import lora_parameters

    rows = []
    for r in sorted(models):
        m = models[r]
        n = sum(p.numel() for p in lora_parameters(m.unet))
        rows.append(RankEntry(r, m, n, evaluate_translation(m, photos, comics, metrics=("ssim", "psnr", "mse"))))
    return rows


def render_rank(entries: list[RankEntry], rank: int, photo: torch.Tensor, alpha: float = 1.0):
    """(image, description) for one rank: the translated photo and its row of numbers."""
    entry = next((e for e in entries if e.rank == rank), None)
    if entry is None:
        raise ValueError(f"no adapter of rank {rank}; have {[e.rank for e in entries]}")
    image = entry.model.translate(photo.unsqueeze(0) if photo.ndim == 3 else photo, alpha)
    desc = {"rank": rank, "LoRA parameters": entry.trainable, **entry.metrics}
    return image, desc


def rank_explorer(entries: list[RankEntry], photo: torch.Tensor, *, rank: int | None = None,
                  size: int = DISPLAY_PX):
    """An ipywidgets rank switch (toggle buttons): the photo and its translation at the chosen
    rank side by side, ``size`` px each, with the parameter count and held-out metrics beside
    them. Opens on ``rank`` (default: the largest rank, the one trained like the write-up)."""
    import ipywidgets as W

    ranks = [e.rank for e in entries]
    start = max(ranks) if rank is None else rank
    if start not in ranks:
        raise ValueError(f"no adapter of rank {start}; have {ranks}")
    buttons = W.ToggleButtons(options=ranks, value=start, description="LoRA rank")
    image = _image_widget(size=size)
    text = W.HTML(layout=W.Layout(width=f"{size + 60}px"))

    def update(change=None):
        out, desc = render_rank(entries, buttons.value, photo)
        image.value = _png(out, size)
        text.value = "<br>".join(f"{k}: <b>{v:,}</b>" if isinstance(v, int) else f"{k}: <b>{v:.3f}</b>"
                                 for k, v in desc.items())

    buttons.observe(update, names="value")
    update()
    photo_img = _image_widget(_png(photo.unsqueeze(0) if photo.ndim == 3 else photo, size), size)
    box = W.VBox([buttons, W.HBox([_panel(photo_img, "photo"), _panel(image, "translation"), text],
                                  layout=W.Layout(align_items="center"))])
    box.buttons, box.image, box.readout = buttons, image, text
    return box

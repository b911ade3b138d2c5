"""One interface for every photo -> comic method, so evaluation, the CLI and the notebooks
treat them alike.

A :class:`Stylizer` has a ``name``, a ``weights`` description (what it runs on: "none",
"ImageNet", "taef2 pretrained (substitute for VGG-16)", a checkpoint path, ...), a parameter
count, and ``__call__(images) -> images``: (N, 3, H, W) in [0, 1] in, the same shape in
[0, 1] out, inputs untouched. Methods that need a fixed working size resize in and back out
(bicubic) with a documented rule.

Available here: the identity baseline, the classical cartoon filter (chapter 06), neural
style transfer (chapter 01) and pix2pix generators (chapter 02). Later chapters add theirs
with :func:`register`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .images import check_image_tensor, resize

_FACTORIES: dict[str, Callable[..., "Stylizer"]] = {}


def register(name: str):
    """Decorator: make a stylizer class or factory available to :func:`build`."""
    def wrap(factory):
        _FACTORIES[name] = factory
        return factory
    return wrap


def available() -> list[str]:
    return sorted(_FACTORIES)


def build(name: str, **kwargs) -> "Stylizer":
    """Build the stylizer called ``name`` (see :func:`available`) with its options."""
    if name not in _FACTORIES:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(available())}")
    return _FACTORIES[name](**kwargs)


@dataclass
class Stylizer:
    """Base class: subclasses implement :meth:`stylize` on validated [0, 1] batches."""

    name: str = "stylizer"
    weights: str = "none"
    parameters: int = 0
    settings: dict = field(default_factory=dict)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        single = images.ndim == 3
        x = check_image_tensor(images.unsqueeze(0) if single else images, f"{self.name} input")
        out = self.stylize(x.detach().clone())
        if out.shape != x.shape:
            raise RuntimeError(f"{self.name} returned {tuple(out.shape)} for input {tuple(x.shape)}")
        out = out.clamp(0.0, 1.0)
        return out[0] if single else out

    def stylize(self, images: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def describe(self) -> dict:
        """One row for tables: name, weights, parameters, settings."""
        return {"method": self.name, "weights": self.weights, "parameters": self.parameters,
                **{f"setting {k}": v for k, v in self.settings.items()}}


def _resized(fn, images: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Run ``fn`` at ``size`` and resize its result back to the input's H x W."""
    h, w = images.shape[-2:]
    return resize(fn(resize(images, size)), (h, w))


@register("identity")
@dataclass
class Identity(Stylizer):
    """The photo offered as its own comic: the baseline every method must beat."""

    name: str = "identity"

    def stylize(self, images):
        return images


@register("cartoon")
@dataclass
class Cartoon(Stylizer):
    """The classical cartoon filter of :mod:`comicutils.cartoon` (training-free, offline)."""

    name: str = "cartoon filter"
    colors: int = 8

    def __post_init__(self):
        self.settings = {"colors": self.colors}

    def stylize(self, images):
        from .cartoon import cartoonize

        return cartoonize(images, colors=self.colors)


@register("nst")
@dataclass
class NST(Stylizer):
    """Neural style transfer (:func:`comicutils.nst.stylize`) towards one ``style`` image.

    Each image is optimised separately at ``size`` px (multiple of 8) from the photo, then
    resized back. ``style``: (1, 3, H, W) or (3, H, W) in [0, 1].
    """

    style: torch.Tensor | None = None
    name: str = "NST"
    backbone: str = "vgg16"
    steps: int = 200
    style_weight: float | None = None
    size: int = 256
    content_weight: float = 1.0
    optimizer: str = "adam"
    lr: float | None = None
    seed: int = 0

    def __post_init__(self):
        from . import nst

        if self.style is None:
            raise ValueError("NST needs a style image (style=...)")
        if self.size % 8:
            raise ValueError(f"NST size must be a multiple of 8, got {self.size}")
        info = nst.resolve_backbone(self.backbone)
        self.weights = info.label()
        self.parameters = 0  # nothing is trained: the image is optimised
        self.settings = {"backbone": info.used, "steps": self.steps,
                         "style_weight": self.style_weight, "size": self.size}

    def stylize(self, images):
        from . import nst

        style = resize(self.style if self.style.ndim == 4 else self.style.unsqueeze(0), self.size)

        def run(batch):
            return torch.cat([nst.stylize(img.unsqueeze(0), style, backbone=self.backbone,
                                          steps=self.steps, style_weight=self.style_weight,
                                          content_weight=self.content_weight, optimizer=self.optimizer,
                                          lr=self.lr, seed=self.seed, init="content", show_progress=False).image
                              for img in batch])

        return _resized(run, images, self.size)


# ``checkpoint=`` values that name a course pix2pix generator (:mod:`comicutils.course_weights`)
COURSE_PIX2PIX = {"course": "pix2pix", "course-style": "pix2pix-style"}


@register("pix2pix")
@dataclass
class Pix2Pix(Stylizer):
    """A trained pix2pix generator (chapter 02): a checkpoint path, ``"course"`` (the course
    weights, :mod:`comicutils.course_weights`; ``"course-style"``: trained on with chapter 01's
    Gram-matrix and content terms) or a generator module.

    Images are resized to the generator's training size and back; inference with per-image
    BatchNorm statistics (the pix2pix paper's rule, see :func:`comicutils.pix2pix.translate`).
    """

    checkpoint: str | Path | None = None
    generator: torch.nn.Module | None = None
    name: str = "pix2pix"
    norm_stats: str = "image"
    device: str | None = None

    def __post_init__(self):
        from . import pix2pix
        from .runtime import get_device

        if self.generator is None:
            if self.checkpoint is None:
                raise ValueError("pix2pix needs checkpoint=... or generator=...")
            if str(self.checkpoint) in COURSE_PIX2PIX:
                from . import course_weights

                name = COURSE_PIX2PIX[str(self.checkpoint)]
                self.generator = course_weights.load_pix2pix(get_device(self.device), name=name)
                steps = course_weights.entry(name)["steps"]
                self.weights = (f"course weights ({steps} steps)" if name == "pix2pix" else
                                f"course weights (pix2pix {course_weights.entry('pix2pix')['steps']} + "
                                f"{name} {steps} steps)")
            else:
                self.generator = pix2pix.load_generator(self.checkpoint, device=get_device(self.device))
                self.weights = f"checkpoint {Path(self.checkpoint).name}"
        else:
            self.weights = "in-memory generator"
        cfg = dict(getattr(self.generator, "config", {}))
        self.size = int(cfg.get("size", 256))
        self.parameters = pix2pix.count_parameters(self.generator)
        self.settings = {"generator": cfg.get("name", type(self.generator).__name__),
                         "size": self.size, "norm_stats": self.norm_stats}

    def stylize(self, images):
        from . import pix2pix

        return _resized(lambda x: pix2pix.translate(self.generator, x, norm_stats=self.norm_stats),
                        images, self.size)


class MethodUnavailable(RuntimeError):
    """The method's weights cannot be had here; it is skipped, never replaced by random weights."""


@register("animegan")
@dataclass
class AnimeGAN(Stylizer):
    """AnimeGANv2 face_paint_512_v2 with face2paint processing; fp16 on a GPU.

    The GAN project report used the original AnimeGAN (TachibanaYoshino, TensorFlow); this is
    its successor, the version with maintained PyTorch weights for faces.

    ``size``: face2paint's working size; default 512 (the published setting), 128 in smoke mode
    (one 512 px pass takes seconds on a CPU). Offline (weights missing) building it raises
    :class:`MethodUnavailable` after the banner; full mode raises the asset's error.
    """

    name: str = "AnimeGANv2"
    size: int | None = None

    def __post_init__(self):
        from . import animegan
        from .runtime import by_mode

        self.generator = animegan.load_generator()
        if self.generator is None:
            raise MethodUnavailable("AnimeGANv2 weights (face_paint_512_v2) are not available "
                                    "here; the method is skipped")
        if self.size is None:
            self.size = by_mode(smoke=128, auto=animegan.FACE2PAINT_SIZE)
        self.weights = "face_paint_512_v2"
        self.parameters = sum(p.numel() for p in self.generator.parameters())
        self.settings = {"size": self.size}

    def stylize(self, images):
        from . import animegan

        return animegan.face2paint(self.generator, images, size=self.size)


# ``adapter=`` values that name a course weight (:mod:`comicutils.course_weights`)
COURSE_ADAPTERS = {"course": "comicdiff-adapter", "course-adv": "comicdiff-adapter-adv",
                   "course-gan": "comicdiff-adapter-gan", "course-style": "comicdiff-adapter-style",
                   "course-ink": "comicdiff-adapter-ink"}


@register("comicdiff")
@dataclass
class ComicDiffStylizer(Stylizer):
    """ComicDiff (chapters 04-05): single-step LoRA U-Net translation, ẑ = z_x + α·Δz.

    Give an ``adapter`` folder (``train_lora``'s ``adapter/``; offline adapters find their
    pre-trained denoiser next to the run), ``"course"`` (the course denoiser and adapter,
    :mod:`comicutils.course_weights`; ``"course-adv"``: the adapter trained with the adversarial
    term; ``"course-gan"``: the course adapter trained on with a stronger one; ``"course-style"``: trained on
    with chapter 01's Gram-matrix term; ``"course-ink"``: that one trained on with the ink term, sorted
    edge strengths against the comic's) or a ready ``model``. Images are resized to the
    adapter's training size and back (bicubic); ``alpha`` blends the learned residual.
    """

    adapter: str | Path | None = None
    model: torch.nn.Module | None = None
    alpha: float = 1.0
    denoiser: str | Path | None = None
    merge: bool = True
    name: str = "comicdiff"

    def __post_init__(self):
        from .comicdiff import load_translator

        if self.model is None:
            if self.adapter is None:
                raise ValueError("comicdiff needs adapter=... or model=...")
            if str(self.adapter) in COURSE_ADAPTERS:
                from . import course_weights

                name = COURSE_ADAPTERS[str(self.adapter)]
                self.model = course_weights.load_comicdiff(name, merge=self.merge)
                self.weights = (f"course weights (denoiser {course_weights.entry('comicdiff-denoiser')['steps']} + "
                                f"{name} {course_weights.entry(name)['steps']} steps, offline path)")
            else:
                self.model = load_translator(self.adapter, denoiser=self.denoiser, merge=self.merge)
                self.weights = (f"adapter {Path(self.adapter).parent.name}/{Path(self.adapter).name} "
                                f"({self.model.path} path)")
        else:
            self.weights = f"in-memory model ({self.model.path} path)"
        info = getattr(self.model, "info", {}) or {}
        size = info.get("size") or [256, 256]
        self.size = int(size[0])
        self.parameters = sum(p.numel() for p in self.model.parameters())
        self.settings = {"alpha": self.alpha, "rank": info.get("rank"), "path": self.model.path,
                         "size": self.size, "timestep": self.model.timestep}

    def stylize(self, images):
        return _resized(lambda x: self.model.translate(x, self.alpha), images, self.size)

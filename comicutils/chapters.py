"""What one chapter hands to another: find an earlier chapter's result, or train a quick one.

Later chapters reuse what earlier ones trained — chapter 06 scores chapter 02's pix2pix
generators, chapters 05 and 06 run chapter 04's ComicDiff adapter. A notebook may be opened
alone, though (on Colab, in an empty folder, with nothing trained yet), so each hand-over is
one function that

1. looks in the earlier chapter's run folder (:func:`comicutils.runtime.run_dir`, which
   knows the checkout, installed-package and ``COMICUTILS_RUNS`` layouts) for a result made
   at the size the caller needs, and uses it when it is there;
2. otherwise trains a quick stand-in with the same package code the chapter uses, and says so
   in a blue notice box: what was looked for, where, why it was not used, what is trained
   instead. (The orange "substitute in use" box means something else: that a real
   pretrained model is missing.)

Smoke mode never reuses anything (its runs are tiny and must not depend on what ran before):
it always trains the quick version, and the notice says why.

* :func:`pix2pix_from_chapter_02` — chapter 02's generator checkpoints, or a quick U-Net.
* :func:`comicdiff_from_chapter_04` — chapter 04's rank-r adapter (plus its pre-trained
  denoiser on the offline path), or a quick adapter on the components
  :func:`comicutils.comicdiff.load_components` picks (Stable Diffusion 2.1 when it is in the
  Hugging Face cache, the offline path with a denoiser pre-trained here otherwise).
* :func:`stylegan_from_chapter_03` — chapter 03's micro photo generator
  (``photo_generator.pt``), or a micro generator warm-started here by regression on the
  course's photos.

And what one training step of chapters 01, 02 and 07 needs, for the line a training cell prints
before it starts (:func:`comicutils.memory.plan`): :func:`nst_step_memory`,
:func:`pix2pix_step_memory`, :func:`gan_step_memory` (chapter 04's is
:func:`comicutils.comicdiff.training_memory`). Each builds the chapter's own networks on the meta
device at the real size and batch; their trainers run in float32 (none has a mixed-precision or
checkpointing option), so the estimates are float32 too.
"""
from __future__ import annotations

import copy
import dataclasses
import pickle
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .runtime import by_mode, get_device, get_mode, notice_banner, run_dir

__all__ = ["Pix2PixResult", "ComicDiffResult", "StyleGANResult", "pix2pix_from_chapter_02",
           "comicdiff_from_chapter_04", "stylegan_from_chapter_03", "course_training_pairs",
           "nst_step_memory", "pix2pix_step_memory", "gan_step_memory"]

PIX2PIX_CHAPTER = "02"
STYLEGAN_CHAPTER = "03"
COMICDIFF_CHAPTER = "04"
STYLEGAN_FILE = "photo_generator.pt"


def course_training_pairs(size: int):
    """The course's training pairs at ``size`` px: face2comics v2 preview pairs, the shared
    split's training part (the held-out pairs never train anything)."""
    from . import data

    train, _ = data.train_test_pairs(data.face2comics_pairs("v2", size=size))
    return train


def _check_pairs(train, size: int):
    if train is None:
        return course_training_pairs(size)
    if tuple(train.photos.shape[-2:]) != (size, size):
        raise ValueError(f"training pairs are {tuple(train.photos.shape[-2:])} px, expected {size} x {size}")
    return train


def _first_line(err: BaseException, limit: int = 160) -> str:
    text = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _announce_quick(what: str, where: Path | None, why: str, instead: str) -> None:
    looked = f"Looked for {what} in {where}." if where is not None else f"Did not look for {what}."
    notice_banner(f"{what[0].upper()}{what[1:]} not used: training a quick one here",
                  looked, f"Why: {why}.", f"Instead: {instead}.")


# --------------------------------------------------------------------------- chapter 02
@dataclass
class Pix2PixResult:
    """pix2pix generators for a later chapter, as stylizers ready for
    :func:`comicutils.evaluation.evaluate` (names ``"pix2pix <generator>"``)."""

    stylizers: dict = field(default_factory=dict)      # method name -> Stylizer
    checkpoints: list[Path] = field(default_factory=list)   # chapter 02's files used (empty: trained here)
    trained_here: bool = False
    looked_in: Path | None = None


def _pix2pix_checkpoints(folder: Path, size: int) -> tuple[dict, list[str]]:
    """Generators at ``size`` px in ``folder`` (``{path: generator}``) and why others were skipped."""
    from . import pix2pix

    found, skipped = {}, []
    for path in sorted(folder.glob("*.pt")) if folder.is_dir() else []:
        try:
            G = pix2pix.load_generator(path)
        except (OSError, ValueError, RuntimeError, KeyError) as err:
            skipped.append(f"{path.name} (unreadable: {type(err).__name__})")
            continue
        got = G.config.get("size")
        if got == size:
            found[path] = G
        else:
            skipped.append(f"{path.name} ({got} px)")
    return found, skipped


def pix2pix_from_chapter_02(size: int, train=None, *, quick_steps: int | None = None,
                            quick_ngf: int | None = None, seed: int = 0) -> Pix2PixResult:
    """Chapter 02's pix2pix generators trained at ``size`` px, or a quick U-Net trained here.

    Looks for ``*.pt`` checkpoints in chapter 02's run folder (``run_dir("02")``) whose
    generator config says ``size``; each becomes a stylizer named ``"pix2pix <file stem>"``.
    When there is none (or in smoke mode), a U-Net (``quick_ngf`` filters; default 8 in smoke
    mode, 64 otherwise) is trained with the Human-to-Anime report's losses for ``quick_steps`` steps (default 3
    in smoke mode, 320 otherwise) on ``train`` (a :class:`~comicutils.data.PairSet` at
    ``size``; default :func:`course_training_pairs`), announced by a notice.
    """
    from . import data, pix2pix, stylizers

    folder = run_dir(PIX2PIX_CHAPTER, create=False)
    if get_mode() == "smoke":
        why = "smoke mode never reuses another chapter's results"
    else:
        found, skipped = _pix2pix_checkpoints(folder, size)
        if found:
            result = Pix2PixResult(checkpoints=list(found), looked_in=folder)
            for path, G in found.items():
                s = stylizers.build("pix2pix", generator=G)
                s.weights = f"checkpoint {path.name} (chapter {PIX2PIX_CHAPTER})"
                result.stylizers[f"pix2pix {path.stem}"] = s
            print(f"pix2pix generators from chapter {PIX2PIX_CHAPTER} ({folder}): "
                  + ", ".join(p.name for p in found))
            return result
        why = (f"no checkpoint at {size} px there" + (f" (found {', '.join(skipped)})" if skipped else "")
               + f"; run notebook {PIX2PIX_CHAPTER} at this size first to use its generators")
    steps = quick_steps if quick_steps is not None else by_mode(smoke=3, auto=320)
    ngf = quick_ngf if quick_ngf is not None else by_mode(smoke=8, auto=64)
    _announce_quick(f"chapter {PIX2PIX_CHAPTER}'s pix2pix checkpoints", folder, why,
                    f"a pix2pix U-Net (ngf={ngf}) trained for {steps} steps at {size} px")
    train = _check_pairs(train, size)
    G = pix2pix.build_generator("unet", size=size, ngf=ngf)
    trainer = pix2pix.Pix2PixTrainer(G, pix2pix.PatchDiscriminator())
    trainer.train(data.PairDataset(train, data.JointAugment(), seed=seed), steps=steps, seed=seed)
    s = stylizers.build("pix2pix", generator=trainer.generator.eval())
    s.weights = f"U-Net trained here ({trainer.step} steps)"
    return Pix2PixResult(stylizers={"pix2pix U-Net": s}, trained_here=True, looked_in=folder)


# --------------------------------------------------------------------------- chapter 03
@dataclass
class StyleGANResult:
    """A photo StyleGAN2 generator for a later chapter (eval mode, frozen).

    ``path`` is chapter 03's ``photo_generator.pt`` when it was used, ``None`` when the
    generator was warm-started here (``steps`` regression steps, ``trained_here``).
    """

    generator: torch.nn.Module
    trained_here: bool
    looked_in: Path | None = None
    path: Path | None = None
    steps: int | None = None

    def describe(self) -> str:
        G = self.generator
        what = f"{G.size} px micro StyleGAN2 ({G.n_latent} latents of {G.style_dim})"
        if self.trained_here:
            return f"{what}, warm-started here for {self.steps} regression steps"
        return f"{what} from chapter {STYLEGAN_CHAPTER} ({self.path.name})"


def _stylegan_found(path: Path, size: int):
    """Chapter 03's photo generator at ``size`` px, or ``None`` and why it cannot be used."""
    from . import stylegan as sg

    if not path.is_file():
        return None, (f"no {path.name} there; run notebook {STYLEGAN_CHAPTER} (auto mode) first to use "
                      "its photo generator")
    try:
        G = sg.load_checkpoint(path)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, EOFError, pickle.UnpicklingError) as err:
        # a truncated, foreign or corrupt file must not stop the chapter: say why, train a quick one
        what = ("UnpicklingError: not a PyTorch checkpoint" if isinstance(err, pickle.UnpicklingError)
                else _first_line(err, 120))
        return None, f"{path.name} there cannot be read as a StyleGAN2 generator ({what})"
    if G.size != size:
        return None, f"{path.name} there is a {G.size} px generator, not {size} px"
    return G, ""


def stylegan_from_chapter_03(size: int, *, quick_steps: int | None = None, width: int | None = None,
                             style_dim: int | None = None, seed: int = 0,
                             device: str | torch.device | None = None) -> StyleGANResult:
    """Chapter 03's micro photo generator at ``size`` px, or one warm-started here.

    Looks for ``photo_generator.pt`` (written by notebook 03 with
    :func:`comicutils.stylegan.save_checkpoint` when it trains the micro stand-in for FFHQ) in
    chapter 03's run folder and uses it when it is a readable generator of ``size`` px. Otherwise
    (or in smoke mode) a :func:`~comicutils.stylegan.micro_config` generator (``width`` channels,
    default 16 in smoke mode and 128 otherwise; ``style_dim`` latent size, default 16 / 32 --
    chapter 03's auto settings) is warm-started by regression
    (:func:`comicutils.stylegan.fit_reconstruction`, chapter 03's first stage, without its
    adversarial steps) on the face2comics v2 and v1 photos and the 30 CC0 portraits for
    ``quick_steps`` steps (default 4 in smoke mode, 200 otherwise), announced by a notice. The
    loss is chapter 03's: taef2 perceptual distance plus pixel MSE. ``device`` defaults to
    :func:`comicutils.runtime.get_device`. The generator comes back frozen, in eval mode.
    """
    from . import data
    from . import stylegan as sg

    device = torch.device(device) if device is not None else get_device()
    folder = run_dir(STYLEGAN_CHAPTER, create=False)
    path = folder / STYLEGAN_FILE
    if get_mode() == "smoke":
        why = "smoke mode never reuses another chapter's results"
    else:
        G, why = _stylegan_found(path, size)
        if G is not None:
            G = G.to(device).eval().requires_grad_(False)
            result = StyleGANResult(G, False, folder, path)
            print(f"StyleGAN2 from chapter {STYLEGAN_CHAPTER}: {result.describe()} ({path})")
            return result
    steps = quick_steps if quick_steps is not None else by_mode(smoke=4, auto=200)
    width = width if width is not None else by_mode(smoke=16, auto=128)
    style_dim = style_dim if style_dim is not None else by_mode(smoke=16, auto=32)
    _announce_quick(f"chapter {STYLEGAN_CHAPTER}'s photo generator ({STYLEGAN_FILE})", folder, why,
                    f"a {size} px micro StyleGAN2 (width {width}, {style_dim}-number latents) warm-started "
                    f"by regression for {steps} steps on the course's photos (no adversarial steps)")
    photos = torch.cat([data.face2comics_pairs("v2", size=size).photos, data.face2comics_pairs("v1", size=size).photos,
                        data.portraits(size=size)[1]])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        G = sg.Generator(sg.micro_config(size, width=width, style_dim=style_dim)).to(device)
    feature_size = min(size, 32)                     # chapter 03 measures at 32 px (a quarter of the cost)
    loss = sg.perceptual_mse(sg.FeatureDistances(feature_size=feature_size).to(device)) if size % 8 == 0 else None
    sg.fit_reconstruction(G, photos, steps, loss=loss, seed=seed, desc="micro photo generator (regression)")
    G = G.eval().requires_grad_(False)
    return StyleGANResult(G, True, folder, None, steps)


# --------------------------------------------------------------------------- chapter 04
@dataclass
class ComicDiffResult:
    """A ComicDiff translator for a later chapter.

    ``model`` carries its LoRA adapter (eval mode); ``path`` is ``"offline"`` or ``"sd21"``;
    ``adapter``/``denoiser`` are chapter 04's folders when they were used (``None`` when the
    model was trained here). :meth:`base_components` gives the same frozen parts *without* the
    adapter, for training more adapters on the same U-Net (chapter 05's rank sweep).
    """

    model: torch.nn.Module
    path: str
    trained_here: bool
    adapter: Path | None = None
    denoiser: Path | None = None
    looked_in: Path | None = None
    steps: int | None = None
    _base: object | None = field(default=None, repr=False)

    @property
    def source(self) -> str:
        return "trained here" if self.trained_here else f"chapter {COMICDIFF_CHAPTER}"

    def base_components(self):
        """The frozen components (codec, LoRA-free U-Net, prompt, scheduler) under ``model``."""
        if self._base is None:                       # an SD 2.1 adapter from chapter 04
            from . import comicdiff as cd

            self._base = cd.load_components("sd21", device=self.model.prompt_embeds.device)
        return self._base

    def describe(self) -> str:
        info = getattr(self.model, "info", {}) or {}
        what = f"rank-{info.get('rank')} adapter, {info.get('step', self.steps)} steps, {self.path} path"
        return f"{what}, {self.source}" + (f" ({self.adapter})" if self.adapter else "")

    def stylizer(self, alpha: float = 1.0):
        """The translator as a :mod:`comicutils.stylizers` method."""
        from . import stylizers

        s = stylizers.build("comicdiff", model=self.model, alpha=alpha)
        s.weights = self.describe()
        return s


def _comicdiff_found(folder: Path, size: int, rank: int, device) -> tuple[ComicDiffResult | None, str]:
    """Chapter 04's adapter at ``size`` px, or ``None`` and the reason it cannot be used."""
    from . import comicdiff as cd

    adapter = folder / f"lora-r{rank}" / "adapter"
    try:
        info = cd.read_adapter_info(adapter)
    except FileNotFoundError:
        return None, (f"no rank-{rank} adapter there; run notebook {COMICDIFF_CHAPTER} at this size first "
                      "to use its adapter")
    if info.get("size") != [size, size]:
        got = info.get("size")
        return None, f"the adapter there was trained at {got[0] if got else '?'} px, not {size} px"
    path = info.get("path", "offline")
    if path == "offline":
        denoiser = folder / "denoiser"
        if not (denoiser / "config.json").is_file():
            return None, f"its pre-trained denoiser ({denoiser}) is missing"
        try:
            model = cd.load_translator(adapter, denoiser=denoiser, device=device)
        except (OSError, ValueError, RuntimeError) as err:       # e.g. adapter and denoiser do not match
            return None, f"it cannot be loaded with the denoiser beside it ({_first_line(err)})"
        base = cd.offline_components(denoiser=str(denoiser))      # announces the offline path
        return ComicDiffResult(model, path, False, adapter, denoiser, folder, info.get("step"), base), ""
    try:
        model = cd.load_translator(adapter, device=device)
    except cd.SD21Unavailable:
        return None, "the adapter there was trained on Stable Diffusion 2.1, which cannot be loaded here"
    except (OSError, ValueError, RuntimeError) as err:
        return None, f"it cannot be loaded ({_first_line(err)})"
    return ComicDiffResult(model, path, False, adapter, None, folder, info.get("step")), ""


def comicdiff_from_chapter_04(size: int, train=None, *, rank: int = 8, quick_steps: int | None = None,
                              pretrain_steps: int | None = None, pretrain_batch: int | None = None,
                              lr: float | None = None, seed: int = 0, unet_config: dict | None = None,
                              device: str | torch.device | None = None, batch_size: int = 4,
                              gradient_checkpointing: bool = False) -> ComicDiffResult:
    """Chapter 04's ComicDiff adapter trained at ``size`` px, or a quick one trained here.

    Looks in chapter 04's run folder for ``lora-r{rank}/adapter`` whose info says ``size``. The
    adapter's info also names its path: an offline adapter is used with the pre-trained
    ``denoiser/`` beside it, an SD 2.1 adapter with Stable Diffusion 2.1 (when it can be
    loaded). When nothing usable is found (or in smoke mode) the quick version is trained, with
    a notice: components from ``load_components("auto")`` (SD 2.1 if it is in the Hugging Face
    cache; otherwise the offline path, whose small U-Net — ``unet_config``, default
    :data:`~comicutils.comicdiff.SMALL_UNET_CONFIG` — is first pre-trained as a denoiser for
    ``pretrain_steps`` steps, default 5 in smoke mode and 400 otherwise), then a rank-``rank``
    LoRA for ``quick_steps`` steps (default 2 in smoke mode, 200 otherwise) at learning rate
    ``lr`` (default 1e-3 offline, 1e-4 on SD 2.1) on ``train`` (default
    :func:`course_training_pairs`), ``batch_size`` pairs a step, with ``gradient_checkpointing``
    where a GPU tier needs it (chapter 04's values). ``device`` defaults to
    :func:`comicutils.runtime.get_device`.
    """
    from . import comicdiff as cd

    device = torch.device(device) if device is not None else get_device()
    folder = run_dir(COMICDIFF_CHAPTER, create=False)
    if get_mode() == "smoke":
        why = "smoke mode never reuses another chapter's results"
    else:
        found, why = _comicdiff_found(folder, size, rank, device)
        if found is not None:
            print(f"ComicDiff from chapter {COMICDIFF_CHAPTER}: {found.describe()}")
            return found
    steps = quick_steps if quick_steps is not None else by_mode(smoke=2, auto=200)
    pre_steps = pretrain_steps if pretrain_steps is not None else by_mode(smoke=5, auto=400)
    _announce_quick(f"chapter {COMICDIFF_CHAPTER}'s rank-{rank} ComicDiff adapter", folder, why,
                    f"a rank-{rank} LoRA trained for {steps} steps at {size} px on Stable Diffusion 2.1 if it "
                    f"is cached here, otherwise on the offline path after {pre_steps} steps of denoiser "
                    "pre-training")
    train = _check_pairs(train, size)
    components = cd.load_components("auto", seed=seed, unet_config=unet_config, device=device)
    if components.path == "offline":                 # built on the CPU; train where the model will run
        components.codec.to(device)
        components.unet.to(device)
    train_set = cd.encode_pairs(components.codec, train, show_progress=False)     # photos and their mirrors
    if components.path == "offline":                 # the denoiser learns photo and comic latents
        comics = cd.encode_images(components.codec, train.comics, show_progress=False)
        batch = pretrain_batch if pretrain_batch is not None else by_mode(smoke=4, auto=16)
        cd.pretrain_denoiser(components.unet, torch.cat([train_set.latents, comics]), components.prompt_embeds,
                             components.scheduler_config, steps=pre_steps, batch_size=batch, seed=seed)
    model = cd.ComicDiff(dataclasses.replace(components, unet=copy.deepcopy(components.unet)))
    lr = lr if lr is not None else (1e-3 if components.path == "offline" else 1e-4)
    config = cd.TrainConfig(rank=rank, lora_alpha=rank, lr=lr, max_steps=steps, epochs=10**6, seed=seed,
                            batch_size=batch_size, gradient_checkpointing=gradient_checkpointing)
    result = cd.train_lora(model, train_set, config)
    model.info = {"size": [size, size], "rank": rank, "path": components.path, "step": result.steps,
                  "timestep": model.timestep, "provenance": cd.base_provenance(components)}
    model.eval()
    print(f"quick ComicDiff trained here: {components.path} path, rank {rank}, {result.steps} LoRA steps"
          + (f" after {pre_steps} denoiser steps" if components.path == "offline" else ""))
    return ComicDiffResult(model, components.path, True, looked_in=folder, steps=result.steps, _base=components)


# --------------------------------------------------------------------------- training-step estimates
def nst_step_memory(size: int, backbone: str = "vgg16"):
    """One step of :func:`comicutils.nst.stylize` at ``size`` px (:class:`comicutils.memory.StepMemory`):
    the frozen feature network of ``backbone`` (the one that runs: ``"vgg16"``, ``"vgg19"`` or
    ``"taef2"``) up to its deepest default layer, the image as the one trainable tensor (Adam), the
    content and style losses against fixed targets."""
    from . import memory, nst, taesd

    layers = nst.DEFAULT_LAYERS[backbone]
    names = (*layers["style"], *layers["content"])

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.image = torch.nn.Parameter(torch.rand(1, 3, size, size))
            arch = backbone.removesuffix("-random")
            if arch == "taef2":                      # the encoder untrained: only its shapes count here
                blocks = tuple(sorted({int(n.removeprefix("block")) for n in names}))
                self.net = taesd.FeatureExtractor(blocks, encoder=taesd.build_encoder())
            else:
                self.net = nst.VGGFeatures(arch, names)

        def forward(self):
            feats = self.net(self.image)
            feats = {(f"block{k}" if isinstance(k, int) else k): v for k, v in feats.items()}
            grams = {k: nst.gram_matrix(feats[k]).detach() for k in layers["style"]}
            targets = {k: feats[k].detach() for k in layers["content"]}
            return nst.content_loss(feats, targets) + nst.style_loss(feats, grams)

    return memory.estimate_training_step(Step, lambda: [], step=lambda m: m())


def pix2pix_step_memory(config: dict, batch: int):
    """One :meth:`comicutils.pix2pix.Pix2PixTrainer.train_step` of a :func:`comicutils.pix2pix.table1_config`
    row (generator, PatchGAN, VGG-16 perceptual term where the row has one) on ``batch`` pairs at the
    row's size. The D update and the G update are counted as one graph, so every activation of both
    is held at once (errs high: the trainer frees the D update's before the G update)."""
    from . import memory, nst, pix2pix

    size = config["generator"]["size"]

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            kw = {k: v for k, v in config["generator"].items() if k != "pretrained"}
            self.g = pix2pix.build_generator(**kw, **({"pretrained": False} if kw["name"] == "ures50" else {}))
            self.d = pix2pix.PatchDiscriminator(**config["discriminator"])
            self.perc = None
            if config.get("perceptual"):
                layers = pix2pix.PERCEPTUAL_LAYERS["vgg16"]
                self.perc = pix2pix.PerceptualLoss(nst.VGGFeatures("vgg16", layers), config["perceptual"]["criterion"],
                                                   layers=layers)
            self.gan = pix2pix.GANLoss()

        def forward(self, photo, comic):
            fake = self.g(photo)
            loss_d = pix2pix.discriminator_loss(self.d(photo, comic), self.d(photo, fake.detach()), self.gan)
            loss_g = pix2pix.generator_loss(self.d(photo, fake), fake, comic, gan_loss=self.gan, perceptual=self.perc)
            return loss_d + loss_g["total"]

    pair = lambda: [torch.rand(batch, 3, size, size) * 2 - 1 for _ in range(2)]   # noqa: E731
    return memory.estimate_training_step(Step, pair, step=lambda m, x, y: m(x, y))


def gan_step_memory(build_generator, build_discriminator, batch: int, *, nz: int = 100, size: int = 64,
                    conditional: bool = False):
    """One :meth:`comicutils.gan.GANTrainer.train_step` (D on real and generated images in one batch,
    then G against the updated D) of the networks ``build_generator()`` and ``build_discriminator()``
    make (e.g. ``lambda: gan.DCGANGenerator(NZ, G_WIDTHS, SIZE)``) on ``batch`` images; ``conditional``:
    a :class:`~comicutils.gan.ConditionalGenerator` and its discriminator, which take style labels.
    Counted as one graph (errs high, as :func:`pix2pix_step_memory`)."""
    import torch.nn.functional as F

    from . import memory

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.g, self.d = build_generator(), build_discriminator()

        def forward(self, real, z, y):
            cond = (y,) if conditional else ()
            fake = self.g(z, embedding=self.g.embedding(y)) if conditional else self.g(z)   # embed()'s label check reads values
            logits = self.d.logits(torch.cat([real, fake.detach()]), *((torch.cat([y, y]),) if conditional else ()))
            ones = torch.ones_like(logits[:batch])
            loss_d = F.binary_cross_entropy_with_logits(logits[:batch], ones) + \
                F.binary_cross_entropy_with_logits(logits[batch:], torch.zeros_like(ones))
            return loss_d + F.binary_cross_entropy_with_logits(self.d.logits(fake, *cond), ones)

    def inputs():
        return [torch.rand(batch, 3, size, size), torch.randn(batch, nz), torch.zeros(batch, dtype=torch.long)]

    return memory.estimate_training_step(Step, inputs, step=lambda m, *b: m(*b))

"""Course weights: each chapter's model trained far longer than a notebook can, shipped with the course.

A notebook trains its own quick model in minutes; the course weights are the *same recipe* run
for hours, with the course's own code, seeded and resumable:

    python -m comicutils course-weights train NAME      # resumable; --steps N for a longer run
    python -m comicutils course-weights export NAME     # fp16 safetensors into data/pretrained/

The registry, ``comicutils/course_weights.json`` (inside the package, so an installed package has
it too), records, for every weight: its files (sha256, bytes), the exact
command that regenerates it (with the number of steps it was trained for), the data it was
trained on, its licence, the wall time and machine, and the digest of the state training starts
from (a test re-runs the command for a step and checks that it starts there).

Where the files are looked for: ``COMICUTILS_PRETRAINED`` if set (a folder with its own
``registry.json`` there overrides the packaged one), else ``data/pretrained/`` of a checkout, else
the course repository on GitHub (``COMICUTILS_PRETRAINED_URL`` overrides the address): downloaded
into the asset cache and checked against the registry's sha256, like every other asset.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from .runtime import atomic_dir, atomic_path, project_root, runs_root, seed_everything

__all__ = ["RECIPES", "Recipe", "pretrained_dir", "registry", "entry", "names", "available", "path",
           "verify", "state_digest", "train", "export", "load_denoiser", "load_comicdiff", "load_pix2pix",
           "load_stylegan", "PIX2PIX", "ADAPTERS",
           "CourseWeightMissing", "REGISTRY_NAME", "PRETRAINED_ENV"]

PRETRAINED_ENV = "COMICUTILS_PRETRAINED"
URL_ENV = "COMICUTILS_PRETRAINED_URL"
REGISTRY_NAME = "registry.json"
REPO_RAW = "https://raw.githubusercontent.com/photo-to-comic/photo-to-comic/main/data/pretrained/"
SIZE_BUDGET = 40 * 2 ** 20                      # every course weight together, in bytes

DATA_LICENCE = ("weights: MIT, like the course code; trained on the face2comics preview grids "
                "(Sxela/face2comics, MIT) through taef2 (madebyollin/taesd, MIT)")


class CourseWeightMissing(FileNotFoundError):
    """A course weight is not here (not exported yet, or the files are missing)."""


@dataclass(frozen=True)
class Recipe:
    """One course weight: what it is, how long it trains by default, and its settings."""

    name: str
    chapter: str
    what: str
    steps: int
    settings: dict = field(default_factory=dict)
    data: str = ""
    needs: tuple[str, ...] = ()
    store: str = "fp16"          # how export stores the weights: "fp16", or "int8" (pix2pix generators)

    def command(self, steps: int | None = None) -> str:
        return f"python -m comicutils course-weights train {self.name} --steps {steps or self.steps}"


# the ComicDiff adapter recipe's settings (the adversarial recipe adds its term to exactly these)
_ADAPTER = {"size": 256, "rank": 8, "feed_forward": True, "batch_size": 4, "lr": 1e-3, "lpips_weight": 0.8,
            "perceptual": "taef2", "aug_copies": 2, "seed": 0, "checkpoint_every": 25}

# the pix2pix recipe's settings (its Gram- and content-term variant adds to exactly these)
_PIX2PIX = {"size": 256, "generator": "unet", "ngf": 16, "batch_size": 1, "lr": 2e-4, "lambda_l1": 100.0,
            "gan_mode": "vanilla", "seed": 0, "checkpoint_every": 5}

# chapter 01's Gram term as the style adapter adds it; the ink adapter trains that one on and keeps it
_ADAPTER_GRAM = {"style_weight": 5.0}

_ADAPTER_DATA = "the same 160 latent pairs as comicdiff-adapter (the 10 held-out pairs are never seen)"
RECIPES: dict[str, Recipe] = {r.name: r for r in [
    Recipe("comicdiff-denoiser", "04",
           "the offline ComicDiff U-Net (12.7 M parameters) pre-trained as a latent denoiser at 256 px",
           steps=500,
           settings={"size": 256, "batch_size": 8, "lr": 3e-4, "seed": 0, "flip": True, "checkpoint_every": 25},
           data="taef2 latents of the face2comics v2 and v1 preview grids' training splits, photos and comics "
                "(160 images at 256 px, mirrored at random); no held-out pair"),
    Recipe("comicdiff-adapter", "04",
           "the LoRA adapter (rank 8, attention + feed-forward) on the course denoiser, single step at t = 1, "
           "MSE + 0.8 x taef2 perceptual distance, at 256 px",
           steps=400,
           settings=_ADAPTER,
           data="the 40 training pairs of the face2comics v2 preview grid at 256 px, mirrored, plus 2 jointly "
                "augmented copies (160 latent pairs); the 10 held-out pairs are never seen",
           needs=("comicdiff-denoiser",)),
    Recipe("comicdiff-adapter-adv", "05",
           "the same adapter recipe plus the adversarial term of chapter 05 (section 5): chapter 02's "
           "conditional PatchGAN on (photo, output), weight 0.05 reached over a 100-step warm-up",
           steps=400,
           settings={**_ADAPTER, "adversarial_weight": 0.05, "adversarial_warmup": 100},
           data=_ADAPTER_DATA,
           needs=("comicdiff-denoiser",)),
    Recipe("comicdiff-adapter-gan", "05",
           "the course adapter (comicdiff-adapter) trained on with chapter 05's adversarial term at weight 0.2 "
           "(reached over a 20-step warm-up): a warm start, the regression first and the sharpening second",
           steps=150,
           settings={**_ADAPTER, "init": "comicdiff-adapter", "adversarial_weight": 0.2, "adversarial_warmup": 20},
           data=_ADAPTER_DATA,
           needs=("comicdiff-denoiser", "comicdiff-adapter")),
    Recipe("comicdiff-adapter-style", "05",
           "the course adapter (comicdiff-adapter) trained on with chapter 01's Gram-matrix statistics added to "
           "its loss (weight 5, each output against its own target comic, on taef2 features): a warm start",
           steps=100,
           settings={**_ADAPTER, "init": "comicdiff-adapter", **_ADAPTER_GRAM},
           data=_ADAPTER_DATA,
           needs=("comicdiff-denoiser", "comicdiff-adapter")),
    Recipe("comicdiff-adapter-ink", "05",
           "the Gram-trained course adapter (comicdiff-adapter-style) trained on with an ink term added: the "
           "output's edge strengths, sorted, against its own target comic's (weight 40, "
           "metrics.edge_histogram_distance; blind to where a line sits), the Gram term kept: a warm start",
           steps=50,
           settings={**_ADAPTER, "init": "comicdiff-adapter-style", **_ADAPTER_GRAM, "edge_weight": 40.0},
           data=_ADAPTER_DATA,
           needs=("comicdiff-denoiser", "comicdiff-adapter-style")),
    Recipe("pix2pix", "02",
           "a pix2pix U-Net generator (ngf 16, 3.4 M parameters) with a 70 px PatchGAN, L1 weight 100, at 256 px",
           steps=3000,
           settings=_PIX2PIX,
           data="the 40 training pairs of the face2comics v2 preview grid at 256 px with joint augmentation; "
                "the 10 held-out pairs are never seen"),
    Recipe("pix2pix-style", "02",
           "the course pix2pix generator trained on with chapter 01's two terms added to its loss: Gram-matrix "
           "statistics against its own target comic (weight 50) and taef2 block-5 features against its photo "
           "(weight 50): a warm start with a fresh PatchGAN; stored in int8 (one fp16 scale per filter) to fit "
           "the size budget",
           steps=400,
           settings={**_PIX2PIX, "init": "pix2pix", "style_weight": 50.0, "content_weight": 50.0, "content_block": 5},
           data="the same 40 training pairs as pix2pix, jointly augmented (the 10 held-out pairs are never seen)",
           needs=("pix2pix",), store="int8"),
    Recipe("stylegan-photo", "03",
           "the micro StyleGAN2 photo generator (64 px, width 128, 32-number latents) fitted by regression "
           "(GLO: a learned z per photo, taef2 perceptual distance + pixel MSE), with those z's",
           steps=2000,
           settings={"size": 64, "width": 128, "style_dim": 32, "batch_size": 16, "lr": 0.002, "latent_lr": 0.01,
                     "latent_noise": 0.5, "seed": 0, "checkpoint_every": 100},
           data="the 100 face2comics photos (v2 and v1 preview grids) and the 90 CC0 portraits 001-030 and "
                "041-100 (cjdowner/interfaces, CC0), each also mirrored: 380 images at 64 px"),
    Recipe("stylegan-comic", "03",
           "the micro StyleGAN2 comic generator: a copy of the course photo generator taught that the z of "
           "each training photo gives its comic (the pairs as pseudo-pair supervision, latents fixed)",
           steps=1000,
           settings={"size": 64, "batch_size": 16, "lr": 0.001, "latent_noise": 0.5, "seed": 0,
                     "checkpoint_every": 100},
           data="the 40 training pairs of the face2comics v2 preview grid (comics at 64 px, mirrored: 80), "
                "with the photos' z's from the course photo generator",
           needs=("stylegan-photo",)),
]}


PIX2PIX = ("pix2pix", "pix2pix-style")                                                # pix2pix generators
ADAPTERS = ("comicdiff-adapter", "comicdiff-adapter-adv", "comicdiff-adapter-gan",    # LoRAs on the course denoiser
            "comicdiff-adapter-style", "comicdiff-adapter-ink")


# --------------------------------------------------------------------------- where they are
def pretrained_dir() -> Path | None:
    """``COMICUTILS_PRETRAINED``, else ``data/pretrained/`` of a checkout, else None (installed package)."""
    env = os.environ.get(PRETRAINED_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    root = project_root()
    return root / "data" / "pretrained" if root is not None else None


PACKAGED_REGISTRY = Path(__file__).resolve().parent / "course_weights.json"


def registry_file() -> Path:
    """``COMICUTILS_PRETRAINED/registry.json`` if that exists, else the packaged registry."""
    env = os.environ.get(PRETRAINED_ENV, "").strip()
    if env and (Path(env).expanduser() / REGISTRY_NAME).is_file():
        return Path(env).expanduser() / REGISTRY_NAME
    return PACKAGED_REGISTRY


def registry() -> dict[str, dict]:
    """The registry: ``{name: entry}`` (empty when nothing has been exported)."""
    f = registry_file()
    return json.loads(f.read_text()) if f.is_file() else {}


def names() -> list[str]:
    return list(RECIPES)


def _recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ValueError(f"unknown course weight {name!r}; choose from {', '.join(RECIPES)}")
    return RECIPES[name]


def entry(name: str) -> dict:
    """The registry entry of ``name``; a one-line error if it has not been exported."""
    _recipe(name)
    reg = registry()
    if name not in reg:
        raise CourseWeightMissing(
            f"course weight {name!r} is not in the registry yet; train and export it with "
            f"`{RECIPES[name].command()}` then `python -m comicutils course-weights export {name}`")
    return reg[name]


def _sha256(path: Path) -> str:
    from .runtime import file_sha256

    return file_sha256(path)


def _fetch_file(rel: str, sha: str) -> Path:
    """A registry file from the checkout / COMICUTILS_PRETRAINED, else the asset cache, else GitHub."""
    from . import assets

    folder = pretrained_dir()
    if folder is not None and assets.confined_path(folder, rel, "registry file").is_file():
        return folder / rel
    cached = assets.confined_path(assets.cache_dir() / "pretrained", rel, "registry file")
    if cached.is_file() and _sha256(cached) == sha:
        return cached
    if assets.offline():
        raise CourseWeightMissing(f"{rel} is not in this checkout and downloads are off (offline)")
    import urllib.request

    url = (os.environ.get(URL_ENV, "").strip() or REPO_RAW).rstrip("/") + "/" + rel
    with atomic_path(cached) as tmp:              # a partial download never lands in the cache
        with urllib.request.urlopen(url, timeout=60) as resp, open(tmp, "wb") as fh:
            shutil.copyfileobj(resp, fh)
        if _sha256(Path(tmp)) != sha:
            raise ValueError(f"{url} does not match the registry's sha256")
    return cached


def path(name: str, *, check: bool = True) -> Path:
    """The folder holding course weight ``name``'s files, each checked against its sha256."""
    e = entry(name)
    found = None
    from .assets import UnsafePath

    for rel, meta in e["files"].items():
        try:
            p = _fetch_file(rel, meta["sha256"])
        except UnsafePath:                           # a path leading outside its folder: never fetched
            raise
        except Exception as err:
            raise CourseWeightMissing(f"course weight {name!r}: {rel} is not here and could not be fetched "
                                      f"({' '.join(str(err).split())[:160]})") from err
        if check and _sha256(p) != meta["sha256"]:
            raise ValueError(f"course weight {name!r}: {p} does not match its sha256 in the registry "
                             "(changed or corrupt); export it again or restore it from git")
        found = p.parent
    return found


def available(name: str) -> bool:
    """True when ``name`` is registered and its files are here with the right checksums."""
    try:
        path(name)
        return True
    except (CourseWeightMissing, ValueError):
        return False


def verify() -> list[tuple[str, str]]:
    """``(name, "ok" | reason)`` for every registered weight."""
    out = []
    for name in registry():
        try:
            path(name)
            out.append((name, "ok"))
        except (CourseWeightMissing, ValueError) as err:
            out.append((name, str(err)))
    return out


# --------------------------------------------------------------------------- digests
def state_digest(state: torch.nn.Module | dict) -> str:
    """sha256 over a module's (or state dict's) tensors in float32, names sorted: the same
    weights give the same digest on any machine and in any precision they were stored."""
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key]
        if not torch.is_tensor(t):
            continue
        h.update(key.encode())
        h.update(t.detach().to("cpu", torch.float32 if t.is_floating_point() else t.dtype).contiguous().numpy().tobytes())
    return h.hexdigest()


# --------------------------------------------------------------------------- training
def work_dir(name: str) -> Path:
    """Where ``train`` keeps its checkpoints: ``<runs>/course-weights/NAME``."""
    return runs_root() / "course-weights" / name


def _write_json(p: Path, obj: dict) -> None:
    with atomic_path(p) as tmp:
        Path(tmp).write_text(json.dumps(obj, indent=1, default=str))


def _start(name: str, work: Path, digest: str) -> dict:
    """Record (or check) the state a run starts from in ``work/run.json``."""
    run_file = work / "run.json"
    recipe = RECIPES[name]
    if run_file.is_file():
        run = json.loads(run_file.read_text())
        if run.get("start_digest") != digest or run.get("settings") != recipe.settings:
            raise ValueError(f"{work} holds a run of another start state or settings; move it away or pass "
                             "another --work folder")
        return run
    run = {"name": name, "settings": recipe.settings, "start_digest": digest, "seconds": 0.0,
           "machine": _machine()}
    work.mkdir(parents=True, exist_ok=True)
    _write_json(run_file, run)
    return run


def _machine() -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    n = torch.get_num_threads()
    return f"CPU, {os.cpu_count()} cores ({platform.machine()}), {n} torch thread{'s' if n > 1 else ''}"


def _add_seconds(work: Path, seconds: float, steps: int, first_loss: float | None) -> dict:
    run_file = work / "run.json"
    run = json.loads(run_file.read_text())
    run["seconds"] = float(run.get("seconds", 0.0)) + seconds
    run["steps"] = steps
    if first_loss is not None and "first_loss" not in run:
        run["first_loss"] = first_loss
    _write_json(run_file, run)
    return run


def _train_pairs(size: int, version: str = "v2"):
    from . import data

    return data.train_test_pairs(data.face2comics_pairs(version, size=size))


def _train_denoiser(recipe: Recipe, steps: int, work: Path, show_progress: bool) -> tuple[int, float | None]:
    from .comicdiff import components as C
    from .comicdiff import train as T

    s = recipe.settings
    comps = C.offline_components(seed=s["seed"], announce=False)
    unet = comps.unet
    _start(recipe.name, work, state_digest(unet))
    images = []
    for version in ("v2", "v1"):
        train, _ = _train_pairs(s["size"], version)
        images += [train.photos, train.comics]
    latents = T.encode_images(comps.codec, torch.cat(images), show_progress=show_progress)
    result = T.pretrain_denoiser(unet, latents, comps.prompt_embeds, comps.scheduler_config, steps=steps,
                                 batch_size=s["batch_size"], lr=s["lr"], seed=s["seed"], flip=s["flip"],
                                 show_progress=show_progress, checkpoint=work / "pretrain.pt",
                                 checkpoint_every=s["checkpoint_every"])
    first = result.history[0]["loss"] if result.history else None
    return len(result.history), first


def _comicdiff_on(denoiser_dir: Path, seed: int):
    from .comicdiff import components as C
    from .comicdiff.model import ComicDiff

    comps = C.offline_components(seed=seed, denoiser=str(denoiser_dir), announce=False)
    return ComicDiff(comps)


def _train_adapter(recipe: Recipe, steps: int, work: Path, show_progress: bool) -> tuple[int, float | None]:
    from . import data
    from .comicdiff import train as T

    s = recipe.settings
    model = _comicdiff_on(path("comicdiff-denoiser"), s["seed"])
    if s.get("init"):                                   # a warm start from another course adapter
        model.load_adapter(path(s["init"]))
    else:
        model.add_lora(s["rank"], feed_forward=s["feed_forward"], seed=s["seed"])
    _start(recipe.name, work, state_digest(model.unet))
    train, _ = _train_pairs(s["size"])
    dataset = T.encode_pairs(model.codec, train, augment=data.JointAugment(), copies=s["aug_copies"],
                             seed=s["seed"], show_progress=show_progress)
    cfg = T.TrainConfig(rank=s["rank"], feed_forward=s["feed_forward"], lr=s["lr"], batch_size=s["batch_size"],
                        epochs=10 ** 6, max_steps=steps, lpips_weight=s["lpips_weight"], perceptual=s["perceptual"],
                        checkpoint_every=s["checkpoint_every"], seed=s["seed"],
                        adversarial_weight=s.get("adversarial_weight", 0.0),
                        adversarial_warmup=s.get("adversarial_warmup", 0), style_weight=s.get("style_weight", 0.0),
                        edge_weight=s.get("edge_weight", 0.0), palette_weight=s.get("palette_weight", 0.0),
                        flat_weight=s.get("flat_weight", 0.0))
    result = T.train_lora(model, dataset, cfg, out_dir=work, resume=True, show_progress=show_progress)
    first = result.history[0]["loss"] if result.history and result.history[0].get("step") == 1 else None
    return result.steps, first


def _build_pix2pix(s: dict):
    from . import pix2pix as P

    seed_everything(s["seed"])
    generator = P.build_generator(s["generator"], s["size"], ngf=s["ngf"])
    discriminator = P.PatchDiscriminator()
    if s.get("init"):                                   # a warm start from another course generator
        start = load_pix2pix(name=s["init"])
        if start.config.get("name") != s["generator"] or start.config.get("ngf") != s["ngf"]:
            raise ValueError(f"course weight {s['init']!r} is a {start.config.get('name')} generator with ngf "
                             f"{start.config.get('ngf')}; the recipe asks for {s['generator']} with ngf {s['ngf']}")
        generator.load_state_dict(start.state_dict())
    return P.Pix2PixTrainer(generator, discriminator, perceptual=None, lambda_l1=s["lambda_l1"], lr=s["lr"],
                            gan_mode=s["gan_mode"], device="cpu" if not torch.cuda.is_available() else None,
                            style_weight=s.get("style_weight", 0.0), content_weight=s.get("content_weight", 0.0),
                            content_block=s.get("content_block", 9), edge_weight=s.get("edge_weight", 0.0))


PIX2PIX_CHECKPOINT_STEPS = 25
"""The pix2pix recipes' ``checkpoint_every`` counts epochs (5 of 40 steps); they also checkpoint
every this many steps, so a kill loses at most 25 steps as with the other recipes."""


def _train_pix2pix(recipe: Recipe, steps: int, work: Path, show_progress: bool) -> tuple[int, float | None]:
    from . import data

    s = recipe.settings
    trainer = _build_pix2pix(s)
    _start(recipe.name, work, state_digest(trainer.generator))
    train, _ = _train_pairs(s["size"])
    dataset = data.PairDataset(train, augment=data.JointAugment(), seed=s["seed"])
    trainer.train(dataset, epochs=10 ** 6, steps=steps, batch_size=s["batch_size"], checkpoint=work / "trainer.pt",
                  resume=True, show_progress=show_progress, seed=s["seed"], checkpoint_every=s["checkpoint_every"],
                  checkpoint_every_steps=PIX2PIX_CHECKPOINT_STEPS)
    first = trainer.history[0]["g_total"] if trainer.history and trainer.history[0]["step"] == 1 else None
    return trainer.step, first


def stylegan_photo_set(size: int = 64):
    """The course photo generator's training images (N, 3, size, size), in the order of its z's:
    the face2comics v2 photos, the v1 photos, the 90 portraits, then all of them mirrored."""
    from . import data

    photos = torch.cat([data.face2comics_pairs("v2", size=size).photos, data.face2comics_pairs("v1", size=size).photos,
                        data.portraits(size, data.ALL_PORTRAIT_NAMES)[1]])
    return torch.cat([photos, photos.flip(-1)])


def stylegan_comic_set(size: int = 64):
    """The course comic generator's targets (v2 training comics, then mirrors) and, for each, the
    index of its photo in :func:`stylegan_photo_set` (whose z it is taught)."""
    from . import data

    pairs = data.face2comics_pairs("v2", size=size)
    train, _ = data.train_test_pairs(pairs)
    index = [pairs.keys.index(k) for k in train.keys]     # v2 photos come first in stylegan_photo_set
    n = 2 * len(pairs.keys) + len(data.ALL_PORTRAIT_NAMES)  # photos before their mirrors
    return torch.cat([train.comics, train.comics.flip(-1)]), index + [i + n for i in index]


def _stylegan_loss(size: int):
    from . import stylegan as sg

    return sg.perceptual_mse(sg.FeatureDistances(feature_size=min(size, 32)))


def _train_stylegan_photo(recipe: Recipe, steps: int, work: Path, show_progress: bool) -> tuple[int, float | None]:
    from . import stylegan as sg

    s = recipe.settings
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(s["seed"])
        G = sg.Generator(sg.micro_config(s["size"], width=s["width"], style_dim=s["style_dim"]))
    _start(recipe.name, work, state_digest(G))
    fit = sg.fit_reconstruction(G, stylegan_photo_set(s["size"]), steps, batch_size=s["batch_size"], lr=s["lr"],
                                latent_lr=s["latent_lr"], latent_noise=s["latent_noise"],
                                loss=_stylegan_loss(s["size"]), seed=s["seed"], desc="course photo generator",
                                checkpoint=work / "reconstruction.pt", checkpoint_every=s["checkpoint_every"])
    return len(fit.history), fit.history[0]["reconstruction"] if fit.history else None


def _train_stylegan_comic(recipe: Recipe, steps: int, work: Path, show_progress: bool) -> tuple[int, float | None]:
    from . import stylegan as sg

    s = recipe.settings
    G, z = load_stylegan("stylegan-photo", with_latents=True)
    G.train().requires_grad_(True)
    _start(recipe.name, work, state_digest(G))
    comics, index = stylegan_comic_set(s["size"])
    fit = sg.fit_reconstruction(G, comics, steps, batch_size=s["batch_size"], lr=s["lr"],
                                latent_noise=s["latent_noise"], loss=_stylegan_loss(s["size"]), seed=s["seed"],
                                latents=z[index], learn_latents=False, desc="course comic generator",
                                checkpoint=work / "reconstruction.pt", checkpoint_every=s["checkpoint_every"])
    return len(fit.history), fit.history[0]["reconstruction"] if fit.history else None


TRAINERS: dict[str, Callable[[Recipe, int, Path, bool], tuple[int, float | None]]] = {
    "comicdiff-denoiser": _train_denoiser, "comicdiff-adapter": _train_adapter,
    "comicdiff-adapter-adv": _train_adapter, "comicdiff-adapter-gan": _train_adapter,
    "comicdiff-adapter-style": _train_adapter, "comicdiff-adapter-ink": _train_adapter,
    "pix2pix": _train_pix2pix, "pix2pix-style": _train_pix2pix,
    "stylegan-photo": _train_stylegan_photo, "stylegan-comic": _train_stylegan_comic}


def train(name: str, steps: int | None = None, *, work: str | os.PathLike | None = None,
          show_progress: bool = True) -> dict:
    """Run (or resume) course weight ``name``'s recipe until ``steps`` optimiser steps in total
    (default: the recipe's). Checkpoints go to ``work`` (default :func:`work_dir`); a kill loses
    at most the recipe's ``checkpoint_every`` steps (pix2pix: :data:`PIX2PIX_CHECKPOINT_STEPS`), and Ctrl-C or
    SIGTERM on pix2pix loses none (the step under way finishes and is saved). A prerequisite weight
    that is missing raises :class:`CourseWeightMissing`, one that is damaged ``ValueError``.
    Returns ``work/run.json``: start digest, steps, seconds."""
    recipe = _recipe(name)
    steps = recipe.steps if steps is None else int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1; got {steps}")
    work = Path(work) if work is not None else work_dir(name)
    for need in recipe.needs:
        try:
            path(need)
        except CourseWeightMissing as err:
            raise CourseWeightMissing(f"{name} trains on course weight {need!r}, which is not here ({err}): run "
                                      f"`{RECIPES[need].command()}` and `python -m comicutils course-weights "
                                      f"export {need}` first") from err
        except ValueError as err:                     # there, but not what the registry recorded
            raise ValueError(f"{name} trains on course weight {need!r}, which is damaged: {err}") from err
    start = time.perf_counter()
    done, first = 0, None
    try:
        done, first = TRAINERS[name](recipe, steps, work, show_progress)
    finally:
        if (work / "run.json").is_file():
            run = _add_seconds(work, time.perf_counter() - start, done or _steps_done(name, work), first)
    return run


def _steps_done(name: str, work: Path) -> int:
    """Steps in the newest checkpoint of ``work`` (0 if none)."""
    from .checkpoints import checkpoint_exists, latest_checkpoint_dir

    if name == "comicdiff-denoiser" and checkpoint_exists(work / "pretrain.pt"):
        return int(_newest(work / "pretrain.pt")["step"])
    if name in PIX2PIX and checkpoint_exists(work / "trainer.pt"):
        return int(_newest(work / "trainer.pt")["step"])
    if name in ADAPTERS:
        found = latest_checkpoint_dir(work, "checkpoint-latest", say=lambda *_: None)
        if found is not None:
            return int(found[1].get("step", 0))
    if name.startswith("stylegan-") and checkpoint_exists(work / "reconstruction.pt"):
        return int(_newest(work / "reconstruction.pt")["step"])
    return 0


def _newest(path: Path) -> dict:
    """The newest intact checkpoint file at ``path`` (or its ``.previous``, said on screen)."""
    from .checkpoints import load_latest

    return load_latest(path)[0]


# --------------------------------------------------------------------------- export
def _half_state(state: dict) -> dict:
    return {k: (v.detach().to("cpu", torch.float16) if v.is_floating_point() else v.detach().cpu()).contiguous()
            for k, v in state.items()}


INT8_SCALE = ".int8_scale"     # suffix of the scale tensor beside each int8-stored weight


def _int8_state(state: dict) -> dict:
    """Like :func:`_half_state`, but every weight of 2 or more dimensions stored as int8 with one
    fp16 scale per slice of its first dimension (``w ≈ q · scale``, ``|q| <= 127``): half the
    bytes of fp16, for a recipe with ``store="int8"``."""
    out = {}
    for k, v in state.items():
        v = v.detach().cpu()
        if v.is_floating_point() and v.ndim >= 2:
            w = v.float()
            scale = (w.abs().amax(dim=tuple(range(1, w.ndim)), keepdim=True) / 127).clamp_min(1e-12).half()
            out[k] = (w / scale.float()).round().clamp(-127, 127).to(torch.int8).contiguous()
            out[k + INT8_SCALE] = scale.contiguous()
        else:
            out[k] = (v.half() if v.is_floating_point() else v).contiguous()
    return out


def _dequantized(tensors: dict) -> dict:
    """The float32 state of :func:`_int8_state`'s (or :func:`_half_state`'s) tensors."""
    out = {}
    for k, v in tensors.items():
        if k.endswith(INT8_SCALE):
            continue
        scale = tensors.get(k + INT8_SCALE)
        out[k] = v.float() * scale.float() if scale is not None else (v.float() if v.is_floating_point() else v)
    return out


def _export_files(name: str, work: Path, tmp: Path) -> dict:
    """Write ``name``'s fp16 files into ``tmp``; return extra registry fields."""
    from safetensors.torch import save_file

    from .checkpoints import latest_checkpoint_dir

    if name == "comicdiff-denoiser":
        from .comicdiff import components as C

        state = _newest(work / "pretrain.pt")
        unet = C.build_unet()
        unet.load_state_dict(state["unet"])
        unet.half().save_pretrained(tmp, safe_serialization=True)
        return {"steps": int(state["step"]), "final_loss": _mean_tail([r["loss"] for r in state["history"]])}
    if name in PIX2PIX:
        state = _newest(work / "trainer.pt")
        config = dict(state["config"]["generator"])
        store = _int8_state if RECIPES[name].store == "int8" else _half_state
        save_file(store(state["generator"]), str(tmp / "generator.safetensors"), metadata={"config": json.dumps(config)})
        return {"steps": int(state["step"]), "epochs": int(state["epoch"]), "config": config,
                "final_loss": _mean_tail([r["g_l1"] for r in state["history"]])}
    if name.startswith("stylegan-"):
        state = _newest(work / "reconstruction.pt")
        from . import stylegan as sg

        G = sg.Generator(_stylegan_config(name))
        G.load_state_dict(state["G"])
        G.update_w_avg()
        tensors = {**{f"G.{k}": v for k, v in G.state_dict().items()}, "w_avg": G.w_avg}
        if name == "stylegan-photo":
            tensors["z"] = state["z"]
        save_file(_half_state(tensors), str(tmp / "generator.safetensors"),
                  metadata={"config": json.dumps(G.config.to_dict())})
        return {"steps": int(state["step"]),
                "final_loss": _mean_tail([r["reconstruction"] for r in state["history"]])}
    if name in ADAPTERS:
        found = latest_checkpoint_dir(work, "checkpoint-latest", say=lambda *_: None)
        if found is None or not (found[0] / "adapter").is_dir():
            raise CourseWeightMissing(f"no adapter checkpoint in {work}; run `{RECIPES[name].command()}` first")
        src = found[0] / "adapter"
        from safetensors.torch import load_file as load_st

        for f in src.iterdir():
            if f.suffix == ".safetensors":
                save_file(_half_state(load_st(str(f))), str(tmp / f.name))
            elif f.is_file():
                shutil.copy2(f, tmp / f.name)
        info = json.loads((src / "provenance.json").read_text()) if (src / "provenance.json").is_file() else {}
        return {"steps": int(found[1].get("step", info.get("step", 0)))}
    raise ValueError(name)


def _first_loss(name: str, work: Path) -> float | None:
    """The loss of step 1 as the newest checkpoint's history recorded it (a run that was
    interrupted and resumed has it there even when its run.json does not)."""
    from .checkpoints import checkpoint_exists, latest_checkpoint_dir

    if name in ADAPTERS:
        found = latest_checkpoint_dir(work, "checkpoint-latest", say=lambda *_: None)
        history = json.loads((found[0] / "training_state.json").read_text())["history"] if found else []
        key = "loss"
    else:
        file, key = {"comicdiff-denoiser": ("pretrain.pt", "loss"),
                     **{p: ("trainer.pt", "g_total") for p in PIX2PIX}}.get(name, ("reconstruction.pt", "reconstruction"))
        history = _newest(work / file)["history"] if checkpoint_exists(work / file) else []
    return float(history[0][key]) if history else None


def _mean_tail(values: list[float], n: int = 50) -> float | None:
    tail = values[-n:]
    return float(sum(tail) / len(tail)) if tail else None


def export(name: str, *, work: str | os.PathLike | None = None, out: str | os.PathLike | None = None) -> dict:
    """Export the newest checkpoint of ``name`` as fp16 safetensors (int8 with per-filter scales for a
    recipe with ``store="int8"``) into ``out/NAME/`` and record it
    in ``out/registry.json``; by default into ``data/pretrained/`` of the checkout, recorded in the
    packaged registry. Returns the entry."""
    recipe = _recipe(name)
    work = Path(work) if work is not None else work_dir(name)
    if not (work / "run.json").is_file():
        raise CourseWeightMissing(f"nothing trained in {work}; run `{recipe.command()}` first")
    run = json.loads((work / "run.json").read_text())
    reg_file = Path(out) / REGISTRY_NAME if out is not None else PACKAGED_REGISTRY
    out = Path(out) if out is not None else pretrained_dir()
    if out is None:
        raise ValueError("no data/pretrained folder here (installed package): pass out= or set "
                         f"{PRETRAINED_ENV}")
    target = out / name
    with atomic_dir(target, overwrite=True) as tmp:
        extra = _export_files(name, work, Path(tmp))
        others = json.loads(reg_file.read_text()) if reg_file.is_file() else {}
        total = sum(f.stat().st_size for f in Path(tmp).iterdir()) + sum(
            m["bytes"] for n, e in others.items() if n != name for m in e["files"].values())
        if total > SIZE_BUDGET:              # checked before anything lands in out/
            raise ValueError(f"the course weights would take {total / 2 ** 20:.1f} MB, over the "
                             f"{SIZE_BUDGET / 2 ** 20:.0f} MB budget")
    files = {f"{name}/{p.name}": {"sha256": _sha256(p), "bytes": p.stat().st_size}
             for p in sorted(target.iterdir()) if p.is_file()}
    steps = int(extra.pop("steps"))
    item = {"chapter": recipe.chapter, "what": recipe.what, "files": files, "command": recipe.command(steps),
            "steps": steps, "settings": recipe.settings, "data": recipe.data, "licence": DATA_LICENCE,
            "start_digest": run["start_digest"], "first_loss": run.get("first_loss") or _first_loss(name, work),
            "seconds": round(float(run.get("seconds", 0.0))), "machine": run.get("machine"),
            "needs": list(recipe.needs), **({"store": recipe.store} if recipe.store != "fp16" else {}), **extra}
    with _locked(reg_file):                      # two exports at once must not lose an entry
        reg = json.loads(reg_file.read_text()) if reg_file.is_file() else {}
        reg[name] = item
        total = sum(m["bytes"] for e in reg.values() for m in e["files"].values())
        if total > SIZE_BUDGET:
            raise ValueError(f"the course weights would take {total / 2 ** 20:.1f} MB, over the "
                             f"{SIZE_BUDGET / 2 ** 20:.0f} MB budget")
        _write_json(reg_file, dict(sorted(reg.items())))
    return item


class _locked:
    """An exclusive lock on ``path``'s ``.lock`` sibling (POSIX ``flock``; elsewhere no lock)."""

    def __init__(self, path: Path):
        self.path = Path(str(path) + ".lock")

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "w")
        try:
            import fcntl
            fcntl.flock(self.fh, fcntl.LOCK_EX)
        except ImportError:                      # pragma: no cover - Windows
            pass
        return self

    def __exit__(self, *exc):
        self.fh.close()
        return False


# --------------------------------------------------------------------------- loading
def load_denoiser():
    """The course's pre-trained offline denoiser (a diffusers U-Net, float32, frozen)."""
    from .comicdiff.components import load_denoiser as _load

    return _load(path("comicdiff-denoiser")).float()


def load_comicdiff(adapter: str = "comicdiff-adapter", *, alpha: float = 1.0, merge: bool = False):
    """The course ComicDiff (offline path): course denoiser + a course adapter (``adapter``: one of
    :data:`ADAPTERS`; ``"comicdiff-adapter-adv"`` is trained with the adversarial term from the start,
    ``"comicdiff-adapter-gan"`` is ``"comicdiff-adapter"`` trained on with a stronger one,
    ``"comicdiff-adapter-style"`` the same trained on with chapter 01's Gram-matrix term)."""
    from .comicdiff.model import load_translator

    if adapter not in ADAPTERS:
        raise ValueError(f"adapter must be one of {', '.join(ADAPTERS)}; got {adapter!r}")
    return load_translator(path(adapter), denoiser=path("comicdiff-denoiser"), alpha=alpha, merge=merge)


def load_pix2pix(device: str | torch.device = "cpu", name: str = "pix2pix"):
    """A course pix2pix generator (float32, eval mode): ``name`` one of :data:`PIX2PIX`."""
    from safetensors import safe_open
    from safetensors.torch import load_file as load_st

    from . import pix2pix as P

    if name not in PIX2PIX:
        raise ValueError(f"{name!r} is not a course pix2pix generator; choose from {', '.join(PIX2PIX)}")
    file = path(name) / "generator.safetensors"
    with safe_open(str(file), "pt") as fh:
        config = json.loads(fh.metadata()["config"])
    kwargs = {k: v for k, v in config.items() if k not in ("name", "size")}
    generator = P.build_generator(config["name"], config["size"], **kwargs)
    generator.config.update(config)
    generator.load_state_dict(_dequantized(load_st(str(file))))
    return generator.to(device).eval()


def _stylegan_config(name: str):
    from . import stylegan as sg

    s = RECIPES["stylegan-photo"].settings
    return sg.micro_config(s["size"], width=s["width"], style_dim=s["style_dim"])


def load_stylegan(name: str = "stylegan-photo", *, with_latents: bool = False):
    """A course micro StyleGAN2 (``"stylegan-photo"`` or ``"stylegan-comic"``), float32, frozen;
    ``with_latents=True`` also returns the photo generator's learned z per training photo
    (the order of the recipe's data: v2 photos, v1 photos, 90 portraits, then their mirrors)."""
    from safetensors import safe_open
    from safetensors.torch import load_file as load_st

    from . import stylegan as sg

    if name not in ("stylegan-photo", "stylegan-comic"):
        raise ValueError(f"not a StyleGAN course weight: {name!r}")
    file = path(name) / "generator.safetensors"
    with safe_open(str(file), "pt") as fh:
        config = json.loads(fh.metadata()["config"])
    config["channels"] = {int(k): v for k, v in config["channels"].items()}     # JSON keys are strings
    tensors = {k: v.float() for k, v in load_st(str(file)).items()}
    G = sg.Generator(sg.GeneratorConfig(**config))
    G.load_state_dict({k[2:]: v for k, v in tensors.items() if k.startswith("G.")})
    G.w_avg = tensors["w_avg"]
    G = G.eval().requires_grad_(False)
    if not with_latents:
        return G
    if "z" not in tensors:
        raise ValueError(f"{name} carries no latents (only stylegan-photo does)")
    return G, tensors["z"]


def describe() -> list[dict[str, Any]]:
    """One row per recipe: registered or not, steps, MB, command."""
    reg = registry()
    rows = []
    for name, recipe in RECIPES.items():
        e = reg.get(name)
        rows.append({"name": name, "chapter": recipe.chapter,
                     "steps": e["steps"] if e else None,
                     "MB": round(sum(m["bytes"] for m in e["files"].values()) / 2 ** 20, 2) if e else None,
                     "hours": round(e["seconds"] / 3600, 2) if e else None,
                     "command": e["command"] if e else recipe.command() + "  (not exported yet)"})
    return rows

"""Test stand-ins: every real weight file of the course in its exact format, with random weights.

Without the internet the course never loads a real VGG, ResNet-50, AlexNet, FID Inception,
AnimeGANv2, StyleGAN2-FFHQ or Stable Diffusion 2.1 file, so the code that does would never run.
A *stand-in* is a file in the real file's format and key layout, filled with seeded random
weights, so that those code paths run in tests exactly as they would with the real file::

    python -m comicutils assets stand-ins DIR             # writes DIR, prints export lines
    eval "$(python -m comicutils assets stand-ins DIR)"   # ... and puts them in force

What ``DIR`` holds (a mirror folder: each file at its registry path)::

    torchvision/vgg16-397923af.pth           torchvision vgg16() state dict, classifier included
    torchvision/vgg19-dcbb9e9d.pth           vgg19()
    torchvision/resnet50-0676ba61.pth        resnet50()
    torchvision/alexnet-owt-7be5be79.pth     alexnet()
    fid/pt_inception-2015-12-05-6726825d.pth pytorch-fid's Inception-v3 layout (1008 classes)
    animegan/face_paint_512_v2.pt            AnimeGANv2 generator state dict
    stylegan2/stylegan2-ffhq-config-f.pt     rosinality format {"g_ema", "latent_avg"}, but a
                                             32 px generator (:data:`STYLEGAN_CONFIG`); the
                                             loaders read the architecture off the file
    huggingface/hub/models--sd2-community--stable-diffusion-2-1/
        refs/main                            the pinned revision
        snapshots/<SD21_REVISION>/           a tiny Stable Diffusion 2.1 written with
            model_index.json, vae/, unet/,   ``save_pretrained`` (SD 2.1's block types, linear
            text_encoder/, tokenizer/,       projections, v-prediction scheduler; tiny widths)
            scheduler/, comicutils-standin.json
    standins.sha256                          ``sha256sum`` format, every file above
    standins.json                            what was written (format, seed, versions)

The printed ``export`` lines set ``COMICUTILS_MIRROR`` (``DIR`` first), ``COMICUTILS_STANDIN_CHECKSUMS``
(``DIR/standins.sha256``: the registry accepts the digests listed there, see
:mod:`comicutils.assets`), ``HF_HOME`` (``DIR/huggingface``) and ``HF_HUB_OFFLINE=1``. Whenever a
stand-in is accepted a "TEST STAND-INS IN FORCE" banner says so: **random weights; no number
computed with them is a result.** The same seed gives the same tensors (and, with the same
library versions, the same bytes); a folder that already holds a complete, matching set is
verified and kept, not rewritten.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import assets
from .comicdiff.components import SD21_MARKER, hf_repo_dir, sd21_snapshot_dir
from .runtime import atomic_path

__all__ = ["ASSETS", "CHECKSUM_NAME", "MANIFEST_NAME", "HF_DIR", "SD21_MARKER", "STYLEGAN_CONFIG",
           "SD21_UNET_CONFIG", "SD21_VAE_CONFIG", "SD21_TEXT_CONFIG", "StandIns", "write_standins",
           "environment", "export_lines", "sd21_snapshot_dir", "hf_repo_dir"]

FORMAT = 2  # bumped when the files change (2: SD 2.1 fp16 variants beside the fp32 files)
CHECKSUM_NAME = "standins.sha256"
MANIFEST_NAME = "standins.json"
HF_DIR = "huggingface"

STYLEGAN_CONFIG = {"size": 32, "style_dim": 64, "n_mlp": 8, "channels": {4: 64, 8: 64, 16: 32, 32: 16}}
"""The StyleGAN2 stand-in: FFHQ's structure (8 mapping layers, rosinality names) at 32 px."""

_TINY_WIDTHS = [32, 32, 64, 64]
SD21_UNET_CONFIG: dict = {}   # filled below from comicdiff's SD 2.1 configs
SD21_VAE_CONFIG: dict = {}
SD21_TEXT_CONFIG: dict = {
    # SD 2.1's OpenCLIP-H text encoder is a CLIPTextModel (1024 wide, 23 layers, 77 tokens);
    # the stand-in keeps the class, the 77 positions and the vocabulary of the tiny tokenizer.
    "vocab_size": 514, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
    "num_attention_heads": 2, "max_position_embeddings": 77, "hidden_act": "gelu",
    "projection_dim": 32, "bos_token_id": 512, "eos_token_id": 513, "pad_token_id": 0,
}


def _sd21_configs() -> None:
    from .comicdiff.components import SD21_UNET_CONFIG as UNET, SD21_VAE_CONFIG as VAE

    SD21_UNET_CONFIG.update({**UNET, "sample_size": 8, "block_out_channels": list(_TINY_WIDTHS),
                             "attention_head_dim": [1, 1, 2, 2],
                             "cross_attention_dim": SD21_TEXT_CONFIG["hidden_size"]})
    SD21_VAE_CONFIG.update({**VAE, "sample_size": 64, "block_out_channels": list(_TINY_WIDTHS),
                            "layers_per_block": 1})


_sd21_configs()


# --------------------------------------------------------------------------- random weights
def _generator(name: str, seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed) * 1_000_003 + zlib.crc32(name.encode()))


@torch.no_grad()
def _randomize(model: nn.Module, g: torch.Generator) -> nn.Module:
    """Seeded, variance-preserving weights for a network built on the meta device.

    Convolutions and linear layers: N(0, 2 / fan_in) (He), biases 0; batch and group norms:
    identity (weight 1, bias 0, running mean 0, variance 1). Activations stay of order one
    through deep stacks (Inception's 94 convolutions), so features are finite. Every tensor
    must be set; one that is not raises.
    """
    model.to_empty(device="cpu")
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            t.fill_(float("nan"))
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear, nn.ConvTranspose2d)):
            fan_in = m.weight[0].numel()
            m.weight.normal_(0.0, math.sqrt(2.0 / fan_in), generator=g)
            if m.bias is not None:
                m.bias.zero_()
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            if m.weight is not None:
                m.weight.fill_(1.0)
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.num_batches_tracked.zero_()
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and torch.isnan(v).any()]
    if bad:
        raise RuntimeError(f"stand-in left tensors unset: {bad[:5]}")
    return model


def _torchvision(arch: str, **kwargs) -> Callable[[torch.Generator], dict]:
    def build(g: torch.Generator) -> dict:
        import torchvision.models as tvm

        with torch.device("meta"):
            model = getattr(tvm, arch)(weights=None, **kwargs)
        return _randomize(model, g).state_dict()

    return build


def _animegan(g: torch.Generator) -> dict:
    from .animegan import AnimeGANv2Generator

    with torch.device("meta"):
        model = AnimeGANv2Generator()
    return _randomize(model, g).state_dict()


def _stylegan(g: torch.Generator) -> dict:
    from .stylegan.model import Generator, GeneratorConfig

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        G = Generator(GeneratorConfig(**STYLEGAN_CONFIG))
        w_avg = G.update_w_avg()
    # rosinality's checkpoint layout: the EMA generator and the mean latent (no config entry)
    return {"g_ema": {k: v.detach().clone() for k, v in G.state_dict().items()},
            "latent_avg": w_avg.detach().clone()}


BUILDERS: dict[str, Callable[[torch.Generator], dict]] = {
    "vgg16-imagenet": _torchvision("vgg16"),
    "vgg19-imagenet": _torchvision("vgg19"),
    "resnet50-imagenet": _torchvision("resnet50"),
    "alexnet-imagenet": _torchvision("alexnet"),
    "fid-inception": _torchvision("inception_v3", aux_logits=False, num_classes=1008, init_weights=False),
    "animeganv2-face-paint-512-v2": _animegan,
    "stylegan2-ffhq-config-f": _stylegan,
}
ASSETS = tuple(BUILDERS)
"""Registry assets that get a stand-in (every one a course code path loads)."""


# --------------------------------------------------------------------------- Stable Diffusion 2.1
def _bytes_to_unicode() -> list[str]:
    """CLIP's byte-level alphabet: printable bytes map to themselves, the rest to code points 256+."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in keep] + [chars[b] for b in range(256) if b not in keep]


def _write_tokenizer(folder: Path) -> None:
    """A CLIP BPE tokenizer in SD 2.1's file layout with no merges: 256 byte symbols, the same
    with the end-of-word mark, then the two special tokens (514 tokens; any text tokenizes,
    one symbol per byte)."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _bytes_to_unicode()
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": 256 + i for i, c in enumerate(chars)})
    vocab.update({"<|startoftext|>": 512, "<|endoftext|>": 513})
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!",
               "unk_token": "<|endoftext|>"}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2))
    (folder / "tokenizer_config.json").write_text(json.dumps(
        {**special, "add_prefix_space": False, "do_lower_case": True, "errors": "replace",
         "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}, indent=2))


def _write_sd21(snapshot: Path, seed: int) -> None:
    """Save the tiny SD 2.1 into ``snapshot`` (which must not exist) with ``save_pretrained``."""
    import warnings

    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel
    from transformers.utils import logging as hf_logging

    from .comicdiff.components import SD21_SCHEDULER_CONFIG

    g = _generator("sd21", seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=g)))
        unet = UNet2DConditionModel.from_config(SD21_UNET_CONFIG)
        vae = AutoencoderKL.from_config(SD21_VAE_CONFIG)
        text_encoder = CLIPTextModel(CLIPTextConfig(**SD21_TEXT_CONFIG))
    scheduler = DDIMScheduler.from_config(SD21_SCHEDULER_CONFIG)
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for model, sub in ((unet, "unet"), (vae, "vae"), (text_encoder, "text_encoder")):
                model.save_pretrained(snapshot / sub, safe_serialization=True)
                # the fp16 files the course loads (the real repository has both)
                model.half().save_pretrained(snapshot / sub, safe_serialization=True, variant="fp16")
            scheduler.save_pretrained(snapshot / "scheduler")
    finally:
        hf_logging.set_verbosity(verbosity)
        hf_logging.enable_progress_bar()
    _write_tokenizer(snapshot / "tokenizer")
    import diffusers

    (snapshot / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusionPipeline", "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None], "requires_safety_checker": False,
        "safety_checker": [None, None], "scheduler": ["diffusers", "DDIMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]}, indent=2))
    (snapshot / SD21_MARKER).write_text(json.dumps({
        "what": "comicutils test stand-in for Stable Diffusion 2.1: tiny configs, random weights. "
                "Not a model; nothing it produces is a result.", "seed": seed}, indent=2))


def _save(obj, target: Path) -> None:
    """``torch.save`` all-or-nothing, and byte-for-byte reproducible: torch names the archive's
    records after the file, so the file is written under its final name in a temporary sibling
    folder and then renamed into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        torch.save(obj, tmp / target.name)
        os.chmod(tmp / target.name, 0o644)
        os.replace(tmp / target.name, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- the set
@dataclass
class StandIns:
    """A written (or verified) stand-in folder."""

    directory: Path
    seed: int
    files: dict[str, str] = field(default_factory=dict)   # relative path -> sha256
    reused: bool = False
    seconds: float = 0.0

    @property
    def checksum_file(self) -> Path:
        return self.directory / CHECKSUM_NAME

    @property
    def hf_home(self) -> Path:
        return self.directory / HF_DIR

    def environment(self, base: dict | None = None) -> dict[str, str]:
        return environment(self.directory, base)


def environment(directory: str | os.PathLike, base: dict | None = None) -> dict[str, str]:
    """The variables that put the stand-ins of ``directory`` in force (``base``: the current
    environment, default ``os.environ``; its ``COMICUTILS_MIRROR`` folders follow ``directory``)."""
    base = os.environ if base is None else base
    directory = Path(directory).resolve()
    mirrors = [str(directory)] + [p for p in base.get(assets.MIRROR_ENV, "").split(os.pathsep)
                                  if p.strip() and Path(p).expanduser().resolve() != directory]
    return {assets.MIRROR_ENV: os.pathsep.join(mirrors),
            assets.STANDIN_ENV: str(directory / CHECKSUM_NAME),
            "HF_HOME": str(directory / HF_DIR),
            "HF_HUB_OFFLINE": "1"}


def export_lines(directory: str | os.PathLike, base: dict | None = None) -> list[str]:
    """``export NAME=value`` lines for a POSIX shell (``eval "$(...)"``)."""
    return [f"export {k}={shlex.quote(v)}" for k, v in environment(directory, base).items()]


def _relative_sd_files(directory: Path) -> list[str]:
    from .comicdiff.components import SD21_REVISION

    snap = sd21_snapshot_dir(directory / HF_DIR / "hub", revision=SD21_REVISION)
    repo = hf_repo_dir(directory / HF_DIR / "hub")
    files = [p for p in snap.rglob("*") if p.is_file()] + [repo / "refs" / "main"]
    return sorted(str(p.relative_to(directory)) for p in files)


def _manifest(seed: int) -> dict:
    import diffusers
    import transformers

    from . import __version__

    return {"format": FORMAT, "seed": seed, "comicutils": __version__, "torch": torch.__version__.split("+")[0],
            "diffusers": diffusers.__version__, "transformers": transformers.__version__,
            "assets": {name: assets.get_asset(name).path for name in ASSETS},
            "note": "random weights in the real files' formats, for tests; not results"}


def _existing(directory: Path, seed: int, log) -> dict[str, str] | None:
    """The verified checksum table of a complete, matching set in ``directory``, else None."""
    try:
        manifest = json.loads((directory / MANIFEST_NAME).read_text())
        lines = (directory / CHECKSUM_NAME).read_text().splitlines()
    except (OSError, ValueError):
        return None
    if manifest.get("format") != FORMAT or manifest.get("seed") != seed:
        return None
    table = {}
    for line in lines:
        digest, _, rel = line.partition("  ")
        table[rel] = digest
    wanted = {assets.get_asset(n).path for n in ASSETS}
    if not wanted <= set(table) or not any(r.startswith(HF_DIR + "/") for r in table):
        return None
    log(f"verifying the stand-ins in {directory} ...")
    for rel, digest in table.items():
        path = directory / rel
        if not path.is_file():
            return None
        known = assets._VERIFIED.get(assets._file_state(path))   # hashed before in this process
        if (known or assets.sha256_of(path)) != digest:
            return None
        assets._VERIFIED[assets._file_state(path)] = digest
    return table


def write_standins(directory: str | os.PathLike, *, seed: int = 0, force: bool = False,
                   log: Callable[[str], None] | None = None) -> StandIns:
    """Write every stand-in into ``directory`` (a mirror layout, see the module docstring).

    A folder that already holds a complete set for ``seed`` with matching checksums is kept
    (only verified) unless ``force``. Each file is written to a temporary name and renamed;
    the checksum file is written last, so a set with a checksum file is complete.
    Progress goes to ``log`` (default: stderr).
    """
    log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
    start = time.perf_counter()
    directory = Path(directory).expanduser().resolve()
    directory.mkdir(parents=True, exist_ok=True)
    if not force:
        table = _existing(directory, seed, log)
        if table is not None:
            log(f"stand-ins in {directory} are complete for seed {seed}: kept")
            return StandIns(directory, seed, table, reused=True, seconds=time.perf_counter() - start)
    (directory / CHECKSUM_NAME).unlink(missing_ok=True)
    files: dict[str, str] = {}
    for name, build in BUILDERS.items():
        asset = assets.get_asset(name)
        t0 = time.perf_counter()
        state = build(_generator(name, seed))
        target = directory / asset.path
        _save(state, target)
        del state
        digest = assets.sha256_of(target)
        assets._VERIFIED[assets._file_state(target)] = digest
        files[asset.path] = digest
        log(f"  {name:<30} {target.stat().st_size / 1e6:8.1f} MB  {time.perf_counter() - t0:5.1f} s")

    from .comicdiff.components import SD21_REVISION

    t0 = time.perf_counter()
    hub = directory / HF_DIR / "hub"
    repo = hf_repo_dir(hub)
    snapshot = sd21_snapshot_dir(hub, revision=SD21_REVISION)
    snapshot.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=snapshot.parent, prefix=".standin."))
    try:
        _write_sd21(tmp / "snap", seed)
        if snapshot.exists():
            shutil.rmtree(snapshot)
        os.replace(tmp / "snap", snapshot)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    with atomic_path(repo / "refs" / "main") as ref:
        ref.write_text(SD21_REVISION)
    for rel in _relative_sd_files(directory):
        files[rel] = assets.sha256_of(directory / rel)
    size = sum((directory / r).stat().st_size for r in files if r.startswith(HF_DIR))
    log(f"  {'stable-diffusion-2-1 (tiny)':<30} {size / 1e6:8.1f} MB  {time.perf_counter() - t0:5.1f} s  -> {snapshot}")

    with atomic_path(directory / MANIFEST_NAME) as tmp_manifest:
        tmp_manifest.write_text(json.dumps(_manifest(seed), indent=2))
    with atomic_path(directory / CHECKSUM_NAME) as tmp_sums:
        tmp_sums.write_text("".join(f"{digest}  {rel}\n" for rel, digest in sorted(files.items())))
    seconds = time.perf_counter() - start
    log(f"wrote {len(files)} stand-in files to {directory} in {seconds:.1f} s "
        "(random weights: for tests, never results)")
    return StandIns(directory, seed, files, reused=False, seconds=seconds)

"""What each chapter trains per (mode, tier), estimated: shared by tests/test_tiers.py and docs/gpu-tiers.md.

``python tests/tier_table.py`` prints the page's tables (markdown) from the notebooks' own parameters
cells and the package's estimates (:mod:`comicutils.memory`, :mod:`comicutils.chapters`,
:func:`comicutils.comicdiff.training_memory`); nothing is downloaded and nothing runs on a GPU.
"""
from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from comicutils import chapters, gan, memory, pix2pix
from comicutils import comicdiff as cd

ROOT = Path(__file__).resolve().parent.parent
CASES = [("smoke", "cpu"), ("auto", "cpu"), ("auto", "gpu16"), ("auto", "gpu40"), ("full", "cpu")]
CARD = {"gpu16": "T4", "gpu40": "A100", "full": "A100"}        # the card a tier's time is estimated on
MINUTES_ON_A_T4 = 15
NOTEBOOKS = {"01": "01_neural_style_transfer.ipynb", "02": "02_pix2pix_arcanegan.ipynb",
             "04": "04_comicdiff_lora_training.ipynb", "06": "06_evaluation.ipynb", "07": "07_gans_dcgan_cgan.ipynb"}
FULL_RELEASE_PAIRS = 10_000            # face2comics v2 full release (its README); data.split_keys holds 20 % out
PREVIEW_TRAIN_PAIRS = 40               # the preview grid's 50 pairs, the course's split
CGAN_IMAGES = 3 * PREVIEW_TRAIN_PAIRS  # chapter 07: photos and comics of v1 and v2, 40 training images each


@dataclass
class Training:
    """One training loop of a chapter: its step's estimate, how many steps, in which dtype."""

    what: str
    est: memory.StepMemory
    steps: int
    dtype: str = "float32"             # the trainers of chapters 01, 02, 06 (pix2pix) and 07 run in float32

    def seconds(self, card: str) -> float:
        return memory.step_seconds(self.est, card, self.dtype) * self.steps


@contextlib.contextmanager
def environment(mode: str, tier: str):
    saved = {k: os.environ.get(k) for k in ("COMICUTILS_MODE", "COMICUTILS_TIER", "COMICUTILS_DEVICE")}
    os.environ.update(COMICUTILS_MODE=mode, COMICUTILS_TIER=tier, COMICUTILS_DEVICE="cpu")
    try:
        yield
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)


def notebook_parameters(notebook: str) -> dict:
    """Execute a notebook's ``parameters`` cell as Jupyter would, under the current environment."""
    nb = json.loads((ROOT / "notebooks" / notebook).read_text())
    (cell,) = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    scope: dict = {}
    with contextlib.redirect_stdout(None):
        exec("".join(cell["source"]), scope)          # noqa: S102 - the notebook's own cell
    return scope


def _gpu_or_full(p) -> bool:
    return p["TIER"].is_gpu or p["MODE"] == "full"


def chapter_01(p) -> list[Training]:
    """Every nst.stylize run of the chapter; VGG weights on a GPU and in full mode, taef2 offline on a CPU."""
    used = "vgg16" if _gpu_or_full(p) else "taef2"
    net = lambda name: chapters.nst_step_memory(p["SIZE"], name)  # noqa: E731
    runs = [Training(f"epoch sweep ({used})", net(used), len(p["INITS"]) * max(p["EPOCHS"])),
            Training(f"style-weight sweep ({used})", net(used), len(p["SEED_STYLE_WEIGHTS"]) * p["SWEEP_STEPS"]),
            Training("random VGG-19", net("vgg19"), p["RANDOM_STEPS"])]
    if _gpu_or_full(p):                                 # the backbone comparison runs where the VGG files are
        runs += [Training(f"backbone comparison ({b})", net(b), p["SWEEP_STEPS"]) for b in ("vgg16", "vgg19", "taef2")]
    return runs


def chapter_02(p) -> list[Training]:
    """Every row of Table 1, as the notebook's training cell builds it."""
    if p["MODE"] == "full":
        pairs = int(FULL_RELEASE_PAIRS * 0.8)
    else:
        pairs = p["FULL_PAIRS"] or p["TRAIN_PAIRS"] or PREVIEW_TRAIN_PAIRS
    steps = p["EPOCHS"] * -(-pairs // p["BATCH_SIZE"])
    runs = []
    for name in p["ROWS"]:
        cfg = pix2pix.table1_config(name, size=p["SIZE"])
        if cfg["generator"]["name"] != "ures50":
            cfg["generator"]["ngf"] = p["NGF"]
        runs.append(Training(name, chapters.pix2pix_step_memory(cfg, p["BATCH_SIZE"]), steps))
    return runs


def _comicdiff(p, size, batch, checkpointing, steps, what) -> Training:
    full = p["MODE"] == "full"
    dtype = torch.bfloat16 if full else p["TIER"].torch_dtype()
    path = "sd21" if _gpu_or_full(p) else "offline"
    est = cd.training_memory(path, size, batch, dtype=dtype, gradient_checkpointing=checkpointing, lpips_size=None)
    return Training(what, est, steps, str(dtype).removeprefix("torch."))


def chapter_04(p) -> list[Training]:
    """The LoRA run and the random-U-Net ablation (the same settings); steps: MAX_STEPS, else one epoch
    of the encoded preview pairs (a pair and its mirror, AUG_COPIES augmented copies) or of the full data."""
    if p["MAX_STEPS"]:
        steps = p["MAX_STEPS"]
    elif p["MODE"] == "full":
        steps = p["EPOCHS"] * -(-int(FULL_RELEASE_PAIRS * (1 - p["TEST_FRACTION"])) // p["BATCH_SIZE"])
    else:
        steps = p["EPOCHS"] * -(-PREVIEW_TRAIN_PAIRS * 2 * (1 + p["AUG_COPIES"]) // p["BATCH_SIZE"])
    return [_comicdiff(p, p["SIZE"], p["BATCH_SIZE"], p["CHECKPOINTING"], steps, f"LoRA r={p['RANK']}, {label}")
            for label in ("pre-trained U-Net", "random U-Net ablation")]


def chapter_06(p) -> list[Training]:
    """The quick models the chapter trains where chapters 02 and 04 left nothing at its sizes."""
    unet = {"generator": {"name": "unet", "size": p["SIZE"]}, "discriminator": {}}
    return [Training("quick pix2pix U-Net (batch 1)", chapters.pix2pix_step_memory(unet, 1), p["FALLBACK_STEPS"]),
            _comicdiff(p, p["COMICDIFF_SIZE"], p["COMICDIFF_BATCH"], p["COMICDIFF_CHECKPOINTING"],
                       p["COMICDIFF_FALLBACK_STEPS"], "quick ComicDiff adapter")]


def chapter_07(p) -> list[Training]:
    """The DCGAN and the conditional GAN (the style classifier, a few hundred small steps, is left out)."""
    nz, size, gw, dw, drop = p["NZ"], p["SIZE"], p["G_WIDTHS"], p["D_WIDTHS"], p["DROPOUT"]
    dcgan = chapters.gan_step_memory(lambda: gan.DCGANGenerator(nz, gw, size),
                                     lambda: gan.DCGANDiscriminator(dw, size, drop), p["BATCH_SIZE"], nz=nz, size=size)
    cgan = chapters.gan_step_memory(lambda: gan.ConditionalGenerator(nz, gw, size, embed_dim=p["EMBED_DIM"]),
                                    lambda: gan.ConditionalDiscriminator(dw, size, drop), p["CGAN_BATCH_SIZE"],
                                    nz=nz, size=size, conditional=True)
    return [Training("DCGAN", dcgan, p["DCGAN_EPOCHS"] * -(-PREVIEW_TRAIN_PAIRS // p["BATCH_SIZE"])),
            Training("cGAN", cgan, p["CGAN_EPOCHS"] * -(-CGAN_IMAGES // p["CGAN_BATCH_SIZE"]))]


TITLES = {"01": "01 · Neural style transfer", "02": "02 · pix2pix (the Human-to-Anime report's Table 1)",
          "04": "04 · ComicDiff LoRA training", "06": "06 · Evaluation (its quick models)",
          "07": "07 · DCGAN and conditional GAN (64 px)"}
TRAININGS = {"01": chapter_01, "02": chapter_02, "04": chapter_04, "06": chapter_06, "07": chapter_07}
SHOWN = {"01": ["SIZE", "EPOCHS", "SWEEP_STEPS", "RANDOM_STEPS"],
         "02": ["SIZE", "BATCH_SIZE", "EPOCHS", "TRAIN_PAIRS", "FULL_PAIRS", "TEST_PAIRS"],
         "04": ["SIZE", "BATCH_SIZE", "CHECKPOINTING", "PRECISION", "MAX_STEPS", "FULL_PAIRS"],
         "06": ["SIZE", "COMICDIFF_SIZE", "COMICDIFF_BATCH", "COMICDIFF_CHECKPOINTING", "FALLBACK_STEPS",
                "COMICDIFF_FALLBACK_STEPS", "NST_STEPS"],
         "07": ["G_WIDTHS", "D_WIDTHS", "BATCH_SIZE", "DCGAN_EPOCHS", "CGAN_BATCH_SIZE", "CGAN_EPOCHS", "N_EVAL"]}


def trainings(chapter: str, mode: str, tier: str) -> tuple[dict, list[Training]]:
    """The chapter's parameters and training loops under (mode, tier)."""
    with environment(mode, tier):
        p = notebook_parameters(NOTEBOOKS[chapter])
        return p, TRAININGS[chapter](p)


def _time(runs: list[Training], key: str) -> str:
    if key not in CARD:
        return "the progress bars show it (no estimate on a CPU)"
    minutes = sum(r.seconds(CARD[key]) for r in runs) / 60
    text = f"{minutes / 60:.1f} h" if minutes >= 120 else f"{minutes:.1f} min"
    return f"{text} on an {CARD[key]}" if CARD[key] == "A100" else f"{text} on a {CARD[key]}"


def table(chapter: str) -> str:
    cols = [("CPU (auto)", "auto", "cpu"), ("T4 (gpu16)", "auto", "gpu16"), ("A100 (gpu40)", "auto", "gpu40"),
            ("full, 80 GB card", "full", "cpu")]
    found = {label: trainings(chapter, mode, tier) for label, mode, tier in cols}
    keys = {label: ("full" if mode == "full" else tier) for label, mode, tier in cols}
    lines = ["| | " + " | ".join(label for label, _, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for name in SHOWN[chapter]:
        lines.append(f"| `{name}` | " + " | ".join(f"`{found[label][0][name]!r}`" for label, _, _ in cols) + " |")
    dtypes = {label: ", ".join(sorted({r.dtype for r in runs})) for label, (_, runs) in found.items()}
    lines.append("| training precision | " + " | ".join(dtypes[label] for label, _, _ in cols) + " |")
    lines.append("| steps | " + " | ".join(" + ".join(f"{r.steps:,}" for r in runs) for _, runs in found.values()) + " |")
    lines.append("| peak memory of a step: estimate (comicutils.memory: counted on the meta device, x 1.15) | " + " | ".join(
        f"{max(r.est.total_gib for r in runs):.2f} GiB" for _, runs in found.values()) + " |")
    lines.append("| training time: estimate (comicutils.memory: FLOPs / (datasheet peak x 30 %)) | " + " | ".join(
        _time(runs, keys[label]) for label, (_, runs) in found.items()) + " |")
    runs = found["T4 (gpu16)"][1]
    lines.append("")
    lines.append("Steps, in order: " + "; ".join(r.what for r in runs) + ".")
    return "\n".join(lines)


if __name__ == "__main__":
    for chapter in TRAININGS:
        print(f"### {TITLES[chapter]}\n\n{table(chapter)}\n")

"""Every tier's training settings fit that tier's memory budget, read from the notebooks' own parameters cells.

The parameters cell of a chapter is executed with ``COMICUTILS_MODE`` and ``COMICUTILS_TIER`` set, as
the notebook would run on that device; its training step is then estimated on the meta device
(:mod:`comicutils.memory`: parameters, gradients, AdamW state, saved activations, checkpointing) and
checked against the tier's budget. Nothing is downloaded; SD 2.1 is built from its config.
"""
from __future__ import annotations

import pytest
from tier_table import CARD, CASES, MINUTES_ON_A_T4, notebook_parameters, trainings

from comicutils import comicdiff as cd
from comicutils import memory, runtime


def parameters(notebook: str, mode: str, tier: str, monkeypatch) -> dict:
    monkeypatch.setenv("COMICUTILS_MODE", mode)
    monkeypatch.setenv("COMICUTILS_TIER", tier)
    monkeypatch.setenv("COMICUTILS_DEVICE", "cpu")
    return notebook_parameters(notebook)


@pytest.mark.parametrize("mode,tier", CASES, ids=lambda v: v)
def test_chapter_04_training_fits_its_tier(mode, tier, monkeypatch, capsys):
    p = parameters("04_comicdiff_lora_training.ipynb", mode, tier, monkeypatch)
    gpu = runtime.device_tier().is_gpu
    path = "sd21" if gpu or mode == "full" else "offline"      # what PATH="auto" takes there (SD 2.1 is downloaded on a GPU)
    plan = cd.training_plan(path, p["SIZE"], p["BATCH_SIZE"], steps=p["MAX_STEPS"] or 1, rank=p["RANK"],
                            feed_forward=p["FEED_FORWARD"], gradient_checkpointing=p["CHECKPOINTING"])
    assert "GiB per step" in plan
    if tier == "gpu16" and mode == "auto":          # the T4 tier: the write-up's method at 512 px in fp16, within 15 min
        assert (p["SIZE"], p["PRECISION"], p["CHECKPOINTING"]) == (512, "no", True)   # "no": rehearsed in fp32 on the CPU
        assert runtime.device_tier().dtype == "float16" and "min on Tesla T4" in plan
        minutes = float(plan.split("expected about ")[1].split(" min")[0])
        assert minutes <= 15, plan
    if mode == "full":
        assert (p["SIZE"], p["BATCH_SIZE"]) == (768, 4)        # the report's settings, on an 80 GB card


def test_chapter_05_reuses_chapter_04s_tier_settings(monkeypatch):
    for mode, tier in CASES:
        a = parameters("04_comicdiff_lora_training.ipynb", mode, tier, monkeypatch)
        b = parameters("05_comicdiff_inference_and_widgets.ipynb", mode, tier, monkeypatch)
        assert (b["SIZE"], b["TRAIN_BATCH"], b["TRAIN_CHECKPOINTING"]) == (a["SIZE"], a["BATCH_SIZE"], a["CHECKPOINTING"]), (mode, tier)


def test_a_setting_that_does_not_fit_is_refused_up_front(monkeypatch):
    monkeypatch.setenv("COMICUTILS_TIER", "gpu16")
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    with pytest.raises(memory.MemoryBudgetError, match="768 px, batch 4"):
        cd.training_plan("sd21", 768, 4, steps=10)                 # the report's step without checkpointing on a T4
    monkeypatch.setenv("COMICUTILS_MODE", "full")
    with pytest.raises(memory.MemoryBudgetError, match="72 GiB"):
        cd.training_plan("sd21", 1024, 16, steps=10)               # beyond an 80 GB card


def fits_its_budget(chapter: str, mode: str, tier: str) -> dict:
    """Every training loop of the chapter under (mode, tier) through memory.plan, which raises
    MemoryBudgetError when a step exceeds the tier's budget (full mode: an 80 GB card's); on a GPU
    tier the chapter's training must also take at most 15 minutes on a T4 by the FLOPs estimate."""
    p, runs = trainings(chapter, mode, tier)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMICUTILS_MODE", mode)
        mp.setenv("COMICUTILS_TIER", tier)
        for r in runs:
            assert "GiB per step" in memory.plan(r.est, r.what, r.steps, dtype=r.dtype)
    if mode == "auto" and tier != "cpu":
        minutes = sum(r.seconds(CARD["gpu16"]) for r in runs) / 60 if tier == "gpu16" else None
        assert minutes is None or minutes <= MINUTES_ON_A_T4, (chapter, minutes)
        assert chapter == "07" or 256 <= p["SIZE"] <= 512      # chapter 07's GANs are 64 px by design
    return p


@pytest.mark.parametrize("mode,tier", CASES, ids=lambda v: v)
def test_chapter_01_nst_fits_its_tier(mode, tier):
    p = fits_its_budget("01", mode, tier)
    if mode == "auto":
        assert p["SIZE"] == {"cpu": 128, "gpu16": 512, "gpu40": 512}[tier]
        assert max(p["EPOCHS"]) == (300 if tier == "cpu" else 500)       # GPU tiers: Ding et al.'s Figure 4


@pytest.mark.parametrize("mode,tier", CASES, ids=lambda v: v)
def test_chapter_02_pix2pix_fits_its_tier(mode, tier):
    p = fits_its_budget("02", mode, tier)
    if mode == "auto" and tier != "cpu":            # a full-release subset, not the preview pairs
        assert p["FULL_PAIRS"] >= 1000 and p["BATCH_SIZE"] == 4
    else:
        assert p["FULL_PAIRS"] is None or mode == "full"
    if mode == "auto" and tier == "cpu":
        assert (p["SIZE"], p["BATCH_SIZE"], p["EPOCHS"], p["TRAIN_PAIRS"]) == (128, 1, 2, 20)


@pytest.mark.parametrize("mode,tier", CASES, ids=lambda v: v)
def test_chapter_04_data_follows_its_tier(mode, tier):
    p = fits_its_budget("04", mode, tier)
    assert p["FULL_PAIRS"] == {"gpu16": 2000, "gpu40": 4000}.get(tier if mode == "auto" else "-", p["FULL_PAIRS"])
    if mode in ("smoke", "auto") and tier == "cpu":
        assert p["FULL_PAIRS"] is None              # the preview pairs on the CPU


@pytest.mark.parametrize("mode,tier", CASES, ids=lambda v: v)
def test_chapter_06_quick_models_fit_its_tier(mode, tier):
    p6 = fits_its_budget("06", mode, tier)
    p2, _ = trainings("02", mode, tier)
    p4, _ = trainings("04", mode, tier)
    assert p6["SIZE"] == p2["SIZE"] or mode == "smoke"     # it finds chapter 02's generators at their size
    if mode != "smoke":
        assert (p6["COMICDIFF_SIZE"], p6["COMICDIFF_BATCH"], p6["COMICDIFF_CHECKPOINTING"]) == (
            p4["SIZE"], p4["BATCH_SIZE"], p4["CHECKPOINTING"])    # and chapter 04's adapter, trained the same way


@pytest.mark.parametrize("mode,tier", CASES, ids=lambda v: v)
def test_chapter_07_gans_fit_their_tier(mode, tier):
    p = fits_its_budget("07", mode, tier)
    if mode == "auto" and tier != "cpu":
        assert (p["BATCH_SIZE"], p["DCGAN_EPOCHS"]) == (64, 3000)      # full mode's networks and steps

"""One checkpoint format for the course's adversarial trainers (pix2pix, the write-up-002 GANs).

A trainer here has ``generator``, ``discriminator``, ``opt_g``, ``opt_d``, ``step``, ``epoch``,
``history``, ``config`` (``{"generator": {...}, "discriminator": {...}}``) and ``device``.
:func:`trainer_state` turns it into plain tensors, numbers, strings, lists and dicts (so the file
loads with ``torch.load(weights_only=True)``); :func:`save_state` writes it all-or-nothing;
:func:`restore_trainer` checks the file's format and architecture against the trainer before a
single weight is touched, then restores it and returns the file's dict for trainer-specific
extras.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .runtime import atomic_path

__all__ = ["trainer_state", "save_state", "restore_trainer"]


def trainer_state(trainer, fmt: str, **extra: Any) -> dict:
    """Everything needed to resume ``trainer``, tagged with the format string ``fmt``."""
    return {"format": fmt, "generator": trainer.generator.state_dict(),
            "discriminator": trainer.discriminator.state_dict(),
            "opt_g": trainer.opt_g.state_dict(), "opt_d": trainer.opt_d.state_dict(),
            "step": trainer.step, "epoch": trainer.epoch, "history": list(trainer.history),
            "config": trainer.config, **extra}


def save_state(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def restore_trainer(trainer, path: str | os.PathLike, fmt: str) -> dict:
    """Load ``path`` (``weights_only=True``) into ``trainer``; return the checkpoint dict.

    Raises ``ValueError`` (one line, naming both sides) when the file is not a ``fmt`` checkpoint
    or was written for another generator or discriminator configuration; the trainer is then
    left as it was.
    """
    ckpt = torch.load(path, map_location=trainer.device, weights_only=True)
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != fmt:
        raise ValueError(f"{path} is not a {fmt} trainer checkpoint")
    for part in ("generator", "discriminator"):
        theirs = dict(ckpt["config"].get(part, {}))
        if theirs != trainer.config[part]:
            raise ValueError(f"{path} was trained with {part} {theirs}, this trainer has "
                             f"{trainer.config[part]}; use another checkpoint file or resume=False")
    trainer.generator.load_state_dict(ckpt["generator"])
    trainer.discriminator.load_state_dict(ckpt["discriminator"])
    trainer.opt_g.load_state_dict(ckpt["opt_g"])
    trainer.opt_d.load_state_dict(ckpt["opt_d"])
    trainer.step, trainer.epoch = int(ckpt["step"]), int(ckpt["epoch"])
    trainer.history = [dict(r) for r in ckpt["history"]]
    return ckpt

"""The small piece every course trainer shares: checkpoint files and folders, resume, provenance,
non-finite checks.

One checkpoint format for the adversarial trainers (pix2pix, the DCGAN/cGAN of the GAN report, the
micro StyleGAN).

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

__all__ = ["trainer_state", "save_state", "restore_trainer", "NonFiniteState", "check_finite",
           "check_finite_state", "remove_stale_temps", "ProvenanceMismatch", "check_provenance",
           "write_checkpoint_dir", "latest_checkpoint_dir", "COMPLETE_NAME"]


class NonFiniteState(FloatingPointError):
    """A loss or a tensor about to be saved is NaN or infinite; nothing was written."""


def check_finite(value: torch.Tensor, what: str, step: int, hint: str = "Lower the learning rate or check the inputs.") -> None:
    """Raise :class:`NonFiniteState` naming ``what`` and ``step`` when ``value`` is not finite."""
    if not torch.isfinite(value.detach()).all():
        shown = value.item() if value.numel() == 1 else "non-finite"
        raise NonFiniteState(f"{what} became {shown} at step {step}; training stopped and no checkpoint was written. {hint}")


def _tensors(obj: Any, prefix: str = ""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}[{i}]")


def check_finite_state(obj: Any, what: str = "checkpoint") -> None:
    """Refuse (``NonFiniteState``) to save weights, buffers (BatchNorm statistics) or optimizer
    moments that are NaN or infinite: a finite loss does not guarantee a finite model."""
    for key, t in _tensors(obj):
        if t.is_floating_point() and not torch.isfinite(t).all():
            raise NonFiniteState(f"{what}: {key} holds NaN or infinite values; nothing was written. "
                                 "Training diverged: lower the learning rate and resume from the last good checkpoint.")


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Delete temporary siblings that an interrupted (killed) save of ``path`` left behind:
    ``.NAME.*.tmp`` files and ``.NAME.*`` folders. Returns what was removed."""
    import shutil

    path = Path(path)
    removed = []
    if not path.parent.is_dir():
        return removed
    for p in path.parent.glob(f".{path.name}.*"):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(p)
    return removed


class ProvenanceMismatch(ValueError):
    """A checkpoint or adapter is used with something other than what it was trained with."""


def check_provenance(saved: Mapping, current: Mapping, what: str, *, keys=None) -> None:
    """Compare the recorded dependencies of ``what`` (``saved``) with the ones in use now;
    raise :class:`ProvenanceMismatch` naming both sides of every difference. ``keys`` limits
    the comparison; keys absent from ``saved`` are not compared (older files)."""
    keys = list(current) if keys is None else list(keys)
    diffs = [f"{k}: saved {saved[k]!r}, now {current.get(k)!r}" for k in keys
             if k in saved and saved[k] != current.get(k)]
    if diffs:
        raise ProvenanceMismatch(f"{what} was made with different settings ({'; '.join(diffs)}); "
                                 "use the matching ones, or start a new run in another folder")


def trainer_state(trainer, fmt: str, **extra: Any) -> dict:
    """Everything needed to resume ``trainer``, tagged with the format string ``fmt``."""
    return {"format": fmt, "generator": trainer.generator.state_dict(),
            "discriminator": trainer.discriminator.state_dict(),
            "opt_g": trainer.opt_g.state_dict(), "opt_d": trainer.opt_d.state_dict(),
            "step": trainer.step, "epoch": trainer.epoch, "history": list(trainer.history),
            "config": trainer.config, **extra}


def save_state(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file."""
    check_finite_state(obj, str(path))
    remove_stale_temps(path)
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
    return Path(path)


def load_file(path: str | os.PathLike, map_location="cpu") -> Any:
    """``torch.load(weights_only=True)`` with one clear error for a missing, truncated, corrupt or
    foreign file (torch's own message would suggest ``weights_only=False``: never do that for a
    file you did not write)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle, zip and unpickler errors all mean the same thing here
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        if "weights_only" in first:                   # torch's advice to unpickle anything: not for a foreign file
            first = "it holds objects other than tensors and plain values"
        raise ValueError(f"{path} is not a readable course checkpoint (truncated, corrupt or another "
                         f"program's file; {type(err).__name__}{': ' + first if first else ''})") from err


def restore_trainer(trainer, path: str | os.PathLike, fmt: str) -> dict:
    """Load ``path`` (``weights_only=True``) into ``trainer``; return the checkpoint dict.

    Raises ``ValueError`` (one line, naming both sides) when the file is not a ``fmt`` checkpoint
    or was written for another generator or discriminator configuration; the trainer is then
    left as it was.
    """
    ckpt = load_file(path, trainer.device)
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != fmt:
        raise ValueError(f"{path} is not a {fmt} trainer checkpoint")
    for part in ("generator", "discriminator"):
        theirs = dict(ckpt["config"].get(part, {}))
        if theirs != trainer.config[part]:
            raise ValueError(f"{path} was trained with {part} {theirs}, this trainer has "
                             f"{trainer.config[part]}; use another checkpoint file or start afresh (resume=False, --no-resume)")
    trainer.generator.load_state_dict(ckpt["generator"])
    trainer.discriminator.load_state_dict(ckpt["discriminator"])
    trainer.opt_g.load_state_dict(ckpt["opt_g"])
    trainer.opt_d.load_state_dict(ckpt["opt_d"])
    trainer.step, trainer.epoch = int(ckpt["step"]), int(ckpt["epoch"])
    trainer.history = [dict(r) for r in ckpt["history"]]
    return ckpt


# --------------------------------------------------------------------------- checkpoint folders
COMPLETE_NAME = "COMPLETE.json"


def write_checkpoint_dir(out_dir: str | os.PathLike, name: str, fill, *, info: Mapping | None = None,
                         keep_previous: bool = True) -> Path:
    """Write a checkpoint *folder* as one unit: ``fill(tmp)`` writes every file into a temporary
    sibling, a ``COMPLETE.json`` (file list with sizes, plus ``info``) is written last, and the
    folder is renamed into place. The checkpoint it replaces becomes ``NAME.previous`` (kept with
    ``keep_previous``), so a kill at any moment leaves at least one complete checkpoint; stray
    temporary folders from earlier kills are removed first."""
    import json
    import shutil
    import tempfile

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final, previous = out_dir / name, out_dir / f"{name}.previous"
    remove_stale_temps(final)
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=f".{name}."))
    try:
        fill(tmp)
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        (tmp / COMPLETE_NAME).write_text(json.dumps({"files": files, **dict(info or {})}, indent=1, default=str))
        if final.exists():
            if previous.exists():
                shutil.rmtree(previous)
            os.replace(final, previous)
        os.replace(tmp, final)
        if not keep_previous and previous.exists():
            shutil.rmtree(previous)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _complete(folder: Path) -> dict | None:
    import json

    marker = folder / COMPLETE_NAME
    if not marker.is_file():
        return None
    try:
        manifest = json.loads(marker.read_text())
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return None
    for rel, size in files.items():
        p = folder / rel
        if not p.is_file() or p.stat().st_size != size:
            return None
    return manifest


def latest_checkpoint_dir(out_dir: str | os.PathLike, name: str, *, say=print) -> tuple[Path, dict] | None:
    """The newest complete checkpoint folder: ``NAME``, else ``NAME.previous`` (and ``say`` why),
    else None. Temporary folders of an interrupted save are removed."""
    out_dir = Path(out_dir)
    remove_stale_temps(out_dir / name)
    for candidate in (out_dir / name, out_dir / f"{name}.previous"):
        manifest = _complete(candidate) if candidate.is_dir() else None
        if manifest is not None:
            if candidate.name != name:
                say(f"{out_dir / name} is missing or incomplete (an interrupted save); resuming from {candidate.name}")
            return candidate, manifest
        if candidate.exists() and candidate.name == name:
            say(f"{candidate} is incomplete (an interrupted save); looking for the previous checkpoint")
    return None

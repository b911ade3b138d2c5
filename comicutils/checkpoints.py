"""The one checkpoint format every course trainer uses: files and folders written whole, with a
content checksum, under a lock, with the previous one kept to fall back on.

A checkpoint is either one ``torch.save`` file (:func:`save_state` / :func:`load_latest`) or one
folder of files (:func:`write_checkpoint_dir` / :func:`latest_checkpoint_dir`). Both follow the
same rules:

* **Exact temporary names.** A save writes ``.NAME.partial`` beside ``NAME`` and renames it into
  place; the only thing ever removed as "stale" is that exact path (a folder only if it carries
  this module's marker). Nothing is found by a pattern built from a file name.
* **A complete one at every instant.** The checkpoint being replaced becomes ``NAME.previous``
  only once it is known to be intact, and the new one is renamed in after that, so a kill at any
  moment leaves ``NAME`` or ``NAME.previous`` complete.
* **Content checksums.** A file carries the sha256 of its content (key ``sha256``: tensors'
  bytes, dtypes, shapes, every number and string); a folder's ``COMPLETE.json`` lists every file
  with its size and sha256. A same-size corruption is found, and the loader falls back to
  ``NAME.previous`` and says so.
* **One lock per output folder.** :func:`output_lock` (POSIX ``flock`` on the folder itself,
  released by the kernel when the process dies) makes a second run on the same folder fail at
  once instead of both "succeeding" and the last one winning.

An adversarial trainer here has ``generator``, ``discriminator``, ``opt_g``, ``opt_d``, ``step``,
``epoch``, ``history``, ``config`` (``{"generator": {...}, "discriminator": {...}, "trainer":
{...}}``) and ``device``. :func:`trainer_state` turns it into plain tensors, numbers, strings,
lists and dicts (so the file loads with ``torch.load(weights_only=True)``), with the random
states needed to resume exactly; :func:`restore_trainer` checks the file's format, architecture
and settings before a single weight is touched, then restores it.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Callable

import torch

from .runtime import file_sha256  # noqa: F401 (re-exported)

__all__ = ["trainer_state", "save_state", "load_file", "load_latest", "checkpoint_exists", "restore_trainer",
           "NonFiniteState", "check_finite", "check_finite_state", "remove_stale_temps", "ProvenanceMismatch",
           "check_provenance", "CheckpointCorrupt", "OutputLocked", "output_lock", "content_digest",
           "temp_path", "previous_path", "write_checkpoint_dir", "latest_checkpoint_dir", "COMPLETE_NAME",
           "CHECKSUM_KEY", "rng_state", "set_rng_state", "deferred_interrupt"]

CHECKSUM_KEY = "sha256"
COMPLETE_NAME = "COMPLETE.json"
PARTIAL_MARK = ".comicutils-partial"       # inside a temporary checkpoint folder: "this one is ours"


class CheckpointCorrupt(ValueError):
    """A checkpoint file or folder does not match its recorded checksum (changed or damaged on disk)."""


class OutputLocked(RuntimeError):
    """Another process is writing into the same output folder."""


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




# --------------------------------------------------------------------------- names, lock, digest
def temp_path(path: str | os.PathLike) -> Path:
    """The one temporary name a save of ``path`` writes to: ``.NAME.partial`` beside it."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


def previous_path(path: str | os.PathLike) -> Path:
    """Where the checkpoint a save replaces is kept: ``NAME.previous`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.name}.previous")


def remove_stale_temps(path: str | os.PathLike) -> list[Path]:
    """Remove what an interrupted (killed) save of ``path`` left behind: exactly
    :func:`temp_path`, a file, or a folder that carries this module's marker. Any other file,
    folder or link is left alone (a folder at that name that is not ours is an error). Returns what
    was removed."""
    tmp = temp_path(path)
    if tmp.is_symlink() or tmp.is_file():
        tmp.unlink()
        return [tmp]
    if tmp.is_dir():
        if not (tmp / PARTIAL_MARK).is_file():
            raise FileExistsError(f"{tmp} is in the way of the checkpoint's temporary folder and was not made "
                                  "by a course save; move it away")
        shutil.rmtree(tmp)
        return [tmp]
    return []


_HELD: dict[str, list] = {}                   # folder -> [open descriptor, depth] for the locks this process holds


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike):
    """Hold the lock of output folder ``folder`` (created if missing) for the block.

    Re-entrant within a process; another process holding it raises :class:`OutputLocked` at once.
    POSIX ``flock`` on the folder itself (no lock file is left behind; the kernel releases it
    when the process ends, however it ends). Where ``fcntl`` is missing (Windows) there is no lock.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    key = str(folder.resolve())
    if key in _HELD:
        _HELD[key][1] += 1
        try:
            yield folder
        finally:
            _HELD[key][1] -= 1
        return
    try:
        import fcntl
    except ImportError:                       # pragma: no cover - Windows
        yield folder
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise OutputLocked(f"another run is writing into {folder} (its lock is held); wait for it to finish "
                           "or write somewhere else") from None
    _HELD[key] = [fd, 1]
    try:
        yield folder
    finally:
        del _HELD[key]
        os.close(fd)                          # closing the descriptor releases the flock


def _feed(h, obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}:".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, Mapping):
        h.update(b"{")
        for k, v in obj.items():
            h.update(f"{type(k).__name__}:{k!r}=".encode())
            _feed(h, v)
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for v in obj:
            _feed(h, v)
        h.update(b"]")
    else:
        h.update(f"{type(obj).__name__}:{obj!r};".encode())


def content_digest(obj: Any) -> str:
    """sha256 over ``obj``'s content: tensors' dtype, shape and bytes, every key, number, string
    and list entry, in order. Equal for a saved object and what ``torch.load`` gives back."""
    h = hashlib.sha256()
    _feed(h, obj)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


_INTACT: dict[str, tuple] = {}                # files this process wrote or verified: path -> stat signature


def _signature(path: Path) -> tuple:
    st = path.stat()
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def _remember(path: Path) -> None:
    _INTACT[str(path.resolve())] = _signature(path)


def _is_intact(path: Path) -> bool:
    """True when ``path`` loads and matches its checksum (cheap for a file this process wrote or read)."""
    key = str(path.resolve())
    if key in _INTACT and _INTACT[key] == _signature(path):
        return True
    try:
        load_file(path)
    except (ValueError, FileNotFoundError):
        return False
    return True


# --------------------------------------------------------------------------- random states
def rng_state() -> dict:
    """The global random states a training step draws from (torch CPU, every CUDA device in use)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def set_rng_state(state: Mapping) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"].cpu())
    if state.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


# --------------------------------------------------------------------------- checkpoint files
def save_state(obj: Any, path: str | os.PathLike, *, keep_previous: bool = True) -> Path:
    """Write ``obj`` to ``path`` whole or not at all, with its content checksum (a mapping gains
    the key ``sha256``), under the folder's :func:`output_lock`.

    ``torch.save`` writes :func:`temp_path`, which is flushed to disk; the file it replaces
    becomes :func:`previous_path` if it is intact (``keep_previous``), then the new one is renamed
    into place. NaN or infinite tensors raise :class:`NonFiniteState` and nothing is written.
    """
    check_finite_state(obj, str(path))
    path = Path(path)
    if isinstance(obj, Mapping):
        obj = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
        obj[CHECKSUM_KEY] = content_digest(obj)
    with output_lock(path.parent):
        remove_stale_temps(path)
        tmp = temp_path(path)
        try:
            torch.save(obj, tmp)
            _fsync(tmp)
            os.chmod(tmp, 0o644)
            if path.is_file() and not path.is_symlink():
                if keep_previous and _is_intact(path):
                    os.replace(path, previous_path(path))       # NAME.previous is complete now
                # a damaged NAME is simply replaced: NAME.previous (if any) stays the fallback
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _remember(path)
    return path


def load_file(path: str | os.PathLike, map_location="cpu") -> Any:
    """``torch.load(weights_only=True)`` with one clear error for a missing, truncated, corrupt or
    foreign file (torch's own message would suggest ``weights_only=False``: never do that for a
    file you did not write), and the content checksum checked where the file has one
    (:class:`CheckpointCorrupt`). Returns the object without its ``sha256`` key."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # pickle, zip and unpickler errors all mean the same thing here
        first = str(err).strip().splitlines()[0][:120] if str(err).strip() else ""
        if "weights only" in first.lower().replace("_", " "):   # torch's advice to unpickle anything: not for a foreign file
            first = "it holds objects other than tensors and plain values"
        raise ValueError(f"{path} is not a readable course checkpoint (truncated, corrupt or another "
                         f"program's file; {type(err).__name__}{': ' + first if first else ''})") from err
    if isinstance(obj, Mapping) and CHECKSUM_KEY in obj:
        recorded = obj[CHECKSUM_KEY]
        obj = {k: v for k, v in obj.items() if k != CHECKSUM_KEY}
        if content_digest(obj) != recorded:
            raise CheckpointCorrupt(f"{path} does not match its content checksum (changed or damaged on disk)")
    _remember(path)
    return obj


def checkpoint_exists(path: str | os.PathLike) -> bool:
    """True when ``path`` or its :func:`previous_path` is a file (something to resume from)."""
    return Path(path).is_file() or previous_path(path).is_file()


def load_latest(path: str | os.PathLike, map_location="cpu", *, say: Callable[[str], Any] = print) -> tuple[Any, Path]:
    """The newest intact checkpoint file: ``path``, else :func:`previous_path` (and ``say`` why)
    -> (object, the file it came from). When neither loads, the error of ``path`` is raised."""
    path = Path(path)
    first_error = None
    for candidate in (path, previous_path(path)):
        if not candidate.is_file():
            continue
        try:
            obj = load_file(candidate, map_location)
        except ValueError as err:
            first_error = first_error or err
            continue
        if candidate != path:
            why = "is missing" if first_error is None else f"is unusable ({' '.join(str(first_error).split())})"
            say(f"{path} {why}; resuming from {candidate.name}")
        return obj, candidate
    if first_error is not None:
        raise first_error
    raise FileNotFoundError(f"checkpoint {path} does not exist")


# --------------------------------------------------------------------------- adversarial trainers
def trainer_state(trainer, fmt: str, **extra: Any) -> dict:
    """Everything needed to resume ``trainer`` exactly, tagged with the format string ``fmt``."""
    return {"format": fmt, "generator": trainer.generator.state_dict(),
            "discriminator": trainer.discriminator.state_dict(),
            "opt_g": trainer.opt_g.state_dict(), "opt_d": trainer.opt_d.state_dict(),
            "step": trainer.step, "epoch": trainer.epoch, "history": list(trainer.history),
            "config": trainer.config, "rng": rng_state(), **extra}


APPLIED_ON_RESUME = ("lr",)
"""Trainer settings a resume takes from the trainer (and says so); any other change is refused."""


def restore_trainer(trainer, path: str | os.PathLike, fmt: str, *, say: Callable[[str], Any] = print) -> dict:
    """Load the newest intact checkpoint at ``path`` (:func:`load_latest`) into ``trainer``;
    return the checkpoint dict.

    Raises ``ValueError`` (one line, naming both sides) when the file is not a ``fmt`` checkpoint,
    was written for another generator or discriminator configuration, or with other trainer
    settings (:class:`ProvenanceMismatch`; a new learning rate is applied and said instead); the
    trainer is then left as it was. The random states are restored, so the resumed run repeats
    an uninterrupted one.
    """
    ckpt, source = load_latest(path, trainer.device, say=say)
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != fmt:
        raise ValueError(f"{source} is not a {fmt} trainer checkpoint")
    for part in ("generator", "discriminator"):
        theirs = dict(ckpt["config"].get(part, {}))
        if theirs != trainer.config[part]:
            raise ProvenanceMismatch(f"{source} was trained with {part} {theirs}, this trainer has "
                                     f"{trainer.config[part]}; use another checkpoint file or start afresh")
    saved = {k: v for k, v in dict(ckpt["config"].get("trainer", {})).items() if k not in APPLIED_ON_RESUME}
    now = {k: v for k, v in dict(trainer.config.get("trainer", {})).items() if k not in APPLIED_ON_RESUME}
    if saved:
        check_provenance({k: saved.get(k) for k in set(saved) | set(now)},
                         {k: now.get(k) for k in set(saved) | set(now)}, f"checkpoint {source}")
    trainer.generator.load_state_dict(ckpt["generator"])
    trainer.discriminator.load_state_dict(ckpt["discriminator"])
    trainer.opt_g.load_state_dict(ckpt["opt_g"])
    trainer.opt_d.load_state_dict(ckpt["opt_d"])
    lr = dict(trainer.config.get("trainer", {})).get("lr")
    old_lr = dict(ckpt["config"].get("trainer", {})).get("lr")
    if lr is not None:
        for opt in (trainer.opt_g, trainer.opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
    trainer.step, trainer.epoch = int(ckpt["step"]), int(ckpt["epoch"])
    trainer.history = [dict(r) for r in ckpt["history"]]
    note = ""
    if "rng" in ckpt:
        set_rng_state(ckpt["rng"])
    else:
        note = " (an older checkpoint without random states: the steps that follow differ from an uninterrupted run)"
    if old_lr is not None and lr is not None and old_lr != lr:
        note += f"; learning rate now {lr:g} (the checkpoint trained with {old_lr:g})"
    say(f"resuming from {source} at step {trainer.step}, epoch {trainer.epoch}{note}")
    return ckpt


# --------------------------------------------------------------------------- checkpoint folders
def _manifest(folder: Path) -> dict:
    return {str(p.relative_to(folder)): {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != PARTIAL_MARK}


def write_checkpoint_dir(out_dir: str | os.PathLike, name: str, fill, *, info: Mapping | None = None,
                         keep_previous: bool = True) -> Path:
    """Write a checkpoint *folder* as one unit, under ``out_dir``'s :func:`output_lock`.

    ``fill(tmp)`` writes every file into the temporary sibling ``.NAME.partial``; a
    ``COMPLETE.json`` (every file's size and sha256, plus ``info``) is written last; then the
    checkpoint it replaces becomes ``NAME.previous`` *if it is complete* (an incomplete one is
    removed and the complete ``NAME.previous`` kept), and the new folder is renamed into place.
    A kill at any moment leaves a complete ``NAME`` or ``NAME.previous``."""
    out_dir = Path(out_dir)
    final, previous = out_dir / name, previous_path(out_dir / name)
    with output_lock(out_dir):
        remove_stale_temps(final)
        tmp = temp_path(final)
        tmp.mkdir()
        (tmp / PARTIAL_MARK).touch()
        try:
            fill(tmp)
            (tmp / COMPLETE_NAME).write_text(json.dumps({"files": _manifest(tmp), **dict(info or {})},
                                                        indent=1, default=str))
            if final.exists() or final.is_symlink():
                if keep_previous and _complete(final) is not None:
                    if previous.exists():
                        shutil.rmtree(previous)           # NAME is complete meanwhile
                    os.replace(final, previous)           # NAME.previous is complete now
                else:
                    _discard(final)                       # damaged: NAME.previous (if any) stays the fallback
            os.replace(tmp, final)
            (final / PARTIAL_MARK).unlink()               # the marker stays until the rename: a kill
            if not keep_previous and previous.exists():   # before it leaves a temp folder known as ours
                shutil.rmtree(previous)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final


def _discard(folder: Path) -> None:
    if folder.is_symlink() or folder.is_file():
        folder.unlink()
    else:
        shutil.rmtree(folder)


def _complete(folder: Path) -> dict | None:
    """The manifest of ``folder`` if every file it lists is there with its size and sha256, else None."""
    marker = folder / COMPLETE_NAME
    if folder.is_symlink() or not marker.is_file():
        return None
    try:
        manifest = json.loads(marker.read_text())
        files = manifest["files"]
        for rel, meta in files.items():
            p = (folder / rel)
            if not p.resolve().is_relative_to(folder.resolve()) or not p.is_file():
                return None
            size, sha = (meta, None) if isinstance(meta, int) else (meta["bytes"], meta["sha256"])
            if p.stat().st_size != size or (sha is not None and file_sha256(p) != sha):
                return None
    except (ValueError, KeyError, TypeError, OSError):
        return None
    return manifest


def latest_checkpoint_dir(out_dir: str | os.PathLike, name: str, *, say=print) -> tuple[Path, dict] | None:
    """The newest complete checkpoint folder (every file present with its recorded sha256):
    ``NAME``, else ``NAME.previous`` (and ``say`` why), else None. Reads only: the temporary
    folder of an interrupted save is removed by the next save, under the lock."""
    out_dir = Path(out_dir)
    for candidate in (out_dir / name, previous_path(out_dir / name)):
        manifest = _complete(candidate) if candidate.is_dir() else None
        if manifest is not None:
            if candidate.name != name:
                say(f"{out_dir / name} is missing or incomplete (an interrupted save or a damaged file); "
                    f"resuming from {candidate.name}")
            return candidate, manifest
        if candidate.exists() and candidate.name == name:
            say(f"{candidate} is incomplete or damaged (it does not match its checksums); looking for the previous checkpoint")
    return None


# --------------------------------------------------------------------------- interruptions
class deferred_interrupt:
    """Ctrl-C or SIGTERM during a training loop ends the current step first: inside the block a
    first signal only sets ``requested``; the loop calls :meth:`check` after each complete step,
    which raises ``KeyboardInterrupt`` then (after the caller saved). A second signal raises at
    once. Only in the main thread; elsewhere signals are left as they are."""

    def __init__(self):
        self.requested = False
        self._previous: dict = {}

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self):
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc):
        import signal

        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}
        return False

    def check(self, save: Callable[[], Any] | None = None) -> None:
        """After a complete step: when a stop was asked for, ``save()`` and raise ``KeyboardInterrupt``."""
        if self.requested:
            if save is not None:
                save()
            raise KeyboardInterrupt

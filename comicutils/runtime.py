"""Run mode, device choice, seeding, progress bars, banners and where outputs go.

Everything in the course that depends on *how much* work to do reads the mode from here,
and from nowhere else:

* ``smoke`` – tiny images and step counts, so every notebook runs in well under a minute
  on two CPU cores (CI, ``pytest --nbval-lax``). Backbones whose pretrained weights cannot
  be had may be randomly initialised.
* ``auto`` (default) – real settings scaled to the device. Pretrained weights are used when
  they can be had (cache, mirror, download); otherwise an offline substitute is used and a
  visible banner says so.
* ``full`` – the seeds' settings. A missing weight is an error that says how to get it.

The mode comes from the environment variable ``COMICUTILS_MODE``. In auto mode the **device
tier** (:func:`device_tier`: the CPU, a GPU of about 16 GB such as Colab's T4, or one of 40 GB
and more) picks the settings: ``by_mode(smoke=..., auto=..., gpu16=..., gpu40=..., full=...)``.
"""
from __future__ import annotations

import contextlib
import html
import os
import platform
import random
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, TypeVar

import numpy as np

MODES = ("smoke", "auto", "full")
MODE_ENV = "COMICUTILS_MODE"
DEVICE_ENV = "COMICUTILS_DEVICE"
FIGURES_ENV = "COMICUTILS_FIGURES"
RUNS_ENV = "COMICUTILS_RUNS"
PROGRESS_ENV = "COMICUTILS_PROGRESS"
CACHE_ENV = "COMICUTILS_CACHE"           # the download cache (comicutils.assets)
MIRROR_ENV = "COMICUTILS_MIRROR"         # offline mirror folders, os.pathsep-separated
TIER_ENV = "COMICUTILS_TIER"              # tests only: rehearse a GPU tier's settings on the CPU
TIERS = ("cpu", "gpu16", "gpu40")
INSTALLED_RUNS = "comicutils-runs"        # under the working folder, for an installed package
INSTALLED_FIGURES = "comicutils-figures"

T = TypeVar("T")


class ModeError(ValueError):
    """``COMICUTILS_MODE`` holds something other than smoke, auto or full."""


def get_mode() -> str:
    """Return the run mode: ``"smoke"``, ``"auto"`` (default) or ``"full"``.

    Read from ``COMICUTILS_MODE`` (case-insensitive, surrounding spaces ignored) each time,
    so a notebook can change it with ``os.environ`` before running a cell.
    """
    raw = os.environ.get(MODE_ENV, "").strip().lower()
    if not raw:
        return "auto"
    if raw not in MODES:
        raise ModeError(
            f"{MODE_ENV}={os.environ[MODE_ENV]!r} is not a run mode; use one of {', '.join(MODES)}."
        )
    return raw


_UNSET: Any = object()


def by_mode(smoke: T, auto: T, full: T = _UNSET, *, gpu16: T = _UNSET, gpu40: T = _UNSET,
            mode: str | None = None, tier: str | None = None) -> T:
    """Pick a value by run mode and, in auto mode, by device tier.

    ``by_mode(smoke=2, auto=200, gpu16=1000, gpu40=2000, full=5000)``: ``auto`` is the CPU's
    value; on a GPU tier its own value, where given (``gpu40`` falls back to ``gpu16``, and both
    to ``auto``; ``None`` is a value, e.g. "no step limit", in every mode). ``full``, when omitted,
    falls back to the largest tier's value given. Every notebook's parameters cell uses it, so one place
    shows every knob and how mode and tier scale it.
    """
    mode = mode or get_mode()
    if mode not in MODES:
        raise ModeError(f"unknown mode {mode!r}; use one of {', '.join(MODES)}.")
    if mode == "smoke":
        return smoke
    if mode == "full":
        return full if full is not _UNSET else next((v for v in (gpu40, gpu16) if v is not _UNSET), auto)
    if gpu16 is _UNSET and gpu40 is _UNSET:
        return auto
    tier = tier or device_tier().name
    if tier not in TIERS:
        raise ValueError(f"unknown device tier {tier!r}; use one of {', '.join(TIERS)}.")
    chain = {"cpu": (auto,), "gpu16": (gpu16, auto), "gpu40": (gpu40, gpu16, auto)}[tier]
    return next(v for v in chain if v is not _UNSET)


@dataclass(frozen=True)
class DeviceTier:
    """What the device can take: the settings tier, its memory budget and its precision.

    ``name``: ``"cpu"``, ``"gpu16"`` (a GPU of 12-38 GiB: Colab's 15 GiB T4, an L4, a 24 GB
    card) or ``"gpu40"`` (38 GiB and more: A100, H100). ``budget_gib``: what one training step
    may use (the card's memory less headroom for the CUDA context and fragmentation; on the CPU
    the RAM budget the course keeps to). ``dtype``: the autocast dtype of training, ``float16``
    with a grad scaler below compute capability 8.0 (T4: 7.5; bf16 is only emulated there),
    ``bfloat16`` from 8.0, ``float32`` on the CPU. ``rehearsal``: the tier was set by
    ``COMICUTILS_TIER`` (tests) on a machine that lacks it; its settings run on the CPU in
    float32 (:attr:`compute_dtype`) while ``dtype`` stays the tier's (a T4's fp16, an A100's bf16),
    so memory and time are estimated as on that card.
    """

    name: str
    device: str
    budget_gib: float
    dtype: str
    grad_scaler: bool
    gpu: str = "-"
    rehearsal: bool = False

    @property
    def is_gpu(self) -> bool:
        return self.name != "cpu"

    @property
    def compute_dtype(self) -> str:
        """What training autocasts to here: the tier's dtype, float32 when rehearsed on the CPU."""
        return "float32" if self.rehearsal else self.dtype

    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


TIER_BUDGET_GIB = {"cpu": 8.0, "gpu16": 13.0, "gpu40": 36.0}
"""Memory one training step may use per tier: a T4 has 15.0 GiB usable, an A100 40 or 80 GiB."""
FULL_BUDGET_GIB = 72.0
"""Full mode's budget: an 80 GB card (A100-80GB, H100) less headroom."""


def device_tier() -> DeviceTier:
    """The device tier auto mode scales to (see :class:`DeviceTier`).

    ``COMICUTILS_TIER=gpu16|gpu40|cpu`` forces a tier: for tests that rehearse a GPU tier's code
    path on the CPU (``rehearsal=True``, float32 compute, the tier's sizes and batches) and for a
    learner who wants the CPU settings on a GPU. A GPU below 12 GiB gets the CPU tier's sizes.
    """
    import torch

    forced = os.environ.get(TIER_ENV, "").strip().lower()
    if forced and forced not in TIERS:
        raise ValueError(f"{TIER_ENV}={os.environ[TIER_ENV]!r} is not a device tier; use one of {', '.join(TIERS)}.")
    dev = get_device()
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        total = props.total_memory / 2**30
        cc = (props.major, props.minor)
        dtype, scaler = ("bfloat16", False) if cc >= (8, 0) else ("float16", True)
        found = "gpu40" if total >= 38 else "gpu16" if total >= 12 else "cpu"
        name = forced or found
        budget = min(TIER_BUDGET_GIB[name], total - 1.5) if name != "cpu" else TIER_BUDGET_GIB["cpu"]
        return DeviceTier(name, str(dev), budget, dtype if name != "cpu" else "float32", scaler and name != "cpu",
                          gpu=f"{props.name} ({total:.0f} GiB, compute capability {cc[0]}.{cc[1]})",
                          rehearsal=bool(forced) and forced != found)
    name = forced or "cpu"
    dtype, scaler, card = {"cpu": ("float32", False, "-"), "gpu16": ("float16", True, "Tesla T4 (rehearsed)"),
                           "gpu40": ("bfloat16", False, "NVIDIA A100 (rehearsed)")}[name]
    return DeviceTier(name, str(dev), TIER_BUDGET_GIB[name], dtype, scaler, gpu=card, rehearsal=name != "cpu")


def is_smoke() -> bool:
    return get_mode() == "smoke"


def get_device(prefer: str | None = None):
    """Choose the torch device: ``prefer`` or ``COMICUTILS_DEVICE`` if given, else CUDA, MPS, CPU.

    Asking for a device that is not there is an error, not a silent CPU fallback.
    """
    import torch

    want = (prefer or os.environ.get(DEVICE_ENV, "")).strip().lower()
    if want:
        dev = torch.device(want)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {want!r} requested but CUDA is not available here.")
        if dev.type == "mps" and not (
            getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
        ):
            raise RuntimeError(f"device {want!r} requested but MPS is not available here.")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def seed_everything(seed: int = 0, *, deterministic: bool = False):
    """Seed Python, NumPy and PyTorch (all devices); return a seeded CPU ``torch.Generator``.

    ``deterministic=True`` also asks PyTorch for deterministic kernels (slower, and some ops
    then raise). Same seed, same results on the same machine and library versions.
    """
    import torch

    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    seed = int(seed)
    if not 0 <= seed < 2**32:
        raise ValueError(f"seed must be in [0, 2**32), got {seed}")
    os.environ["PYTHONHASHSEED"] = str(seed)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        if torch.backends.cudnn.is_available():
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
    return torch.Generator().manual_seed(seed)


def progress(iterable: Iterable[T] | None = None, *, desc: str | None = None,
             total: int | None = None, **kwargs: Any):
    """A progress bar (``tqdm.auto``: a widget in Jupyter, text in a terminal).

    ``COMICUTILS_PROGRESS=0`` turns every bar off (quiet logs).
    """
    from tqdm.auto import tqdm

    disable = os.environ.get(PROGRESS_ENV, "1").strip() in {"0", "false", "no", "off"}
    kwargs.setdefault("disable", disable)
    kwargs.setdefault("dynamic_ncols", True)
    return tqdm(iterable, desc=desc, total=total, **kwargs)


# --------------------------------------------------------------------------- banners
@dataclass(frozen=True)
class Substitute:
    """A record that an offline or random substitute replaced a real component."""

    wanted: str        # what the method calls for, e.g. "VGG-19 ImageNet weights"
    used: str          # what runs instead, e.g. "TAESD taef2 encoder features"
    reason: str        # why, e.g. "asset 'vgg19-imagenet' not in cache or mirror, no network"
    mode: str = field(default_factory=get_mode)

    def text(self) -> str:
        return (f"SUBSTITUTE IN USE [{self.mode} mode]: {self.used} instead of {self.wanted}. "
                f"Reason: {self.reason}. Results are not those of the original method.")

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.text()

    def _repr_html_(self) -> str:
        return (
            '<div style="border:2px solid #d9480f;background:#fff4e6;color:#7a2e0e;'
            'padding:8px 12px;margin:6px 0;border-radius:6px;font-family:sans-serif">'
            f'<b>&#9888; Substitute in use</b> <small>({html.escape(self.mode)} mode)</small><br>'
            f'<b>{html.escape(self.used)}</b> instead of <b>{html.escape(self.wanted)}</b>.<br>'
            f'<small>Why: {html.escape(self.reason)}. Numbers and images below come from the '
            'substitute, not from the original method.</small></div>'
        )


_SUBSTITUTES: list[Substitute] = []


def substitute_banner(wanted: str, used: str, reason: str, *, show: bool | str = True) -> Substitute:
    """Announce that ``used`` replaces ``wanted`` and remember it for :func:`substitutes_in_use`.

    In Jupyter the banner is an orange box; elsewhere one line on stdout (never hidden in a
    log file). The same substitution is announced once per process (the first time it
    happens; ``show="always"`` repeats it). In ``full`` mode a substitute is not allowed: call
    sites raise instead.
    """
    sub = Substitute(wanted=wanted, used=used, reason=reason)
    new = sub not in _SUBSTITUTES
    if new:
        _SUBSTITUTES.append(sub)
    if show == "always" or (show and new):
        if _in_notebook():
            from IPython.display import display

            display(sub)
        else:
            print(sub.text(), flush=True)
    return sub


def substitutes_in_use() -> list[Substitute]:
    """Every substitute announced in this process, in order (for tables and figure captions)."""
    return list(_SUBSTITUTES)


def reset_substitutes() -> None:
    """Forget the substitutes announced so far (the next one is shown again)."""
    _SUBSTITUTES.clear()


@dataclass(frozen=True)
class Notice:
    """A note the reader should not miss that is *not* a substitution, e.g. "chapter 04's
    adapter was not found, so a quick one is trained here". Shown as a blue box in Jupyter
    (the orange box is reserved for :class:`Substitute`), one ``NOTE`` line elsewhere."""

    title: str
    lines: tuple[str, ...] = ()
    mode: str = field(default_factory=get_mode)

    def text(self) -> str:
        return f"NOTE [{self.mode} mode]: {self.title}. " + " ".join(self.lines)

    def __str__(self) -> str:  # pragma: no cover - trivial
        return self.text()

    def _repr_html_(self) -> str:
        body = "".join(f"<br>{html.escape(line)}" for line in self.lines)
        return (
            '<div style="border:2px solid #1971c2;background:#e7f5ff;color:#0b3d6e;'
            'padding:8px 12px;margin:6px 0;border-radius:6px;font-family:sans-serif">'
            f'<b>&#9432; {html.escape(self.title)}</b> <small>({html.escape(self.mode)} mode)</small>'
            f'{body}</div>'
        )


def notice_banner(title: str, *lines: str) -> Notice:
    """Show a :class:`Notice` (blue box in Jupyter, a ``NOTE`` line on stdout elsewhere)."""
    note = Notice(title, tuple(lines))
    if _in_notebook():
        from IPython.display import display

        display(note)
    else:
        print(note.text(), flush=True)
    return note


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython ships with the course
        return False
    shell = get_ipython()
    return shell is not None and shell.__class__.__name__ == "ZMQInteractiveShell"


# --------------------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Write a file all-or-nothing: ``with atomic_path(p) as tmp: write(tmp)``.

    Yields a temporary path beside ``path`` (same folder, so the final rename is atomic);
    when the block succeeds the file is made world-readable and renamed to ``path``; when it
    raises, the temporary file is deleted and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False):
    """Build a folder all-or-nothing: ``with atomic_dir(d) as tmp: fill(tmp)``.

    ``path`` must not exist or be empty, unless ``overwrite=True``: then an existing folder is
    replaced only once the new one is complete (moved aside, new one renamed in, old removed).
    The folder is built as a temporary sibling and renamed into place when the block succeeds;
    on failure the temporary folder is removed and ``path`` is left as it was.
    """
    path = Path(path)
    replace = path.exists() and any(path.iterdir())
    if replace and not overwrite:
        raise FileExistsError(f"{path} exists and is not empty (pass overwrite=True to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}."))
    try:
        yield tmp
        if replace:
            old = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.old."))
            os.replace(path, old / "old")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if path.exists():
                path.rmdir()
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --------------------------------------------------------------------------- paths
# Where outputs go. Three situations, one rule each (the override variable always wins):
#
#                      checkout (notebooks/ beside the package)   installed package (e.g. Colab)
#   run folders        data/runs/NN                                ./comicutils-runs/NN
#     smoke mode       build/smoke-runs/NN                         ./comicutils-runs/smoke/NN
#   figures            figures/                                    ./comicutils-figures/
#     smoke mode       build/smoke-figures/                        ./comicutils-figures/smoke/
#
# "./" is the working folder (a notebook's own folder in Jupyter, /content on Colab).
# COMICUTILS_RUNS=DIR puts run folders in DIR/NN (smoke mode: DIR/smoke/NN);
# COMICUTILS_FIGURES=DIR puts figures in DIR in every mode.

def project_root() -> Path | None:
    """The course checkout holding this package, or ``None`` for a plain installed package."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").is_file() and (here / "notebooks").is_dir():
        return here
    return None


def runs_root() -> Path:
    """The folder holding every chapter's run folder (not created here).

    ``COMICUTILS_RUNS`` if set; otherwise ``data/runs/`` of a checkout, or ``comicutils-runs/``
    in the working folder for an installed package. Smoke mode uses a ``smoke`` folder of its
    own (``build/smoke-runs/`` in a checkout, ``<root>/smoke/`` elsewhere), so a test run never
    mixes its tiny artefacts with a real run's.
    """
    smoke = get_mode() == "smoke"
    env = os.environ.get(RUNS_ENV, "").strip()
    if env:
        root = Path(env).expanduser()
        return root / "smoke" if smoke else root
    checkout = project_root()
    if checkout is not None:
        return checkout / ("build/smoke-runs" if smoke else "data/runs")
    root = Path.cwd() / INSTALLED_RUNS
    return root / "smoke" if smoke else root


def chapter_name(chapter: int | str) -> str:
    """``4``, ``"4"`` or ``"04"`` -> ``"04"`` (the two-digit prefix of a chapter's notebook)."""
    text = str(chapter).strip()
    if isinstance(chapter, bool) or not text.isdigit() or not 0 <= int(text) <= 99:
        raise ValueError(f"a chapter is a number from 0 to 99 (e.g. 4 or '04'), not {chapter!r}")
    return f"{int(text):02d}"


def run_dir(chapter: int | str, *, create: bool = True) -> Path:
    """Chapter ``chapter``'s run folder: ``<runs_root()>/NN`` (see :func:`runs_root`).

    A notebook opens its own folder with ``create=True`` (the default): the folder is created,
    and in smoke mode emptied first, so every smoke run starts from nothing (no resumed
    checkpoint, no file from an earlier run). Code that only *looks* for another chapter's
    results passes ``create=False`` and gets the path whether or not it exists.
    """
    path = runs_root() / chapter_name(chapter)
    if create:
        if get_mode() == "smoke" and path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes, read in 1 MiB blocks: the one file digest of the package."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """The download cache (:mod:`comicutils.assets` creates it on demand): ``COMICUTILS_CACHE``,
    else ``data/cache/`` of a checkout, else ``~/.cache/comicutils``."""
    env = os.environ.get(CACHE_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    root = project_root()
    if root is not None:
        return root / "data" / "cache"
    return Path.home() / ".cache" / "comicutils"


def mirror_dirs() -> list[Path]:
    """Mirror folders named by ``COMICUTILS_MIRROR`` (``os.pathsep``-separated), in order."""
    raw = os.environ.get(MIRROR_ENV, "")
    return [Path(p).expanduser() for p in raw.split(os.pathsep) if p.strip()]


def figures_dir() -> Path:
    """Where notebooks save figures (created on demand).

    ``COMICUTILS_FIGURES`` if set; otherwise ``figures/`` of a checkout in auto and full mode
    and ``build/smoke-figures/`` in smoke mode (so a CI run never overwrites the figures the
    docs show); for an installed package ``comicutils-figures/`` in the working folder
    (``comicutils-figures/smoke/`` in smoke mode).
    """
    env = os.environ.get(FIGURES_ENV, "").strip()
    smoke = get_mode() == "smoke"
    if env:
        path = Path(env).expanduser()
    elif (root := project_root()) is not None:
        path = root / ("build/smoke-figures" if smoke else "figures")
    else:
        path = Path.cwd() / INSTALLED_FIGURES
        path = path / "smoke" if smoke else path
    path.mkdir(parents=True, exist_ok=True)
    return path


def environment_report() -> dict[str, str]:
    """Versions, device and mode: the first cell of every notebook prints this."""
    import torch

    from . import __version__

    dev = get_device()
    gpu = torch.cuda.get_device_name(0) if dev.type == "cuda" else "-"
    return {
        "comicutils": __version__,
        "python": platform.python_version(),
        "platform": f"{platform.system()} {platform.machine()}",
        "torch": torch.__version__,
        "mode": get_mode(),
        "device": str(dev),
        "gpu": gpu,
        "device tier": (lambda t: f"{t.name} ({t.budget_gib:g} GiB per training step, {t.dtype}"
                        f"{' + grad scaler' if t.grad_scaler else ''}{', rehearsed on the CPU' if t.rehearsal else ''})")(device_tier()),
        "cpu threads": str(torch.get_num_threads()),
        "asset cache": str(cache_dir()),
        MIRROR_ENV: os.pathsep.join(str(p) for p in mirror_dirs()) or "(not set)",
        "figures": str(figures_dir()),
        "run folders": str(runs_root()),
        "executable": sys.executable,
    }

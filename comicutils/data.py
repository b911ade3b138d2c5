"""Paired photo/comic data, the deterministic split every chapter uses, joint augmentation,
and the unpaired portrait test set.

Sources
-------
* **face2comics preview grids** (offline, real): each is a 10x10 grid of 256 px tiles; columns
  0-4 are photos and columns 5-9 the matching comics, so tile (r, c) pairs with (r, c + 5).
  v2 ("darkish red" style, the data of the ComicDiff report) and v1 ("dark" style) hold 50 pairs each.
  Pair keys are ``"v2_r3c1"`` (row 3, photo column 1).
* **face2comics full releases** (full mode, ~1 GB each): folders of photos and comics paired by
  file *basename*, never by listing order: :class:`PairedFolder`.
* **30 CC0 portraits** (cjdowner/interfaces) and the NASA astronaut (``skimage.data``): real
  photos with no comic, for testing generalisation.

Every chapter splits with :func:`split_keys` (seeded, by key hash, independent of listing
order) and never evaluates on training pairs.
"""
from __future__ import annotations

import hashlib
import math
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from . import assets
from .images import ImageError, load_tensor, resize, to_tensor
from .runtime import atomic_dir

GRID_ASSETS = {"v2": "face2comics-v2-preview", "v1": "face2comics-v1-preview"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
DEFAULT_TEST_FRACTION = 0.2
"""Held-out share for the 50-pair preview grids (10 test pairs). The ComicDiff report used 0.05 on 10,000."""
SPLIT_SEED = 0


# --------------------------------------------------------------------------- pairs in memory
@dataclass
class PairSet:
    """Aligned photos and comics in memory: ``photos[i]`` pairs with ``comics[i]``, named ``keys[i]``.

    ``photos`` and ``comics`` are float tensors (N, 3, H, W) in [0, 1].
    """

    keys: list[str]
    photos: torch.Tensor
    comics: torch.Tensor

    def __post_init__(self):
        n = len(self.keys)
        if self.photos.shape != self.comics.shape or self.photos.shape[0] != n:
            raise ValueError(f"{n} keys, photos {tuple(self.photos.shape)} and comics "
                             f"{tuple(self.comics.shape)} do not line up")
        if len(set(self.keys)) != n:
            raise ValueError("pair keys must be unique")

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.photos[i], self.comics[i]

    def subset(self, keys: Iterable[str]) -> "PairSet":
        index = {k: i for i, k in enumerate(self.keys)}
        keys = list(keys)
        missing = [k for k in keys if k not in index]
        if missing:
            raise KeyError(f"unknown pair keys: {missing[:5]}")
        idx = torch.tensor([index[k] for k in keys], dtype=torch.long)
        return PairSet(keys, self.photos[idx], self.comics[idx])

    def resized(self, size: int) -> "PairSet":
        return PairSet(list(self.keys), resize(self.photos, size), resize(self.comics, size))


def slice_grid(grid: torch.Tensor, rows: int = 10, cols: int = 10) -> torch.Tensor:
    """Cut a (1, 3, H, W) or (3, H, W) grid image into tiles -> (rows, cols, 3, H/rows, W/cols)."""
    g = grid[0] if grid.ndim == 4 else grid
    if g.ndim != 3:
        raise ImageError(f"expected one grid image (3, H, W); got {tuple(grid.shape)}")
    _, H, W = g.shape
    if H % rows or W % cols:
        raise ImageError(f"a {W}x{H} image does not divide into a {rows}x{cols} grid of equal tiles")
    th, tw = H // rows, W // cols
    return g.reshape(3, rows, th, cols, tw).permute(1, 3, 0, 2, 4).contiguous()


def grid_pairs(grid: torch.Tensor, *, prefix: str, rows: int = 10, cols: int = 10) -> PairSet:
    """Pairs of a face2comics grid: tile (r, c) is a photo and (r, c + cols/2) its comic."""
    if cols % 2:
        raise ImageError(f"a paired grid needs an even number of columns, got {cols}")
    tiles = slice_grid(grid, rows, cols)
    half = cols // 2
    photos = tiles[:, :half].reshape(-1, *tiles.shape[2:])
    comics = tiles[:, half:].reshape(-1, *tiles.shape[2:])
    keys = [f"{prefix}_r{r}c{c}" for r in range(rows) for c in range(half)]
    return PairSet(keys, photos, comics)


def grid_position(key: str) -> tuple[int, int]:
    """Row and photo column of a grid pair key: ``grid_position("v2_r3c1") == (3, 1)``."""
    try:
        _, rc = key.rsplit("_r", 1)
        r, c = rc.split("c")
        return int(r), int(c)
    except ValueError:
        raise ValueError(f"{key!r} is not a grid pair key like 'v2_r3c1'") from None


def face2comics_pairs(version: str = "v2", size: int | None = None) -> PairSet:
    """The 50 real pairs of a face2comics preview grid (offline mirror), optionally resized.

    Tiles are 256 px; ``size`` resizes both photos and comics (bicubic, antialiased).
    """
    if version not in GRID_ASSETS:
        raise ValueError(f"face2comics version must be one of {sorted(GRID_ASSETS)}, got {version!r}")
    grid = load_tensor(assets.fetch(GRID_ASSETS[version]), min_size=2560)
    pairs = grid_pairs(grid, prefix=version)
    return pairs.resized(size) if size is not None else pairs


# --------------------------------------------------------------------------- splitting
def split_keys(keys: Iterable[str], test_fraction: float = DEFAULT_TEST_FRACTION,
               seed: int = SPLIT_SEED) -> tuple[list[str], list[str]]:
    """Deterministic train/test split -> (train_keys, test_keys), each sorted.

    A key's side depends only on (seed, key, how many keys), never on listing order: keys
    are ranked by sha256(f"{seed}:{key}") and the first round(n * test_fraction) are held
    out (at least one when n > 1).
    """
    keys = list(keys)
    if len(set(keys)) != len(keys):
        raise ValueError("keys must be unique to split them")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
    n = len(keys)
    if n < 2:
        raise ValueError(f"need at least 2 items to split, got {n}")
    n_test = min(n - 1, max(1, round(n * test_fraction)))
    ranked = sorted(keys, key=lambda k: hashlib.sha256(f"{seed}:{k}".encode()).hexdigest())
    test = set(ranked[:n_test])
    return sorted(k for k in keys if k not in test), sorted(test)


def train_test_pairs(pairs: PairSet, test_fraction: float = DEFAULT_TEST_FRACTION,
                     seed: int = SPLIT_SEED) -> tuple[PairSet, PairSet]:
    """Split a :class:`PairSet` with :func:`split_keys`."""
    train, test = split_keys(pairs.keys, test_fraction, seed)
    return pairs.subset(train), pairs.subset(test)


# --------------------------------------------------------------------------- augmentation
@dataclass
class JointAugment:
    """The same random geometry and colour change applied to a photo and its comic.

    The Human-to-Anime report augments with rotation, cropping, and contrast/saturation/hue/brightness changes.
    Geometry (flip, rotation, zoom-crop, shift) is one affine warp with reflection padding,
    identical for both images, so pixels stay aligned. Colour jitter uses one set of factors
    for both (``jitter_comic=False`` changes only the photo, teaching robustness to input
    colour instead). Inputs and outputs: (3, H, W) or (N, 3, H, W) in [0, 1].
    """

    flip_p: float = 0.5
    max_rotation: float = 10.0         # degrees, uniform in [-max, max]
    scale: tuple[float, float] = (0.8, 1.0)   # visible area fraction of the crop
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.03
    jitter_comic: bool = True

    def __call__(self, photo: torch.Tensor, comic: torch.Tensor,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        single = photo.ndim == 3
        p = photo.unsqueeze(0) if single else photo
        c = comic.unsqueeze(0) if single else comic
        if p.shape != c.shape:
            raise ValueError(f"photo {tuple(p.shape)} and comic {tuple(c.shape)} differ in shape")
        both = self._warp(torch.cat([p, c]), p.shape[0], generator)
        p, c = both[: p.shape[0]], both[p.shape[0]:]
        factors = self._colour_factors(p.shape[0], generator)
        p = _jitter(p, *factors)
        if self.jitter_comic:
            c = _jitter(c, *factors)
        return (p[0], c[0]) if single else (p, c)

    def _uniform(self, n, lo, hi, g):
        return lo + (hi - lo) * torch.rand(n, generator=g)

    def _warp(self, x: torch.Tensor, n: int, g) -> torch.Tensor:
        angle = self._uniform(n, -self.max_rotation, self.max_rotation, g) * math.pi / 180
        zoom = self._uniform(n, self.scale[0], self.scale[1], g).sqrt()   # side fraction kept
        flip = torch.where(torch.rand(n, generator=g) < self.flip_p, -1.0, 1.0)
        slack = 1.0 - zoom
        tx = self._uniform(n, -1, 1, g) * slack
        ty = self._uniform(n, -1, 1, g) * slack
        cos, sin = torch.cos(angle) * zoom, torch.sin(angle) * zoom
        theta = torch.stack([
            torch.stack([cos * flip, -sin, tx], dim=1),
            torch.stack([sin * flip, cos, ty], dim=1),
        ], dim=1).to(x)
        theta = torch.cat([theta, theta])                 # photo i and comic i share theta i
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        return out.clamp_(0.0, 1.0)

    def _colour_factors(self, n, g):
        b = self._uniform(n, 1 - self.brightness, 1 + self.brightness, g)
        c = self._uniform(n, 1 - self.contrast, 1 + self.contrast, g)
        s = self._uniform(n, 1 - self.saturation, 1 + self.saturation, g)
        h = self._uniform(n, -self.hue, self.hue, g)
        return b, c, s, h


def _jitter(x: torch.Tensor, b, c, s, h) -> torch.Tensor:
    from torchvision.transforms import functional as TF

    out = []
    for img, bi, ci, si, hi in zip(x, b.tolist(), c.tolist(), s.tolist(), h.tolist()):
        img = TF.adjust_brightness(img, bi)
        img = TF.adjust_contrast(img, ci)
        img = TF.adjust_saturation(img, si)
        if hi:
            img = TF.adjust_hue(img, hi)
        out.append(img.clamp(0.0, 1.0))
    return torch.stack(out)


# --------------------------------------------------------------------------- datasets
class PairDataset(Dataset):
    """A torch ``Dataset`` over a :class:`PairSet`; items are ``{"key", "photo", "comic"}``.

    With ``augment`` (e.g. :class:`JointAugment`) each access draws a new random change;
    pass ``seed`` for a reproducible stream (item i at epoch e uses seed + i + e * len).
    """

    def __init__(self, pairs: PairSet, augment: JointAugment | None = None, seed: int | None = None):
        self.pairs, self.augment, self.seed = pairs, augment, seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict:
        photo, comic = self.pairs[i]
        if self.augment is not None:
            g = None
            if self.seed is not None:
                g = torch.Generator().manual_seed(self.seed + i + self.epoch * len(self))
            photo, comic = self.augment(photo, comic, g)
        return {"key": self.pairs.keys[i], "photo": photo, "comic": comic}


def pair_files(photo_dir: str | os.PathLike, comic_dir: str | os.PathLike,
               extensions: Sequence[str] = IMAGE_EXTENSIONS):
    """Pair image files of two folders by basename (file name without extension).

    Returns ``(pairs, unpaired)``: ``pairs`` a sorted list of (key, photo_path, comic_path),
    ``unpaired`` a dict ``{"photo_only": [...], "comic_only": [...]}`` of keys.
    """
    def index(folder):
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"not a folder: {folder}")
        found: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in extensions and not p.name.startswith("."):
                if p.stem in found:
                    raise ValueError(f"two images named {p.stem!r} in {folder}: "
                                     f"{found[p.stem].name} and {p.name}")
                found[p.stem] = p
        return found

    photos, comics = index(photo_dir), index(comic_dir)
    common = sorted(photos.keys() & comics.keys())
    pairs = [(k, photos[k], comics[k]) for k in common]
    unpaired = {"photo_only": sorted(photos.keys() - comics.keys()),
                "comic_only": sorted(comics.keys() - photos.keys())}
    return pairs, unpaired


class DataFolderError(ValueError):
    """A training folder has unpaired or unreadable files (the message lists them)."""


@dataclass
class FolderCheck:
    """What :meth:`PairedFolder.check` found: pairs that load, and every file that does not."""

    pairs: int
    unpaired: dict                      # {"photo_only": [keys], "comic_only": [keys]}
    unreadable: list                    # [(path, reason)]

    @property
    def problems(self) -> list[str]:
        out = [f"{p}: {why}" for p, why in self.unreadable]
        out += [f"photo without a comic: {k}" for k in self.unpaired.get("photo_only", [])]
        out += [f"comic without a photo: {k}" for k in self.unpaired.get("comic_only", [])]
        return out

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, limit: int = 5) -> str:
        probs = self.problems
        head = f"{self.pairs} readable pairs; {len(probs)} problem(s)"
        if not probs:
            return head
        more = f" (and {len(probs) - limit} more)" if len(probs) > limit else ""
        return f"{head}: " + "; ".join(probs[:limit]) + more


class PairedFolder(Dataset):
    """Photos and comics in two folders, paired by basename; loaded lazily at ``size`` px.

    ``unpaired`` reports files without a partner (not an error); no pair at all is an error.
    Items are ``{"key", "photo", "comic"}`` with (3, size, size) tensors in [0, 1].
    Use ``keys`` with :func:`split_keys` and :meth:`subset` for the train/test split.
    """

    def __init__(self, photo_dir, comic_dir, size: int = 256, augment: JointAugment | None = None,
                 keys: Iterable[str] | None = None):
        pairs, self.unpaired = pair_files(photo_dir, comic_dir)
        if not pairs:
            raise ValueError(f"no photo/comic pairs with matching basenames in {photo_dir} and "
                             f"{comic_dir}")
        if keys is not None:
            wanted = set(keys)
            pairs = [p for p in pairs if p[0] in wanted]
        self.items, self.size, self.augment = pairs, size, augment
        self.photo_dir, self.comic_dir = Path(photo_dir), Path(comic_dir)

    @property
    def keys(self) -> list[str]:
        return [k for k, _, _ in self.items]

    def subset(self, keys: Iterable[str]) -> "PairedFolder":
        return PairedFolder(self.photo_dir, self.comic_dir, self.size, self.augment, keys)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        key, p, c = self.items[i]
        photo, comic = load_tensor(p, self.size)[0], load_tensor(c, self.size)[0]
        if self.augment is not None:
            photo, comic = self.augment(photo, comic)
        return {"key": key, "photo": photo, "comic": comic}

    def check(self, *, skip_bad: bool = False, show_progress: bool = True) -> FolderCheck:
        """Open every image once, before any training step, and list what is wrong.

        Unpaired files and images that do not load (truncated, not an image, too small, too
        large) raise :class:`DataFolderError` naming them, unless ``skip_bad=True``: then the
        bad pairs are dropped from this dataset and the skipped files are printed.
        """
        from .images import load_image
        from .runtime import progress

        bad: list[tuple[str, str]] = []
        good = []
        quiet = {} if show_progress else {"disable": True}
        for key, p, c in progress(self.items, desc="checking images", **quiet):
            errors = []
            for path in (p, c):
                try:
                    load_image(path)
                except ImageError as err:
                    errors.append((str(path), str(err).replace(f"{path} ", "")))
            bad += errors
            if not errors:
                good.append((key, p, c))
        report = FolderCheck(len(good), self.unpaired, bad)
        if report.ok:
            return report
        if not skip_bad:
            raise DataFolderError(f"{self.photo_dir} / {self.comic_dir}: {report.summary()}. Fix or remove "
                                  "these files, or pass skip_bad=True (--skip-bad) to train without them.")
        if not good:
            raise DataFolderError(f"no readable pairs left in {self.photo_dir} / {self.comic_dir}: "
                                  f"{report.summary()}")
        self.items = good
        print(f"skipping {len(report.problems)} file(s) in {self.photo_dir} / {self.comic_dir}:")
        for line in report.problems:
            print(f"  {line}")
        return report

    def to_pairset(self) -> PairSet:
        items = [self[i] for i in range(len(self))]
        return PairSet([it["key"] for it in items], torch.stack([it["photo"] for it in items]),
                       torch.stack([it["comic"] for it in items]))


def extract_tar(archive: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Extract ``archive`` into ``dest`` atomically (temp folder, then rename); reuse if done.

    Only regular files and folders come out, each confined to ``dest``
    (:func:`comicutils.assets.confined_path`): absolute names, ``..``, links, FIFOs and device
    nodes are refused before anything is written, and Python's ``"data"`` extraction filter
    (where this Python has it) drops setuid bits and other unsafe modes.
    """
    dest = Path(dest)
    if dest.is_dir() and any(dest.iterdir()):
        return dest
    with atomic_dir(dest) as tmp, tarfile.open(archive) as tar:
        members = tar.getmembers()
        for m in members:
            if not (m.isfile() or m.isdir()):
                raise assets.UnsafePath(f"refusing member {m.name!r} in {archive}: not a regular file or folder")
            try:
                assets.confined_path(tmp, m.name, "member")
            except assets.UnsafePath:
                raise assets.UnsafePath(f"refusing unsafe member {m.name!r} in {archive}: it leads outside "
                                        "the extraction folder") from None
        if hasattr(tarfile, "data_filter"):
            tar.extractall(tmp, members=members, filter="data")
        else:                                       # pragma: no cover - Pythons before 3.8.17 / 3.11.4
            for m in members:
                m.mode &= 0o755
            tar.extractall(tmp, members=members)
    return dest


def face2comics_full(version: str = "v2", size: int = 512) -> PairedFolder:
    """The full face2comics release (full mode; ~1 GB per tar) as a :class:`PairedFolder`.

    The tarballs come through the asset registry, are extracted once into the cache, and
    pair photos with comics by basename.
    """
    names = {"v2": ["face2comics-v2-faces", "face2comics-v2-comics"], "v1": ["face2comics-v1"]}
    if version not in names:
        raise ValueError(f"version must be 'v1' or 'v2', got {version!r}")
    root = assets.cache_dir() / "extracted" / f"face2comics-{version}"
    for name in names[version]:
        extract_tar(assets.fetch(name), root / name)
    dirs = _image_dirs(root)
    photo = [d for d in dirs if "face" in d.name.lower()]
    comic = [d for d in dirs if "comic" in d.name.lower()]
    if len(photo) != 1 or len(comic) != 1:
        raise FileNotFoundError(f"could not tell the photo and comic folders apart under {root}: "
                                f"{[str(d) for d in dirs]}")
    return PairedFolder(photo[0], comic[0], size=size)


def _image_dirs(root: Path) -> list[Path]:
    out = []
    for d, _, files in os.walk(root):
        if any(f.lower().endswith(IMAGE_EXTENSIONS) for f in files):
            out.append(Path(d))
    return sorted(out)


# --------------------------------------------------------------------------- face datasets
def build_face_dataset(sources, out_dir: str | os.PathLike, *, min_side: int = 256,
                       out_size: int = 512, enlarge: float | None = None):
    """The Human-to-Anime report's data step: a folder of face crops built from arbitrary images.

    ``sources``: a folder of images, or a list of image paths. For each image the largest
    Haar face (scaleFactor 1.1, minNeighbors 4) is enlarged, kept if its side is at least
    ``min_side`` px and resized to ``out_size`` (see :func:`comicutils.faces.crop_faces_haar`);
    the crop is written as ``out_dir/<source stem>.png``. The folder is built in a temporary
    folder beside ``out_dir`` and renamed into place at the end, so a failure leaves no
    half-built dataset; an existing non-empty ``out_dir`` is an error.
    Returns the :class:`~comicutils.faces.FaceCropReport` (ids = source stems).
    """
    from .faces import crop_faces_haar
    from .images import save_image

    if isinstance(sources, (str, os.PathLike)):
        folder = Path(sources)
        paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
    else:
        paths = [Path(p) for p in sources]
    if not paths:
        raise ImageError(f"no images to build a face dataset from ({sources})")
    stems = [p.stem for p in paths]
    if len(set(stems)) != len(stems):
        raise ValueError("source images must have distinct file names (stems)")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        raise FileExistsError(f"{out_dir} exists and is not empty; choose another folder")
    report = crop_faces_haar({p.stem: p for p in paths}, min_side=min_side, out_size=out_size,
                             enlarge=enlarge)
    with atomic_dir(out_dir) as tmp:
        for key, crop in zip(report.kept, report.crops):
            save_image(crop, tmp / f"{key}.png")
    return report


# --------------------------------------------------------------------------- unpaired photos
PORTRAIT_NAMES = [f"portrait-{i:03d}" for i in range(1, 31)]
PORTRAIT_NAMES_EXTRA = [f"portrait-{i:03d}" for i in range(41, 101)]
ALL_PORTRAIT_NAMES = PORTRAIT_NAMES + PORTRAIT_NAMES_EXTRA   # the 90 CC0 portraits


def portraits(size: int = 256, names: Sequence[str] | None = None) -> tuple[list[str], torch.Tensor]:
    """CC0 portraits (real photos, 256 px) -> (names, tensor (N, 3, size, size)): the first 30 by
    default (001-030), ``ALL_PORTRAIT_NAMES`` for all 90 (with 041-100)."""
    names = list(names or PORTRAIT_NAMES)
    tensors = [load_tensor(assets.fetch(n), size) for n in names]
    return names, torch.cat(tensors)


def astronaut(size: int = 256) -> torch.Tensor:
    """NASA's public-domain astronaut portrait (Eileen Collins, ``skimage.data``) -> (1, 3, size, size)."""
    from skimage import data as skdata

    return load_tensor(to_tensor(skdata.astronaut()), size)


def unpaired_test_set(size: int = 256) -> tuple[list[str], torch.Tensor]:
    """Photos with no comic: the 30 portraits and the astronaut -> (names, (31, 3, size, size))."""
    names, t = portraits(size)
    return names + ["astronaut"], torch.cat([t, astronaut(size)])

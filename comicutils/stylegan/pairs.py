"""Paired data from two generators, and the measurements of chapter 03's tables.

:func:`write_pairs` is the Human-to-Anime report's data step: the same seeds through ``G_base`` (photos) and the
blended generator (comics), written as ``<out>/photos/<key>.png`` and ``<out>/comics/<key>.png``
-- the layout :class:`comicutils.data.PairedFolder` reads (pairs matched by basename).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ..fid import feature_frechet_distance, pooled_features  # noqa: F401  (re-exported)
from ..images import save_image
from ..runtime import atomic_dir, progress
from .model import Generator


def pair_key(seed: int) -> str:
    return f"seed{int(seed):05d}"


def write_pairs(G_base: Generator, G_comic: Generator, seeds: Sequence[int], out_dir: str | os.PathLike, *,
                psi: float = 0.7, batch_size: int = 16) -> tuple[Path, Path]:
    """Generate (photo, comic) pairs for ``seeds`` and write them atomically; return the two folders.

    Photo and comic of a seed come from the same z (truncated with ``psi``) and the same stored
    noise. ``out_dir`` must not exist or be empty (the folder is built aside and renamed).
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("no seeds to generate pairs from")
    if len(set(seeds)) != len(seeds):
        raise ValueError("seeds must be distinct (they name the files)")
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        (tmp / "photos").mkdir()
        (tmp / "comics").mkdir()
        for i in progress(range(0, len(seeds), batch_size), desc="writing pairs"):
            chunk = seeds[i:i + batch_size]
            photos = G_base.generate(chunk, psi=psi)
            comics = G_comic.generate(chunk, psi=psi)
            for s, p, c in zip(chunk, photos, comics):
                save_image(p, tmp / "photos" / f"{pair_key(s)}.png")
                save_image(c, tmp / "comics" / f"{pair_key(s)}.png")
    return out_dir / "photos", out_dir / "comics"


def identity_distance_between(images_a: torch.Tensor, images_b: torch.Tensor, *, size: int = 256) -> torch.Tensor:
    """dlib identity distance between paired images (N,), after upsampling to ``size`` px.

    Small generated faces are upsampled so dlib's face chip has pixels to work with; where dlib
    finds no face the whole image is taken as the face (``on_missing="whole"``). Only dlib's HOG
    detector is tried (``detector="hog"``): the images are face crops already, and the CNN
    fallback would cost about a second per image for a box no better than the whole image.
    """
    from ..faces import identity_distance
    from ..images import resize

    return identity_distance(resize(images_a, size), resize(images_b, size), on_missing="whole", detector="hog")


def upsample_for_display(images: torch.Tensor, size: int = 128) -> torch.Tensor:
    """Nearest-neighbour upsampling of small generator outputs for figures."""
    return F.interpolate(images, size=(size, size), mode="nearest")

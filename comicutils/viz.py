"""Figures: image rows and grids, heat maps, and saving to ``figures/``.

Every function returns a matplotlib ``Figure``; :func:`save_figure` writes it atomically to
:func:`comicutils.runtime.figures_dir` (``figures/`` in auto/full mode, a build folder in
smoke mode so CI never overwrites the README's figures).
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .images import check_image_tensor, to_numpy
from .runtime import figures_dir, get_mode


def _plt():
    import matplotlib

    if not os.environ.get("MPLBACKEND") and not _has_display():
        matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _has_display() -> bool:
    try:
        from IPython import get_ipython

        if get_ipython() is not None:
            return True
    except ImportError:  # pragma: no cover
        pass
    return bool(os.environ.get("DISPLAY"))


def show_images(images: torch.Tensor | Sequence[torch.Tensor], titles: Sequence[str] | None = None,
                *, ncols: int = 8, size: float = 1.8, suptitle: str | None = None):
    """Images (N, 3, H, W) in [0, 1] (or a list of such) in a grid with optional titles."""
    if not isinstance(images, torch.Tensor):
        images = torch.cat([i.unsqueeze(0) if i.ndim == 3 else i for i in images])
    arr = to_numpy(check_image_tensor(images, "show_images input"))
    n = len(arr)
    ncols = max(1, min(ncols, n))
    nrows = (n + ncols - 1) // ncols
    plt = _plt()
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows + (0.4 if suptitle else 0)),
                             squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, img in enumerate(arr):
        ax = axes.flat[i]
        ax.imshow(np.clip(img, 0, 1))
        if titles is not None and i < len(titles):
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


def show_rows(rows: dict[str, torch.Tensor], column_titles: Sequence[str] | None = None,
              *, size: float = 1.8, suptitle: str | None = None):
    """Several aligned rows of images, each row labelled: ``{"photo": x, "comic": y}``."""
    labels = list(rows)
    arrays = [to_numpy(check_image_tensor(rows[k], f"row {k!r}")) for k in labels]
    ncols = max(len(a) for a in arrays)
    plt = _plt()
    fig, axes = plt.subplots(len(labels), ncols, figsize=(size * ncols, size * len(labels)),
                             squeeze=False)
    for r, (label, arr) in enumerate(zip(labels, arrays)):
        for c in range(ncols):
            ax = axes[r, c]
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c < len(arr):
                ax.imshow(np.clip(arr[c], 0, 1))
            if c == 0:
                ax.set_ylabel(label, fontsize=10)
            if r == 0 and column_titles is not None and c < len(column_titles):
                ax.set_title(column_titles[c], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    return fig


def heatmap(matrix, labels: Sequence[str] | None = None, *, title: str = "", cmap: str = "viridis",
            annotate: bool = False, fmt: str = "{:.2f}", colorbar_label: str = "", size: float = 6.0):
    """A labelled heat map of a square or rectangular matrix (tensor or array)."""
    m = matrix.detach().cpu().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(size, size * m.shape[0] / max(m.shape[1], 1)))
    im = ax.imshow(m, cmap=cmap)
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    if colorbar_label:
        cb.set_label(colorbar_label)
    if labels is not None:
        fs = 6 if len(labels) > 20 else 8
        ax.set_xticks(range(m.shape[1]), labels[: m.shape[1]], rotation=90, fontsize=fs)
        ax.set_yticks(range(m.shape[0]), labels[: m.shape[0]], fontsize=fs)
    if annotate:
        for (i, j), v in np.ndenumerate(m):
            ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=6, color="w")
    ax.set_title(title)
    fig.tight_layout()
    return fig


def save_figure(fig, name: str, *, dpi: int = 110, stamp_mode: bool = True) -> Path:
    """Save ``fig`` as ``<figures_dir>/<name>.png`` (atomically) and return the path.

    With ``stamp_mode`` the run mode is written in the corner, so a figure is never mistaken
    for one made with other settings.
    """
    if not name or any(sep in name for sep in ("/", "\\")) or name.startswith("."):
        raise ValueError(f"figure name must be a plain file name, got {name!r}")
    path = figures_dir() / (name if name.endswith(".png") else f"{name}.png")
    if stamp_mode:
        fig.text(0.995, 0.005, f"comicutils · {get_mode()} mode", ha="right", va="bottom",
                 fontsize=6, color="0.5")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path

"""Figures: image rows and grids, heat maps, and saving to ``figures/``.

Every function returns a matplotlib ``Figure``; :func:`save_figure` writes it atomically to
:func:`comicutils.runtime.figures_dir` (``figures/`` in auto/full mode, a build folder in
smoke mode so CI never overwrites the figures the docs show).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .images import check_image_tensor, to_numpy
from .runtime import atomic_path, figures_dir, get_mode


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


def save_figure(fig, name: str, *, dpi: int = 100, stamp_mode: bool = True) -> Path:
    """Save ``fig`` to ``<figures_dir>/<name>`` atomically and return the path.

    ``name`` may end in ``.png`` (default; plots) or ``.jpg`` (photo grids: several times
    smaller). With ``stamp_mode`` the run mode is written in the corner, so a figure is never
    mistaken for one made with other settings.
    """
    if not name or any(sep in name for sep in ("/", "\\")) or name.startswith("."):
        raise ValueError(f"figure name must be a plain file name, got {name!r}")
    suffix = Path(name).suffix.lower()
    if suffix not in {".png", ".jpg"}:
        name, suffix = f"{name}.png", ".png"
    path = figures_dir() / name
    if stamp_mode:
        fig.text(0.995, 0.005, f"comicutils · {get_mode()} mode", ha="right", va="bottom",
                 fontsize=6, color="0.5")
    extra = {"pil_kwargs": {"quality": 88}} if suffix == ".jpg" else {}
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=suffix[1:].replace("jpg", "jpeg"),
                    **extra)
    return path

_BOX_COLOURS = ("#e8590c", "#1c7ed6", "#2f9e44", "#ae3ec9")


def show_detections(images: torch.Tensor, boxes: dict[str, Sequence[Sequence]],
                    landmarks: Sequence | None = None, titles: Sequence[str] | None = None,
                    *, ncols: int = 6, size: float = 2.0):
    """Images (N, 3, H, W) with face boxes drawn per detector and optional 5-point landmarks.

    ``boxes`` maps a detector name to one list of boxes per image; a box is anything with
    ``left, top, right, bottom`` attributes (pixels). ``landmarks[i]`` is a (K, 2) array or None.
    """
    from matplotlib.lines import Line2D
    from matplotlib.patches import Rectangle

    fig = show_images(images, titles, ncols=ncols, size=size)
    axes = [ax for ax in fig.axes if ax.images]
    for d, (name, per_image) in enumerate(boxes.items()):
        colour = _BOX_COLOURS[d % len(_BOX_COLOURS)]
        for ax, bxs in zip(axes, per_image):
            for b in bxs:
                ax.add_patch(Rectangle((b.left, b.top), b.right - b.left, b.bottom - b.top,
                                       fill=False, lw=1.5, ec=colour, ls="-" if d == 0 else "--"))
    if landmarks is not None:
        for ax, pts in zip(axes, landmarks):
            if pts is not None:
                pts = np.asarray(pts)
                ax.scatter(pts[:, 0], pts[:, 1], s=6, c="#f03e3e", zorder=3)
    handles = [Line2D([], [], color=_BOX_COLOURS[d % len(_BOX_COLOURS)], ls="-" if d == 0 else "--",
                      label=name) for d, name in enumerate(boxes)]
    if landmarks is not None:
        handles.append(Line2D([], [], color="#f03e3e", marker="o", ls="", label="5 landmarks"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=8,
               bbox_to_anchor=(0.5, -0.02))
    return fig


def architecture_diagram(stages, *, title: str = "", size: float = 0.55):
    """Draw a U-shaped diagram from :func:`comicutils.pix2pix.stage_shapes`.

    Each stage is a bar whose height is log2 of its resolution (so the U shows the
    down- and up-sampling) labelled with its channels; colours mark encoder, bridge, decoder.
    """
    plt = _plt()
    colours = {"encoder": "#1c7ed6", "bridge": "#e8590c", "decoder": "#2f9e44"}
    n = len(stages)
    fig, ax = plt.subplots(figsize=(max(6.0, size * n), 3.2))
    for i, row in enumerate(stages.itertuples()):
        h = np.log2(max(row.resolution, 1)) + 1
        ax.bar(i, h, color=colours.get(row.part, "0.5"), width=0.8)
        ax.text(i, h + 0.1, f"{row.channels}", ha="center", va="bottom", fontsize=7, rotation=90)
        ax.text(i, 0.15, f"{row.resolution}", ha="center", va="bottom", fontsize=6, color="w",
                rotation=90)
    ax.set_xticks(range(n), list(stages["stage"]), rotation=90, fontsize=7)
    ax.set_yticks([])
    ax.set_ylabel("resolution (log scale)")
    for part, c in colours.items():
        ax.bar(0, 0, color=c, label=part)
    ax.legend(fontsize=7, loc="upper center", ncol=3, frameon=False)
    ax.set_ylim(0, ax.get_ylim()[1] * 1.25)
    ax.set_title(title + " (numbers: channels above, resolution inside)", fontsize=9)
    fig.tight_layout()
    return fig

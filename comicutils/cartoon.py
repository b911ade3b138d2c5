"""A classical, training-free cartoon filter: the baseline every learned method must beat.

Three steps, each a textbook image-processing operation (OpenCV):

1. **Edge-preserving smoothing** - repeated bilateral filtering flattens skin and cloth into
   smooth regions while keeping the borders between them sharp.
2. **Colour quantisation** - k-means in RGB reduces the image to ``colors`` flat tones, the
   "cel-shaded" look.
3. **Dark outlines** - an adaptive threshold of the median-blurred grey image marks the
   strong edges; they are painted black over the quantised colours.

Runs offline, deterministically (k-means is seeded), on (N, 3, H, W) images in [0, 1]; the
output has the input's size and range.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch

from .images import check_image_tensor


def _uint8(img: torch.Tensor) -> np.ndarray:
    return (img.detach().cpu().clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def smooth(rgb: np.ndarray, *, passes: int = 4, diameter: int = 7, sigma_color: float = 40.0,
           sigma_space: float = 7.0) -> np.ndarray:
    """Edge-preserving smoothing: ``passes`` bilateral filters on an (H, W, 3) uint8 image."""
    out = rgb
    for _ in range(passes):
        out = cv2.bilateralFilter(out, diameter, sigma_color, sigma_space)
    return out


def quantize(rgb: np.ndarray, colors: int = 8, *, seed: int = 0) -> np.ndarray:
    """Reduce an (H, W, 3) uint8 image to ``colors`` tones with seeded k-means (OpenCV)."""
    if colors < 2:
        raise ValueError(f"colors must be >= 2, got {colors}")
    data = rgb.reshape(-1, 3).astype(np.float32)
    k = min(colors, len(np.unique(data, axis=0)))
    if k < 2:
        return rgb.copy()
    cv2.setRNGSeed(seed)
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    _, labels, centers = cv2.kmeans(data, k, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    return centers.round().astype(np.uint8)[labels.ravel()].reshape(rgb.shape)


def outlines(rgb: np.ndarray, *, block: int = 9, c: float = 5.0, blur: int = 5) -> np.ndarray:
    """Boolean (H, W) mask of dark outline pixels: adaptive mean threshold of the blurred grey."""
    if block % 2 == 0 or block < 3:
        raise ValueError(f"block must be an odd number >= 3, got {block}")
    grey = cv2.medianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), blur)
    edges = cv2.adaptiveThreshold(grey, 255, cv2.ADAPTIVE_THRESH_MEAN_C, cv2.THRESH_BINARY,
                                  block, c)
    return edges == 0


def cartoonize(images: torch.Tensor, *, colors: int = 8, passes: int = 4, block: int = 9,
               c: float = 5.0, line_color: float = 0.08, seed: int = 0) -> torch.Tensor:
    """Cartoon-filter images (N, 3, H, W) or (3, H, W) in [0, 1] -> same shape in [0, 1].

    ``colors``: tones after quantisation; ``passes``: bilateral passes; ``block``, ``c``: the
    adaptive threshold's window (odd, px) and offset (larger ``c`` = fewer lines);
    ``line_color``: grey level of the outlines. Inputs are not modified.
    """
    single = images.ndim == 3
    x = check_image_tensor(images.unsqueeze(0) if single else images, "cartoonize input")
    out = []
    for img in x:
        rgb = _uint8(img)
        flat = quantize(smooth(rgb, passes=passes), colors, seed=seed)
        mask = outlines(rgb, block=block, c=c)
        flat = flat.astype(np.float32) / 255.0
        flat[mask] = line_color
        out.append(torch.from_numpy(flat).permute(2, 0, 1))
    result = torch.stack(out).to(x.dtype)
    return result[0] if single else result

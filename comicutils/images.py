"""Loading, validating, converting, resizing, gridding and saving images.

The course's one convention: **images cross module boundaries as float tensors of shape
(N, 3, H, W) with values in [0, 1]**. A single image may be passed as (3, H, W); functions
say what they return. Conversion to [-1, 1] happens inside the models that want it.

Loading accepts a path, bytes, a PIL image, a NumPy array (HWC or HW; uint8, uint16, bool
or float in [0, 1]) or a tensor; applies the EXIF orientation; converts every PIL mode
(1, L, LA, P, PA, RGBA, CMYK, I;16, I, F, YCbCr, ...) to RGB (transparency composited on
white); and rejects non-images and images smaller than ``min_size`` with an
:class:`ImageError` that says what was wrong.
"""
from __future__ import annotations

import io
import math
import os
from pathlib import Path
from typing import Iterable, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps, UnidentifiedImageError

ImageLike = Union[str, os.PathLike, bytes, Image.Image, np.ndarray, torch.Tensor]

MIN_SIZE = 16
"""Default smallest accepted side in pixels (a face crop smaller than this carries nothing)."""


class ImageError(ValueError):
    """The input is not an image the course can use (unreadable, wrong shape or range, tiny)."""


# --------------------------------------------------------------------------- loading
def load_image(src: ImageLike, *, min_size: int = MIN_SIZE) -> Image.Image:
    """Load ``src`` as an 8-bit RGB PIL image, EXIF orientation applied.

    Raises :class:`ImageError` for missing or non-image files, wrong array shapes or ranges,
    and images whose shorter side is below ``min_size``.
    """
    if isinstance(src, Image.Image):
        img = src
    elif isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if not path.is_file():
            raise ImageError(f"no such image file: {path}")
        try:
            with Image.open(path) as opened:
                opened.load()
                img = opened.copy()
                img.info.update(opened.info)
                exif = opened.getexif()
        except Image.DecompressionBombError as err:
            raise ImageError(f"{path} is too large to open safely ({err}); shrink it first") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ImageError(f"{path} is not a readable image ({err})") from None
        img = _apply_exif(img, exif)
    elif isinstance(src, (bytes, bytearray)):
        try:
            with Image.open(io.BytesIO(src)) as opened:
                opened.load()
                img = opened.copy()
                exif = opened.getexif()
        except Image.DecompressionBombError as err:
            raise ImageError(f"image bytes are too large to open safely ({err})") from None
        except (UnidentifiedImageError, OSError, SyntaxError) as err:
            raise ImageError(f"bytes are not a readable image ({err})") from None
        img = _apply_exif(img, exif)
    elif isinstance(src, np.ndarray):
        img = _array_to_pil(src)
    elif isinstance(src, torch.Tensor):
        t = src.detach().cpu()
        if t.ndim == 4:
            if t.shape[0] != 1:
                raise ImageError(f"load_image takes one image; got a batch of {t.shape[0]}")
            t = t[0]
        img = to_pil(_validate_chw(t))
    else:
        raise ImageError(f"cannot load an image from {type(src).__name__}")
    img = to_rgb(img)
    if min(img.size) < min_size:
        raise ImageError(f"image is {img.size[0]}x{img.size[1]} px; the course needs at least "
                         f"{min_size} px on the shorter side")
    return img


def _apply_exif(img: Image.Image, exif) -> Image.Image:
    orientation = exif.get(0x0112) if exif else None
    if orientation and orientation != 1:
        img.getexif()[0x0112] = orientation  # exif_transpose reads it from the image
        img = ImageOps.exif_transpose(img)
    return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB; transparency is composited on white."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        arr = np.asarray(img, dtype=np.uint16).astype(np.float32) / 65535.0
        return _array_to_pil(arr)
    if mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        hi = 65535.0 if arr.max(initial=0) > 255 else 255.0
        return _array_to_pil(np.clip(arr / hi, 0, 1).astype(np.float32))
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    elif mode in ("LA", "PA", "La", "RGBa"):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img, mask=img.getchannel("A"))
        return background
    return img.convert("RGB")  # 1, L, CMYK, YCbCr, LAB, HSV


def _array_to_pil(arr: np.ndarray) -> Image.Image:
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[2] not in (3, 4):
        raise ImageError(f"array of shape {a.shape} is not an image; expected HxW, HxWx3 or HxWx4")
    if a.dtype == np.bool_:
        a = a.astype(np.float32)
    if a.dtype == np.uint8:
        out = a
    elif a.dtype == np.uint16:
        out = np.round(a.astype(np.float32) / 65535.0 * 255).astype(np.uint8)
    elif np.issubdtype(a.dtype, np.floating):
        if not np.isfinite(a).all():
            raise ImageError("float image contains NaN or inf")
        lo, hi = float(a.min()), float(a.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ImageError(f"float image values span [{lo:.3g}, {hi:.3g}]; expected [0, 1]")
        out = np.round(np.clip(a, 0, 1) * 255).astype(np.uint8)
    else:
        raise ImageError(f"unsupported array dtype {a.dtype}")
    img = Image.fromarray(np.ascontiguousarray(out))
    return to_rgb(img)


# --------------------------------------------------------------------------- tensors
def to_tensor(images: ImageLike | Sequence[ImageLike], *, min_size: int = MIN_SIZE) -> torch.Tensor:
    """One image or a list of same-sized images -> float tensor (N, 3, H, W) in [0, 1]."""
    if isinstance(images, torch.Tensor):
        t = images.detach()
        if t.ndim == 3:
            t = t.unsqueeze(0)
        return check_image_tensor(t.float(), "to_tensor input").clone()
    items = list(images) if isinstance(images, (list, tuple)) else [images]
    if not items:
        raise ImageError("no images given")
    arrs = []
    for it in items:
        pil = load_image(it, min_size=min_size)
        arrs.append(torch.from_numpy(np.asarray(pil, dtype=np.uint8).copy()))
    sizes = {tuple(a.shape) for a in arrs}
    if len(sizes) > 1:
        raise ImageError(f"images differ in size {sorted(sizes)}; resize them first")
    return torch.stack(arrs).permute(0, 3, 1, 2).float().div_(255.0).contiguous()


def load_tensor(src: ImageLike, size: int | tuple[int, int] | None = None, *,
                min_size: int = MIN_SIZE) -> torch.Tensor:
    """Load one image to a (1, 3, H, W) tensor in [0, 1]; optionally resize + centre-crop to ``size``."""
    t = to_tensor(src, min_size=min_size)
    return resize_center_crop(t, size) if size is not None else t


def _validate_chw(t: torch.Tensor) -> torch.Tensor:
    if t.ndim != 3 or t.shape[0] not in (1, 3):
        raise ImageError(f"expected (3, H, W) or (1, H, W); got {tuple(t.shape)}")
    return check_image_tensor(t.unsqueeze(0), "image")[0]


def check_image_tensor(x: torch.Tensor, what: str = "images", *, tol: float = 1e-4) -> torch.Tensor:
    """Check that ``x`` is a float (N, 3, H, W) tensor in [0, 1]; return it unchanged.

    A common bug is passing [-1, 1] or [0, 255] data: the error message names the range seen.
    Single-channel (N, 1, H, W) is accepted and repeated to 3 channels.
    """
    if not isinstance(x, torch.Tensor):
        raise ImageError(f"{what} must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim != 4:
        raise ImageError(f"{what} must be (N, 3, H, W); got shape {tuple(x.shape)}")
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    if x.shape[1] != 3:
        raise ImageError(f"{what} must have 3 channels in dim 1; got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ImageError(f"{what} must be float in [0, 1]; got dtype {x.dtype}")
    if x.numel():
        lo, hi = float(x.detach().min()), float(x.detach().max())   # a check, not part of any graph
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ImageError(f"{what} contain NaN or inf")
        if lo < -tol or hi > 1 + tol:
            hint = " (looks like [-1, 1]: use (x + 1) / 2)" if lo < -tol and hi <= 1 + tol else (
                " (looks like [0, 255]: divide by 255)" if hi > 1.5 else "")
            raise ImageError(f"{what} must be in [0, 1]; got [{lo:.4g}, {hi:.4g}]{hint}")
    return x


def to_pil(x: torch.Tensor) -> Image.Image | list[Image.Image]:
    """(3, H, W) -> one PIL image; (N, 3, H, W) -> a list. Values in [0, 1]."""
    single = x.ndim == 3
    t = check_image_tensor(x.unsqueeze(0) if single else x, "to_pil input")
    arr = (t.detach().float().clamp(0, 1).mul(255).round().byte()
           .permute(0, 2, 3, 1).cpu().numpy())
    imgs = [Image.fromarray(a) for a in arr]
    return imgs[0] if single else imgs


def to_numpy(x: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) or (3, H, W) tensor in [0, 1] -> float32 array (N, H, W, 3) or (H, W, 3)."""
    single = x.ndim == 3
    t = check_image_tensor(x.unsqueeze(0) if single else x, "to_numpy input")
    arr = t.detach().float().cpu().permute(0, 2, 3, 1).numpy()
    return arr[0] if single else arr


def to_minus1_1(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (for a model's input layer only)."""
    return x * 2.0 - 1.0


def from_minus1_1(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1], clamped (for a model's output layer only)."""
    return ((x + 1.0) / 2.0).clamp(0.0, 1.0)


# --------------------------------------------------------------------------- geometry
def _size_hw(size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resize(x: torch.Tensor, size: int | tuple[int, int], *, antialias: bool = True) -> torch.Tensor:
    """Resize (N, 3, H, W) to ``size`` = (h, w), or a square when an int. Bicubic, clamped."""
    h, w = _size_hw(size)
    if h < 1 or w < 1:
        raise ImageError(f"cannot resize to {h}x{w}")
    if tuple(x.shape[-2:]) == (h, w):
        return x
    out = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False, antialias=antialias)
    return out.clamp_(0.0, 1.0)


def center_crop(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Crop the centre ``size`` region of (..., H, W); error if the image is smaller."""
    h, w = _size_hw(size)
    H, W = x.shape[-2:]
    if h > H or w > W:
        raise ImageError(f"cannot crop {h}x{w} from a {H}x{W} image")
    top, left = (H - h) // 2, (W - w) // 2
    return x[..., top:top + h, left:left + w]


def resize_center_crop(x: torch.Tensor, size: int | tuple[int, int]) -> torch.Tensor:
    """Scale so the image covers ``size``, then centre-crop to exactly ``size`` (no distortion)."""
    h, w = _size_hw(size)
    H, W = x.shape[-2:]
    scale = max(h / H, w / W)
    nh, nw = max(h, round(H * scale)), max(w, round(W * scale))
    return center_crop(resize(x, (nh, nw)), (h, w))


def make_grid(images: torch.Tensor | Sequence[torch.Tensor], nrow: int = 8, padding: int = 2,
              pad_value: float = 1.0) -> torch.Tensor:
    """Tile images (N, 3, H, W) — or a list of same-sized (3, H, W)/(1, 3, H, W) — into one (3, H', W')."""
    if not isinstance(images, torch.Tensor):
        images = torch.cat([i.unsqueeze(0) if i.ndim == 3 else i for i in images])
    x = check_image_tensor(images, "make_grid input")
    n, _, h, w = x.shape
    if n == 0:
        raise ImageError("make_grid got no images")
    ncol = min(nrow, n)
    nrows = math.ceil(n / ncol)
    grid = x.new_full((3, nrows * (h + padding) + padding, ncol * (w + padding) + padding), pad_value)
    for i in range(n):
        r, c = divmod(i, ncol)
        top, left = padding + r * (h + padding), padding + c * (w + padding)
        grid[:, top:top + h, left:left + w] = x[i]
    return grid


def save_image(x: torch.Tensor, path: str | os.PathLike, **pil_kwargs) -> Path:
    """Save one image (3, H, W) / (1, 3, H, W) atomically (temp file + rename); return the path.

    The format follows the suffix (.png, .jpg, .webp). A failed write leaves no file behind.
    """
    if x.ndim == 4:
        if x.shape[0] != 1:
            raise ImageError(f"save_image saves one image; got a batch of {x.shape[0]} "
                             "(use make_grid first)")
        x = x[0]
    pil = to_pil(x)
    from .runtime import atomic_path

    path = Path(path)
    fmt = Image.registered_extensions().get(path.suffix.lower())
    if fmt is None:
        raise ImageError(f"unknown image format for {path.name}; use .png, .jpg or .webp")
    with atomic_path(path) as tmp:
        pil.save(tmp, format=fmt, **pil_kwargs)
    return path


def load_folder(folder: str | os.PathLike, *, size: int | None = None,
                extensions: Iterable[str] = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
                ) -> tuple[list[str], torch.Tensor]:
    """Load every image in ``folder`` (sorted by name) -> (names, tensor (N, 3, size, size))."""
    folder = Path(folder)
    exts = {e.lower() for e in extensions}
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in exts)
    if not files:
        raise ImageError(f"no images ({', '.join(sorted(exts))}) in {folder}")
    tensors = [load_tensor(p, size) for p in files]
    return [p.stem for p in files], torch.cat(tensors)

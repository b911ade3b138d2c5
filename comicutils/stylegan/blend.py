"""Model blending (Toonify, the Human-to-Anime report) and style mixing (Lu & Zhou).

**Blending** two generators with the same architecture -- ``G_base`` (photos) and ``G_style``
(fine-tuned from it on comics) -- takes each layer as ``(1 - a_r) * base + a_r * style`` where
``a_r`` is the weight of the layer's resolution ``r``. Which tensors blend is explicit:

* synthesis convolutions (``conv1``, ``convs.*``: weights, modulation, noise strength, bias) and
  the constant ``input``: by their resolution, always;
* ToRGB layers (``to_rgb1``, ``to_rgbs.*``): by their resolution if ``blend_torgb`` (default,
  as in Pinkney's network blending), else taken from ``G_base``;
* the stored noise maps (``noises.*``): by their resolution;
* the mapping network (``style.*``): ``mapping="base"`` (default: the same z gives the same w in
  both generators, as Toonify needs), ``"style"``, or a number (its own blend weight);
* FIR kernels (``*.kernel``) are fixed filters, identical in both, copied from ``G_base``.

So all weights 0 returns ``G_base`` exactly and all weights 1 returns ``G_style`` exactly
(with ``mapping="style"``). Toonify's hard layer swap at resolution ``r`` is
``swap_weights(size, r)``: below ``r`` from the base (geometry), from ``r`` up from the style
model (texture, colour). The Human-to-Anime report's *custom blending* weights are :data:`SEED003_CUSTOM_BLEND`.

**Style mixing** takes the first ``k`` latents of w+ from a *source* and the rest from a
*reference* (:func:`mix_latents`): low ``k`` hands most layers (coarse geometry upwards) to the
reference, high ``k`` only the finest ones (colour, texture).
"""
from __future__ import annotations

import copy
from typing import Callable, Mapping

import numpy as np
import torch

from .model import Generator

SEED003_CUSTOM_BLEND = {4: 0.2, 8: 0.2, 16: 0.2, 32: 0.2, 64: 0.5, 128: 0.9, 256: 0.7, 512: 0.7}
"""The Human-to-Anime report's custom blend (share of the Arcane-style model per resolution, 512 px network)."""
SEED003_SWAP_RESOLUTION = 64
"""The Human-to-Anime report's 'integrated blending' split point."""


def swap_weights(size: int, swap_resolution: int) -> dict[int, float]:
    """Toonify's layer swap as blend weights: 0 below ``swap_resolution``, 1 from it up."""
    res = _resolutions(size)
    if swap_resolution not in res:
        raise ValueError(f"swap_resolution must be one of {res}, got {swap_resolution}")
    return {r: 0.0 if r < swap_resolution else 1.0 for r in res}


def _resolutions(size: int) -> list[int]:
    return [2 ** i for i in range(2, int(np.log2(size)) + 1)]


def resample_blend_weights(weights: Mapping[int, float], size: int) -> dict[int, float]:
    """Carry a blend curve to a network of another depth, by relative depth.

    Each curve is laid over depth t = (log2 r - 2) / (log2 size - 2) in [0, 1] and linearly
    interpolated: the Human-to-Anime report's 512 px curve on a 64 px network keeps its shape (coarse mostly
    base, fine mostly style) instead of being cut off at 64 px.
    """
    src = sorted(int(r) for r in weights)
    if len(src) < 2:
        raise ValueError("need weights for at least two resolutions")
    t_src = (np.log2(src) - 2) / (np.log2(src[-1]) - 2)
    dst = _resolutions(size)
    t_dst = (np.log2(dst) - 2) / (np.log2(size) - 2)
    vals = np.interp(t_dst, t_src, [float(weights[r]) for r in src])
    return {r: float(v) for r, v in zip(dst, vals)}


def _weight_for(key: str, layer_res: Mapping[str, int], weights, *, blend_torgb: bool, mapping) -> float | None:
    """Blend weight of one state-dict key (None: copy from base)."""
    if key.endswith(".kernel"):
        return None
    if key.startswith("style."):
        if mapping == "base":
            return 0.0
        if mapping == "style":
            return 1.0
        return float(mapping)
    if key.startswith("to_rgb") and not blend_torgb:
        return 0.0
    for prefix, res in layer_res.items():
        if key == prefix or key.startswith(prefix + "."):
            return float(weights(res) if callable(weights) else weights[res])
    raise KeyError(f"no resolution known for parameter {key!r}")


def blend(G_base: Generator, G_style: Generator, weights: Mapping[int, float] | Callable[[int], float], *,
          mapping: str | float = "base", blend_torgb: bool = True) -> Generator:
    """A new generator whose layers are ``(1 - a_r) base + a_r style`` (see the module doc).

    ``weights``: resolution -> a in [0, 1] for every resolution 4 ... size (or a function of
    the resolution). The inputs are not modified; ``w_avg`` is the base's (recomputed when the
    mapping network is blended).
    """
    if G_base.config.to_dict() != G_style.config.to_dict():
        raise ValueError("blend needs two generators of the same architecture; configs differ: "
                         f"{G_base.config} vs {G_style.config}")
    if not callable(weights):
        missing = [r for r in G_base.config.resolutions if r not in weights]
        if missing:
            raise ValueError(f"blend weights miss resolutions {missing} (need {G_base.config.resolutions})")
        bad = {r: a for r, a in weights.items() if not 0.0 <= float(a) <= 1.0}
        if bad:
            raise ValueError(f"blend weights must lie in [0, 1]; got {bad}")
    if isinstance(mapping, str) and mapping not in ("base", "style"):
        raise ValueError(f"mapping must be 'base', 'style' or a weight; got {mapping!r}")
    layer_res = G_base.layer_resolutions()
    sb, ss = G_base.state_dict(), G_style.state_dict()
    out = {}
    for key, vb in sb.items():
        a = _weight_for(key, layer_res, weights, blend_torgb=blend_torgb, mapping=mapping)
        if a is None or a == 0.0:
            out[key] = vb.clone()
        elif a == 1.0:
            out[key] = ss[key].clone()
        else:
            out[key] = torch.lerp(vb, ss[key], a)
    G = copy.deepcopy(G_base)
    G.load_state_dict(out, strict=True)
    if mapping == "base":
        G.w_avg = G_base.w_avg.clone()
    elif mapping == "style":
        G.w_avg = G_style.w_avg.clone()
    else:
        G.update_w_avg()
    return G


def blend_table(G: Generator, weights, *, mapping="base", blend_torgb: bool = True):
    """Which parameters blend with which weight: a DataFrame (key, resolution, weight, numel)."""
    import pandas as pd

    layer_res = G.layer_resolutions()
    rows = []
    for key, v in G.state_dict().items():
        a = _weight_for(key, layer_res, weights, blend_torgb=blend_torgb, mapping=mapping)
        res = next((r for p, r in layer_res.items() if key == p or key.startswith(p + ".")), None)
        rows.append({"key": key, "resolution": res, "weight": "copied (fixed filter)" if a is None else a,
                     "numel": v.numel()})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- style mixing
def mix_latents(source: torch.Tensor, reference: torch.Tensor, layer: int) -> torch.Tensor:
    """w+ with latents ``[0, layer)`` from ``source`` and ``[layer, n_latent)`` from ``reference``.

    ``source``, ``reference``: (N, L, D) (a (1, L, D) reference is broadcast). ``layer = 0``
    returns the reference, ``layer = L`` the source.
    """
    if source.ndim != 3 or reference.ndim != 3 or source.shape[1:] != reference.shape[1:]:
        raise ValueError(f"source and reference must be w+ (N, L, D) of the same L, D; got "
                         f"{tuple(source.shape)} and {tuple(reference.shape)}")
    L = source.shape[1]
    if not 0 <= layer <= L:
        raise ValueError(f"layer must lie in 0..{L}, got {layer}")
    reference = reference.expand(source.shape[0], -1, -1)
    return torch.cat([source[:, :layer], reference[:, layer:]], dim=1)


@torch.no_grad()
def multimodal(G: Generator, wplus: torch.Tensor, layer: int, n: int, *, psi: float = 0.7,
               seed: int = 0) -> torch.Tensor:
    """Lu & Zhou's multimodal stylisation: one content w+ (1, L, D) mixed with ``n`` random
    references drawn in Z+ and truncated towards ``w_avg``. Returns images (n, 3, H, W)."""
    zplus = G.sample_z(n, seed=seed, plus=True)
    ref = G.truncate(G.mapping(zplus), psi)
    return G.synthesis(mix_latents(wplus.expand(n, -1, -1), ref, layer)).cpu()


@torch.no_grad()
def reference_guided(G: Generator, wplus: torch.Tensor, reference_wplus: torch.Tensor, layer: int) -> torch.Tensor:
    """Lu & Zhou's reference-guided stylisation: content w+ (N, L, D) mixed with a reference's
    latent (inverted into W and repeated) from ``layer`` on. Returns images (N, 3, H, W)."""
    return G.synthesis(mix_latents(wplus, reference_wplus, layer)).cpu()

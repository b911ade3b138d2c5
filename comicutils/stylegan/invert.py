"""GAN inversion and Lu & Zhou's multi-level pseudo pairs.

**Latent spaces.** ``Z``: one Gaussian z (N, D), what the generator samples from. ``W``: the
mapping network's output w = f(z), where directions carry meaning. ``W+``: one w per
synthesis layer (N, L, D) -- far more expressive (almost any image can be reconstructed) but
off the learned distribution. ``Z+``: one z per layer, each mapped by f -- as expressive per
layer as W+ but every w stays on the mapping network's output manifold, so images stay
"realistic".

:func:`invert` finds a latent in one of W, W+, Z+ for target images by optimisation
(Adam on the latent; the generator frozen).

**Multi-level pseudo pairs** (Lu & Zhou, Sec. 3.2, Fig. 7) turn a comic S into a realistic
partner P from the same latent:

1. *embedding* -- ``z1+ = E_z+(S)``, ``P1 = G(f(z1+))``. Lu & Zhou use a pSp encoder into Z+;
   here: Z+ optimisation through the photo generator G (the encoder's job, done slowly).
2. *optimisation* -- ``z2+ = argmin L_semantic(G*(z+), S)`` from z1+, G* the style generator
   fine-tuned without constraints; ``P2 = G(f(z2+))``.
3. *refinement* -- ``w3+ = E_w+(S)``, ``P3 = G(w3+)``. Lu & Zhou use a pSp encoder into W+;
   here: W+ optimisation through G, started from ``w2+ = f(z2+)`` (a refinement, few steps).

Each level gives (P_k, S) and its latent w_k+, which the pseudo-paired loss
``LPIPS(G'(w_k+), S)`` uses during fine-tuning.

**The V space** (Lu & Zhou's choice for reference images, after Huang, Liao and Kwong's
UI2I-style inversion) is W written in another basis: the right singular vectors of the
generator's stacked modulation weights (:func:`closed_form_basis`, Shen & Zhou's closed-form
factorization of latent semantics), so ``w = v @ E.T``. Computed from the weights, not trained;
the basis is orthonormal, so V reaches exactly the images W reaches -- what changes is the
coordinate system in which Adam takes its per-coordinate steps. :func:`invert_v` inverts there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from ..images import check_image_tensor
from ..runtime import progress
from .model import Generator

SPACES = ("w", "w+", "z+")
Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]   # (pred, target) -> (N,) or scalar


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error per image (N,)."""
    return (pred - target).pow(2).flatten(1).mean(1)


@dataclass
class Inversion:
    """Result of :func:`invert`: the optimised ``latent`` (in ``space``), its ``wplus``
    (N, L, D), the generator's ``images`` (N, 3, H, W) in [0, 1], and the loss per step."""

    space: str
    latent: torch.Tensor
    wplus: torch.Tensor
    images: torch.Tensor
    losses: list[float] = field(default_factory=list)
    final_loss: torch.Tensor | None = None      # (N,) after the last step
    basis: torch.Tensor | None = None           # space "v" only: (D, D), w = latent @ basis.T


def latent_to_wplus(G: Generator, latent: torch.Tensor, space: str, psi: float = 1.0) -> torch.Tensor:
    if space == "z+":
        return G.truncate(G.mapping(latent), psi)
    if space in ("w", "w+"):
        return G.to_wplus(latent)
    raise ValueError(f"space must be one of {SPACES}; got {space!r}")


def initial_latent(G: Generator, n: int, space: str, *, seed: int = 0) -> torch.Tensor:
    """Start of an inversion: ``w_avg`` for W / W+; a seeded z repeated over the layers for Z+."""
    if space == "w":
        return G.w_avg[None].repeat(n, 1)
    if space == "w+":
        return G.w_avg[None, None].repeat(n, G.n_latent, 1)
    if space == "z+":
        return G.sample_z(n, seed=seed)[:, None].repeat(1, G.n_latent, 1)
    raise ValueError(f"space must be one of {SPACES}; got {space!r}")


def invert(G: Generator, targets: torch.Tensor, *, space: str = "w+", steps: int = 200, lr: float = 0.05,
           loss: Loss = mse_loss, init: torch.Tensor | None = None, psi: float = 1.0,
           seed: int = 0, desc: str | None = None) -> Inversion:
    """Optimise a latent so that ``G(latent)`` matches ``targets`` (N, 3, size, size) in [0, 1].

    ``space``: ``"w"`` (N, D), ``"w+"`` (N, L, D) or ``"z+"`` (N, L, D). ``init`` (same shape)
    defaults to :func:`initial_latent`; a W latent may start from a w+ (its mean over layers).
    ``loss(pred, target)`` gives a value per image; every image's latent is optimised
    independently (the losses are summed). ``G`` is frozen, with its stored noise.
    """
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}; got {space!r}")
    check_image_tensor(targets, "inversion targets")
    if targets.shape[-1] != G.size or targets.shape[-2] != G.size:
        raise ValueError(f"targets must be {G.size}x{G.size} for this generator; got {tuple(targets.shape)}")
    n = targets.shape[0]
    if init is None:
        init = initial_latent(G, n, space, seed=seed)
    elif space == "w" and init.ndim == 3:
        init = init.mean(1)
    return _optimise(G, targets, init, lambda latent: latent_to_wplus(G, latent, space, psi), space=space,
                     steps=steps, lr=lr, loss=loss, desc=desc or f"inversion in {space.upper()}")


def _optimise(G: Generator, targets: torch.Tensor, init: torch.Tensor, to_wplus: Callable, *, space: str,
              steps: int, lr: float, loss: Loss, desc: str, basis: torch.Tensor | None = None) -> Inversion:
    """Adam on ``latent`` (started at ``init``) with ``G`` frozen; ``to_wplus(latent)`` -> (N, L, D)."""
    dev = G.w_avg.device
    targets = targets.to(dev)
    latent = init.detach().clone().to(dev).requires_grad_(True)
    was_training = G.training
    G.eval().requires_grad_(False)
    opt = torch.optim.Adam([latent], lr=lr)
    losses = []
    for _ in progress(range(steps), desc=desc):
        pred = G.synthesis(to_wplus(latent))
        value = loss(pred, targets)
        opt.zero_grad(set_to_none=True)
        value.sum().backward()
        opt.step()
        losses.append(float(value.detach().mean()))
    G.train(was_training)
    with torch.no_grad():
        wplus = to_wplus(latent)
        images = G.synthesis(wplus)
        final = loss(images, targets).reshape(-1)
    return Inversion(space, latent.detach(), wplus.detach(), images.cpu(), losses, final.cpu(),
                     None if basis is None else basis.detach().cpu())


# --------------------------------------------------------------------------- the V space
def closed_form_basis(G: Generator) -> torch.Tensor:
    """Orthonormal basis (D, D) of W, one direction per column, strongest first.

    Shen & Zhou's closed-form factorization: every style modulation maps w linearly to the
    scales of one layer's input channels, ``s = A w + b``; stacking the ``A`` of the synthesis
    convolutions (every ``modulation.weight`` except the ``to_rgbs``' -- rosinality's
    ``closed_form_factorization.py`` rule) gives a matrix whose right singular vectors are the
    directions of W that move the styles most. Sign and order follow ``torch.linalg.svd``.
    """
    weights = [v for k, v in G.state_dict().items()
               if "modulation" in k and k.endswith("weight") and "to_rgbs" not in k]
    if not weights:
        raise ValueError("this generator has no modulation weights")
    A = torch.cat(weights, 0).detach().double().cpu()
    _, _, vh = torch.linalg.svd(A, full_matrices=False)
    if vh.shape[0] != G.style_dim:
        raise ValueError(f"the stacked modulation weights have fewer than {G.style_dim} rows; no full basis")
    return vh.T.to(torch.float32).to(G.w_avg.device)


def invert_v(G: Generator, targets: torch.Tensor, *, basis: torch.Tensor | None = None, steps: int = 200,
             lr: float = 0.05, loss: Loss = mse_loss, init: torch.Tensor | None = None,
             desc: str | None = None) -> Inversion:
    """Invert ``targets`` in the V space: W coordinates along :func:`closed_form_basis` (``G``'s own
    unless ``basis`` is given), ``w = v @ basis.T``, replicated over the layers.

    The latent (N, D) starts at ``w_avg`` written in the basis, where a W inversion starts too,
    unless ``init`` (v coordinates) is given; Huang et al.'s code starts from v close to 0. The
    result's ``latent`` is v, its ``wplus`` the w repeated over the layers, its ``basis`` the basis.
    """
    check_image_tensor(targets, "inversion targets")
    if targets.shape[-1] != G.size or targets.shape[-2] != G.size:
        raise ValueError(f"targets must be {G.size}x{G.size} for this generator; got {tuple(targets.shape)}")
    E = closed_form_basis(G) if basis is None else basis.to(G.w_avg.device)
    if E.shape != (G.style_dim, G.style_dim):
        raise ValueError(f"basis must be ({G.style_dim}, {G.style_dim}); got {tuple(E.shape)}")
    if init is None:
        init = (G.w_avg @ E)[None].repeat(targets.shape[0], 1)
    return _optimise(G, targets, init, lambda v: G.to_wplus(v @ E.T), space="v", steps=steps, lr=lr,
                     loss=loss, desc=desc or "inversion in V", basis=E)


@dataclass
class PseudoPairs:
    """Lu & Zhou's multi-level pseudo pairs for comics S (N, 3, H, W) in [0, 1].

    ``photos[k]`` is P_k = G(w_k+) and ``wplus[k]`` the latent, for levels k = 1, 2, 3;
    ``inversions[k]`` the raw optimisation record (its ``images`` are those of the generator
    that was optimised through: G for levels 1 and 3, G* for level 2).
    """

    comics: torch.Tensor
    photos: dict[int, torch.Tensor]
    wplus: dict[int, torch.Tensor]
    inversions: dict[int, Inversion]

    def level(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(P_k, S, w_k+)."""
        return self.photos[k], self.comics, self.wplus[k]


def multilevel_pseudo_pairs(G: Generator, G_star: Generator, comics: torch.Tensor, *,
                            semantic: Loss, reconstruction: Loss = mse_loss,
                            steps: tuple[int, int, int] = (200, 200, 50),
                            lr: tuple[float, float, float] = (0.05, 0.02, 0.01),
                            psi: float = 1.0, seed: int = 0) -> PseudoPairs:
    """Levels 1-3 of Lu & Zhou's pseudo-pair generation (see the module doc).

    ``G``: the photo generator, ``G_star``: the style generator fine-tuned without constraints,
    ``semantic``: the semantic loss of level 2 (eq. 5), ``reconstruction``: the loss of the
    encoder stand-ins (levels 1 and 3). ``steps`` and ``lr`` per level.
    """
    if G.config.to_dict() != G_star.config.to_dict():
        raise ValueError("G and G_star must share an architecture (G_star is fine-tuned from G)")
    inv1 = invert(G, comics, space="z+", steps=steps[0], lr=lr[0], loss=reconstruction, psi=psi,
                  seed=seed, desc="level 1: Z+ embedding through G")
    inv2 = invert(G_star, comics, space="z+", steps=steps[1], lr=lr[1], loss=semantic, psi=psi,
                  init=inv1.latent, desc="level 2: Z+ optimisation through G*")
    inv3 = invert(G, comics, space="w+", steps=steps[2], lr=lr[2], loss=reconstruction,
                  init=inv2.wplus, desc="level 3: W+ refinement through G")
    invs = {1: inv1, 2: inv2, 3: inv3}
    wplus = {k: v.wplus for k, v in invs.items()}
    with torch.no_grad():
        photos = {k: G.synthesis(w).cpu() for k, w in wplus.items()}
    return PseudoPairs(comics.cpu(), photos, wplus, invs)


def perceptual_mse(distances) -> Loss:
    """``perceptual + MSE`` per image: the reconstruction loss of inversions (LPIPS-style + pixels)."""

    def loss(pred, target):
        perc, _ = distances(pred, target)
        return perc + F.mse_loss(pred, target, reduction="none").flatten(1).mean(1)

    return loss

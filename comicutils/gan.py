"""The GAN project report's own GANs: a 64 px DCGAN, its conditional (style-label) variant, and the
measures the write-up reports for them (Style Classification Accuracy, Inception Score).

Conventions
-----------
* Images cross this module's boundary as float tensors **(N, 3, H, W) in [0, 1]**:
  :meth:`GANTrainer.train` takes them, :func:`generate` returns them, the
  :class:`StyleClassifier` reads them. Inside, the networks work in **[-1, 1]**: the
  generator ends in Tanh, the discriminator is fed ``2x - 1``. The conversion happens in
  :func:`_to_model` / :func:`_to_image` only.
* Noise ``z`` is (N, ``nz``) standard normal. Style labels are integers indexing
  :data:`STYLE_LABELS` (``0`` photo, ``1`` comic v1, ``2`` comic v2).

The architecture (the GAN project report, "custom pipeline")
--------------------------------------------------
Generator ``z -> Linear -> (C0, 8, 8) -> [Upsample x2, Conv 3x3, BatchNorm2d, ReLU] x 3 ->
Conv 3x3 -> Tanh`` gives 64 x 64 images. The write-up names the Linear layer, the
Upsample + Conv2D + BatchNorm2d + ReLU blocks and the Tanh; two details it leaves open are
ours: the projected 8 x 8 map is batch-normalised and rectified before the first block (the
usual DCGAN treatment of the projection), and a last 3 x 3 convolution maps the final features
to RGB before the Tanh (a Tanh after a ReLU could only give values in [0, 1)).

Discriminator ``[spectral-norm Conv 4x4 stride 2, LeakyReLU(0.2), Dropout] x 4 -> Flatten ->
spectral-norm Linear -> Sigmoid``: 64 -> 32 -> 16 -> 8 -> 4 px, one probability per image that
it is real. :meth:`DCGANDiscriminator.logits` gives the value before the Sigmoid; training uses
it with ``binary_cross_entropy_with_logits``, which is the same BCE on the Sigmoid's output,
computed without its rounding problems near 0 and 1.

The conditional GAN (the GAN project report, "multiple styles")
-----------------------------------------------------
* Generator: a learned label embedding (``embed_dim`` numbers per style) is **concatenated to
  the noise** before the Linear layer (Mirza & Osindero, 2014). Because the embedding is a
  vector, styles can be mixed by interpolating embeddings (:meth:`ConditionalGenerator.embed`).
* Discriminator: the **projection discriminator** (Miyato & Koyama, 2018): the logit is
  ``linear(h) + <embed(y), h>`` on the flattened features ``h``, with a spectrally normalised
  class embedding; it keeps the unconditional network and adds one inner product.

Measures
--------
* :class:`StyleClassifier` — a small CNN over photo / comic v1 / comic v2, trained on the
  course's *training* pairs only (:func:`style_dataset`); :func:`style_accuracy` is the share
  of images it assigns to a target style (the GAN project report: "Style Classification Accuracy").
* :func:`inception_score` — ``exp(E_x KL(p(y|x) || p(y)))`` from class probabilities, mean and
  std over splits (Salimans et al., 2016); :func:`inception_probabilities` gets ``p(y|x)``
  from the FID Inception (:mod:`comicutils.fid`) when its weights are here, and raises
  :class:`comicutils.metrics.MetricUnavailable` otherwise (shown as "n/a").
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from .checkpoints import checkpoint_exists, output_lock, restore_trainer, save_state, trainer_state
from .images import check_image_tensor
from .metrics import MetricUnavailable
from .runtime import get_device, progress

__all__ = [
    "STYLE_LABELS", "CHECKPOINT_FORMAT", "CLASSIFIER_FORMAT",
    "DCGANGenerator", "DCGANDiscriminator", "ConditionalGenerator", "ConditionalDiscriminator",
    "GANTrainer", "generate", "random_flip", "mean_pairwise_distance", "nearest_neighbours",
    "StyleClassifier", "style_dataset", "train_style_classifier", "course_style_classifier",
    "save_classifier", "load_classifier", "style_accuracy", "confusion_matrix",
    "inception_score", "inception_probabilities",
]

STYLE_LABELS: tuple[str, ...] = ("photo", "comic v1", "comic v2")
"""Class names of the style classifier and the conditional GAN, in label order."""

CHECKPOINT_FORMAT = "comicutils.gan/1"
CLASSIFIER_FORMAT = "comicutils.gan.style-classifier/1"
BASE_SIZE = 8          # the Linear layer's map is 8 x 8


def _to_model(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] images -> [-1, 1] network space (a new tensor)."""
    return images01 * 2.0 - 1.0


def _to_image(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] network output -> [0, 1]."""
    return (x + 1.0) / 2.0


def _blocks_for(size: int) -> int:
    blocks = math.log2(size / BASE_SIZE) if size >= BASE_SIZE else -1
    if blocks < 1 or blocks != int(blocks):
        raise ValueError(f"size must be 8 * 2**k with k >= 1 (16, 32, 64, ...); got {size}")
    return int(blocks)


# --------------------------------------------------------------------------- generators
class DCGANGenerator(nn.Module):
    """Noise (N, ``nz``) -> images (N, 3, ``size``, ``size``) in [-1, 1] (Tanh).

    ``widths``: channels of the 8 x 8 map and after each upsampling block, so
    ``len(widths) = log2(size / 8) + 1`` (64 px: 4 widths, 3 blocks 8 -> 16 -> 32 -> 64).
    Default ``(256, 128, 64, 32)``; tests use tiny ones. ``extra_inputs`` widens the Linear
    layer's input (the conditional generator feeds its label embedding there).

    Modules: ``project`` (Linear ``nz + extra_inputs -> widths[0] * 8 * 8``), ``stem``
    (BatchNorm2d + ReLU on the 8 x 8 map), ``blocks`` (each Upsample x2 nearest, Conv 3x3,
    BatchNorm2d, ReLU), ``to_rgb`` (Conv 3x3 -> 3 channels, Tanh).
    """

    def __init__(self, nz: int = 100, widths: Sequence[int] = (256, 128, 64, 32), size: int = 64,
                 *, extra_inputs: int = 0):
        super().__init__()
        widths = [int(w) for w in widths]
        n_blocks = _blocks_for(size)
        if len(widths) != n_blocks + 1:
            raise ValueError(f"a {size} px generator has {n_blocks} upsampling blocks and needs "
                             f"{n_blocks + 1} widths; got {len(widths)}")
        self.nz, self.size, self.widths = int(nz), int(size), widths
        self.project = nn.Linear(self.nz + extra_inputs, widths[0] * BASE_SIZE * BASE_SIZE)
        self.stem = nn.Sequential(nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"),
                          nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                          nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))
            for c_in, c_out in zip(widths[:-1], widths[1:]))
        self.to_rgb = nn.Sequential(nn.Conv2d(widths[-1], 3, 3, padding=1), nn.Tanh())
        self.config: dict[str, Any] = {"name": type(self).__name__, "nz": self.nz,
                                       "widths": list(widths), "size": self.size}

    def _synthesise(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.project(inputs).view(-1, self.widths[0], BASE_SIZE, BASE_SIZE)
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.to_rgb(x)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(N, nz) noise -> (N, 3, size, size) in [-1, 1]."""
        return self._synthesise(z)


class ConditionalGenerator(DCGANGenerator):
    """The DCGAN generator with a style label: ``[z, embed(label)] -> Linear -> ...``.

    ``num_classes`` styles, each a learned vector of ``embed_dim`` numbers concatenated to
    the noise. ``forward(z, labels)`` with integer labels (N,), or ``forward(z,
    embedding=e)`` with any (N, embed_dim) vectors, e.g. a mix of two styles' embeddings.
    """

    def __init__(self, nz: int = 100, widths: Sequence[int] = (256, 128, 64, 32), size: int = 64,
                 *, num_classes: int = len(STYLE_LABELS), embed_dim: int = 16):
        super().__init__(nz, widths, size, extra_inputs=embed_dim)
        self.num_classes, self.embed_dim = int(num_classes), int(embed_dim)
        self.embedding = nn.Embedding(self.num_classes, self.embed_dim)
        self.config.update(num_classes=self.num_classes, embed_dim=self.embed_dim)

    def embed(self, labels: torch.Tensor) -> torch.Tensor:
        """Integer labels (N,) -> their embeddings (N, embed_dim)."""
        labels = torch.as_tensor(labels, device=self.embedding.weight.device).long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must be in [0, {self.num_classes}); got {labels.tolist()}")
        return self.embedding(labels)

    def forward(self, z: torch.Tensor, labels: torch.Tensor | None = None, *,
                embedding: torch.Tensor | None = None) -> torch.Tensor:
        """(N, nz) noise and labels (N,) or embeddings (N, embed_dim) -> (N, 3, size, size) in [-1, 1]."""
        if (labels is None) == (embedding is None):
            raise ValueError("give exactly one of labels= and embedding=")
        e = self.embed(labels) if embedding is None else embedding
        if e.shape != (z.shape[0], self.embed_dim):
            raise ValueError(f"embedding must be (N, {self.embed_dim}) for {z.shape[0]} noise vectors; "
                             f"got {tuple(e.shape)}")
        return self._synthesise(torch.cat([z, e.to(z)], dim=1))


# --------------------------------------------------------------------------- discriminators
class DCGANDiscriminator(nn.Module):
    """Images (N, 3, size, size) in [-1, 1] -> probability (N,) in (0, 1) that each is real.

    ``widths``: channels of the strided convolutions; each halves the side, so ``size`` must
    be ``4 * 2**len(widths)`` (64 px: 4 convolutions, 64 -> 4). Every Conv2d and the Linear
    head are spectrally normalised; each convolution is followed by LeakyReLU(0.2) and
    Dropout(``dropout``). :meth:`logits` returns the pre-Sigmoid score (N,).
    """

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), size: int = 64,
                 dropout: float = 0.3):
        super().__init__()
        widths = [int(w) for w in widths]
        final = size / 2 ** len(widths)
        if final != 4:
            raise ValueError(f"{len(widths)} stride-2 convolutions take {size} px to {final:g} px; "
                             f"the head expects 4 (use size = 4 * 2**len(widths))")
        layers: list[nn.Module] = []
        for c_in, c_out in zip([3] + widths[:-1], widths):
            layers += [spectral_norm(nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)),
                       nn.LeakyReLU(0.2, inplace=True), nn.Dropout(dropout)]
        self.features = nn.Sequential(*layers)
        self.flatten = nn.Flatten()
        self.head = spectral_norm(nn.Linear(widths[-1] * 16, 1))
        self.size, self.widths = int(size), widths
        self.config: dict[str, Any] = {"name": type(self).__name__, "widths": list(widths),
                                       "size": self.size, "dropout": float(dropout)}

    def _check(self, x: torch.Tensor) -> None:
        if x.ndim != 4 or x.shape[1:] != (3, self.size, self.size):
            raise ValueError(f"discriminator input must be (N, 3, {self.size}, {self.size}) in [-1, 1]; "
                             f"got {tuple(x.shape)}")

    def logits(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3, size, size) in [-1, 1] -> logits (N,)."""
        self._check(x)
        return self.head(self.flatten(self.features(x))).squeeze(1)

    def forward(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 3, size, size) in [-1, 1] -> probabilities (N,) in (0, 1) (Sigmoid)."""
        return torch.sigmoid(self.logits(x, labels))


class ConditionalDiscriminator(DCGANDiscriminator):
    """The projection discriminator: ``logit = linear(h) + <embed(y), h>`` (labels (N,) required)."""

    def __init__(self, widths: Sequence[int] = (32, 64, 128, 256), size: int = 64,
                 dropout: float = 0.3, *, num_classes: int = len(STYLE_LABELS)):
        super().__init__(widths, size, dropout)
        self.num_classes = int(num_classes)
        self.embedding = spectral_norm(nn.Embedding(self.num_classes, self.widths[-1] * 16))
        self.config["num_classes"] = self.num_classes

    def logits(self, x: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        if labels is None:
            raise ValueError("the conditional discriminator needs labels (N,)")
        self._check(x)
        h = self.flatten(self.features(x))
        projection = (self.embedding(labels.to(x.device).long()) * h).sum(dim=1)
        return self.head(h).squeeze(1) + projection


def _is_conditional(module: nn.Module) -> bool:
    return isinstance(module, (ConditionalGenerator, ConditionalDiscriminator))


# --------------------------------------------------------------------------- sampling
@torch.no_grad()
def generate(generator: nn.Module, z: torch.Tensor | None = None, labels: torch.Tensor | None = None,
             *, n: int | None = None, seed: int = 0, embedding: torch.Tensor | None = None,
             batch_size: int = 64) -> torch.Tensor:
    """Sample images (N, 3, size, size) in [0, 1] (CPU) with the generator in eval mode.

    Give the noise ``z`` (N, nz), or ``n`` and a ``seed`` for fresh standard-normal noise. A
    conditional generator also needs ``labels`` (N,) or an ``embedding`` (N, embed_dim).
    BatchNorm uses its running statistics; the generator's mode is restored afterwards.
    """
    if z is None:
        if n is None:
            raise ValueError("give the noise z or a number of samples n")
        z = torch.randn(n, generator.nz, generator=torch.Generator().manual_seed(seed))
    conditional = isinstance(generator, ConditionalGenerator)
    if conditional and labels is None and embedding is None:
        raise ValueError("a conditional generator needs labels= or embedding=")
    if not conditional and (labels is not None or embedding is not None):
        raise ValueError("an unconditional generator takes no labels or embedding")
    device = next(generator.parameters()).device
    was_training = generator.training
    generator.eval()
    outs = []
    try:
        for start in range(0, len(z), batch_size):
            zi = z[start:start + batch_size].to(device, torch.float32)
            if not conditional:
                x = generator(zi)
            elif embedding is not None:
                x = generator(zi, embedding=embedding[start:start + batch_size].to(device, torch.float32))
            else:
                x = generator(zi, torch.as_tensor(labels)[start:start + batch_size].to(device))
            outs.append(_to_image(x).clamp(0, 1).cpu())
    finally:
        generator.train(was_training)
    return torch.cat(outs)


def random_flip(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Mirror each image of (N, C, H, W) left-right with probability 1/2 (a new tensor)."""
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    out = images.clone()
    out[flip] = images[flip].flip(-1)
    return out


def _rms_distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Root-mean-square pixel distance between every image of ``a`` and every image of ``b``."""
    return torch.cdist(a.flatten(1).double(), b.flatten(1).double()) / math.sqrt(a[0].numel())


def mean_pairwise_distance(images01: torch.Tensor) -> float:
    """Mean RMS pixel distance over all pairs of different images in (N, 3, H, W), N >= 2.

    A diversity measure in [0, 1] units: a generator that has collapsed to one output scores
    about 0; compare with the same number for the real training images.
    """
    x = check_image_tensor(images01, "images")
    n = len(x)
    if n < 2:
        raise ValueError("mean_pairwise_distance needs at least 2 images")
    return float(_rms_distances(x, x).sum() / (n * (n - 1)))


def nearest_neighbours(images01: torch.Tensor, reference01: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each image, the index of its nearest reference image and the RMS pixel distance to it.

    Both (N, 3, H, W) / (M, 3, H, W) in [0, 1] of the same size. Returns (indices (N,), distances
    (N,)): a memorising generator has distances near 0.
    """
    x = check_image_tensor(images01, "images")
    r = check_image_tensor(reference01, "reference images")
    d = _rms_distances(x, r)
    dist, idx = d.min(dim=1)
    return idx, dist.float()


# --------------------------------------------------------------------------- training
class GANTrainer:
    """Trains a generator and a discriminator with the standard (non-saturating) BCE GAN loss.

    ``generator``/``discriminator``: a :class:`DCGANGenerator` with a
    :class:`DCGANDiscriminator`, or a :class:`ConditionalGenerator` with a
    :class:`ConditionalDiscriminator`. Adam(``lr`` = 2e-4, ``betas`` = (0.5, 0.999)) for each
    network (the DCGAN settings). ``device`` defaults to :func:`comicutils.runtime.get_device`.

    Each step: a discriminator update (real -> 1, generated -> 0), then a generator update
    that asks the updated discriminator to call the same generated batch real. A non-finite
    loss raises ``FloatingPointError`` before its backward pass: it changes no weight, and no
    checkpoint is written after it.

    State: ``step``, ``epoch`` (complete passes over the data), ``history`` (one dict per step:
    step, epoch, d, g, d_real, d_fake — the last two the mean probabilities the discriminator
    gave real and generated images), ``samples`` ({epoch: (n, 3, size, size) in [0, 1]} from
    fixed noise, and fixed labels cycling through the styles for a conditional pair; 0 = before
    training).
    """

    def __init__(self, generator: nn.Module, discriminator: nn.Module, *, lr: float = 2e-4,
                 betas: tuple[float, float] = (0.5, 0.999), device: str | torch.device | None = None):
        if _is_conditional(generator) != _is_conditional(discriminator):
            raise ValueError("pair a conditional generator with a conditional discriminator "
                             "(or neither)")
        if generator.size != discriminator.size:
            raise ValueError(f"generator makes {generator.size} px images, discriminator reads "
                             f"{discriminator.size} px")
        self.device = get_device(str(device) if device is not None else None)
        self.generator = generator.to(self.device)
        self.discriminator = discriminator.to(self.device)
        self.conditional = _is_conditional(generator)
        self.opt_g = torch.optim.Adam(self.generator.parameters(), lr=lr, betas=tuple(betas))
        self.opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=lr, betas=tuple(betas))
        self.step, self.epoch = 0, 0
        self.history: list[dict[str, float]] = []
        self.samples: dict[int, torch.Tensor] = {}
        self.config = {"generator": dict(generator.config), "discriminator": dict(discriminator.config),
                       "trainer": {"lr": float(lr), "betas": [float(b) for b in betas], "loss": "bce"}}

    # one step ------------------------------------------------------------------
    def train_step(self, real01: torch.Tensor, labels: torch.Tensor | None = None, *,
                   noise: torch.Tensor | None = None) -> dict[str, float]:
        """One D update then one G update on a batch of real images (N, 3, size, size) in [0, 1].

        ``labels`` (N,) for a conditional pair (the generated batch gets the same labels);
        ``noise`` (N, nz) fixes the generator's input (default: fresh standard normal).
        Appends and returns the history row.
        """
        if self.conditional and labels is None:
            raise ValueError("a conditional GAN needs the real images' labels")
        G, D = self.generator, self.discriminator
        real = _to_model(real01.to(self.device, torch.float32))
        n = real.shape[0]
        y = None if labels is None else torch.as_tensor(labels).to(self.device).long()
        z = (torch.randn(n, G.nz, device=self.device) if noise is None
             else noise.to(self.device, torch.float32))
        G.train()
        D.train()
        fake = G(z, y) if self.conditional else G(z)
        ones, zeros = torch.ones(n, device=self.device), torch.zeros(n, device=self.device)

        # D step: real -> 1, generated -> 0 (the generated batch is detached: G is not updated);
        # both halves go through D as one batch
        logits = D.logits(torch.cat([real, fake.detach()]), None if y is None else torch.cat([y, y]))
        real_logits, fake_logits = logits[:n], logits[n:]
        loss_d = (F.binary_cross_entropy_with_logits(real_logits, ones)
                  + F.binary_cross_entropy_with_logits(fake_logits, zeros))
        self._guard(loss_d, "discriminator loss")
        self.opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        self.opt_d.step()

        # G step: the updated D should call the generated batch real
        D.requires_grad_(False)
        try:
            loss_g = F.binary_cross_entropy_with_logits(D.logits(fake, y), ones)
            self._guard(loss_g, "generator loss")
            self.opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
        finally:
            D.requires_grad_(True)
        self.opt_g.step()

        self.step += 1
        row = {"step": self.step, "epoch": self.epoch + 1, "d": loss_d.item(), "g": loss_g.item(),
               "d_real": torch.sigmoid(real_logits).mean().item(),
               "d_fake": torch.sigmoid(fake_logits).mean().item()}
        self.history.append(row)
        return row

    def _guard(self, loss: torch.Tensor, what: str) -> None:
        if torch.isfinite(loss).all():
            return
        raise FloatingPointError(
            f"GAN {what} became {loss.item()} at step {self.step + 1} (epoch {self.epoch + 1}); no "
            f"weight or file was changed by it. Lower the learning rate (now "
            f"{self.config['trainer']['lr']}), check the images are in [0, 1], or resume from the "
            f"last checkpoint.")

    # the loop --------------------------------------------------------------------
    def sample_inputs(self, n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The fixed noise (n, nz) and labels (n,) (cycling through the styles) used for ``samples``."""
        z = torch.randn(n, self.generator.nz, generator=torch.Generator().manual_seed(seed))
        labels = torch.arange(n) % self.generator.num_classes if self.conditional else None
        return z, labels

    def train(self, images01: torch.Tensor, labels: torch.Tensor | None = None, *, epochs: int,
              batch_size: int = 32, flip: bool = True, sample_every: int = 1, n_samples: int = 16,
              checkpoint: str | os.PathLike | None = None, resume: bool = True,
              show_progress: bool = True, seed: int = 0) -> list[dict]:
        """Train until ``epochs`` complete passes over ``images01`` *in total*.

        ``images01``: the training set (N, 3, size, size) in [0, 1], in memory; ``labels``
        (N,) for a conditional pair. Each epoch reshuffles with ``seed + epoch`` and mirrors
        each image with probability 1/2 (``flip``). After every ``sample_every``-th epoch (and
        the last) the generator's outputs on fixed noise go into ``samples`` and, with
        ``checkpoint``, everything is written to that file atomically; an existing checkpoint
        is loaded first (``resume``), so re-running the same call finishes an interrupted run.
        Returns ``history``.
        """
        x = check_image_tensor(images01, "GAN training images")
        if x.shape[-2:] != (self.generator.size, self.generator.size):
            raise ValueError(f"training images must be {self.generator.size} px; got {tuple(x.shape[-2:])}")
        if self.conditional:
            if labels is None or len(labels) != len(x):
                raise ValueError("a conditional GAN needs one label per training image")
            labels = torch.as_tensor(labels).long()
        if batch_size < 1 or sample_every < 1:
            raise ValueError("batch_size and sample_every must be >= 1")
        if checkpoint is None:
            return self._train(x, labels, epochs, batch_size, flip, sample_every, n_samples, None, show_progress, seed)
        with output_lock(Path(checkpoint).parent):          # one run per output folder
            if resume and checkpoint_exists(checkpoint):
                self.load_checkpoint(checkpoint)
            return self._train(x, labels, epochs, batch_size, flip, sample_every, n_samples, checkpoint,
                               show_progress, seed)

    def _train(self, x, labels, epochs, batch_size, flip, sample_every, n_samples, checkpoint, show_progress,
               seed) -> list[dict]:
        z_fixed, y_fixed = self.sample_inputs(n_samples, seed)
        if 0 not in self.samples and self.step == 0:
            self.samples[0] = generate(self.generator, z_fixed, y_fixed)
        per_epoch = math.ceil(len(x) / batch_size)
        name = "cGAN" if self.conditional else "DCGAN"
        bar = progress(total=max(0, epochs - self.epoch) * per_epoch + self.step, initial=self.step,
                       desc=name, **({} if show_progress else {"disable": True}))
        try:
            while self.epoch < epochs:
                g = torch.Generator().manual_seed(seed + self.epoch)
                order = torch.randperm(len(x), generator=g)
                for idx in order.split(batch_size):
                    real = random_flip(x[idx], g) if flip else x[idx]
                    row = self.train_step(real, None if labels is None else labels[idx])
                    bar.update(1)
                    bar.set_postfix(d=f"{row['d']:.3f}", g=f"{row['g']:.3f}", refresh=False)
                self.epoch += 1
                if self.epoch % sample_every == 0 or self.epoch == epochs:
                    self.samples[self.epoch] = generate(self.generator, z_fixed, y_fixed)
                    if checkpoint is not None:
                        self.save_checkpoint(checkpoint)
        finally:
            bar.close()
        return self.history

    # files -----------------------------------------------------------------------
    def state(self) -> dict:
        """Everything needed to resume, as plain tensors, numbers, strings, lists and dicts."""
        return trainer_state(self, CHECKPOINT_FORMAT, samples={int(k): v for k, v in self.samples.items()})

    def save_checkpoint(self, path: str | os.PathLike) -> Path:
        """Write :meth:`state` atomically (a temporary file renamed into place)."""
        return save_state(self.state(), path)

    def load_checkpoint(self, path: str | os.PathLike) -> None:
        """Restore both networks, optimisers, counters, history and samples (``weights_only=True``).

        The file's generator and discriminator configs must equal this trainer's.
        """
        ckpt = restore_trainer(self, path, CHECKPOINT_FORMAT)
        self.samples = {int(k): v.cpu() for k, v in ckpt.get("samples", {}).items()}


# --------------------------------------------------------------------------- style classifier
class StyleClassifier(nn.Module):
    """A small CNN: images (N, 3, H, W) in [0, 1] -> style logits (N, len(classes)).

    Inputs are resized to ``size`` (bilinear, antialiased) and mapped to [-1, 1] inside. Four
    [Conv 3x3 stride 2, BatchNorm2d, ReLU] stages (``width``, 2x, 4x, 4x channels), global
    average pooling and a Linear layer: the pooled features describe colour and texture
    statistics, which is what tells a photo from the two comic styles.
    """

    def __init__(self, classes: Sequence[str] = STYLE_LABELS, width: int = 16, size: int = 64):
        super().__init__()
        self.classes, self.size = tuple(classes), int(size)
        chans = [3, width, 2 * width, 4 * width, 4 * width]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], len(self.classes))
        self.config: dict[str, Any] = {"classes": list(self.classes), "width": int(width),
                                       "size": self.size}

    def forward(self, images01: torch.Tensor) -> torch.Tensor:
        x = check_image_tensor(images01, "style classifier input")
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False,
                              antialias=True)
        h = self.features(_to_model(x.to(self.head.weight.device, torch.float32)))
        return self.head(h.mean(dim=(2, 3)))

    @torch.no_grad()
    def predict_proba(self, images01: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
        """Class probabilities (N, K) on the CPU, in eval mode (mode restored afterwards)."""
        was_training = self.training
        self.eval()
        try:
            out = [F.softmax(self(chunk), dim=1).cpu() for chunk in images01.split(batch_size)]
        finally:
            self.train(was_training)
        return torch.cat(out)

    def predict(self, images01: torch.Tensor) -> torch.Tensor:
        """Predicted class indices (N,)."""
        return self.predict_proba(images01).argmax(dim=1)


def _label_index(label: int | str, classes: Sequence[str]) -> int:
    if isinstance(label, str):
        if label not in classes:
            raise ValueError(f"unknown style {label!r}; the classifier knows {list(classes)}")
        return list(classes).index(label)
    index = int(label)
    if not 0 <= index < len(classes):
        raise ValueError(f"style index {index} is out of range for {list(classes)}")
    return index


def style_accuracy(images01: torch.Tensor, target_label: int | str, classifier: StyleClassifier) -> float:
    """Share of ``images01`` (N, 3, H, W) in [0, 1] that ``classifier`` assigns to ``target_label``.

    ``target_label``: an index or a class name (e.g. ``"comic v2"``). In [0, 1]; the GAN project report
    reports this as "Style Classification Accuracy" (91.57 %).
    """
    if len(images01) == 0:
        raise ValueError("style_accuracy needs at least one image")
    target = _label_index(target_label, classifier.classes)
    return float((classifier.predict(images01) == target).float().mean())


def confusion_matrix(true_labels: torch.Tensor, predicted: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Row-normalised confusion matrix (K, K): entry (i, j) = share of class i predicted as j.

    Rows with no example are all zero.
    """
    t, p = torch.as_tensor(true_labels).long(), torch.as_tensor(predicted).long()
    counts = torch.zeros(num_classes, num_classes, dtype=torch.float64)
    counts.index_put_((t, p), torch.ones(len(t), dtype=torch.float64), accumulate=True)
    return counts / counts.sum(dim=1, keepdim=True).clamp(min=1)


def style_dataset(size: int = 64, split: str = "train", *,
                  photo_grids: Sequence[str] = ("v1", "v2")) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The course's labelled style images -> (images (N, 3, size, size) in [0, 1], labels (N,), keys).

    Photos (label 0) come from the face2comics preview grids named in ``photo_grids`` (both
    by default; ``("v2",)`` gives as many photos as comics of each style), comics from v1
    (label 1) and v2 (label 2). ``split`` is ``"train"`` or ``"test"``: the course's split of
    the v2 pairs (:func:`comicutils.data.train_test_pairs`), applied to **both** grids by grid
    position, because the two grids show near-identical faces at the same position —
    splitting each grid on its own would put a held-out face's twin into the training set.
    Keys are ``"<pair key>/photo"`` or ``"<pair key>/comic"``.
    """
    from . import data

    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test'; got {split!r}")
    if not set(photo_grids) <= {"v1", "v2"}:
        raise ValueError(f"photo_grids must name 'v1' and/or 'v2'; got {list(photo_grids)}")
    v2 = data.face2comics_pairs("v2", size=size)
    train, test = data.train_test_pairs(v2)
    positions = {data.grid_position(k) for k in (train if split == "train" else test).keys}
    images, labels, keys = [], [], []
    for version, comic_label in (("v1", 1), ("v2", 2)):
        pairs = v2 if version == "v2" else data.face2comics_pairs("v1", size=size)
        chosen = [k for k in pairs.keys if data.grid_position(k) in positions]
        part = pairs.subset(chosen)
        if version in photo_grids:
            images.append(part.photos)
            labels.append(torch.zeros(len(part), dtype=torch.long))
            keys += [f"{k}/photo" for k in part.keys]
        images.append(part.comics)
        labels.append(torch.full((len(part),), comic_label))
        keys += [f"{k}/comic" for k in part.keys]
    return torch.cat(images), torch.cat(labels), keys


def train_style_classifier(images01: torch.Tensor, labels: torch.Tensor, *, steps: int = 300,
                           batch_size: int = 32, lr: float = 1e-3, width: int = 16, size: int = 64,
                           classes: Sequence[str] = STYLE_LABELS, seed: int = 0,
                           device: str | torch.device | None = None,
                           show_progress: bool = True) -> StyleClassifier:
    """Train a :class:`StyleClassifier` on labelled images (N, 3, H, W) in [0, 1], labels (N,).

    Cross-entropy weighted by inverse class frequency (so twice as many photos as comics do
    not bias it), Adam(``lr``), random mirroring; ``steps`` batches drawn with a seeded
    generator. Returns the classifier in eval mode.
    """
    x = check_image_tensor(images01, "style training images")
    y = torch.as_tensor(labels).long()
    if len(y) != len(x):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    dev = get_device(str(device) if device is not None else None)
    torch.manual_seed(seed)
    model = StyleClassifier(classes, width=width, size=size).to(dev)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    counts = torch.bincount(y, minlength=len(model.classes)).float()
    weight = (counts.sum() / (len(counts) * counts.clamp(min=1))).to(dev)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    model.train()
    bar = progress(range(steps), desc="style classifier", **({} if show_progress else {"disable": True}))
    for _ in bar:
        idx = torch.randint(len(x), (min(batch_size, len(x)),), generator=g)
        loss = F.cross_entropy(model(random_flip(x[idx], g)), y[idx].to(dev), weight=weight)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"style classifier loss became {loss.item()}; lower lr (now {lr})")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        bar.set_postfix(loss=f"{loss.item():.3f}", refresh=False)
    return model.eval()


def course_style_classifier(size: int = 64, steps: int = 300, seed: int = 0,
                            show_progress: bool = True) -> StyleClassifier:
    """A :class:`StyleClassifier` trained on the course's *training* split (:func:`style_dataset`)."""
    images, labels, _ = style_dataset(size, "train")
    return train_style_classifier(images, labels, steps=steps, size=size, seed=seed,
                                  show_progress=show_progress)


def save_classifier(classifier: StyleClassifier, path: str | os.PathLike) -> Path:
    """Write the classifier (weights and config) atomically."""
    return save_state({"format": CLASSIFIER_FORMAT, "config": dict(classifier.config),
                       "state": classifier.state_dict()}, path)


def load_classifier(path: str | os.PathLike) -> StyleClassifier:
    """Read a classifier written by :func:`save_classifier` (``weights_only=True``), in eval mode."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, Mapping) or ckpt.get("format") != CLASSIFIER_FORMAT:
        raise ValueError(f"{path} is not a {CLASSIFIER_FORMAT} file")
    cfg = ckpt["config"]
    model = StyleClassifier(cfg["classes"], width=cfg["width"], size=cfg["size"])
    model.load_state_dict(ckpt["state"])
    return model.eval()


# --------------------------------------------------------------------------- Inception Score
def inception_score(probs: torch.Tensor, splits: int = 10) -> tuple[float, float]:
    """Inception Score of class probabilities ``probs`` (N, K), rows summing to 1 -> (mean, std).

    The N rows are cut into ``splits`` consecutive parts (as in Salimans et al., 2016); in each,
    ``IS = exp(mean_x KL(p(y|x) || p(y)))`` with ``p(y)`` the part's mean prediction. Returns
    the mean and (population) standard deviation over the parts. IS lies in [1, K]: 1 when every
    image gets the same prediction, K when predictions are one-hot and spread evenly over K
    classes. Needs N >= ``splits``.
    """
    p = torch.as_tensor(probs, dtype=torch.float64)
    if p.ndim != 2 or p.shape[0] < 1:
        raise ValueError(f"probs must be (N, K); got shape {tuple(p.shape)}")
    if not torch.isfinite(p).all() or (p < 0).any() or not torch.allclose(p.sum(1), torch.ones(len(p),
                                                                                               dtype=p.dtype),
                                                                       atol=1e-4):
        raise ValueError("probs must be finite, non-negative, and each row must sum to 1")
    if not 1 <= splits <= len(p):
        raise ValueError(f"splits must be in [1, N={len(p)}]; got {splits}")
    scores = []
    for part in torch.tensor_split(p, splits):
        marginal = part.mean(dim=0, keepdim=True)
        kl = torch.where(part > 0, part * (part.clamp_min(1e-30).log() - marginal.clamp_min(1e-30).log()),
                         torch.zeros_like(part)).sum(dim=1)
        scores.append(math.exp(kl.mean().item()))
    t = torch.tensor(scores, dtype=torch.float64)
    return float(t.mean()), float(t.std(unbiased=False))


@torch.no_grad()
def inception_probabilities(images01: torch.Tensor, model: nn.Module | None = None,
                            batch_size: int = 16) -> torch.Tensor:
    """``p(y|x)`` (N, 1008) of the FID Inception for images (N, 3, H, W) in [0, 1].

    Softmax of the 2048-d pool features times the classifier's weight matrix without its bias,
    as the original Inception Score code computes its logits. ``model``: a
    :class:`comicutils.fid.FIDInception`; default the one with the registry weights
    (``fid-inception``). Without those weights this raises
    :class:`~comicutils.metrics.MetricUnavailable` saying why: the score is never computed on
    random or substitute weights.
    """
    from . import fid

    check_image_tensor(images01, "Inception Score input")
    if model is None:
        try:
            model = fid.fid_inception()
        except MetricUnavailable as err:
            raise MetricUnavailable("IS n/a: the FID Inception weights are not available here, and the "
                                    f"Inception Score is only defined on that network ({err})") from None
    weight = model.net.fc.weight.detach().double().cpu()
    feats = fid.features(images01, model, batch_size=batch_size)
    return F.softmax(feats @ weight.T, dim=1).float()

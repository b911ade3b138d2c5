"""comicutils: the helper package of the Photo -> Comic course.

Modules, one concern each:

* :mod:`comicutils.runtime` - run mode (smoke/auto/full), device and device tier (cpu, gpu16,
  gpu40), seeding, progress bars, the "substitute in use" banner, where outputs and downloads go.
* :mod:`comicutils.memory` - a training step's peak memory and FLOPs, estimated on the meta device.
* :mod:`comicutils.assets` - registry of every downloadable file (URL, sha256, licence),
  cache, offline mirror, verified downloads.
* :mod:`comicutils.images` - load/convert/validate images; tensors are (N, 3, H, W) in [0, 1].
* :mod:`comicutils.data` - face2comics pairs, paired folders, deterministic splits, joint
  augmentation, the CC0 portraits.
* :mod:`comicutils.faces` - Haar and dlib face detection, 5-point alignment, identity embeddings.
* :mod:`comicutils.haar` - OpenCV's Haar cascade run in NumPy (for OpenCV 5, which has none).
* :mod:`comicutils.dlib_resnet` - dlib's face-recognition ResNet as a differentiable PyTorch network.
* :mod:`comicutils.metrics` - SSIM, PSNR, MSE, RMSE, FSIM, LPIPS, identity distance, tables.
* :mod:`comicutils.taesd` - the taef2 tiny autoencoder (offline latent space and VGG stand-in).
* :mod:`comicutils.nst` - Gram-matrix neural style transfer (chapter 01).
* :mod:`comicutils.pix2pix` - U-Net / U-Res9 / U-Res50 generators, PatchGAN, trainer (chapter 02).
* :mod:`comicutils.cartoon` - the classical cartoon filter baseline (chapter 06).
* :mod:`comicutils.animegan` - AnimeGANv2 generator and face2paint (the GAN project report baseline).
* :mod:`comicutils.stylizers` - one interface (name, weights, parameters, __call__) for every method.
* :mod:`comicutils.evaluation`, :mod:`comicutils.fid` - one table for all methods; FID and KID.
* :mod:`comicutils.viz` - figures saved to ``figures/``.

Heavy modules are imported on first use, so ``import comicutils`` stays fast.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

_SUBMODULES = ("runtime", "memory", "assets", "images", "data", "faces", "haar", "dlib_resnet", "metrics", "taesd", "nst", "pix2pix",
               "cartoon", "animegan", "stylizers", "evaluation", "fid", "viz", "bench", "course", "checkpoints",
               "cli")


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'comicutils' has no attribute {name!r}")


__all__ = ["__version__", *_SUBMODULES]

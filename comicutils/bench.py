"""Benchmarks (not tests): ``python -m comicutils bench WHAT [options]``.

``bench nst``: seconds per NST optimisation step, per backbone, optimizer and image size.
``bench pix2pix``: training steps/s (D + G step, batch 1 and 4) and inference images/s of
the pix2pix generators (unet, ures9, ures50) at 128 and 256 px (see :func:`run_pix2pix`).

    python -m comicutils bench nst [--sizes 256 512] [--steps 5] [--warmup 2] [--json out.json]

One step = one forward + backward pass through the feature network plus the optimiser update
(LBFGS with max_iter=1, as in ``comicutils.nst.stylize``). The targets (content features,
style Grams) are computed once, before timing, as ``stylize`` does. VGG runs with random
weights: the same arithmetic as ImageNet weights, so the same time. taef2 uses its real
weights (offline mirror). Reported: the median over ``--steps`` timed steps after
``--warmup`` untimed ones.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time


def time_steps(backbone: str, optimizer: str, size: int, steps: int, warmup: int,
               device: str) -> float:
    """Median seconds of one ``stylize`` step (backbone's default layers)."""
    import torch

    from . import nst

    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, size, size, generator=g)
    style = torch.rand(1, 3, size, size, generator=g)
    stamps: list[float] = []  # time at the end of each step
    nst.stylize(content, style, backbone=backbone, steps=warmup + steps + 1, optimizer=optimizer,
                device=device, show_progress=False,
                callback=lambda step, x, history: stamps.append(time.perf_counter()))
    times = [b - a for a, b in zip(stamps[warmup:], stamps[warmup + 1:])]
    return statistics.median(times)


def add_nst_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512])
    ap.add_argument("--backbones", nargs="+", default=["taef2", "vgg16-random", "vgg19-random"])
    ap.add_argument("--optimizers", nargs="+", default=["adam", "lbfgs"])
    ap.add_argument("--steps", type=int, default=5, help="timed steps (median taken)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the rows to this JSON file")


def run_nst(args: argparse.Namespace) -> int:
    """Print (and optionally save as JSON) the NST step timings."""
    import torch


    print(f"# NST seconds per step on {args.device} ({platform.processor() or platform.machine()}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads); targets computed once; "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'backbone':<14} {'optimizer':<9} {'size':>5} {'s/step':>8} {'500 steps':>10}")
    rows = []
    for size in args.sizes:
        for backbone in args.backbones:
            for opt in args.optimizers:
                sec = time_steps(backbone, opt, size, args.steps, args.warmup, args.device)
                rows.append({"backbone": backbone, "optimizer": opt, "size": size,
                             "seconds_per_step": sec})
                print(f"{backbone:<14} {opt:<9} {size:>5} {sec:>8.3f} {sec * 500 / 60:>8.1f} min",
                      flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0



# --------------------------------------------------------------------------- pix2pix
def _pix2pix_models(name: str, size: int):
    from . import pix2pix

    kw = {"pretrained": False} if name == "ures50" else {}  # same arithmetic as ImageNet weights
    return pix2pix.build_generator(name, size, **kw), pix2pix.PatchDiscriminator()


def time_pix2pix(name: str, size: int, batches, steps: int, warmup: int, device: str,
                 infer_batch: int = 4) -> dict:
    """Median seconds of one pix2pix training step (D step + G step) per batch size, and
    inference images/s (``translate``, eval mode, ``infer_batch`` images per call)."""
    import torch

    from . import pix2pix

    g = torch.Generator().manual_seed(0)
    gen, disc = _pix2pix_models(name, size)
    trainer = pix2pix.Pix2PixTrainer(gen, disc, device=device)
    row = {"generator": name, "size": size, "params_m": pix2pix.count_parameters(gen) / 1e6}
    for b in batches:
        photo, comic = torch.rand(2, b, 3, size, size, generator=g)
        times = []
        for i in range(warmup + steps):
            t0 = time.perf_counter()
            trainer.train_step(photo, comic)
            if trainer.device.type == "cuda":
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        row[f"train_s_per_step_b{b}"] = statistics.median(times)
    x = torch.rand(infer_batch, 3, size, size, generator=g)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        pix2pix.translate(trainer.generator, x, batch_size=infer_batch)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    row["infer_images_per_s"] = infer_batch / statistics.median(times)
    return row


def add_pix2pix_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--generators", nargs="+", default=["unet", "ures9", "ures50"])
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 4], help="training batch sizes")
    ap.add_argument("--infer-batch", type=int, default=4, help="images per inference call")
    ap.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--steps", type=int, default=3, help="timed steps (median taken)")
    ap.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", help="also write the rows to this JSON file")


def run_pix2pix(args: argparse.Namespace) -> int:
    """Print (and optionally save as JSON) pix2pix training and inference speeds.

    One training step = generator forward, D step on the real and the generated pair, G step
    (adversarial + L1, no perceptual loss), both Adam updates. U-Res50 runs with random
    encoder weights (same arithmetic as ImageNet weights). PatchGAN: ndf 64, 3 layers.
    """
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# pix2pix on {args.device} ({platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads); median of {args.steps} "
          f"after {args.warmup} warm-up; train = D step + G step (no perceptual loss)")
    head = " ".join(f"{'steps/s b' + str(b):>12}" for b in args.batches)
    print(f"{'generator':<9} {'size':>5} {'params':>8} {head} {'infer img/s':>12}")
    rows = []
    for size in args.sizes:
        for name in args.generators:
            row = time_pix2pix(name, size, args.batches, args.steps, args.warmup, args.device,
                               args.infer_batch)
            rows.append(row)
            rates = " ".join(f"{1 / row[f'train_s_per_step_b{b}']:>12.2f}" for b in args.batches)
            print(f"{name:<9} {size:>5} {row['params_m']:>7.1f}M {rates} "
                  f"{row['infer_images_per_s']:>12.2f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": args.device, "threads": torch.get_num_threads(),
                       "torch": torch.__version__, "rows": rows}, f, indent=1)
    return 0

"""Benchmarks (not tests): ``python -m comicutils bench WHAT [options]``.

``bench nst``: seconds per NST optimisation step, per backbone, optimizer and image size.

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


"""Benchmarks (not tests): ``python -m comicutils bench WHAT [options]``.

``bench nst``: seconds per NST optimisation step, per backbone, optimizer and image size.
``bench pix2pix``: training steps/s (D + G step, batch 1 and 4) and inference images/s of
the pix2pix generators (unet, ures9, ures50) at 128 and 256 px (see :func:`run_pix2pix`).
``bench comicdiff``: ComicDiff's VAE encode (E), U-Net call (U) and decode (D) timed
separately, then (a) single-step translation end to end, (b) DDIM img2img (50 steps,
strength 0.75: 38 U-Net calls), (c) merged vs unmerged LoRA, (d) an α-slider update (one
decode), and the cheap wins (no autograd, merged LoRA, channels_last, a cached prompt
embedding instead of a text-encoder call). The single-step speed-up over img2img cannot exceed
(E + 38·U + D) / (E + U + D); the report gives both (see :func:`comicdiff_timings`).

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


# --------------------------------------------------------------------------- comicdiff
def _timer(fn, repeats: int, warmup: int, device) -> float:
    """Median seconds of ``fn()`` (synchronising CUDA around each call)."""
    import torch

    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def comicdiff_timings(*, size: int = 256, config: str = "offline", device: str = "cpu", dtype: str = "fp32",
                      rank: int = 8, repeats: int = 5, warmup: int = 2, img2img_steps: int = 50,
                      strength: float = 0.75, text_encoder: bool = True, model=None) -> dict:
    """Time ComicDiff's parts and the alternatives on one image of ``size`` px.

    ``config="offline"``: taef2 (its real weights) + the small U-Net; ``"sd21"``: the SD 2.1
    U-Net and VAE *configs* with random weights (same arithmetic as the real weights, so the
    same time; a timing tool only). LoRA rank ``rank`` on q/k/v/out with non-zero B. Returns a
    dict of median seconds, ratios and the bound (see ``bench comicdiff --help``).
    """
    import torch

    from . import comicdiff as cd
    from .widgets import prepare_alpha, render_alpha

    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    torch.manual_seed(0)
    if model is None:
        if config == "offline":
            comp = cd.offline_components(announce=False)
        elif config == "sd21":
            comp = cd.components.random_sd21_components(device, dt)
        else:
            raise ValueError(f"config must be 'offline' or 'sd21'; got {config!r}")
        model = cd.ComicDiff(comp)
        model.add_lora(rank)
        for p in cd.lora_parameters(model.unet):
            p.data.normal_(0, 0.01)
    model = model.to(device).eval()
    x = torch.rand(1, 3, size, size, device=device)
    R = dict(repeats=repeats, warmup=warmup, device=device)
    out: dict = {"size": size, "config": config, "device": device, "dtype": dtype, "rank": rank,
                 "threads": torch.get_num_threads(), "torch": torch.__version__,
                 "unet_parameters": sum(p.numel() for n, p in model.unet.named_parameters() if "lora_" not in n)}
    with torch.inference_mode():
        z = model.encode(x)
        dz = model.delta(z)
        out["E"] = _timer(lambda: model.encode(x), **R)
        out["U"] = _timer(lambda: model.delta(z), **R)
        out["D"] = _timer(lambda: model.decode(z + dz), **R)
    out["a_single_step"] = _timer(lambda: model.translate(x), **R)
    calls = cd.unet_calls_img2img(img2img_steps, strength)
    out["img2img_unet_calls"] = calls
    out["b_img2img"] = _timer(lambda: cd.img2img(model, x, steps=img2img_steps, strength=strength),
                              repeats=max(1, repeats // 2), warmup=1, device=device)
    # cheap wins, one at a time
    with torch.enable_grad():
        out["a_with_autograd"] = _timer(lambda: model(x), **R)
    with torch.no_grad():
        out["a_no_grad"] = _timer(lambda: model(x), **R)
    cd.merge(model.unet)
    with torch.inference_mode():
        out["U_merged"] = _timer(lambda: model.delta(z), **R)
    out["a_merged"] = _timer(lambda: model.translate(x), **R)
    model.to(memory_format=torch.channels_last)
    xc = x.contiguous(memory_format=torch.channels_last)
    out["a_merged_channels_last"] = _timer(lambda: model.translate(xc), **R)
    model.to(memory_format=torch.contiguous_format)
    cd.unmerge(model.unet)
    state = prepare_alpha(model, x.cpu() if device == "cpu" else x, identity=False)
    out["d_alpha_update"] = _timer(lambda: render_alpha(state, 0.7), **R)
    if text_encoder:
        out["text_encoder"] = _text_encoder_time(device, dt, R)
    # the analysis
    e, u, d = out["E"], out["U"], out["D"]
    out["sum_EUD"] = e + u + d
    out["bound_speedup"] = (e + calls * u + d) / (e + u + d)
    out["speedup"] = out["b_img2img"] / out["a_single_step"]
    out["a_over_EUD"] = out["a_single_step"] / out["sum_EUD"]
    out["speedup_over_bound"] = out["speedup"] / out["bound_speedup"]
    out["targets"] = {"a within 10% of E+U+D": abs(out["a_over_EUD"] - 1) <= 0.10,
                      "speed-up within 10% of the bound": abs(out["speedup_over_bound"] - 1) <= 0.10,
                      "alpha update under 200 ms": out["d_alpha_update"] < 0.200}
    return out


def _text_encoder_time(device, dtype, R) -> float:
    """One call of SD 2.1's text encoder (OpenCLIP-H config, random weights) on 77 tokens:
    the cost a cached prompt embedding saves on every image."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    cfg = CLIPTextConfig(vocab_size=49408, hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
                         num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
                         projection_dim=1024)
    with torch.device(device):
        enc = CLIPTextModel(cfg).to(dtype).eval()
    ids = torch.randint(0, 49408, (1, 77), device=device)
    with torch.inference_mode():
        return _timer(lambda: enc(ids), **R)


def add_comicdiff_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--config", choices=("offline", "sd21"), default="offline",
                    help="offline: taef2 + small U-Net; sd21: SD 2.1 configs, random weights (timing only)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5, help="timed runs (median taken)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-text-encoder", action="store_true", help="skip timing the SD 2.1 text encoder")
    ap.add_argument("--json", nargs="?", const="-", help="print JSON (or write it to this file)")


def run_comicdiff(args: argparse.Namespace) -> int:
    """Print the ComicDiff timing table (and JSON with --json)."""
    r = comicdiff_timings(size=args.size, config=args.config, device=args.device, dtype=args.dtype,
                          rank=args.rank, repeats=args.repeats, warmup=args.warmup,
                          text_encoder=not args.no_text_encoder)
    ms = lambda k: f"{1000 * r[k]:8.1f} ms"  # noqa: E731
    print(f"# ComicDiff at {r['size']} px, {r['config']} ({r['unet_parameters'] / 1e6:.1f} M-param U-Net), "
          f"{r['device']} {r['dtype']}, {r['threads']} threads; median of {args.repeats}")
    for k, label in (("E", "VAE encode (E)"), ("U", "U-Net call (U)"), ("D", "VAE decode (D)"),
                     ("a_single_step", "(a) single-step end to end"),
                     ("b_img2img", f"(b) img2img DDIM, {r['img2img_unet_calls']} U-Net calls"),
                     ("U_merged", "(c) U-Net call, LoRA merged"), ("a_merged", "(c) end to end, LoRA merged"),
                     ("a_with_autograd", "end to end with autograd on"), ("a_no_grad", "end to end, no_grad"),
                     ("a_merged_channels_last", "end to end, merged + channels_last"),
                     ("d_alpha_update", "(d) alpha-slider update (decode)"), ("text_encoder", "text encoder call")):
        if k in r:
            print(f"{label:42s} {ms(k)}")
    print(f"E+U+D = {1000 * r['sum_EUD']:.1f} ms; (a)/(E+U+D) = {r['a_over_EUD']:.3f}")
    print(f"speed-up (b)/(a) = {r['speedup']:.2f}x; bound (E+{r['img2img_unet_calls']}U+D)/(E+U+D) = "
          f"{r['bound_speedup']:.2f}x; ratio {r['speedup_over_bound']:.3f}")
    for k, ok in r["targets"].items():
        print(f"target {k}: {'met' if ok else 'NOT met'}")
    if args.json:
        text = json.dumps(r, indent=2)
        if args.json == "-":
            print(text)
        else:
            with open(args.json, "w") as f:
                f.write(text)
    return 0


def comicdiff_training_memory(*, size: int = 768, batch: int = 4, config: str = "sd21", rank: int = 8,
                              gradient_checkpointing: bool = False, dtype: str = "bf16",
                              device: str = "cuda") -> dict:
    """Peak GPU memory of one ComicDiff LoRA training step (forward through U-Net and decoder,
    loss, backward, AdamW step) at ``batch`` images of ``size`` px.

    ``config="sd21"`` builds SD 2.1's U-Net and VAE from their configs with random weights
    (memory depends on shapes, not values); frozen weights in ``dtype``, LoRA in fp32, MSE
    loss only (the LPIPS network adds a fixed ~60 MB). CUDA only: CPU memory has no peak counter.
    """
    import torch

    from . import comicdiff as cd

    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        raise RuntimeError("comicdiff_training_memory needs a CUDA device (torch.cuda peak counters)")
    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    if config == "sd21":
        comp = cd.components.random_sd21_components(device, dt)
    else:
        comp = cd.offline_components(announce=False)
    model = cd.ComicDiff(comp).to(device)
    model.add_lora(rank)
    if gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    model.unet.train()
    opt = torch.optim.AdamW(cd.lora_parameters(model.unet), lr=1e-5)
    x = torch.rand(batch, 3, size, size, device=device)
    y = torch.rand(batch, 3, size, size, device=device)
    with torch.no_grad():
        z = model.encode(x)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    with torch.autocast("cuda", dtype=dt):
        loss = torch.nn.functional.mse_loss(model(latents=z).float(), y)
    loss.backward()
    opt.step()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    return {"size": size, "batch": batch, "config": config, "dtype": dtype, "rank": rank,
            "gradient_checkpointing": gradient_checkpointing, "weights_GiB": base / 2**30,
            "peak_GiB": peak / 2**30}

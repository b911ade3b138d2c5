"""Command line: ``python -m comicutils <command> ...``.

Commands
--------
``info``                      mode, device, versions, cache and mirror folders
``assets list``               the registry (name, size, licence, in the offline mirror?)
``assets fetch NAME|--all``   get files into the cache (cache -> mirror -> download), verified
``assets verify``             check every file found in the cache or mirrors against its sha256
``assets stand-ins DIR``      write random-weight stand-ins of every real weight file (tests only)
                              and print the ``export`` lines that put them in force
``course [--only 00 02]``     execute the notebooks in order (headless), write figures
``stylize PHOTO --method nst``  stylize photos with a chapter's method
``stylize PHOTO --method pix2pix --checkpoint CKPT``  one pass of a trained generator
``train-pix2pix --generator unet --data v2 --out CKPT``  train pix2pix (chapter 02-03)
``bench nst|pix2pix [--json F]``  timings on this machine (not tests)

Each chapter adds its command (``stylize``, ``evaluate``, ``bench``) by adding an entry to
``COMMANDS``: a function that configures its sub-parser and returns the handler.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Callable

Handler = Callable[[argparse.Namespace], int]


class Parser(argparse.ArgumentParser):
    """argparse with a one-line usage error: ``PROG: error: WHAT (see PROG --help)``, exit 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


# --------------------------------------------------------------------------- argument checks
# Bad values are usage errors (exit 2, argparse's one-line message) caught at parse time.
def int_at_least(low: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


MAX_SIZE = 4096
"""The largest image side an option accepts (a 4096 px pix2pix U-Net step already needs tens of GB)."""


def int_between(low: int, high: int) -> Callable[[str], int]:
    """A whole number in [low, high] (a usage error otherwise)."""
    at_least = int_at_least(low)

    def parse(text: str) -> int:
        value = at_least(text)
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
        return value
    parse.__name__ = f"integer in [{low}, {high}]"
    return parse


def finite_float(low: float | None = None, *, strict: bool = False) -> Callable[[str], float]:
    """A finite number (no nan/inf), optionally >= ``low`` (> with ``strict``)."""
    import math

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if low is not None and (value <= low if strict else value < low):
            raise argparse.ArgumentTypeError(f"must be {'>' if strict else '>='} {low:g}, got {value:g}")
        return value
    parse.__name__ = "number"
    return parse


def existing_file(text: str) -> str:
    if not os.path.isfile(text):
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    return text


def _path_or_course(text: str, names, is_there, kind: str, what: str) -> str:
    """``text`` if it names a course weight in ``names`` or ``is_there(text)``; else a one-line error."""
    if text in names or is_there(text):
        return text
    raise argparse.ArgumentTypeError(f"no such {kind}: {text} (or one of the course {what}: {', '.join(names)})")


def file_or_course(text: str) -> str:
    """A file, or one of :data:`stylizers.COURSE_PIX2PIX` for a course pix2pix generator."""
    from .stylizers import COURSE_PIX2PIX

    return _path_or_course(text, COURSE_PIX2PIX, os.path.isfile, "file", "generators")


def dir_or_course(text: str) -> str:
    """A folder, or one of :data:`stylizers.COURSE_ADAPTERS` for a course ComicDiff adapter."""
    from .stylizers import COURSE_ADAPTERS

    return _path_or_course(text, COURSE_ADAPTERS, os.path.isdir, "folder", "adapters")


def existing_dir(text: str) -> str:
    if not os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"no such folder: {text}")
    return text


def device_name(text: str) -> str:
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown device {text!r} (cpu, cuda, cuda:1, mps)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text}: CUDA is not available on this machine (use cpu)")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text}: MPS is not available on this machine (use cpu)")
    return text


def check_range(parser: argparse.ArgumentParser, flag: str, value, low) -> None:
    if value is None or value < low:
        parser.error(f"{flag} must be at least {low}; got {value}")


def check_finite_args(parser: argparse.ArgumentParser, args: argparse.Namespace, names) -> None:
    import math

    for name in names:
        value = getattr(args, name, None)
        if value is not None and not math.isfinite(value):
            parser.error(f"--{name.replace('_', '-')} must be a finite number; got {value}")


def writable_dir(parser: argparse.ArgumentParser, flag: str, path) -> None:
    """Check that ``path`` can be created or written into, without creating it (usage error
    otherwise): an existing folder must accept a file, a new one needs a writable parent."""
    import tempfile
    from pathlib import Path

    target = Path(path)
    if target.exists() and not target.is_dir():
        parser.error(f"{flag} {path}: exists and is not a folder")
    probe = target
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        parser.error(f"{flag} {path}: {probe} is not a folder")
    try:
        with tempfile.NamedTemporaryFile(dir=probe, prefix=".write-check-"):
            pass
    except OSError as err:
        parser.error(f"{flag} {path}: cannot write there ({err.strerror or err})")


def unique_output_names(photos: list[str], method: str) -> dict[str, str]:
    """``PHOTO -> output file name``: ``<stem>_<method>.png``, or ``<stem>-<ext>_<method>.png`` for
    inputs whose stems collide (``a.jpg`` and ``a.png``), so no output overwrites another."""
    from collections import Counter
    from pathlib import Path

    stems = Counter(Path(p).stem for p in dict.fromkeys(photos))
    names = {}
    for p in dict.fromkeys(photos):
        path = Path(p)
        stem = path.stem if stems[path.stem] == 1 else f"{path.stem}-{path.suffix.lstrip('.') or 'noext'}"
        names[p] = f"{stem}_{method}.png"
    if len(set(names.values())) != len(names):        # e.g. dir1/a.jpg and dir2/a.jpg
        names = {p: f"{i:03d}-{n}" for i, (p, n) in enumerate(names.items())}
    return names


def overwritten_inputs(names: dict[str, str], out_dir) -> list[tuple[str, str]]:
    """``(input, output)`` for every output in ``out_dir`` (``names``: input -> file name) that is
    one of the inputs (the same path after resolving links, or the same file)."""
    from pathlib import Path

    inputs = {}
    for p in names:
        path = Path(p)
        inputs[path.resolve()] = p
    clash = []
    for p, name in names.items():
        target = Path(out_dir) / name
        hit = inputs.get(target.resolve())
        if hit is None and target.exists():
            hit = next((q for q in names if Path(q).exists() and os.path.samefile(q, target)), None)
        if hit is not None:
            clash.append((hit, str(target)))
    return clash


def _info(sub: argparse.ArgumentParser) -> Handler:
    def run(args):
        from . import assets
        from .runtime import environment_report

        report = environment_report()
        if os.environ.get(assets.STANDIN_ENV, "").strip():
            report[assets.STANDIN_ENV] = os.environ[assets.STANDIN_ENV]
        width = max(map(len, report))
        for k, v in report.items():
            print(f"{k:<{width}}  {v}")
        if os.environ.get(assets.STANDIN_ENV, "").strip():
            print(assets.standin_banner_text())
        return 0

    return run


def _assets(sub: argparse.ArgumentParser) -> Handler:
    actions = sub.add_subparsers(dest="action", required=True, metavar="{list,fetch,verify,stand-ins}")
    ls = actions.add_parser("list", help="show the registry")
    ls.add_argument("--group", help="only this group (face2comics, portraits, taesd, ...)")
    fe = actions.add_parser("fetch", help="fetch assets into the cache (verified)")
    fe.add_argument("names", nargs="*", metavar="NAME")
    fe.add_argument("--all", action="store_true", help="every asset in the registry")
    fe.add_argument("--mirrored", action="store_true", help="every asset of the offline mirror")
    ve = actions.add_parser("verify", help="check local copies against their sha256")
    ve.add_argument("names", nargs="*", metavar="NAME")
    st = actions.add_parser(
        "stand-ins", help="write random-weight stand-ins in the real files' formats (for tests)",
        description="Write a stand-in for every real weight file (random weights, real format and "
                    "key layout; a tiny Stable Diffusion 2.1 in the Hugging Face cache layout) into "
                    "DIR, then print export lines: eval \"$(python -m comicutils assets stand-ins DIR)\" "
                    "puts them in force. Numbers computed with them are not results.")
    st.add_argument("directory", metavar="DIR")
    st.add_argument("--seed", type=int, default=0)
    st.add_argument("--force", action="store_true", help="rewrite even a complete, matching set")

    def run(args):
        from . import assets

        if args.action == "list":
            rows = assets.list_assets(args.group)
            print(f"{'name':<30} {'group':<17} {'size':>9}  {'mirror':<6}  license")
            for a in rows:
                size = assets._human(a.size) if a.size else "?"
                check = "" if a.pinned else "  [no published sha256: pinned on first use]"
                print(f"{a.name:<30} {a.group:<17} {size:>9}  {'yes' if a.mirrored else 'no':<6}  "
                      f"{a.license}{check}")
            print(f"\n{len(rows)} assets. Cache: {assets.cache_dir()}  "
                  f"Mirror ({assets.MIRROR_ENV}): "
                  f"{', '.join(map(str, assets.mirror_dirs())) or 'not set'}")
            return 0
        if args.action == "fetch":
            if args.all:
                names = list(assets.REGISTRY)
            elif args.mirrored:
                names = [a.name for a in assets.list_assets(mirrored=True)]
            else:
                names = args.names
            if not names:
                print("name an asset, or use --all / --mirrored", file=sys.stderr)
                return 2
            failed = 0
            for name in names:
                try:
                    path = assets.fetch(name)
                    print(f"ok       {name:<30} {path}")
                except assets.AssetError as err:
                    failed += 1
                    print(f"FAILED   {name}: {err}", file=sys.stderr)
            return 1 if failed else 0
        if args.action == "stand-ins":
            from . import standins

            written = standins.write_standins(args.directory, seed=args.seed, force=args.force)
            print("\n".join(standins.export_lines(written.directory)), flush=True)
            return 0
        if args.action == "verify":
            try:
                results = assets.verify(args.names or None)
            except assets.UnknownAsset as err:
                print(err, file=sys.stderr)
                return 2
            for r in results:
                detail = f"  ({r.detail})" if r.detail and r.status != "ok" else (
                    f"  [{r.detail}]" if r.detail else "")
                print(f"{r.status:<9}{r.name:<30} {r.path}{detail}")
            ok = sum(r.status == "ok" for r in results)
            unpinned = sum(r.status == "unpinned" for r in results)
            bad = [r for r in results if r.failed]
            absent = sum(r.status == "absent" for r in results)
            print(f"\n{ok} verified, {unpinned} unpinned (no published checksum; the first fetch pins them "
                  f"after a format check), {absent} not present (downloaded only in full mode), {len(bad)} failed.")
            return 1 if bad else 0
        return 2  # pragma: no cover - argparse enforces the choices

    return run


def _course(sub: argparse.ArgumentParser) -> Handler:
    sub.add_argument("--only", nargs="*", metavar="NN", help="notebook prefixes, e.g. 00 02")
    sub.add_argument("--out", help="folder for the executed notebooks (default build/notebooks)")
    sub.add_argument("--timeout", type=int_at_least(1), default=3600, help="seconds per cell")
    sub.add_argument("--publish", action="store_true", help="then copy the outputs onto notebooks/, lightened "
                     "(what the repository commits; refused in smoke mode)")
    sub.add_argument("--publish-from", metavar="DIR", type=existing_dir, help="only copy the outputs of the "
                     "notebooks executed earlier into DIR onto notebooks/ (no run)")

    def run(args):
        from .course import notebook_paths, publish, run_course
        from .runtime import get_mode

        try:
            notebook_paths(None, args.only)
        except FileNotFoundError as err:
            sub.error(str(err))
        if args.publish and get_mode() == "smoke":
            sub.error("--publish commits auto- or full-mode outputs; set COMICUTILS_MODE=auto")
        if args.publish_from is None:
            written = run_course(args.only, out_dir=args.out, timeout=args.timeout)
        source = args.publish_from or (written[0].parent if args.publish else None)
        if source is not None:
            publish(source, only=args.only)
        return 0

    return run


def _stylize(sub: argparse.ArgumentParser) -> Handler:
    # The methods are comicutils.stylizers (the same objects evaluate and the notebooks use):
    # name -> (help, add_arguments, options(args) -> keyword arguments of stylizers.build).
    def nst_arguments(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("--method nst (Gatys neural style transfer, chapter 01)")
        g.add_argument("--style", metavar="STYLE_IMAGE", type=existing_file, help="the style image (required)")
        g.add_argument("--steps", type=int_at_least(1), help="optimisation steps (default by mode: "
                       "smoke 10, auto 300, full 500)")
        g.add_argument("--style-weight", type=finite_float(0), help="style weight λ_s (default per "
                       "backbone, see comicutils.nst.DEFAULT_STYLE_WEIGHT)")
        g.add_argument("--content-weight", type=finite_float(0), default=1.0)
        g.add_argument("--backbone", default="vgg16", help="vgg16 (default), vgg19, taef2, "
                       "vgg16-random, vgg19-random; VGG falls back to taef2 offline (auto mode)")
        g.add_argument("--optimizer", choices=("adam", "lbfgs"), default="adam")
        g.add_argument("--lr", type=finite_float(0, strict=True), help="learning rate (adam 0.02, lbfgs 1.0)")
        g.add_argument("--seed", type=int, default=0)

    def nst_options(args) -> dict:
        from .images import load_tensor
        from .runtime import by_mode

        if not args.style:
            sub.error("--method nst needs --style STYLE_IMAGE")
        size = args.size or 256
        return {"style": load_tensor(args.style, size), "backbone": args.backbone, "size": size - size % 8,
                "steps": args.steps if args.steps is not None else by_mode(smoke=10, auto=300, full=500),
                "style_weight": args.style_weight, "content_weight": args.content_weight,
                "optimizer": args.optimizer, "lr": args.lr, "seed": args.seed}

    def pix2pix_arguments(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("--method pix2pix (trained generator, chapters 02-03)")
        g.add_argument("--checkpoint", metavar="CKPT", type=file_or_course, help="generator or trainer checkpoint "
                       "from train-pix2pix / Pix2PixTrainer, or 'course' / 'course-style' for the course weights (required); "
                       "sets the default --size")
        g.add_argument("--device", type=device_name, help="cpu, cuda, ... (default: the best available)")

    def pix2pix_options(args) -> dict:
        if not args.checkpoint:
            sub.error("--method pix2pix needs --checkpoint CKPT (or --checkpoint course)")
        return {"checkpoint": args.checkpoint, "device": args.device}

    def comicdiff_arguments(p: argparse.ArgumentParser) -> None:
        g = p.add_argument_group("--method comicdiff (single-step LoRA U-Net, chapters 04-05)")
        g.add_argument("--adapter", metavar="DIR", type=dir_or_course, help="adapter folder written by train_lora "
                       "(e.g. data/runs/04/lora-r8/adapter), or 'course' for the course weights ('course-adv': trained with "
                       "the adversarial term; 'course-gan': 'course' trained on with a stronger one; 'course-style': 'course' "
                       "trained on with chapter 01's Gram-matrix term; 'course-ink': 'course-style' trained on with the "
                       "ink term) (required)")
        g.add_argument("--alpha", type=finite_float(), default=1.0, help="residual blend: 0 = VAE "
                       "reconstruction, 1 = as trained")
        g.add_argument("--denoiser", metavar="DIR", type=existing_dir, help="offline path's pre-trained U-Net "
                       "(default: the denoiser/ folder next to the run)")

    def comicdiff_options(args) -> dict:
        if not args.adapter:
            sub.error("--method comicdiff needs --adapter DIR (or --adapter course)")
        return {"adapter": args.adapter, "alpha": args.alpha, "denoiser": args.denoiser}

    methods = {"nst": ("Gatys neural style transfer (optimises each image)", nst_arguments, nst_options),
               "pix2pix": ("a trained pix2pix generator (one forward pass)", pix2pix_arguments, pix2pix_options),
               "comicdiff": ("ComicDiff: one LoRA U-Net call in latent space", comicdiff_arguments,
                             comicdiff_options)}

    sub.add_argument("photos", nargs="+", metavar="PHOTO", help="portrait photo(s)")
    sub.add_argument("--method", default="nst", choices=sorted(methods),
                     help="; ".join(f"{k}: {v[0]}" for k, v in methods.items()))
    sub.add_argument("--out", required=True, metavar="DIR", help="writes DIR/<stem>_<method>.png")
    sub.add_argument("--size", type=int_between(32, MAX_SIZE), default=None, help="square side in px (resize + crop); "
                     "default 256; pix2pix, comicdiff: the training size (the model runs at its training size "
                     "either way, as in evaluate)")
    sub.add_argument("--align-face", action="store_true", help="find the face on the full-resolution photo "
                     "and align it (dlib 5 landmarks, FFHQ-like framing, as the training pairs are framed) "
                     "instead of resizing and centre-cropping")
    for _, add_arguments, _ in methods.values():
        add_arguments(sub)

    def run(args):
        from pathlib import Path

        from . import stylizers
        from .faces import NoFaceFound, align_face
        from .images import ImageError, load_tensor, save_image

        writable_dir(sub, "--out", args.out)
        out_dir = Path(args.out)
        names = unique_output_names(args.photos, args.method)
        clash = overwritten_inputs(names, out_dir)
        if clash:
            sub.error(f"--out {args.out}: {clash[0][1]} would overwrite the input {clash[0][0]}; choose another --out")
        options = methods[args.method][2](args)        # every option checked before a model is built
        stylizer = stylizers.build(args.method, **options)
        if args.size is None:
            args.size = int(getattr(stylizer, "size", 256))
        failed = []
        for photo_path, name in names.items():
            try:
                photo = (align_face(photo_path, size=args.size) if args.align_face
                         else load_tensor(photo_path, args.size))
                image = stylizer(photo)
            except (ImageError, NoFaceFound) as err:     # this photo only: go on with the others
                failed.append(photo_path)
                text = " ".join(str(err).split())
                print(f"error: {text if photo_path in text else f'{photo_path}: {text}'}", file=sys.stderr)
                continue
            path = save_image(image, out_dir / name)
            print(path, flush=True)
        if failed:
            print(f"error: {len(failed)} of {len(names)} photo(s) failed: {', '.join(failed)}", file=sys.stderr)
            return 1
        return 0

    return run


def _bench(sub: argparse.ArgumentParser) -> Handler:
    from . import bench

    what = sub.add_subparsers(dest="what", required=True, metavar="{nst,pix2pix,comicdiff}")
    parsers = {"nst": what.add_parser("nst", help="seconds per NST optimisation step"),
               "pix2pix": what.add_parser("pix2pix", help="pix2pix training steps/s and inference images/s"),
               "comicdiff": what.add_parser(
                   "comicdiff", help="ComicDiff: E/U/D times, single step vs img2img, LoRA merge, alpha update")}
    bench.add_nst_arguments(parsers["nst"])
    bench.add_pix2pix_arguments(parsers["pix2pix"])
    bench.add_comicdiff_arguments(parsers["comicdiff"])
    runners = {"nst": bench.run_nst, "pix2pix": bench.run_pix2pix, "comicdiff": bench.run_comicdiff}

    def run(args):
        check_bench_args(parsers[args.what], args)
        return runners[args.what](args)

    return run


BENCH_LIMITS = {"steps": (1, None), "repeats": (1, None), "warmup": (0, None), "infer_batch": (1, None),
                "threads": (1, None), "rank": (1, None), "batches": (1, None), "size": (8, MAX_SIZE),
                "sizes": (8, MAX_SIZE)}
"""The range of every numeric ``bench`` option (checked before anything is timed)."""


def check_bench_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """A usage error (exit 2, naming the option) for any ``bench`` value outside :data:`BENCH_LIMITS`."""
    for name, (low, high) in BENCH_LIMITS.items():
        value = getattr(args, name, None)
        for v in value if isinstance(value, list) else [value]:
            flag = "--" + name.replace("_", "-")
            if v is not None and v < low:
                parser.error(f"{flag} must be at least {low}; got {v}")
            if v is not None and high is not None and v > high:
                parser.error(f"{flag} must be at most {high}; got {v}")


def _train_pix2pix(sub: argparse.ArgumentParser) -> Handler:
    sub.add_argument("--generator", choices=("unet", "ures9", "ures50"), default="unet")
    sub.add_argument("--size", type=int_between(32, MAX_SIZE), default=256, help="square side in px")
    sub.add_argument("--ngf", type=int_at_least(1), help="generator width (unet/ures9; default 64)")
    sub.add_argument("--epochs", type=int_at_least(1), default=20, help="epochs in total (Roberto's report: 20)")
    sub.add_argument("--steps", type=int_at_least(1), help="stop after this many steps in total")
    sub.add_argument("--batch-size", type=int_at_least(1), default=1, help="Roberto's report: 1")
    sub.add_argument("--perceptual", choices=("mse", "mae", "none"), default="none",
                     help="VGG-16 perceptual loss criterion (taef2 features offline)")
    sub.add_argument("--backbone", default="vgg16", help="perceptual network (vgg16, taef2, ...)")
    sub.add_argument("--lambda-l1", type=finite_float(0), default=100.0)
    sub.add_argument("--alpha", type=finite_float(0), default=0.001, help="perceptual weight")
    sub.add_argument("--lr", type=finite_float(0, strict=True), default=2e-4)
    sub.add_argument("--gan-mode", choices=("vanilla", "lsgan"), default="vanilla")
    sub.add_argument("--data", nargs="+", default=["v2"], metavar="SRC",
                     help="v2 or v1 (face2comics preview, train split) or PHOTO_DIR COMIC_DIR "
                          "(paired by basename, same seeded split)")
    sub.add_argument("--no-augment", action="store_true", help="no JointAugment")
    sub.add_argument("--no-resume", action="store_true", help="ignore an existing --out file")
    sub.add_argument("--checkpoint-every", type=int_at_least(1), default=1, metavar="EPOCHS",
                     help="write --out after every this many epochs (and at the end); default 1")
    sub.add_argument("--skip-bad", action="store_true", help="with PHOTO_DIR COMIC_DIR: train without the "
                     "unreadable or unpaired files (listed) instead of refusing to start")
    sub.add_argument("--device", type=device_name, help="cpu, cuda, ... (default: the best available)")
    sub.add_argument("--seed", type=int, default=0)
    sub.add_argument("--out", required=True, metavar="CKPT", help="trainer checkpoint file "
                     "(also what stylize --checkpoint takes)")

    def run(args):
        from pathlib import Path

        from .checkpoints import output_lock

        out = Path(args.out)
        if out.is_dir():
            sub.error(f"--out {args.out}: is a folder; name the checkpoint file to write (e.g. {out / 'run.pt'})")
        writable_dir(sub, "--out", out.parent)         # before any work: an unwritable --out loses no step
        with output_lock(out.parent):                  # a second run on the same folder stops here
            return train(args)

    def train(args):
        from . import data, metrics, pix2pix
        from .runtime import seed_everything

        seed_everything(args.seed)
        augment = None if args.no_augment else data.JointAugment()
        if len(args.data) == 1 and args.data[0] in data.GRID_ASSETS:
            train, test = data.train_test_pairs(data.face2comics_pairs(args.data[0], args.size))
            dataset = data.PairDataset(train, augment=augment, seed=args.seed)
        elif len(args.data) == 2:
            for d in args.data:
                if not os.path.isdir(d):
                    sub.error(f"--data: no such folder: {d}")
            folder = data.PairedFolder(*args.data, size=args.size, augment=augment)
            folder.check(skip_bad=args.skip_bad)        # every image opened before the first step
            train_keys, test_keys = data.split_keys(folder.keys)
            dataset = folder.subset(train_keys)
            test = data.PairedFolder(*args.data, size=args.size, keys=test_keys).to_pairset()
        else:
            sub.error("--data takes v2, v1, or PHOTO_DIR COMIC_DIR")
        kw = {"ngf": args.ngf} if args.ngf and args.generator != "ures50" else {}
        generator = pix2pix.build_generator(args.generator, args.size, **kw)
        perceptual = None if args.perceptual == "none" else pix2pix.PerceptualLoss(
            args.backbone, args.perceptual)
        trainer = pix2pix.Pix2PixTrainer(
            generator, pix2pix.PatchDiscriminator(), perceptual=perceptual,
            lambda_l1=args.lambda_l1, alpha=args.alpha, lr=args.lr, gan_mode=args.gan_mode,
            device=args.device)
        print(f"{args.generator} ({pix2pix.count_parameters(generator) / 1e6:.1f} M params) at "
              f"{args.size} px on {trainer.device}: {len(dataset)} train pairs, {len(test)} "
              f"held out", flush=True)
        trainer.train(dataset, epochs=args.epochs, steps=args.steps, batch_size=args.batch_size,
                      checkpoint=args.out, resume=not args.no_resume, seed=args.seed,
                      checkpoint_every=args.checkpoint_every)
        pred = pix2pix.translate(trainer.generator, test.photos, norm_stats="image")   # as stylize and evaluate
        rows = [("pix2pix", pred), ("photo (identity)", test.photos)]
        print(f"held-out ({len(test)} pairs) after {trainer.step} steps, {trainer.epoch} epochs:")
        for label, p in rows:
            l1 = (p - test.comics).abs().mean().item()
            s = metrics.ssim(p, test.comics).mean().item()
            print(f"  {label:<17} SSIM {s:.3f}  L1 {l1:.4f}")
        print(args.out)
        return 0

    return run


def _course_weights(sub: argparse.ArgumentParser) -> Handler:
    from . import course_weights as W

    actions = sub.add_subparsers(dest="action", required=True, metavar="{list,verify,train,export}")
    actions.add_parser("list", help="every course weight: steps, size, hours, the command that made it")
    actions.add_parser("verify", help="check every registered file against its sha256")
    tr = actions.add_parser("train", help="train (or resume) one course weight with its recipe")
    tr.add_argument("name", choices=W.names())
    tr.add_argument("--steps", type=int_at_least(1), help="optimiser steps in total (default: the recipe's)")
    tr.add_argument("--work", help="checkpoint folder (default: data/runs/course-weights/NAME)")
    ex = actions.add_parser("export", help="write the newest checkpoint as fp16 safetensors into data/pretrained/")
    ex.add_argument("name", choices=W.names())
    ex.add_argument("--work", help="checkpoint folder (default: data/runs/course-weights/NAME)")
    ex.add_argument("--out", help="folder of the registry (default: data/pretrained/ of this checkout)")

    def run(args):
        if args.action == "list":
            for row in W.describe():
                made = "not exported" if row["steps"] is None else \
                    f"{row['steps']} steps, {row['hours']} h, {row['MB']} MB"
                print(f"{row['name']:<20} ch {row['chapter']}  {made}\n    {row['command']}")
            return 0
        if args.action == "verify":
            results = W.verify()
            for name, state in results:
                print(f"{name:<20} {state}")
            if not results:
                print("no course weight is registered yet")
            return 0 if all(state == "ok" for _, state in results) else 1
        if args.action == "train":
            run_info = W.train(args.name, args.steps, work=args.work)
            print(f"{args.name}: {run_info.get('steps')} steps in total, {run_info['seconds'] / 3600:.2f} h; "
                  f"start state {run_info['start_digest'][:16]}; export with "
                  f"`python -m comicutils course-weights export {args.name}`")
            return 0
        item = W.export(args.name, work=args.work, out=args.out)
        size = sum(m["bytes"] for m in item["files"].values()) / 2 ** 20
        print(f"{args.name}: {item['steps']} steps, {size:.2f} MB -> {', '.join(item['files'])}")
        return 0

    return run


def _evaluate(sub: argparse.ArgumentParser) -> Handler:
    sub.add_argument("--methods", nargs="+", default=["identity", "cartoon"],
                     help="stylizers to compare (identity, cartoon, nst, pix2pix, comicdiff, animegan)")
    sub.add_argument("--size", type=int, default=128, help="evaluation size in px (at least the largest "
                     "minimum of the metrics, see comicutils.evaluation.MIN_SIZE)")
    sub.add_argument("--limit", type=int_at_least(1), default=None, help="use only the first N held-out pairs")
    sub.add_argument("--checkpoint", type=file_or_course, help="pix2pix generator checkpoint, or 'course' / "
                     "'course-style' for the course weights (for --methods pix2pix)")
    sub.add_argument("--style", type=existing_file, help="style image for nst (default: a training-split comic)")
    sub.add_argument("--nst-steps", type=int_at_least(1), default=100)
    sub.add_argument("--adapter", type=dir_or_course, help="ComicDiff adapter folder, or 'course' for the course "
                     "weights (for --methods comicdiff)")
    sub.add_argument("--alpha", type=finite_float(), default=1.0, help="ComicDiff residual blend")
    sub.add_argument("--json", help="write the table to this JSON file")

    def run(args):
        import json

        from . import data, evaluation, stylizers
        from .images import load_tensor
        from .runtime import atomic_path

        low = evaluation.min_size()
        if args.size < low:
            sub.error(f"--size must be at least {low} px ({evaluation.min_size_reason()}); got {args.size}")
        unknown = [m for m in args.methods if m not in stylizers.available()]
        if unknown:
            sub.error(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(stylizers.available())}")
        pairs = data.face2comics_pairs("v2", size=args.size)
        train, test = data.train_test_pairs(pairs)
        if args.limit:
            test = test.subset(test.keys[: args.limit])
        options = {
            "nst": lambda: {"style": load_tensor(args.style) if args.style else train.comics[7:8],
                            "steps": args.nst_steps, "size": args.size - args.size % 8},
            "pix2pix": lambda: {"checkpoint": args.checkpoint},
            "comicdiff": lambda: {"adapter": args.adapter, "alpha": args.alpha},
        }
        methods = {}
        for name in args.methods:
            try:
                methods[name] = stylizers.build(name, **options.get(name, dict)())
            except stylizers.MethodUnavailable as err:
                print(f"evaluate: {name} skipped: {err}", file=sys.stderr)
                continue
            except (ValueError, FileNotFoundError) as err:
                print(f"evaluate: {err}", file=sys.stderr)
                return 2
        if not methods:
            print("error: no method could run (all were skipped; see above)", file=sys.stderr)
            return 1
        table = evaluation.evaluate(methods, test.photos, test.comics)
        print(f"face2comics v2 held-out pairs: {len(test)} at {args.size} px")
        print(table.drop(columns=["weights"]).to_string(index=False, float_format="%.4g"))
        by_reason: dict[str, list[str]] = {}            # one line per reason, however many metrics share it
        for metric, why in table.attrs["unavailable"].items():
            by_reason.setdefault(why, []).append(metric)
        for why, metrics in by_reason.items():
            print(f"  {', '.join(metrics)}: {why}")
        if args.json:
            payload = {"pairs": len(test), "size": args.size,
                       "unavailable": table.attrs["unavailable"],
                       "rows": evaluation.to_json_rows(table)}
            with atomic_path(args.json) as tmp:
                tmp.write_text(json.dumps(payload, indent=1))
        return 0

    return run


COMMANDS: dict[str, tuple[str, Callable[[argparse.ArgumentParser], Handler]]] = {
    "info": ("mode, device, versions and folders", _info),
    "assets": ("list, fetch and verify downloadable files", _assets),
    "course": ("execute every notebook headless", _course),
    "bench": ("benchmarks (timings on this machine)", _bench),
    "evaluate": ("score stylizers on the held-out face2comics pairs", _evaluate),
    "stylize": ("turn portrait photos into comics (--method nst, pix2pix, comicdiff)", _stylize),
    "train-pix2pix": ("train a pix2pix generator on paired photos and comics", _train_pix2pix),
    "course-weights": ("the course weights: list, verify, train (resumable) and export", _course_weights),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, Handler]]:
    parser = Parser(prog="python -m comicutils", description="Photo -> Comic course helpers.")
    parser.add_argument("--debug", action="store_true",
                        help="show the full Python traceback when a command fails (also COMICUTILS_DEBUG=1)")
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers = {}
    for name, (help_text, configure) in COMMANDS.items():
        handlers[name] = configure(subs.add_parser(name, help=help_text, description=help_text))
    return parser, handlers


DEBUG_ENV = "COMICUTILS_DEBUG"


def _debug_requested(flag: bool = False) -> bool:
    return flag or os.environ.get(DEBUG_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


def run_with_error_boundary(fn: Callable[[], int], debug: bool = False) -> int:
    """Run ``fn``; any failure becomes one ``error:`` line on stderr and exit code 1 (130 for
    Ctrl-C), unless ``debug`` or ``COMICUTILS_DEBUG=1`` asks for the traceback."""
    debug = _debug_requested(debug)
    try:
        return fn()
    except KeyboardInterrupt:
        print("interrupted (nothing half-written is left; a training run resumes from its last checkpoint)",
              file=sys.stderr)
        return 130
    except Exception as err:  # the error boundary: package errors become one line
        if debug:
            raise
        text = " ".join(str(err).split()) or type(err).__name__
        print(f"error: {text} (--debug shows the traceback)", file=sys.stderr)
        return 1


LIBRARY_LOGGERS = ("diffusers", "transformers", "accelerate", "peft", "huggingface_hub", "torch", "timm", "PIL")
"""Libraries whose log lines and warnings a command keeps quiet unless ``--debug``."""


def quiet_libraries(debug: bool = False) -> None:
    """Only errors from the libraries of :data:`LIBRARY_LOGGERS` (their INFO/WARNING lines and
    Python warnings would bury the one ``error:`` line), unless ``debug``. Imports none of them."""
    import logging
    import warnings

    if _debug_requested(debug):
        return
    for env in ("DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):     # read when the library configures itself
        os.environ.setdefault(env, "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in LIBRARY_LOGGERS:
        warnings.filterwarnings("ignore", module=rf"{name}(\.|$)")


def run_command(fn: Callable[[], int], debug: bool = False) -> int:
    """How every entry point runs: libraries quiet (:func:`quiet_libraries`), SIGTERM handled like
    Ctrl-C, and the error boundary (:func:`run_with_error_boundary`)."""
    quiet_libraries(debug)
    with _terminate_as_interrupt():
        return run_with_error_boundary(fn, debug)


def main(argv: list[str] | None = None) -> int:
    """Run one command. Exit codes: 0 done, 1 the command failed (one line on stderr saying why),
    2 bad usage (argparse's message), 130 interrupted (Ctrl-C or SIGTERM). ``--debug`` or
    ``COMICUTILS_DEBUG=1`` shows the full traceback instead of the one line."""
    parser, handlers = build_parser()
    args = parser.parse_args(argv)
    return run_command(lambda: handlers[args.command](args), args.debug)


class _terminate_as_interrupt:
    """SIGTERM (``kill PID``, a scheduler's stop) ends a command like Ctrl-C does: ``finally``
    blocks run, a training run's bookkeeping is written, exit code 130. Only in the main thread."""

    def __enter__(self):
        import signal
        import threading

        self.previous = None
        if threading.current_thread() is threading.main_thread():
            def interrupt(signum, frame):
                raise KeyboardInterrupt
            self.previous = signal.signal(signal.SIGTERM, interrupt)
        return self

    def __exit__(self, *exc):
        import signal

        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
        return False

"""Run the course headless: execute every notebook in order, keep the executed copies.

``python -m comicutils course`` executes ``notebooks/NN_*.ipynb`` with the current Python
(the project venv), writes each executed copy to ``build/notebooks/`` (git-ignored), and the
figures land where the notebooks save them (``figures/`` in auto and full mode). A failing
notebook stops the run with its error, and its partial executed copy is kept beside the
others with a ``.failed.ipynb`` suffix for inspection.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from .runtime import figures_dir, get_mode, project_root


INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def notebook_paths(root: Path | None = None, only: list[str] | None = None) -> list[Path]:
    """The course notebooks in chapter order; ``only`` filters by prefix (``["00", "02"]``)."""
    root = root or project_root() or Path.cwd()
    paths = sorted((root / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if only:
        paths = [p for p in paths if any(p.name.startswith(o) for o in only)]
    if not paths:
        raise FileNotFoundError(f"no notebooks matching {only or 'NN_*.ipynb'} in {root / 'notebooks'}")
    return paths


def run_course(only: list[str] | None = None, *, out_dir: str | os.PathLike | None = None,
               timeout: int = 3600) -> list[Path]:
    """Execute the notebooks in order; return the paths of the executed copies."""
    root = project_root() or Path.cwd()
    # The executed copies are what learners read (and what ``publish`` commits): figures must be
    # drawn into them, so the kernels get the inline backend even when the shell sets
    # MPLBACKEND=Agg (as CI does), which would leave every figure out of the outputs.
    backend = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = INLINE_BACKEND
    try:
        return _run(root, only, out_dir, timeout)
    finally:
        if backend is None:
            os.environ.pop("MPLBACKEND", None)
        else:
            os.environ["MPLBACKEND"] = backend


def _run(root: Path, only: list[str] | None, out_dir, timeout: int) -> list[Path]:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    out = Path(out_dir) if out_dir else root / "build" / "notebooks"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    paths = notebook_paths(root, only)
    print(f"Running {len(paths)} notebook(s) in {get_mode()} mode with {sys.executable}", flush=True)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        # The kernel's own start-up log (e.g. its note on local TCP transport) is not course
        # output; warnings raised by a cell still reach the cell's output.
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3",
                                extra_arguments=["--IPKernelApp.log_level=ERROR"],
                                resources={"metadata": {"path": str(path.parent)}})
        start = time.perf_counter()
        print(f"  {path.name} ...", end="", flush=True)
        try:
            client.execute()
        except CellExecutionError:
            failed = out / f"{path.stem}.failed.ipynb"
            nbformat.write(nb, failed)
            print(f" FAILED after {time.perf_counter() - start:.0f} s (partial copy: {failed})")
            raise
        target = out / path.name
        nbformat.write(nb, target)
        (out / f"{path.stem}.failed.ipynb").unlink(missing_ok=True)
        print(f" done in {time.perf_counter() - start:.0f} s")
        written.append(target)
    print(f"\nExecuted notebooks: {out}\nFigures:            {figures_dir()}")
    return written


# --- Committing the rendered outputs ------------------------------------------------------------
#
# The notebooks on main carry the outputs of an auto-mode run, so that GitHub and Colab show every
# figure before a learner has run anything. ``publish`` copies those outputs from executed copies
# onto the notebooks in the checkout, lightened: inline PNGs become downscaled JPEGs where that is
# smaller, run timestamps and widget views without saved state are dropped, and a notebook that
# would still exceed ``MAX_NOTEBOOK_BYTES`` is refused.

MAX_NOTEBOOK_BYTES = 2_000_000
MAX_IMAGE_SIDE = 900          # pixels: the width a notebook column shows
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def _lighter_image(png_b64: str, *, max_side: int = MAX_IMAGE_SIDE, quality: int = 82) -> tuple[str, str]:
    """(mime type, base64) of the lighter of the PNG and a downscaled JPEG of the same image."""
    import base64
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(base64.b64decode(png_b64)))
    scale = min(1.0, max_side / max(image.size))
    if scale < 1.0:
        image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                             Image.Resampling.LANCZOS)
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        image = Image.new("RGB", rgba.size, "white")
        image.paste(rgba, mask=rgba.getchannel("A"))
    buf = io.BytesIO()
    image.convert("RGB").save(buf, "JPEG", quality=quality, optimize=True)
    jpeg = base64.b64encode(buf.getvalue()).decode("ascii")
    if scale == 1.0 and len(jpeg) >= len(png_b64.replace("\n", "")):
        return "image/png", png_b64
    return "image/jpeg", jpeg


def lighten(nb) -> None:
    """Make an executed notebook light enough to commit (in place; see the section comment)."""
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        kept = []
        for out in cell.get("outputs", []):
            data = out.get("data")
            if data is not None:
                if WIDGET_VIEW in data:           # no widget state is saved: keep the text fallback only
                    data.pop(WIDGET_VIEW)
                    if not data:
                        continue
                if "image/png" in data:
                    mime, payload = _lighter_image(data["image/png"])
                    if mime != "image/png":
                        data.pop("image/png")
                        data[mime] = payload
                        out.get("metadata", {}).pop("image/png", None)
            kept.append(out)
        cell.outputs = kept
    nb.metadata.pop("widgets", None)


def publish(executed_dir: str | os.PathLike, root: Path | None = None,
            only: list[str] | None = None) -> list[Path]:
    """Copy the outputs of the executed copies in ``executed_dir`` onto ``notebooks/`` (lightened).

    Each executed copy must come from the notebook as it is now: every code cell's source must be
    the same (markdown may have been edited since, and the current text is kept), and the run must
    not be a smoke run. Nothing is written unless every notebook passes both checks and fits
    ``MAX_NOTEBOOK_BYTES``.
    """
    import nbformat

    root = root or project_root() or Path.cwd()
    plans = []
    for path in notebook_paths(root, only):
        executed = Path(executed_dir) / path.name
        if not executed.is_file():
            raise FileNotFoundError(f"no executed copy of {path.name} in {executed_dir}")
        current, run = nbformat.read(path, as_version=4), nbformat.read(executed, as_version=4)
        by_id = {c.get("id"): c for c in run.cells}
        for cell in current.cells:
            if cell.cell_type != "code":
                continue
            done = by_id.get(cell.get("id"))
            if done is None or done.source != cell.source:
                raise ValueError(f"{path.name}: code cell {cell.get('id')} changed since the run in {executed_dir}; "
                                 "run the notebook again")
            cell.outputs, cell.execution_count = done.get("outputs", []), done.get("execution_count")
        params = next(c for c in current.cells if "parameters" in c.metadata.get("tags", []))
        printed = "".join(o.get("text", "") for o in params.outputs if o.get("output_type") == "stream")
        if "mode=smoke" in printed or "mode=" not in printed:
            raise ValueError(f"{path.name}: the executed copy is not an auto- or full-mode run")
        lighten(current)
        text = nbformat.writes(current) + "\n"
        if len(text.encode()) > MAX_NOTEBOOK_BYTES:
            raise ValueError(f"{path.name}: {len(text.encode()) / 1e6:.1f} MB with outputs, over the "
                             f"{MAX_NOTEBOOK_BYTES / 1e6:.0f} MB limit")
        plans.append((path, text))
    for path, text in plans:
        tmp = path.with_suffix(".ipynb.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        print(f"  {path.name}: {len(text.encode()) / 1e6:.2f} MB with outputs")
    return [p for p, _ in plans]

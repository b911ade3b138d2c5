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
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    root = project_root() or Path.cwd()
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

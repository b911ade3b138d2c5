"""A learner on Colab: ``pip install`` the package, open one notebook alone in an empty folder.

The package is built into a wheel once per session and installed (without dependencies, which
the project environment already has) into a folder of its own, outside the checkout. Each
notebook is then copied alone into an empty folder and run there under nbval in smoke mode,
with that folder as the working directory and the installed copy first on ``PYTHONPATH``, so
nothing can lean on the repository layout: run folders, figures and other chapters' results
must all be found through the package. The asset mirror stands in for Colab's internet.

Writes into the checkout are caught where they happen: a ``sitecustomize`` module on the
subprocesses' path installs an audit hook (PEP 578) that logs every file opened for writing,
folder made, renamed or removed under the checkout, so the test fails on the run's own writes
and not on those of anything else running in the checkout meanwhile.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from comicutils import course_weights

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
OUTER_ENV = dict(os.environ)          # as the session started (conftest defaults, no per-test changes)
LOCAL_VARS = ("COMICUTILS_CACHE", "COMICUTILS_FIGURES", "COMICUTILS_RUNS", "COMICUTILS_OFFLINE",
              "PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "JUPYTER_PATH", "IPYTHONDIR")
NEEDS_SETUPTOOLS = (77, 0)            # pyproject.toml's build requirement

WRITE_WATCH = """
import os, sys

def _watch(root, log):
    roots = tuple({os.path.abspath(root) + os.sep, os.path.realpath(root) + os.sep})
    writes = ("w", "a", "x", "+")
    flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    paths = {"os.mkdir": (0,), "os.rename": (0, 1), "os.remove": (0,), "os.rmdir": (0,), "os.truncate": (0,),
             "os.symlink": (1,), "os.link": (1,), "shutil.copyfile": (1,), "shutil.rmtree": (0,)}

    def hook(event, args):
        try:
            if event == "open":
                path, mode, oflags = args
                if not (any(c in (mode or "") for c in writes) or (mode is None and (oflags or 0) & flags)):
                    return
                targets = [path]
            elif event in paths:
                targets = [args[i] for i in paths[event]]
            else:
                return
            for target in targets:
                if isinstance(target, (str, bytes, os.PathLike)):
                    full = os.path.abspath(os.fsdecode(target))
                    if full.startswith(roots):
                        with open(log, "a") as f:
                            f.write(f"{event} {full}\\n")
        except Exception:
            pass

    sys.addaudithook(hook)

if os.environ.get("COLAB_TEST_CHECKOUT") and os.environ.get("COLAB_TEST_WRITE_LOG"):
    _watch(os.environ["COLAB_TEST_CHECKOUT"], os.environ["COLAB_TEST_WRITE_LOG"])
"""

pytestmark = pytest.mark.slow


def _setuptools_version() -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        return (0,)


def _tail(text: str, n: int = 6000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


@pytest.fixture(scope="session")
def colab(tmp_path_factory) -> dict:
    """Build the wheel, install it outside the checkout, and return the environment to run in."""
    src = tmp_path_factory.mktemp("sdist")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        if (ROOT / name).is_file():
            shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "comicutils", src / "comicutils", ignore=shutil.ignore_patterns("__pycache__"))
    wheels, site = tmp_path_factory.mktemp("wheels"), tmp_path_factory.mktemp("site-packages")
    build = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(wheels), "-q"]
    if _setuptools_version() >= NEEDS_SETUPTOOLS:
        build.append("--no-build-isolation")      # else pip fetches setuptools from PyPI to build
    for cmd in (build, None):
        if cmd is None:
            (wheel,) = wheels.glob("comicutils-*.whl")
            cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel), "-q"]
        done = subprocess.run(cmd, capture_output=True, text=True, cwd=src)
        assert done.returncode == 0, f"{' '.join(cmd)}\n{done.stdout}\n{done.stderr}"

    hooks = tmp_path_factory.mktemp("hooks")
    (hooks / "sitecustomize.py").write_text(WRITE_WATCH)
    env = {k: v for k, v in OUTER_ENV.items() if k not in LOCAL_VARS}
    env.update(COMICUTILS_MODE="smoke", COMICUTILS_PROGRESS="0", PYTHONPATH=os.pathsep.join([str(site), str(hooks)]),
               HOME=str(tmp_path_factory.mktemp("home")), COLAB_TEST_CHECKOUT=str(ROOT),
               # the course weights come "from GitHub": here a file:// address of this checkout's copy,
               # so the download branch (into the cache, checked against the registry's sha256) runs
               COMICUTILS_PRETRAINED_URL=(ROOT / "data" / "pretrained").as_uri())
    env.pop("COMICUTILS_PRETRAINED", None)
    probe_dir = tmp_path_factory.mktemp("probe")
    log = probe_dir.parent / "probe-writes.log"
    canary = ROOT / "no-such-folder" / "written-by-the-probe"
    probe = subprocess.run(
        [sys.executable, "-c", "import json, comicutils; from comicutils import runtime; print(json.dumps("
         "{'file': comicutils.__file__, 'root': str(runtime.project_root()), 'runs': str(runtime.runs_root())}))\n"
         f"try: open({str(canary)!r}, 'w')\nexcept OSError: pass"],
        capture_output=True, text=True, cwd=probe_dir, env={**env, "COLAB_TEST_WRITE_LOG": str(log)})
    assert probe.returncode == 0, probe.stderr
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).resolve().is_relative_to(site.resolve()), seen   # the installed copy, not the checkout
    assert seen["root"] == "None", seen                                         # it knows no checkout
    assert Path(seen["runs"]) == probe_dir / "comicutils-runs" / "smoke", seen
    assert log.is_file() and str(canary) in log.read_text(), "the write watch is not active"
    return env


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_runs_alone_from_the_installed_package(notebook, colab, tmp_path):
    work = tmp_path / "content"
    work.mkdir()
    shutil.copy(notebook, work / notebook.name)
    log = tmp_path / "checkout-writes.log"
    cmd = [sys.executable, "-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-cell-timeout=900",
           "-p", "no:cacheprovider", "-q", "--rootdir", str(work), notebook.name]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=work, env={**colab, "COLAB_TEST_WRITE_LOG": str(log)},
                          timeout=1800)
    assert done.returncode == 0, _tail(done.stdout + done.stderr)

    assert not log.exists(), f"the run wrote into the checkout:\n{_tail(log.read_text(), 2000)}"
    made = {p.name for p in work.iterdir()} - {notebook.name}
    assert made <= {"comicutils-runs", "comicutils-figures"}, f"unexpected outputs in the working folder: {made}"
    source = notebook.read_text()
    if "viz.save_figure(" in source:
        assert any((work / "comicutils-figures" / "smoke").iterdir()), "no figure under the notebook's folder"
    if "course_weights" in source and course_weights.registry():     # fetched like a learner on Colab would
        fetched = Path(colab["HOME"]) / ".cache" / "comicutils" / "pretrained"
        assert fetched.is_dir() and any(fetched.rglob("*.safetensors")), "no course weight was downloaded"
    chapter = notebook.name[:2]
    if f'runtime.run_dir("{chapter}")' in source:
        assert (work / "comicutils-runs" / "smoke" / chapter).is_dir()

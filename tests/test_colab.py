"""A learner on today's Colab, and one on the oldest supported Python: install, then open one notebook alone.

For each runtime a virtual environment is built from pyenv's interpreter:

* ``colab-py3.13``: Python 3.13 with the versions Google publishes for Colab's GPU runtime
  (``../shared/colab/pip-freeze.gpu.txt``) of every package the course touches, the rest of
  that freeze as constraints, so their dependencies get Colab's versions too (all but the CUDA
  libraries: PyPI's torch of Colab's version is built for CUDA 13, Colab's for 12.8). Colab compiles
  its own dlib 19.24.6; the prebuilt ``dlib-bin`` of the same version stands in for it. OpenCV
  is installed as Colab has it: contrib 4.14 and then opencv-python 5.0 in the same ``cv2/``.
* ``oldest-py3.10``: a bare Python 3.10 venv, so the install resolves everything fresh.

Then the notebooks' own install cell runs in that environment, as Colab runs it (the
``COLAB_RELEASE_TAG`` variable Colab sets, and ``COMICUTILS_SOURCE`` pointing at this
checkout's wheel instead of GitHub), *with* its dependencies. The test compares ``pip list``
before and after: none of the preinstalled packages may change (:data:`MAY_CHANGE`, named in
docs/colab.md, is empty) and no test tool may arrive. Only then does the harness add nbval (with
Colab's versions as constraints) and run each notebook alone in an empty folder under nbval in
smoke mode, nothing of the checkout on the path. The asset mirror stands in for the internet.

Writes into the checkout are caught where they happen: a ``sitecustomize`` module on the
subprocesses' path installs an audit hook (PEP 578) that logs every file opened for writing,
folder made, renamed or removed under the checkout.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from comicutils import course_weights

ROOT = Path(__file__).resolve().parent.parent
# Google's published list of Colab's packages sits beside the asset mirror (../shared/colab)
COLAB = next((p for p in [Path(m).parent / "colab" for m in os.environ.get("COMICUTILS_MIRROR", "").split(os.pathsep) if m]
              + [ROOT.parent / "shared" / "colab"] if (p / "pip-freeze.gpu.txt").is_file()), ROOT.parent / "shared" / "colab")
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
OUTER_ENV = dict(os.environ)          # as the session started (conftest defaults, no per-test changes)
LOCAL_VARS = ("COMICUTILS_CACHE", "COMICUTILS_FIGURES", "COMICUTILS_RUNS", "COMICUTILS_OFFLINE",
              "PYTHONPATH", "PYTEST_ADDOPTS", "PYTEST_PLUGINS", "JUPYTER_PATH", "IPYTHONDIR", "VIRTUAL_ENV")
NEEDS_SETUPTOOLS = (77, 0)            # pyproject.toml's build requirement

# Colab's preinstalled packages that the course imports or that its dependencies pull in.
COLAB_TOUCHED = ("torch", "torchvision", "numpy", "scipy", "diffusers", "peft", "transformers", "accelerate",
                 "safetensors", "huggingface-hub", "tokenizers", "scikit-image", "matplotlib", "ipywidgets",
                 "widgetsnbextension", "jupyterlab-widgets", "ipykernel", "ipython", "jupyter-client", "tqdm",
                 "pandas", "pillow", "pytest", "requests", "filelock", "pyyaml", "packaging")
COLAB_OPENCV = (("opencv-contrib-python",), ("opencv-python", "opencv-python-headless"))  # in this order
MAY_CHANGE: frozenset[str] = frozenset()      # Colab's preinstalled packages the install may change (docs/colab.md names them)
VENV_TOOLS = frozenset({"pip", "setuptools", "wheel"})   # a bare venv's own: any install may upgrade them
TEST_TOOLS = frozenset({"pytest", "nbval", "pytest-timeout", "playwright", "ruff", "jupyterlab", "nbclient",
                        "notebook", "coverage"})
HARNESS = ("nbval>=0.10",)            # what the test adds after the comparison, to run notebooks

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


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def colab_pins() -> dict[str, str]:
    """Colab GPU runtime's ``pip freeze`` as {canonical name: version}, local tags (+cu128) dropped."""
    pins = {}
    for line in (COLAB / "pip-freeze.gpu.txt").read_text().splitlines():
        m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([^\s;]+)", line.strip())
        if m:
            pins[_canonical(m.group(1))] = m.group(2).split("+")[0]
    return pins


def install_cell_source() -> str:
    """The install cell, the same in every notebook (tests/test_colab.py checks that)."""
    nb = json.loads((ROOT / "notebooks" / "00_setup_and_data.ipynb").read_text())
    cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"
             and "".join(c["source"]).startswith("# Colab: install the course package")]
    assert len(cells) == 1, "chapter 00 needs exactly one install cell"
    return cells[0]


def _python(version: str) -> Path:
    """pyenv's interpreter of that minor version; a clear failure (not a skip) when there is none."""
    roots = [Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"]
    found = sorted(p for r in roots if r.is_dir() for p in r.glob(f"{version}.*/bin/python{version}"))
    assert found, (f"no Python {version} under {roots[0]}: this test needs pyenv's {version} "
                   f"(`pyenv install {version}`)")
    return found[-1]


def _run(cmd, *, env=None, cwd=None, timeout=3600):
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))}\n{_tail(done.stdout)}\n{_tail(done.stderr)}"
    return done


def _tail(text: str, n: int = 6000) -> str:
    return text if len(text) <= n else "...\n" + text[-n:]


def _installed(python: Path) -> dict[str, str]:
    out = _run([python, "-m", "pip", "list", "--format=json", "--disable-pip-version-check"]).stdout
    return {_canonical(p["name"]): p["version"] for p in json.loads(out)}


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """This checkout's package as the wheel a `pip install git+...` would build."""
    from importlib import metadata

    src = tmp_path_factory.mktemp("sdist")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "comicutils", src / "comicutils", ignore=shutil.ignore_patterns("__pycache__"))
    wheels = tmp_path_factory.mktemp("wheels")
    build = [sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "-w", str(wheels), "-q"]
    try:
        have = tuple(int(p) for p in metadata.version("setuptools").split(".")[:2])
    except (metadata.PackageNotFoundError, ValueError):
        have = (0,)
    if have >= NEEDS_SETUPTOOLS:
        build.append("--no-build-isolation")      # else pip fetches setuptools from PyPI to build
    _run(build, cwd=src)
    (found,) = wheels.glob("comicutils-*.whl")
    return found


def _build_colab(venv: Path, constraints: Path) -> None:
    pins = colab_pins()
    py = venv / "bin" / "python"
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check", "-c", constraints]
    _run(pip + [f"{n}=={pins[n]}" for n in COLAB_TOUCHED if n in pins] + [f"dlib-bin=={pins['dlib']}"])
    for group in COLAB_OPENCV:
        _run(pip + [f"{n}=={pins[n]}" for n in group])


@pytest.fixture(scope="session", params=["colab-py3.13", "oldest-py3.10"])
def learner(request, wheel, tmp_path_factory):
    """A learner's runtime with the course installed by the notebooks' own install cell."""
    name = request.param
    version = name.split("py")[1]
    base = tmp_path_factory.mktemp(name)
    venv = base / "venv"
    _run([_python(version), "-m", "venv", venv])
    py = venv / "bin" / "python"
    constraints = base / "colab-constraints.txt"
    pins = colab_pins()
    # Colab's torch is PyTorch's cu128 build; PyPI has the same release built for CUDA 13, whose CUDA
    # libraries (never loaded on a CPU) differ: those are left to pip, everything else is Colab's.
    constraints.write_text("".join(f"{n}=={v}\n" for n, v in pins.items()
                                   if n != "dlib" and not n.startswith(("nvidia-", "cuda-"))))
    if name.startswith("colab"):
        _build_colab(venv, constraints)
    before = _installed(py)

    env = {k: v for k, v in OUTER_ENV.items() if k not in LOCAL_VARS}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    cell = _run([py, "-c", install_cell_source()], cwd=base,
                env={**env, "COLAB_RELEASE_TAG": "test", "COMICUTILS_SOURCE": str(wheel)}).stdout
    after = _installed(py)
    changed = {n: (v, after.get(n)) for n, v in before.items() if after.get(n) != v}
    added = set(after) - set(before)
    assert "comicutils" in added and f"comicutils {after['comicutils']}" in cell, cell
    allowed = MAY_CHANGE if name.startswith("colab") else VENV_TOOLS
    assert set(changed) <= allowed, f"{name}: the install changed preinstalled packages: {changed}"
    assert not (added & TEST_TOOLS), f"{name}: the install brought test tools: {sorted(added & TEST_TOOLS)}"
    if name.startswith("colab"):
        assert "dlib-bin" not in added, "the install cell must not install dlib-bin beside Colab's dlib"
        assert after["ipywidgets"] == pins["ipywidgets"] and after["opencv-python"] == pins["opencv-python"]
    else:
        assert "dlib-bin" in added, "without a dlib, the install cell adds the prebuilt dlib-bin"

    keep = ["-c", constraints] if name.startswith("colab") else []      # the harness changes none of Colab's versions
    _run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", *keep, *HARNESS])
    hooks = base / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(WRITE_WATCH)
    # The Haar cascade "from GitHub": OpenCV 5 ships none, so a learner's first face detection fetches it;
    # here a mirror folder holds the same file (OpenCV 4's copy in this environment, checked by sha256).
    internet = base / "internet"
    from comicutils import faces

    haar = faces.model_paths()["haar_frontalface"]
    (internet / "opencv").mkdir(parents=True)
    shutil.copy(haar, internet / "opencv" / haar.name)
    mirrors = os.pathsep.join(p for p in (env.get("COMICUTILS_MIRROR"), str(internet)) if p)
    env.update(COMICUTILS_MODE="smoke", COMICUTILS_PROGRESS="0", PYTHONPATH=str(hooks), COMICUTILS_MIRROR=mirrors,
               HOME=str(base / "home"), COLAB_TEST_CHECKOUT=str(ROOT),
               # the course weights come "from GitHub": here a file:// address of this checkout's copy,
               # so the download branch (into the cache, checked against the registry's sha256) runs
               COMICUTILS_PRETRAINED_URL=(ROOT / "data" / "pretrained").as_uri())
    env.pop("COMICUTILS_PRETRAINED", None)
    probe_dir = base / "probe"
    probe_dir.mkdir()
    log = base / "probe-writes.log"
    canary = ROOT / "no-such-folder" / "written-by-the-probe"
    probe = _run([py, "-c", "import json, sys, cv2, ipywidgets, comicutils; from comicutils import runtime, faces; "
                  "print(json.dumps({'file': comicutils.__file__, 'root': str(runtime.project_root()), "
                  "'runs': str(runtime.runs_root()), 'python': sys.version.split()[0], 'cv2': cv2.__version__, "
                  "'haar': faces.haar_backend(), 'ipywidgets': ipywidgets.__version__}))\n"
                  f"try: open({str(canary)!r}, 'w')\nexcept OSError: pass"],
                 cwd=probe_dir, env={**env, "COLAB_TEST_WRITE_LOG": str(log)})
    seen = json.loads(probe.stdout.strip().splitlines()[-1])
    assert Path(seen["file"]).resolve().is_relative_to(venv.resolve()), seen   # the installed copy, not the checkout
    assert seen["root"] == "None", seen                                         # it knows no checkout
    assert Path(seen["runs"]) == probe_dir / "comicutils-runs" / "smoke", seen
    assert seen["python"].startswith(version), seen
    assert log.is_file() and str(canary) in log.read_text(), "the write watch is not active"
    print(f"{name}: {seen}; install cell said:\n{cell}")
    yield {"name": name, "python": py, "env": env, "seen": seen, "cell": cell}
    shutil.rmtree(venv, ignore_errors=True)     # a few GB each


def test_every_notebook_has_the_same_install_cell_and_colab_gpu_metadata():
    source = install_cell_source()
    for path in NOTEBOOKS + sorted((ROOT / "notebooks" / "solutions").glob("*.ipynb")):
        nb = json.loads(path.read_text())
        cells = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
        first = next(i for i, c in enumerate(cells) if c.startswith("# Colab: install"))
        assert cells[first] == source and first == 0, f"{path.name}: the install cell must come first and match chapter 00's"
        assert nb["metadata"].get("accelerator") == "GPU", path.name
        assert nb["metadata"].get("colab", {}).get("gpuType") == "T4", path.name


def test_the_install_cell_does_nothing_outside_colab(tmp_path):
    env = {k: v for k, v in OUTER_ENV.items() if k not in ("COLAB_RELEASE_TAG",)}
    done = _run([sys.executable, "-c", install_cell_source()], env=env, cwd=tmp_path)
    assert done.stdout.strip() == "comicutils is ready: installed", done.stdout
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda p: p.stem)
def test_a_notebook_runs_alone_after_its_install_cell(notebook, learner, tmp_path):
    work = tmp_path / "content"
    work.mkdir()
    shutil.copy(notebook, work / notebook.name)
    log = tmp_path / "checkout-writes.log"
    cmd = [learner["python"], "-m", "pytest", "--nbval-lax", "--nbval-current-env", "--nbval-cell-timeout=900",
           "-p", "no:cacheprovider", "-q", "--rootdir", str(work), notebook.name]
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, cwd=work,
                          env={**learner["env"], "COLAB_TEST_WRITE_LOG": str(log)}, timeout=1800)
    assert done.returncode == 0, f"{learner['name']}:\n" + _tail(done.stdout + done.stderr)

    assert not log.exists(), f"the run wrote into the checkout:\n{_tail(log.read_text(), 2000)}"
    made = {p.name for p in work.iterdir()} - {notebook.name}
    assert made <= {"comicutils-runs", "comicutils-figures"}, f"unexpected outputs in the working folder: {made}"
    source = notebook.read_text()
    if "viz.save_figure(" in source:
        assert any((work / "comicutils-figures" / "smoke").iterdir()), "no figure under the notebook's folder"
    if "course_weights" in source and course_weights.registry():     # fetched like a learner on Colab would
        fetched = Path(learner["env"]["HOME"]) / ".cache" / "comicutils" / "pretrained"
        assert fetched.is_dir() and any(fetched.rglob("*.safetensors")), "no course weight was downloaded"
    chapter = notebook.name[:2]
    if f'runtime.run_dir("{chapter}")' in source:
        assert (work / "comicutils-runs" / "smoke" / chapter).is_dir()

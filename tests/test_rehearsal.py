"""Rehearsal of a learner's GPU machine with internet: every notebook, real-weight branches only.

``python -m comicutils assets stand-ins DIR`` writes every real weight the course can load (VGG,
ResNet-50, AlexNet, the FID Inception, AnimeGANv2, StyleGAN2-FFHQ, Stable Diffusion 2.1) in its
real format with random weights, and prints the variables that put them in force. Each notebook
then runs in smoke mode with them, and a check cell appended to it asserts, inside the same
kernel, that no substitute replaced a real component and that the notebook took the real
branches (LPIPS and FID numbers, the SD 2.1 path). Numbers computed here come from random
weights: they test code paths, never results.
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
pytestmark = pytest.mark.slow           # runs every notebook: not part of the quick unit tests

# No substitute at all: every real weight is present (seed 001's identity term is dlib's
# face-recognition ResNet in PyTorch, read from the file face_recognition_models installs).
COMMON_CHECK = """
from comicutils import runtime as _rt
_subs = _rt.substitutes_in_use()
assert not _subs, "substitute in use with every real weight present: " + "; ".join(s.text() for s in _subs)
print("REHEARSAL: no substitute")
"""

# What each chapter must show when the real weights are present (names from the notebooks).
CHECKS = {
    "01": """
assert backbone.used == BACKBONE, backbone.used
print("REHEARSAL: NST on", backbone.used)
""",
    "03": """
assert G_ffhq is not None, "the StyleGAN2-FFHQ file is present but was not used"
assert semantic.perceptual == "lpips-vgg", semantic.perceptual
assert isinstance(semantic.identity, sg.IdentityLoss) and semantic.lambda_id == LAMBDA_ID, semantic.lambda_id
print("REHEARSAL: FFHQ file, LPIPS and dlib identity term in the semantic constraint")
""",
    "04": """
import math as _m
assert components.path == "sd21", components.path
assert result.perceptual.lower().startswith("lpips"), result.perceptual
assert all(not _m.isnan(v) for v in table["LPIPS-VGG"].iloc[1:]), table
print("REHEARSAL: SD 2.1 path, LPIPS loss and metric")
""",
    "05": """
assert chapter_04.model.components.path == "sd21", chapter_04.describe()
print("REHEARSAL: SD 2.1 path")
""",
    "06": """
import math as _m
assert "AnimeGANv2" in methods, list(methods)
assert comicdiff_04.model.components.path == "sd21", comicdiff_04.describe()
for _col in ("lpips_vgg", "lpips_alex", "fid"):
    _vals = [float(v) for v in table[_col]]
    assert all(not _m.isnan(v) for v in _vals), (_col, _vals)
print("REHEARSAL: AnimeGANv2, SD 2.1 ComicDiff, LPIPS and FID numbers")
""",
    "08": """
assert G_ffhq is not None and G_base is G_ffhq, "the StyleGAN2-FFHQ file is present but was not used"
assert perceptual.perceptual == "lpips-vgg", perceptual.perceptual
_nst = set(rows[rows.method == "NST (VGG-16)"].weights)
assert all(w.startswith("vgg16") and "instead of" not in w for w in _nst), _nst
print("REHEARSAL: FFHQ base, LPIPS perceptual loss, NST on VGG-16")
""",
}


@pytest.fixture(scope="module")
def standin_env(mirror):
    """Write the stand-ins with the course's own command (into the folder the unit tests use, so
    a second writer only verifies it) and read back its export lines."""
    where = ROOT / "build" / "test-standins"
    env = {**os.environ, "COMICUTILS_MIRROR": str(mirror)}
    out = subprocess.run([sys.executable, "-m", "comicutils", "assets", "stand-ins", str(where)],
                         capture_output=True, text=True, env=env, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    exports = {}
    for line in out.stdout.splitlines():
        if line.startswith("export "):
            name, _, value = line[len("export "):].partition("=")
            exports[name] = shlex.split(value)[0] if value else ""
    assert {"COMICUTILS_MIRROR", "COMICUTILS_STANDIN_CHECKSUMS", "HF_HOME"} <= set(exports), exports
    return exports


def _outputs_text(nb) -> str:
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            parts.append(out.get("text", ""))
            for value in out.get("data", {}).values():
                parts.append(value if isinstance(value, str) else str(value))
    return "\n".join(parts)


@pytest.mark.timeout(1200)
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.name[:2] for p in NOTEBOOKS])
def test_notebook_takes_every_real_branch_with_the_standins(path, standin_env, tmp_path, monkeypatch):
    for name, value in standin_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("COMICUTILS_MODE", "smoke")
    monkeypatch.setenv("COMICUTILS_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("COMICUTILS_FIGURES", str(tmp_path / "figures"))
    monkeypatch.delenv("COMICUTILS_OFFLINE", raising=False)         # HF_HUB_OFFLINE keeps hub calls local
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(COMMON_CHECK + CHECKS.get(path.name[:2], "")))
    client = NotebookClient(nb, timeout=900, kernel_name="python3",
                            extra_arguments=["--IPKernelApp.log_level=ERROR"],
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    text = _outputs_text(nb)
    for banner in ("Substitute in use", "SUBSTITUTE IN USE"):
        assert banner not in text, text.split(banner)[1][:800]
    assert "REHEARSAL: no substitute" in text
    uses_weights = path.name[:2] in CHECKS
    if uses_weights:
        assert "STAND-INS IN FORCE" in text, "the stand-in banner must say that the weights are random"

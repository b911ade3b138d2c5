"""The committed notebook outputs: how they are made light and copied onto notebooks/, and what
the notebooks on main must carry (an auto-mode run, at most 2 MB each, output cells nbval compares)."""
from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import nbformat
import numpy as np
import pytest
from PIL import Image

from comicutils import course

ROOT = Path(__file__).resolve().parent.parent


def _png(width: int, height: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _notebook(code: str, outputs: list, params: str = "print('mode=auto')") -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    p = nbformat.v4.new_code_cell(params, id="params")
    p.metadata["tags"] = ["parameters"]
    c = nbformat.v4.new_code_cell(code, id="figure")
    nb.cells = [nbformat.v4.new_markdown_cell("# 00 · A chapter", id="title"), p, c]
    return nb


def _executed(nb, outputs, mode="auto"):
    run = nbformat.from_dict(json.loads(nbformat.writes(nb)))
    run.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"mode={mode} size=64px\n")]
    run.cells[2].outputs = outputs
    run.cells[2].metadata["execution"] = {"iopub.execute_input": "2026-01-01T00:00:00Z"}
    return run


def test_lighten_turns_large_pngs_into_smaller_jpegs_and_drops_widget_views():
    nb = _notebook("fig", [])
    big = _png(1800, 600)
    nb.cells[2].outputs = [
        nbformat.v4.new_output("display_data", data={"image/png": big, "text/plain": "<Figure>"}),
        nbformat.v4.new_output("display_data", data={course.WIDGET_VIEW: {"model_id": "x"}, "text/plain": "VBox()"}),
        nbformat.v4.new_output("display_data", data={course.WIDGET_VIEW: {"model_id": "y"}}),
    ]
    nb.cells[2].metadata["execution"] = {"shell.execute_reply": "2026-01-01T00:00:01Z"}
    course.lighten(nb)
    outs = nb.cells[2].outputs
    assert len(outs) == 2 and "execution" not in nb.cells[2].metadata
    image = Image.open(io.BytesIO(base64.b64decode(outs[0].data["image/jpeg"])))
    assert max(image.size) == course.MAX_IMAGE_SIDE and image.size[0] / image.size[1] == pytest.approx(3, rel=0.01)
    assert "image/png" not in outs[0].data and len(outs[0].data["image/jpeg"]) < len(big)
    assert outs[1].data == {"text/plain": "VBox()"}


def test_lighten_keeps_a_small_png_that_a_jpeg_would_not_beat():
    flat = Image.new("RGB", (200, 100), "white")
    buf = io.BytesIO()
    flat.save(buf, "PNG")
    small = base64.b64encode(buf.getvalue()).decode("ascii")
    nb = _notebook("fig", [])
    nb.cells[2].outputs = [nbformat.v4.new_output("display_data", data={"image/png": small})]
    course.lighten(nb)
    assert nb.cells[2].outputs[0].data == {"image/png": small}


def _project(tmp_path: Path, nb) -> Path:
    (tmp_path / "notebooks").mkdir(parents=True)
    nbformat.write(nb, tmp_path / "notebooks" / "00_chapter.ipynb")
    return tmp_path


def test_publish_copies_outputs_keeps_current_markdown_and_refuses_stale_or_smoke_runs(tmp_path):
    nb = _notebook("show()", [])
    root = _project(tmp_path / "repo", nb)
    runs = tmp_path / "runs"
    runs.mkdir()
    outputs = [nbformat.v4.new_output("display_data", data={"image/png": _png(1200, 400)})]
    nbformat.write(_executed(nb, outputs), runs / "00_chapter.ipynb")
    edited = nbformat.read(root / "notebooks" / "00_chapter.ipynb", as_version=4)
    edited.cells[0].source = "# 00 · A chapter, text edited after the run"
    nbformat.write(edited, root / "notebooks" / "00_chapter.ipynb")

    course.publish(runs, root=root)
    done = nbformat.read(root / "notebooks" / "00_chapter.ipynb", as_version=4)
    assert done.cells[0].source.endswith("edited after the run")
    assert "image/jpeg" in done.cells[2].outputs[0].data and "mode=auto" in done.cells[1].outputs[0].text
    assert not list((root / "notebooks").glob("*.tmp"))

    stale = nbformat.read(root / "notebooks" / "00_chapter.ipynb", as_version=4)
    stale.cells[2].source = "show(again=True)"
    nbformat.write(stale, root / "notebooks" / "00_chapter.ipynb")
    before = (root / "notebooks" / "00_chapter.ipynb").read_bytes()
    with pytest.raises(ValueError, match="changed since the run"):
        course.publish(runs, root=root)
    nbformat.write(_executed(stale, outputs, mode="smoke"), runs / "00_chapter.ipynb")
    with pytest.raises(ValueError, match="not an auto- or full-mode run"):
        course.publish(runs, root=root)
    assert (root / "notebooks" / "00_chapter.ipynb").read_bytes() == before      # nothing written


def test_publish_refuses_a_notebook_over_the_size_limit(tmp_path, monkeypatch):
    nb = _notebook("show()", [])
    root = _project(tmp_path / "repo", nb)
    runs = tmp_path / "runs"
    runs.mkdir()
    nbformat.write(_executed(nb, [nbformat.v4.new_output("display_data", data={"image/png": _png(800, 800)})]),
                   runs / "00_chapter.ipynb")
    monkeypatch.setattr(course, "MAX_NOTEBOOK_BYTES", 10_000)
    before = (root / "notebooks" / "00_chapter.ipynb").read_bytes()
    with pytest.raises(ValueError, match="over the"):
        course.publish(runs, root=root)
    assert (root / "notebooks" / "00_chapter.ipynb").read_bytes() == before


def test_the_cli_refuses_to_publish_a_smoke_run(capsys, monkeypatch):
    from comicutils import cli

    monkeypatch.setenv("COMICUTILS_MODE", "smoke")
    with pytest.raises(SystemExit) as exc:
        cli.main(["course", "--only", "00", "--publish"])
    assert exc.value.code == 2 and "COMICUTILS_MODE=auto" in capsys.readouterr().err


@pytest.mark.parametrize("path", course.notebook_paths(ROOT), ids=lambda p: p.name[:2])
def test_committed_notebooks_carry_light_auto_mode_outputs_and_checked_cells(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert path.stat().st_size <= course.MAX_NOTEBOOK_BYTES, f"{path.name}: over 2 MB"
    images = [o for c in code for o in c.get("outputs", []) if {"image/png", "image/jpeg"} & set(o.get("data", {}))]
    assert images, f"{path.name}: no figure among the outputs"
    params = next(c for c in code if "parameters" in c["metadata"].get("tags", []))
    printed = "".join("".join(o.get("text", "")) for o in params["outputs"])
    assert "mode=auto" in printed or "mode=full" in printed, f"{path.name}: outputs are not from an auto run"
    errors = [o for c in code for o in c["outputs"] if o["output_type"] == "error"]
    assert not errors, f"{path.name}: committed with an error output"
    checked = [c for c in code if "# NBVAL_CHECK_OUTPUT" in "".join(c["source"])]
    assert checked and all(c["outputs"] for c in checked), f"{path.name}: no output cell for nbval to compare"
    assert not any("execution" in c["metadata"] for c in nb["cells"]), f"{path.name}: run timestamps committed"


def test_the_course_runner_draws_figures_into_the_outputs_even_under_mplbackend_agg(tmp_path, monkeypatch):
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0]);", id="plot")]
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, tmp_path / "notebooks" / "00_plot.ipynb")
    monkeypatch.setattr(course, "project_root", lambda: tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    written = course.run_course(out_dir=tmp_path / "out", timeout=120)
    outputs = nbformat.read(written[0], as_version=4).cells[0].outputs
    assert any("image/png" in o.get("data", {}) for o in outputs)
    import os
    assert os.environ["MPLBACKEND"] == "Agg"                 # the caller's setting is restored

"""The README's two commands, CI, the notebooks and the CLI stay in step."""
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from comicutils import course, viz
from comicutils.cli import main as cli_main

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```bash\n(python3 -m venv .venv && .+?)\n```", text)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds
    course_cmd, test_cmd = cmds
    assert "comicutils course" in course_cmd
    assert "COMICUTILS_MODE=smoke" in test_cmd and "pytest" in test_cmd
    assert test_cmd in (ROOT / ".ci" / "run").read_text()


def test_pytest_collects_notebooks_with_nbval_lax():
    text = (ROOT / "pyproject.toml").read_text()
    assert "--nbval-lax" in text and '"notebooks"' in text


def test_notebooks_are_numbered_and_have_a_parameters_cell():
    paths = course.notebook_paths(ROOT)
    assert paths[0].name == "00_setup_and_data.ipynb"
    for path in paths:
        nb = json.loads(path.read_text())
        code = [c for c in nb["cells"] if c["cell_type"] == "code"]
        tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
        assert len(tagged) == 1, f"{path.name} needs exactly one cell tagged 'parameters'"
        assert "by_mode" in "".join(tagged[0]["source"])


def test_every_notebook_cell_has_a_unique_id():
    """nbformat 4.5 requires cell ids; without them every run prints a MissingIDFieldWarning."""
    for path in sorted(p for p in (ROOT / "notebooks").rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts):
        nb = json.loads(path.read_text())
        assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5), path.name
        ids = [c.get("id") for c in nb["cells"]]
        assert all(ids), f"{path.name}: a cell has no id"
        assert len(set(ids)) == len(ids), f"{path.name}: duplicate cell ids"


def test_notebook_selection_by_prefix():
    assert [p.name[:2] for p in course.notebook_paths(ROOT, ["00"])] == ["00"]
    with pytest.raises(FileNotFoundError):
        course.notebook_paths(ROOT, ["99"])


def test_cli_info_and_module_entry_point(capsys):
    assert cli_main(["info"]) == 0
    assert "smoke" in capsys.readouterr().out
    out = subprocess.run([sys.executable, "-m", "comicutils", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "assets" in out.stdout and "course" in out.stdout


def test_cli_rejects_an_unknown_command():
    with pytest.raises(SystemExit) as err:
        cli_main(["nonsense"])
    assert err.value.code == 2


def test_save_figure_writes_png_atomically_to_the_figures_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("COMICUTILS_FIGURES", str(tmp_path))
    fig = viz.show_images(torch.rand(3, 3, 8, 8), ["a", "b", "c"], ncols=2)
    path = viz.save_figure(fig, "grid")
    assert path == tmp_path / "grid.png" and path.read_bytes()[:4] == b"\x89PNG"
    assert [p.name for p in tmp_path.iterdir()] == ["grid.png"]
    with pytest.raises(ValueError):
        viz.save_figure(fig, "../escape")


def test_heatmap_and_rows_figures():
    import matplotlib.pyplot as plt

    f1 = viz.heatmap(torch.rand(4, 4), list("abcd"), annotate=True)
    f2 = viz.show_rows({"x": torch.rand(2, 3, 8, 8), "y": torch.rand(3, 3, 8, 8)}, ["p", "q", "r"])
    assert len(f2.axes) == 6
    plt.close(f1)
    plt.close(f2)


def test_the_wheel_ships_every_subpackage():
    """A non-editable install (Colab's pip install git+...) must include comicdiff/ and stylegan/."""
    import tomllib

    setuptools_cfg = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "packages" in setuptools_cfg, "pyproject.toml must say which packages ship"
    include = setuptools_cfg["packages"]["find"]["include"]
    assert "comicutils" in include and "comicutils.*" in include
    assert (ROOT / "comicutils" / "comicdiff" / "__init__.py").is_file()


def test_cli_failures_are_one_line_without_traceback_unless_debug(tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    cmd = [sys.executable, "-m", "comicutils", "stylize", str(broken), "--method", "nst", "--style", str(broken),
           "--out", str(tmp_path / "out")]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 1, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and "broken.jpg" in lines[0], out.stderr
    assert "Traceback" not in out.stderr and not (tmp_path / "out").exists()
    # an error no command handles itself reaches the boundary: one line, or the traceback on request
    (tmp_path / "a-file").write_text("")
    boundary = [sys.executable, "-m", "comicutils", "assets", "stand-ins", str(tmp_path / "a-file" / "dir")]
    out = subprocess.run(boundary, capture_output=True, text=True)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "Traceback" not in out.stderr
    assert "a-file" in out.stderr
    debug = subprocess.run(boundary[:3] + ["--debug"] + boundary[3:], capture_output=True, text=True)
    assert debug.returncode == 1 and "Traceback" in debug.stderr

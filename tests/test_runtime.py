import random

import numpy as np
import pytest
import torch

from comicutils import runtime


@pytest.mark.parametrize("raw,mode", [("smoke", "smoke"), ("AUTO", "auto"), (" full ", "full"), ("", "auto")])
def test_mode_from_environment(monkeypatch, raw, mode):
    monkeypatch.setenv("COMICUTILS_MODE", raw)
    assert runtime.get_mode() == mode


def test_unknown_mode_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("COMICUTILS_MODE", "fast")
    with pytest.raises(runtime.ModeError, match="smoke, auto, full"):
        runtime.get_mode()


def test_by_mode_picks_the_value_of_the_mode(monkeypatch):
    monkeypatch.setenv("COMICUTILS_MODE", "smoke")
    assert runtime.by_mode(smoke=1, auto=2, full=3) == 1
    monkeypatch.setenv("COMICUTILS_MODE", "full")
    assert runtime.by_mode(smoke=1, auto=2, full=3) == 3
    assert runtime.by_mode(smoke=1, auto=2) == 2  # full falls back to auto
    assert runtime.by_mode(smoke=1, auto=2, mode="auto") == 2


def test_seed_everything_makes_every_generator_repeat():
    def draw():
        return random.random(), np.random.rand(), torch.rand(3)

    g1 = runtime.seed_everything(123)
    a = draw(), torch.rand(2, generator=g1)
    g2 = runtime.seed_everything(123)
    b = draw(), torch.rand(2, generator=g2)
    assert a[0][0] == b[0][0] and a[0][1] == b[0][1]
    assert torch.equal(a[0][2], b[0][2]) and torch.equal(a[1], b[1])
    runtime.seed_everything(124)
    assert not torch.equal(torch.rand(3), a[0][2])


@pytest.mark.parametrize("bad", [-1, 2**32, 1.5, "1", True])
def test_seed_everything_rejects_bad_seeds(bad):
    with pytest.raises((TypeError, ValueError)):
        runtime.seed_everything(bad)


def test_device_defaults_to_cpu_without_gpu_and_refuses_missing_cuda(monkeypatch):
    monkeypatch.delenv("COMICUTILS_DEVICE", raising=False)
    if not torch.cuda.is_available():
        assert runtime.get_device().type in {"cpu", "mps"}
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            runtime.get_device("cuda")
    assert runtime.get_device("cpu") == torch.device("cpu")


def test_progress_bar_counts_and_can_be_silenced(monkeypatch, capsys):
    monkeypatch.setenv("COMICUTILS_PROGRESS", "0")
    assert sum(runtime.progress(range(5), desc="x")) == 10
    assert "x" not in capsys.readouterr().err


def test_substitute_banner_is_printed_and_remembered(capsys, monkeypatch):
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    sub = runtime.substitute_banner("VGG-19 ImageNet weights", "taef2 encoder", "offline")
    out = capsys.readouterr().out
    assert "SUBSTITUTE IN USE" in out and "taef2 encoder" in out and "VGG-19" in out
    assert sub in runtime.substitutes_in_use()
    assert "Substitute in use" in sub._repr_html_() and "auto mode" in sub._repr_html_()


def test_figures_go_to_a_build_folder_in_smoke_mode(monkeypatch):
    monkeypatch.delenv("COMICUTILS_FIGURES")
    monkeypatch.setenv("COMICUTILS_MODE", "smoke")
    assert runtime.figures_dir().parts[-2:] == ("build", "smoke-figures")
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    assert runtime.figures_dir().name == "figures"


def test_environment_report_names_mode_and_device():
    rep = runtime.environment_report()
    assert rep["mode"] == "smoke" and rep["device"] in {"cpu", "cuda", "mps"}
    assert "COMICUTILS_MIRROR" in rep


def test_a_substitute_is_announced_once_per_process(capsys):
    runtime.substitute_banner("X weights", "Y", "offline")
    runtime.substitute_banner("X weights", "Y", "offline")
    assert capsys.readouterr().out.count("SUBSTITUTE IN USE") == 1
    runtime.substitute_banner("X weights", "Y", "offline", show="always")
    assert "SUBSTITUTE IN USE" in capsys.readouterr().out
    assert len(runtime.substitutes_in_use()) == 1


def test_atomic_path_writes_all_or_nothing(tmp_path):
    target = tmp_path / "sub" / "f.txt"
    with runtime.atomic_path(target) as tmp:
        tmp.write_text("done")
    assert target.read_text() == "done"
    with pytest.raises(RuntimeError):
        with runtime.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "done" and sorted(p.name for p in target.parent.iterdir()) == ["f.txt"]


def test_atomic_dir_builds_all_or_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with runtime.atomic_dir(tmp_path / "d") as tmp:
            (tmp / "a").write_text("x")
            raise RuntimeError("interrupted")
    assert list(tmp_path.iterdir()) == []
    with runtime.atomic_dir(tmp_path / "d") as tmp:
        (tmp / "a").write_text("x")
    assert (tmp_path / "d" / "a").read_text() == "x"
    with pytest.raises(FileExistsError):
        with runtime.atomic_dir(tmp_path / "d"):
            pass


def test_atomic_dir_overwrite_replaces_only_a_complete_folder(tmp_path):
    target = tmp_path / "d"
    with runtime.atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(RuntimeError):
        with runtime.atomic_dir(target, overwrite=True) as tmp:
            (tmp / "b.txt").write_text("half")
            raise RuntimeError("interrupted")
    assert sorted(p.name for p in target.iterdir()) == ["a.txt"]        # the old one survives intact
    with runtime.atomic_dir(target, overwrite=True) as tmp:
        (tmp / "b.txt").write_text("new")
    assert sorted(p.name for p in target.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]          # no staging folders left


# --------------------------------------------------------------------------- where outputs go
@pytest.fixture
def no_overrides(monkeypatch):
    monkeypatch.delenv("COMICUTILS_RUNS", raising=False)
    monkeypatch.delenv("COMICUTILS_FIGURES", raising=False)


def test_the_checkout_is_found_and_an_installed_package_has_none(monkeypatch, tmp_path):
    root = runtime.project_root()
    assert root is not None and (root / "comicutils" / "runtime.py").is_file()
    fake_site = tmp_path / "site-packages" / "comicutils"
    fake_site.mkdir(parents=True)
    monkeypatch.setattr(runtime, "__file__", str(fake_site / "runtime.py"))
    assert runtime.project_root() is None


@pytest.mark.usefixtures("no_overrides")
def test_run_folders_and_figures_in_a_checkout(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "project_root", lambda: tmp_path)
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    assert runtime.run_dir(4) == tmp_path / "data" / "runs" / "04" and (tmp_path / "data/runs/04").is_dir()
    assert runtime.figures_dir() == tmp_path / "figures"
    monkeypatch.setenv("COMICUTILS_MODE", "smoke")             # never data/runs or figures/
    assert runtime.run_dir("02") == tmp_path / "build" / "smoke-runs" / "02"
    assert runtime.figures_dir() == tmp_path / "build" / "smoke-figures"


@pytest.mark.usefixtures("no_overrides")
def test_run_folders_and_figures_of_an_installed_package_go_under_the_working_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "project_root", lambda: None)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    assert runtime.run_dir("05") == tmp_path / "comicutils-runs" / "05"
    assert runtime.figures_dir() == tmp_path / "comicutils-figures"
    monkeypatch.setenv("COMICUTILS_MODE", "smoke")
    assert runtime.run_dir(5) == tmp_path / "comicutils-runs" / "smoke" / "05"
    assert runtime.figures_dir() == tmp_path / "comicutils-figures" / "smoke"
    assert runtime.environment_report()["run folders"] == str(tmp_path / "comicutils-runs" / "smoke")


@pytest.mark.usefixtures("no_overrides")
def test_override_variables_win_in_every_layout(monkeypatch, tmp_path):
    monkeypatch.setattr(runtime, "project_root", lambda: tmp_path / "checkout")
    monkeypatch.setenv("COMICUTILS_RUNS", str(tmp_path / "drive" / "runs"))
    monkeypatch.setenv("COMICUTILS_FIGURES", str(tmp_path / "drive" / "figures"))
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    assert runtime.run_dir("06") == tmp_path / "drive" / "runs" / "06"
    assert runtime.figures_dir() == tmp_path / "drive" / "figures"
    monkeypatch.setenv("COMICUTILS_MODE", "smoke")             # smoke runs keep to a folder of their own
    assert runtime.run_dir("06") == tmp_path / "drive" / "runs" / "smoke" / "06"
    assert not (tmp_path / "checkout").exists()


@pytest.mark.usefixtures("no_overrides")
def test_a_smoke_run_folder_starts_empty_and_looking_creates_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("COMICUTILS_RUNS", str(tmp_path))
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    (runtime.run_dir("02") / "U-Net.pt").write_text("a checkpoint")
    assert (runtime.run_dir("02") / "U-Net.pt").is_file()      # auto/full: kept (runs resume)
    assert runtime.run_dir("03", create=False) == tmp_path / "03" and not (tmp_path / "03").exists()
    monkeypatch.setenv("COMICUTILS_MODE", "smoke")
    (runtime.run_dir("02") / "old.pt").write_text("from an earlier smoke run")
    assert list(runtime.run_dir("02").iterdir()) == []
    assert (tmp_path / "02" / "U-Net.pt").is_file()             # the real run is untouched


@pytest.mark.parametrize("chapter,name", [(4, "04"), ("4", "04"), ("04", "04"), (12, "12")])
def test_chapter_names(chapter, name):
    assert runtime.chapter_name(chapter) == name


@pytest.mark.parametrize("bad", ["../04", "", "4a", -1, 100, True])
def test_a_chapter_is_a_number(bad):
    with pytest.raises(ValueError):
        runtime.run_dir(bad, create=False)


def test_notice_banner_is_not_a_substitute(capsys, monkeypatch):
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    note = runtime.notice_banner("Chapter 02's checkpoints not used", "Looked in x.", "Why: none.")
    out = capsys.readouterr().out
    assert out.startswith("NOTE [auto mode]: Chapter 02's checkpoints not used.") and "Looked in x." in out
    assert "SUBSTITUTE" not in out and runtime.substitutes_in_use() == []
    html = note._repr_html_()
    assert "Substitute" not in html and "#d9480f" not in html and "Looked in x." in html


def test_by_mode_scales_auto_by_device_tier(monkeypatch):
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    knobs = dict(smoke=1, auto=2, gpu16=3, gpu40=4, full=5)
    assert [runtime.by_mode(**knobs, tier=t) for t in runtime.TIERS] == [2, 3, 4]
    assert runtime.by_mode(smoke=1, auto=2, gpu16=3, tier="gpu40") == 3     # gpu40 falls back to gpu16
    assert runtime.by_mode(smoke=1, auto=2, full=9, tier="gpu16") == 2      # then to auto
    monkeypatch.setenv("COMICUTILS_MODE", "full")
    assert runtime.by_mode(smoke=1, auto=2, gpu16=3, gpu40=4) == 4          # full without its own value: the largest tier's
    with pytest.raises(ValueError, match="gpu16"):
        runtime.by_mode(smoke=1, auto=2, gpu16=3, mode="auto", tier="tpu")


def test_device_tier_on_the_cpu_and_its_test_override(monkeypatch):
    monkeypatch.delenv("COMICUTILS_TIER", raising=False)
    monkeypatch.setenv("COMICUTILS_DEVICE", "cpu")
    tier = runtime.device_tier()
    assert (tier.name, tier.dtype, tier.grad_scaler, tier.rehearsal, tier.is_gpu) == ("cpu", "float32", False, False, False)
    monkeypatch.setenv("COMICUTILS_TIER", "gpu16")
    tier = runtime.device_tier()
    assert (tier.name, tier.device, tier.rehearsal, tier.budget_gib) == ("gpu16", "cpu", True, runtime.TIER_BUDGET_GIB["gpu16"])
    assert (tier.dtype, tier.compute_dtype, tier.grad_scaler) == ("float16", "float32", True)   # estimated as a T4, run in fp32
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    assert runtime.by_mode(smoke=1, auto=2, gpu16=3) == 3                  # the rehearsal takes the tier's settings
    assert "gpu16" in runtime.environment_report()["device tier"]
    monkeypatch.setenv("COMICUTILS_TIER", "t4")
    with pytest.raises(ValueError, match="COMICUTILS_TIER"):
        runtime.device_tier()


def test_device_tier_reads_the_card(monkeypatch):
    """A T4 (15 GiB, compute capability 7.5) gets gpu16 with fp16 and a grad scaler; an A100 gpu40 with bf16."""
    import types

    monkeypatch.delenv("COMICUTILS_TIER", raising=False)
    monkeypatch.setattr(runtime, "get_device", lambda prefer=None: torch.device("cuda", 0))
    for name, gib, cc, want in [("Tesla T4", 15.0, (7, 5), ("gpu16", "float16", True)),
                                ("NVIDIA A100-SXM4-40GB", 39.4, (8, 0), ("gpu40", "bfloat16", False)),
                                ("NVIDIA L4", 22.0, (8, 9), ("gpu16", "bfloat16", False)),
                                ("GeForce GTX 1060", 6.0, (6, 1), ("cpu", "float32", False))]:
        props = types.SimpleNamespace(name=name, total_memory=int(gib * 2**30), major=cc[0], minor=cc[1])
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev, p=props: p)
        tier = runtime.device_tier()
        assert (tier.name, tier.dtype, tier.grad_scaler) == want, name
        assert tier.budget_gib <= gib - 1.5 or tier.name == "cpu", name


def test_none_is_a_value_in_every_mode_and_an_omitted_full_falls_back(monkeypatch):
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    assert runtime.by_mode(smoke=3, auto=None, gpu16=400, tier="cpu") is None        # "no step limit" on the CPU
    assert runtime.by_mode(smoke=3, auto=1, gpu16=None, tier="gpu40") is None
    assert runtime.by_mode(smoke=3, auto=1, gpu40=600, full=None, mode="full") is None   # full: no limit
    assert runtime.by_mode(smoke=3, auto=1, gpu40=600, mode="full") == 600

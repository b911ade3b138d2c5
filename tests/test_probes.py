"""The second round of probes, one test per class: nothing of the user's is deleted or overwritten,
paths stay in their folders, checkpoint files and sets are whole, checksummed and fall back, one run
per output folder, resumes are exact or say what changed, options are checked before any work."""
from __future__ import annotations

import fcntl
import io
import json
import logging
import os
import signal
import stat
import tarfile

import pytest
import torch

from comicutils import assets, checkpoints, cli, course_weights as W, data, pix2pix
from comicutils.data import PairDataset, PairSet


def _pairs(n=3, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    photos = torch.rand(n, 3, size, size, generator=g)
    return PairSet([f"k{i}" for i in range(n)], photos, (1 - photos).flip(-1))


def _trainer(**kw):
    torch.manual_seed(0)
    return pix2pix.Pix2PixTrainer(pix2pix.UNetGenerator(32, ngf=4), pix2pix.PatchDiscriminator(ndf=4, n_layers=2),
                                  device="cpu", **kw)


def _flip_byte_inside(path, needle: bytes) -> None:
    """Change one byte of ``path`` inside the first occurrence of ``needle``: same size, other content."""
    raw = bytearray(path.read_bytes())
    at = raw.find(needle)
    assert at >= 0
    raw[at + len(needle) // 2] ^= 0x01
    path.write_bytes(bytes(raw))


# --------------------------------------------------------------------------- a user's files deleted
@pytest.mark.parametrize("name", ["run.pt", "run*.pt", "r[u]n?.pt"])
def test_a_save_removes_only_its_own_temp_never_files_matching_the_name(tmp_path, name):
    path = tmp_path / name
    bystanders = [tmp_path / f".{name}.swp", tmp_path / ".run.pt.bak", tmp_path / ".other", tmp_path / ".runx.pt.tmp"]
    for b in bystanders:
        b.write_text("mine")
    folder = tmp_path / f".{name}.d"
    folder.mkdir()
    (folder / "keep").write_text("mine")
    checkpoints.temp_path(path).write_bytes(b"what a killed save left")
    checkpoints.save_state({"format": "x", "w": torch.ones(3)}, path)
    checkpoints.save_state({"format": "x", "w": torch.zeros(3)}, path)
    assert all(b.read_text() == "mine" for b in bystanders) and (folder / "keep").read_text() == "mine"
    assert not checkpoints.temp_path(path).exists()
    assert torch.equal(checkpoints.load_file(path)["w"], torch.zeros(3))


def test_a_folder_at_the_temp_name_that_is_not_ours_is_never_deleted(tmp_path):
    theirs = checkpoints.temp_path(tmp_path / "ckpt")
    theirs.mkdir()
    (theirs / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not made by a course save"):
        checkpoints.write_checkpoint_dir(tmp_path, "ckpt", lambda d: (d / "a").write_text("1"))
    assert (theirs / "notes.txt").read_text() == "mine"


# --------------------------------------------------------------------------- an input overwritten
def test_stylize_refuses_an_out_whose_output_would_replace_an_input(tmp_path, capsys):
    from comicutils.images import save_image

    for stem in ("a", "a_pix2pix"):
        save_image(torch.rand(3, 32, 32), tmp_path / f"{stem}.png")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    ckpt = tmp_path / "g.pt"
    ckpt.write_bytes(b"never read")
    code = _exit_code(["stylize", str(tmp_path / "a.png"), str(tmp_path / "a_pix2pix.png"), "--method", "pix2pix",
                       "--checkpoint", str(ckpt), "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "would overwrite the input" in err and "--out" in err and err.count("\n") == 1
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.name != "g.pt"} == before


def test_overwritten_inputs_sees_links_and_relative_spellings(tmp_path):
    (tmp_path / "in").mkdir()
    photo = tmp_path / "in" / "x_nst.png"
    photo.write_bytes(b"photo")
    names = {str(tmp_path / "in" / "x.png"): "x_nst.png", str(photo): "x_nst-2.png"}
    assert cli.overwritten_inputs(names, tmp_path / "in" / ".." / "in") == [(str(photo), str(tmp_path / "in" / ".." / "in" / "x_nst.png"))]
    (tmp_path / "link").symlink_to(tmp_path / "in")
    assert cli.overwritten_inputs(names, tmp_path / "link")
    assert cli.overwritten_inputs(names, tmp_path / "elsewhere") == []


# --------------------------------------------------------------------------- paths that escape
@pytest.mark.parametrize("rel", ["../outside.bin", "/etc/passwd", "a/../../outside.bin", ""])
def test_confined_path_refuses_what_leaves_its_folder(tmp_path, rel):
    with pytest.raises(assets.UnsafePath):
        assets.confined_path(tmp_path / "root", rel)


def test_confined_path_follows_links_and_accepts_what_stays(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    (root / "out").symlink_to(tmp_path)
    with pytest.raises(assets.UnsafePath):
        assets.confined_path(root, "out/secret")
    assert assets.confined_path(root, "a/../b.bin") == root / "a/../b.bin"


def test_an_asset_whose_registry_path_escapes_is_never_read_or_downloaded(tmp_path, monkeypatch):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    a = assets.Asset("escape", "https://example.invalid/x.bin", "0" * 64, 6, "CC0", "test", "../../../" * 8 + str(outside),
                     "fake")
    monkeypatch.setitem(assets.REGISTRY, "escape", a)
    monkeypatch.delenv("COMICUTILS_OFFLINE", raising=False)
    with pytest.raises(assets.UnsafePath):
        assets.fetch("escape")


def test_a_course_registry_pointing_outside_is_refused_by_verify_and_fetch(tmp_path, monkeypatch):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"secret")
    pre = tmp_path / "pretrained"
    pre.mkdir()
    sha = W._sha256(outside)
    (pre / W.REGISTRY_NAME).write_text(json.dumps({"pix2pix": {"files": {"../outside.bin": {"sha256": sha, "bytes": 6}},
                                                               "steps": 1}}))
    monkeypatch.setenv(W.PRETRAINED_ENV, str(pre))
    [(name, state)] = W.verify()
    assert name == "pix2pix" and state != "ok" and "outside" in state
    monkeypatch.delenv("COMICUTILS_OFFLINE", raising=False)             # downloads on: still nothing written
    with pytest.raises(assets.UnsafePath):
        W._fetch_file("../../escaped.bin", sha)
    assert not (assets.cache_dir().parent / "escaped.bin").exists()


def _tar(path, *entries):
    with tarfile.open(path, "w") as tf:
        for info, payload in entries:
            tf.addfile(info, io.BytesIO(payload) if payload is not None else None)


def _member(name, kind=tarfile.REGTYPE, data=b"x", mode=0o644, link=""):
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.linkname = kind, mode, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize("bad", [_member("../evil"), _member("/abs/evil"), _member("a/../../evil"),
                                 _member("ln", tarfile.SYMTYPE, link="/etc/passwd"),
                                 _member("hard", tarfile.LNKTYPE, link="ok.txt"),
                                 _member("fifo", tarfile.FIFOTYPE), _member("dev", tarfile.CHRTYPE)])
def test_tar_extraction_refuses_escapes_links_fifos_and_devices(tmp_path, bad):
    archive = tmp_path / "a.tar"
    _tar(archive, _member("ok.txt"), bad)
    with pytest.raises(assets.UnsafePath, match="refusing"):
        data.extract_tar(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "evil").exists()


def test_tar_extraction_drops_setuid_bits(tmp_path):
    archive = tmp_path / "a.tar"
    _tar(archive, _member("d", tarfile.DIRTYPE), _member("d/tool", mode=0o4755))
    out = data.extract_tar(archive, tmp_path / "out")
    mode = (out / "d" / "tool").stat().st_mode
    assert not mode & stat.S_ISUID and (out / "d" / "tool").read_bytes() == b"x"


# --------------------------------------------------------------------------- checkpoint files
def test_a_same_size_corruption_of_a_checkpoint_file_is_found_and_the_previous_one_used(tmp_path):
    path = tmp_path / "run.pt"
    checkpoints.save_state({"format": "x", "step": 1, "w": torch.full((256,), 0.25)}, path)
    checkpoints.save_state({"format": "x", "step": 2, "w": torch.full((256,), 0.5)}, path)
    size = path.stat().st_size
    _flip_byte_inside(path, torch.full((64,), 0.5).numpy().tobytes())
    assert path.stat().st_size == size
    with pytest.raises(checkpoints.CheckpointCorrupt, match="content checksum"):
        checkpoints.load_file(path)
    said = []
    obj, source = checkpoints.load_latest(path, say=said.append)
    assert source == checkpoints.previous_path(path) and obj["step"] == 1 and "unusable" in said[0]
    checkpoints.save_state({"format": "x", "step": 3, "w": torch.zeros(4)}, path)     # the damaged one is replaced,
    assert checkpoints.load_file(checkpoints.previous_path(path))["step"] == 1        # the intact one kept


def test_a_kill_between_the_two_renames_of_a_file_leaves_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    checkpoints.save_state({"format": "x", "step": 1}, path)
    checkpoints.save_state({"format": "x", "step": 2}, path)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("SIGKILL stand-in")
        return real(src, dst)
    monkeypatch.setattr(checkpoints.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        checkpoints.save_state({"format": "x", "step": 3}, path)
    monkeypatch.undo()
    assert not path.exists()
    obj, source = checkpoints.load_latest(path, say=lambda m: None)
    assert obj["step"] == 2 and source.name == "run.pt.previous"


# --------------------------------------------------------------------------- checkpoint sets
def _set(tmp_path, value, *, fail=False):
    def fill(d):
        (d / "weights.bin").write_bytes(bytes([value]) * 64)
        if fail:
            raise KeyboardInterrupt("killed while writing")
    return checkpoints.write_checkpoint_dir(tmp_path, "ckpt", fill, info={"step": value})


def test_a_same_size_corruption_of_a_set_falls_back_and_the_next_saves_keep_a_complete_one(tmp_path, monkeypatch):
    _set(tmp_path, 1)
    _set(tmp_path, 2)
    (tmp_path / "ckpt" / "weights.bin").write_bytes(bytes([9]) * 64)           # same size, other bytes
    said = []
    folder, manifest = checkpoints.latest_checkpoint_dir(tmp_path, "ckpt", say=said.append)
    assert folder.name == "ckpt.previous" and manifest["step"] == 1 and any("damaged" in s for s in said)
    with pytest.raises(KeyboardInterrupt):                                     # killed while writing the next one
        _set(tmp_path, 3, fail=True)
    assert checkpoints.latest_checkpoint_dir(tmp_path, "ckpt", say=lambda m: None)[1]["step"] == 1
    real, calls = os.replace, []

    def replace(src, dst):                                                     # killed after the first rename
        calls.append(dst)
        if len(calls) == 2 or (len(calls) == 1 and str(dst).endswith("ckpt")):
            raise KeyboardInterrupt("SIGKILL stand-in")
        return real(src, dst)
    monkeypatch.setattr(checkpoints.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        _set(tmp_path, 4)
    monkeypatch.undo()
    folder, manifest = checkpoints.latest_checkpoint_dir(tmp_path, "ckpt", say=lambda m: None)
    assert manifest["step"] == 1 and (folder / "weights.bin").read_bytes() == bytes([1]) * 64
    _set(tmp_path, 5)
    assert checkpoints.latest_checkpoint_dir(tmp_path, "ckpt", say=lambda m: None)[1]["step"] == 5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "ckpt.previous"]


def test_a_kill_between_the_two_renames_of_a_set_leaves_the_previous_one(tmp_path, monkeypatch):
    _set(tmp_path, 1)
    _set(tmp_path, 2)
    real, calls = os.replace, []

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("SIGKILL stand-in")
        return real(src, dst)
    monkeypatch.setattr(checkpoints.os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        _set(tmp_path, 3)
    monkeypatch.undo()
    folder, manifest = checkpoints.latest_checkpoint_dir(tmp_path, "ckpt", say=lambda m: None)
    assert folder.name == "ckpt.previous" and manifest["step"] == 2
    _set(tmp_path, 4)
    assert checkpoints.latest_checkpoint_dir(tmp_path, "ckpt", say=lambda m: None)[1]["step"] == 4


# --------------------------------------------------------------------------- one run per output folder
def test_a_second_run_on_the_same_output_folder_fails_at_once(tmp_path, capsys):
    fd = os.open(tmp_path, os.O_RDONLY)            # another process's lock: a separate open description
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(checkpoints.OutputLocked, match="another run is writing"):
            _trainer().train(PairDataset(_pairs()), steps=1, checkpoint=tmp_path / "run.pt", show_progress=False)
        with pytest.raises(checkpoints.OutputLocked):
            checkpoints.save_state({"format": "x"}, tmp_path / "other.pt")
        code = _exit_code(["train-pix2pix", "--size", "32", "--ngf", "4", "--steps", "1", "--out", str(tmp_path / "r.pt")])
        assert code == 1 and "another run is writing" in capsys.readouterr().err
    finally:
        os.close(fd)
    assert list(tmp_path.iterdir()) == []
    with checkpoints.output_lock(tmp_path), checkpoints.output_lock(tmp_path):   # re-entrant in one process
        checkpoints.save_state({"format": "x"}, tmp_path / "run.pt")


# --------------------------------------------------------------------------- resumes
def test_a_resumed_pix2pix_run_repeats_an_uninterrupted_one_exactly(tmp_path, capsys):
    ds = PairDataset(_pairs(3), augment=data.JointAugment(), seed=0)
    straight = _trainer()
    straight.train(ds, steps=5, show_progress=False)
    first = _trainer()
    first.train(ds, steps=2, checkpoint=tmp_path / "run.pt", show_progress=False)        # stops inside epoch 1
    torch.rand(7)                                                                       # other work in between
    again = _trainer()
    again.train(ds, steps=5, checkpoint=tmp_path / "run.pt", show_progress=False)
    assert "resuming from" in capsys.readouterr().out and again.step == 5
    assert [r["g_total"] for r in again.history] == [r["g_total"] for r in straight.history]
    assert [r["d"] for r in again.history] == [r["d"] for r in straight.history]
    assert all(torch.equal(a, b) for a, b in zip(again.generator.state_dict().values(),
                                                 straight.generator.state_dict().values()))


def test_a_resume_refuses_other_loss_settings_and_applies_a_new_learning_rate_saying_so(tmp_path, capsys):
    ds = PairDataset(_pairs(2))
    _trainer().train(ds, steps=1, checkpoint=tmp_path / "run.pt", show_progress=False)
    for change in ({"lambda_l1": 10.0}, {"gan_mode": "lsgan"}, {"alpha": 0.5}):
        fresh = _trainer(**change)
        before = [p.clone() for p in fresh.generator.parameters()]
        with pytest.raises(checkpoints.ProvenanceMismatch, match=f"{next(iter(change))}: saved"):
            fresh.train(ds, steps=2, checkpoint=tmp_path / "run.pt", show_progress=False)
        assert fresh.step == 0 and all(torch.equal(a, b) for a, b in zip(before, fresh.generator.parameters()))
    slower = _trainer(lr=1e-5)
    slower.train(ds, steps=2, checkpoint=tmp_path / "run.pt", show_progress=False)
    assert "learning rate now 1e-05 (the checkpoint trained with 0.0002)" in capsys.readouterr().out
    assert all(g["lr"] == 1e-5 for g in slower.opt_g.param_groups + slower.opt_d.param_groups)
    assert checkpoints.load_file(tmp_path / "run.pt")["config"]["trainer"]["lr"] == 1e-5


def test_ctrl_c_finishes_the_step_saves_it_and_stops(tmp_path):
    ds = PairDataset(_pairs(4))
    trainer = _trainer()
    real_step = trainer.train_step

    def step(*a):
        if trainer.step == 1:
            os.kill(os.getpid(), signal.SIGINT)      # arrives in the middle of step 2
        return real_step(*a)
    trainer.train_step = step
    with pytest.raises(KeyboardInterrupt):
        trainer.train(ds, epochs=5, checkpoint=tmp_path / "run.pt", show_progress=False)
    assert trainer.step == 2 and checkpoints.load_file(tmp_path / "run.pt")["step"] == 2
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_the_course_pix2pix_recipe_checkpoints_every_few_steps(monkeypatch, tmp_path):
    seen = {}
    monkeypatch.setattr(pix2pix.Pix2PixTrainer, "train", lambda self, ds, **kw: seen.update(kw))
    monkeypatch.setattr(W, "_start", lambda *a: None)
    r = W.RECIPES["pix2pix"]
    W._train_pix2pix(W.Recipe(r.name, r.chapter, r.what, 1, {**r.settings, "size": 32, "ngf": 4}), 1, tmp_path, False)
    assert seen["checkpoint_every_steps"] == W.PIX2PIX_CHECKPOINT_STEPS <= 25


def test_a_damaged_prerequisite_course_weight_is_called_damaged_not_missing(monkeypatch, tmp_path):
    def damaged(name, **kw):
        raise ValueError(f"course weight {name!r}: x does not match its sha256 in the registry")
    monkeypatch.setattr(W, "path", damaged)
    with pytest.raises(ValueError, match="'comicdiff-denoiser', which is damaged") as err:
        W.train("comicdiff-adapter", 1, work=tmp_path)
    assert not isinstance(err.value, W.CourseWeightMissing)


# --------------------------------------------------------------------------- options before work, exit codes
def _exit_code(argv) -> int:
    try:
        return cli.main(argv)
    except SystemExit as exc:
        return exc.code


@pytest.mark.parametrize("argv, needle", [
    (["bench", "pix2pix", "--steps", "0"], "--steps must be at least 1"),
    (["bench", "pix2pix", "--infer-batch", "0"], "--infer-batch must be at least 1"),
    (["bench", "nst", "--sizes", "200000"], "--sizes must be at most"),
    (["bench", "comicdiff", "--repeats", "0"], "--repeats must be at least 1"),
    (["train-pix2pix", "--size", "200000", "--out", "x.pt"], "--size: must be at most 4096"),
    (["stylize", "p.png", "--size", "200000", "--out", "o"], "--size: must be at most 4096"),
])
def test_out_of_range_options_are_one_usage_line_before_any_work(argv, needle, capsys):
    assert _exit_code(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1


def test_an_unusable_train_out_is_a_usage_error_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert _exit_code(["train-pix2pix", "--size", "32", "--out", str(tmp_path / "file" / "run.pt")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert _exit_code(["train-pix2pix", "--size", "32", "--out", str(tmp_path)]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_sigterm_is_an_interruption_with_its_line_and_exit_130(capsys):
    def work():
        os.kill(os.getpid(), signal.SIGTERM)
        return 0
    assert cli.run_command(work) == 130
    assert "interrupted" in capsys.readouterr().err


def test_library_logging_is_quiet_unless_debug(monkeypatch):
    for name in cli.LIBRARY_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "level", logging.NOTSET)
    monkeypatch.delenv("DIFFUSERS_VERBOSITY", raising=False)
    cli.quiet_libraries(debug=True)
    assert logging.getLogger("diffusers").level == logging.NOTSET and "DIFFUSERS_VERBOSITY" not in os.environ
    cli.quiet_libraries()
    assert all(logging.getLogger(n).level == logging.ERROR for n in cli.LIBRARY_LOGGERS)
    assert os.environ["DIFFUSERS_VERBOSITY"] == "error"


def test_a_checkpoint_holding_other_objects_than_tensors_is_refused_never_unpickled(tmp_path):
    import pathlib

    path = tmp_path / "foreign.pt"
    torch.save({"format": "x", "where": pathlib.PurePosixPath("/tmp")}, path)     # needs the full unpickler
    with pytest.raises(ValueError, match="objects other than tensors"):
        checkpoints.load_file(path)

"""Bad input gets a one-line error and nothing is lost: checkpoints as a unit, provenance, the CLI's
argument checks, data folders checked before training, unique output names."""
from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from comicutils import checkpoints, cli, comicdiff as cd, images as I, pix2pix
from comicutils.comicdiff import lora, train as cdtrain

from test_comicdiff import fixed_batch, images, mse_only, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = dict(rank=2, lr=1e-3, batch_size=2, epochs=100, mixed_precision="no", seed=0)


def _train(out, max_steps, *, model=None, every=None, **kw):
    ds, _, _ = fixed_batch()
    cfg = cd.TrainConfig(**{**CFG, **kw}, max_steps=max_steps, checkpoint_every=every)
    return cd.train_lora(model or tiny_model(), ds, cfg, out_dir=out, loss_fn=mse_only(), show_progress=False)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


# --------------------------------------------------------------------------- ComicDiff checkpoints
def test_a_comicdiff_checkpoint_is_one_complete_folder_with_provenance(tmp_path):
    _train(tmp_path, 2)
    ckpt = tmp_path / cdtrain.CHECKPOINT_NAME
    names = {p.name for p in ckpt.iterdir()}
    assert {"adapter", cdtrain.LORA_STATE_NAME, cdtrain.STATE_JSON, cdtrain.PROVENANCE_NAME,
            checkpoints.COMPLETE_NAME, "optimizer.bin"} <= names
    assert not any(n.startswith("model") for n in names), "the frozen U-Net must not be written"
    prov = json.loads((ckpt / cdtrain.PROVENANCE_NAME).read_text())
    assert prov["rank"] == 2 and prov["base"].startswith("unet-sha256:") and prov["path"] == "offline"
    assert cd.read_adapter_info(tmp_path / "adapter")["provenance"] == prov
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("where", ["lora state", "adapter", "accelerate state", "history", "provenance",
                                   "marker", "rename"])
def test_an_interrupted_save_keeps_the_previous_checkpoint_and_resume_continues_from_it(tmp_path, monkeypatch, where):
    first = _train(tmp_path, 2)
    before = (tmp_path / cdtrain.CHECKPOINT_NAME / cdtrain.LORA_STATE_NAME).read_bytes()

    class Killed(KeyboardInterrupt):
        pass

    def boom(*a, **k):
        raise Killed(where)

    targets = {"lora state": ("safetensors.torch", "save_file"), "adapter": (lora, "save_adapter"),
               "accelerate state": ("accelerate.accelerator", "save_accelerator_state")}
    if where in targets:
        mod, name = targets[where]
        monkeypatch.setattr(mod if not isinstance(mod, str) else __import__(mod, fromlist=[name]), name, boom)
    else:
        real_write = type(tmp_path).write_text
        file_of = {"history": cdtrain.STATE_JSON, "provenance": cdtrain.PROVENANCE_NAME,
                   "marker": checkpoints.COMPLETE_NAME}

        def write_text(self, *a, **k):
            if where in file_of and self.name == file_of[where]:
                raise Killed(where)
            return real_write(self, *a, **k)
        monkeypatch.setattr(type(tmp_path), "write_text", write_text)
        if where == "rename":
            real_replace = checkpoints.os.replace

            def replace(src, dst):
                if str(dst).endswith(cdtrain.CHECKPOINT_NAME) and ".checkpoint-latest." in str(src):
                    raise Killed(where)
                return real_replace(src, dst)
            monkeypatch.setattr(checkpoints.os, "replace", replace)
    with pytest.raises(Killed):
        _train(tmp_path, 4)
    monkeypatch.undo()
    assert _leftovers(tmp_path) == [], "a temporary folder survived the failed save"
    found = checkpoints.latest_checkpoint_dir(tmp_path, cdtrain.CHECKPOINT_NAME)
    assert found is not None and found[1]["step"] == 2
    assert (found[0] / cdtrain.LORA_STATE_NAME).read_bytes() == before
    again = _train(tmp_path, 4)                     # picks up at step 2, same losses as one run of 4
    assert [r["step"] for r in again.history] == [1, 2, 3, 4]
    straight = _train(tmp_path / "straight", 4)
    assert again.history[1]["loss"] == pytest.approx(first.history[1]["loss"])
    assert again.history[3]["loss"] == pytest.approx(straight.history[3]["loss"], rel=1e-5)


def test_a_kill_between_the_two_renames_falls_back_to_the_previous_checkpoint(tmp_path, capsys):
    _train(tmp_path, 2)
    _train(tmp_path, 3)
    latest = tmp_path / cdtrain.CHECKPOINT_NAME
    assert (tmp_path / f"{cdtrain.CHECKPOINT_NAME}.previous").is_dir()
    # what a SIGKILL after "latest -> previous" and before "tmp -> latest" leaves: no latest, a stray temp
    stray = checkpoints.temp_path(latest)
    latest.rename(stray)
    (stray / checkpoints.PARTIAL_MARK).touch()
    (stray / checkpoints.COMPLETE_NAME).unlink()
    res = _train(tmp_path, 4)
    out = capsys.readouterr().out
    assert "resuming from checkpoint-latest.previous" in out.replace(str(tmp_path) + "/", "") or "previous" in out
    assert [r["step"] for r in res.history] == [1, 2, 3, 4] and _leftovers(tmp_path) == []


def test_an_incomplete_latest_checkpoint_is_not_used(tmp_path, capsys):
    _train(tmp_path, 2)
    _train(tmp_path, 3)
    (tmp_path / cdtrain.CHECKPOINT_NAME / cdtrain.LORA_STATE_NAME).write_bytes(b"torn")
    res = _train(tmp_path, 4)
    assert "incomplete" in capsys.readouterr().out
    assert res.history[2]["step"] == 3 and len(res.history) == 4


@pytest.mark.parametrize("change", [{"rank": 4}, {"lora_alpha": 8.0}, {"feed_forward": False}])
def test_resuming_with_other_lora_settings_is_refused_naming_both(tmp_path, change):
    _train(tmp_path, 2)
    key = next(iter(change))
    with pytest.raises(checkpoints.ProvenanceMismatch, match=f"{key}: saved .*, now"):
        _train(tmp_path, 3, **change)


def test_resuming_on_another_denoiser_is_refused(tmp_path):
    _train(tmp_path, 2)
    with pytest.raises(checkpoints.ProvenanceMismatch, match="base: saved 'unet-sha256:"):
        _train(tmp_path, 3, model=tiny_model(seed=5))


def test_an_adapter_is_refused_with_another_denoiser(tmp_path, mirror):
    from test_comicdiff_inference import SMALL32

    unet = cd.build_unet(SMALL32, seed=0)
    cd.save_denoiser(unet, tmp_path / "denoiser")
    model = cd.ComicDiff(cd.offline_components(unet=unet, announce=False))
    res = _train_real(model, tmp_path / "run")
    assert cd.load_translator(res.adapter_dir, denoiser=tmp_path / "denoiser").info["provenance"]["rank"] == 2
    cd.save_denoiser(cd.build_unet(SMALL32, seed=1), tmp_path / "other")
    with pytest.raises(checkpoints.ProvenanceMismatch, match="adapter .*base: saved"):
        cd.load_translator(res.adapter_dir, denoiser=tmp_path / "other")
    # the CLI says the same in one line
    out = subprocess.run([sys.executable, "-m", "comicutils", "stylize", str(_photo(tmp_path)), "--method", "comicdiff",
                          "--adapter", str(res.adapter_dir), "--denoiser", str(tmp_path / "other"),
                          "--out", str(tmp_path / "o")], capture_output=True, text=True)
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "base: saved" in out.stderr


def _train_real(model, out):
    photos = images(4, 32)
    ds = cd.LatentPairs([f"k{i}" for i in range(4)], model.encode(photos).detach(), images(4, 32, seed=3))
    cfg = cd.TrainConfig(**{**CFG, "max_steps": 1})
    return cd.train_lora(model, ds, cfg, out_dir=out, loss_fn=mse_only(), show_progress=False)


def _photo(folder, name="p.png", size=64, seed=0):
    path = folder / name
    I.save_image(images(1, size, seed)[0], path)
    return path


def test_unet_fingerprint_ignores_lora_and_precision():
    m = tiny_model()
    before = cd.unet_fingerprint(m.unet)
    m.add_lora(2)
    assert cd.unet_fingerprint(m.unet) == before
    assert cd.unet_fingerprint(tiny_model(seed=1).unet) != before


def test_offline_training_without_a_denoiser_is_refused_unless_asked(tmp_path, capsys):
    with pytest.raises(SystemExit) as err:
        cdtrain.main(["--data", str(tmp_path), "--out", str(tmp_path / "o"), "--path", "offline"])
    msg = capsys.readouterr().err
    assert err.value.code == 2 and "--denoiser" in msg and "--random-unet" in msg and len(msg.strip().splitlines()) == 1


# --------------------------------------------------------------------------- pix2pix / shared files
def _trainer(ngf=4):
    return pix2pix.Pix2PixTrainer(pix2pix.build_generator("unet", 32, ngf=ngf), pix2pix.PatchDiscriminator(ndf=4),
                                  device="cpu")


def test_a_failed_pix2pix_save_keeps_the_previous_file_and_leaves_no_temp(tmp_path, monkeypatch):
    path = tmp_path / "ck.pt"
    t = _trainer()
    t.save_checkpoint(path)
    good = path.read_bytes()
    t.step = 7

    def boom(obj, f, *a, **k):
        open(f, "wb").write(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(checkpoints.torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        t.save_checkpoint(path)
    monkeypatch.undo()
    assert path.read_bytes() == good and [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
    checkpoints.temp_path(path).write_bytes(b"")           # what a SIGKILL during a save leaves
    (tmp_path / ".ck.pt.x1y2.tmp").write_bytes(b"mine")    # not the save's name: left alone
    t.save_checkpoint(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ck.pt.x1y2.tmp", "ck.pt", "ck.pt.previous"]
    assert checkpoints.load_file(path)["step"] == 7 and checkpoints.load_file(checkpoints.previous_path(path))["step"] == 0


def test_non_finite_weights_or_statistics_are_never_saved(tmp_path):
    t = _trainer()
    bn = next(m for m in t.generator.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var[0] = math.inf
    with pytest.raises(checkpoints.NonFiniteState, match="running_var"):
        t.save_checkpoint(tmp_path / "ck.pt")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content", [b"", b"\x80\x04garbage", "truncated", b"PK\x03\x04 not a zip"])
def test_unreadable_checkpoints_give_one_clear_line(tmp_path, content):
    path = tmp_path / "ck.pt"
    if content == "truncated":
        _trainer().save_checkpoint(path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(ValueError, match="not a readable course checkpoint") as err:
        pix2pix.load_generator(path)
    assert "\n" not in str(err.value) and "weights_only=False" not in str(err.value)
    with pytest.raises(ValueError, match="not a readable course checkpoint"):
        _trainer().load_checkpoint(path)


def test_resuming_pix2pix_with_another_width_names_both(tmp_path):
    path = tmp_path / "ck.pt"
    _trainer(ngf=4).save_checkpoint(path)
    with pytest.raises(ValueError, match="'ngf': 4.*'ngf': 8"):
        _trainer(ngf=8).load_checkpoint(path)


def test_check_provenance_names_every_difference():
    with pytest.raises(checkpoints.ProvenanceMismatch, match="rank: saved 8, now 4; size: saved"):
        checkpoints.check_provenance({"rank": 8, "size": [64, 64]}, {"rank": 4, "size": [32, 32]}, "x")
    checkpoints.check_provenance({"rank": 8}, {"rank": 8, "new": 1}, "x")     # keys the file lacks are not compared


# --------------------------------------------------------------------------- CLI
def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "comicutils", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd)


@pytest.mark.parametrize("args, needle", [
    (["stylize", "p.png", "--steps", "-3", "--style", "p.png", "--out", "o"], "--steps: must be at least 1"),
    (["stylize", "p.png", "--method", "comicdiff", "--adapter", ".", "--alpha", "nan", "--out", "o"], "finite"),
    (["stylize", "p.png", "--style", "missing.png", "--out", "o"], "no such file: missing.png"),
    (["stylize", "p.png", "--size", "0", "--style", "p.png", "--out", "o"], "--size: must be at least 32"),
    (["stylize", "p.png", "--method", "pix2pix", "--checkpoint", "p.png", "--device", "tpu9", "--out", "o"],
     "unknown device"),
    (["stylize", "p.png", "--style", "p.png", "--out", "/proc/no/such"], "cannot write there"),
    (["evaluate", "--limit", "0"], "--limit: must be at least 1"),
    (["evaluate", "--size", "7"], "--size must be at least 31 px"),
    (["evaluate", "--methods", "identity", "nonsense"], "unknown method(s) nonsense"),
    (["course", "--only", "99"], "no notebooks matching"),
    (["train-pix2pix", "--lr", "inf", "--out", "x.pt"], "--lr: must be a finite number"),
    (["train-pix2pix", "--epochs", "0", "--out", "x.pt"], "--epochs: must be at least 1"),
    (["train-pix2pix", "--data", "nowhere", "elsewhere", "--out", "x.pt"], "no such folder: nowhere"),
    (["stylize", "p.png", "--method", "comicdiff", "--adapter", "course-avd", "--out", "o"],
     "no such folder: course-avd (or one of the course adapters: course, course-adv, course-gan, course-style, course-ink)"),
    (["stylize", "p.png", "--method", "pix2pix", "--checkpoint", "course-styel", "--out", "o"],
     "no such file: course-styel (or one of the course generators: course, course-style)"),
])
def test_bad_arguments_are_one_usage_line_and_exit_2(tmp_path, args, needle):
    _photo(tmp_path)
    out = _cli(*args, cwd=tmp_path)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2, out.stderr
    assert len(lines) == 1 and needle in lines[0] and "Traceback" not in out.stderr, out.stderr
    assert not (tmp_path / "o").exists() and not (tmp_path / "x.pt").exists()


def test_stylize_goes_on_past_bad_photos_and_never_overwrites_same_stems(tmp_path):
    a = _photo(tmp_path, "a.png", seed=0)
    sub = tmp_path / "sub"
    sub.mkdir()
    b = _photo(sub, "a.png", seed=1)
    c = tmp_path / "a.jpg"
    I.save_image(images(1, 64, 2)[0], c)
    bad = tmp_path / "broken.jpg"
    bad.write_text("not an image")
    out = _cli("stylize", a, bad, c, b, "missing.jpg", "--method", "nst", "--style", a, "--steps", "1",
               "--backbone", "taef2", "--size", "32", "--out", tmp_path / "out")
    assert out.returncode == 1
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert len(written) == 3 and len(set(written)) == 3, written      # a.png, a.jpg and sub/a.png: three files
    assert "broken.jpg" in out.stderr and "missing.jpg" in out.stderr and "2 of 5 photo(s) failed" in out.stderr
    assert "Traceback" not in out.stderr


def test_unique_output_names():
    names = cli.unique_output_names(["x/a.jpg", "x/a.png", "b.png", "b.png"], "nst")
    assert names == {"x/a.jpg": "a-jpg_nst.png", "x/a.png": "a-png_nst.png", "b.png": "b_nst.png"}
    clash = cli.unique_output_names(["d1/a.jpg", "d2/a.jpg"], "nst")
    assert len(set(clash.values())) == 2


def test_align_face_works_on_the_full_resolution_photo(tmp_path, mirror):
    """An off-centre face in a large photo: resizing + centre-cropping first would cut it off."""
    from PIL import Image

    from comicutils import assets, faces

    portrait = Image.open(assets.fetch("portrait-001")).convert("RGB")
    canvas = Image.new("RGB", (1400, 700), (40, 40, 40))
    canvas.paste(portrait.resize((512, 512)), (880, 90))            # face on the far right
    path = tmp_path / "wide.jpg"
    canvas.save(path)
    direct = faces.align_face(path, size=64)
    out = _cli("stylize", path, "--method", "nst", "--style", path, "--steps", "1", "--backbone", "taef2",
               "--size", "64", "--align-face", "--out", tmp_path / "o")
    assert out.returncode == 0, out.stderr
    assert direct.shape == (1, 3, 64, 64)
    none = _cli("stylize", _photo(tmp_path, "noise.png", size=128), "--method", "nst", "--style", path, "--steps", "1",
                "--backbone", "taef2", "--align-face", "--out", tmp_path / "o2")
    assert none.returncode == 1 and "noise.png" in none.stderr and "Traceback" not in none.stderr


def test_training_refuses_a_broken_pairs_folder_unless_skip_bad(tmp_path):
    for sub in ("photos", "comics"):
        (tmp_path / sub).mkdir()
        for i in range(4):
            _photo(tmp_path / sub, f"p{i}.png", size=32, seed=i)
    (tmp_path / "comics" / "p3.png").write_bytes(b"\x89PNG truncated")
    _photo(tmp_path / "photos", "lonely.png", size=32)
    out = _cli("train-pix2pix", "--data", tmp_path / "photos", tmp_path / "comics", "--size", "32", "--ngf", "4",
               "--steps", "1", "--out", tmp_path / "ck.pt")
    assert out.returncode == 1 and "p3.png" in out.stderr and "lonely" in out.stderr and "--skip-bad" in out.stderr
    assert not (tmp_path / "ck.pt").exists()
    ok = _cli("train-pix2pix", "--data", tmp_path / "photos", tmp_path / "comics", "--size", "32", "--ngf", "4",
              "--steps", "1", "--skip-bad", "--out", tmp_path / "ck.pt")
    assert ok.returncode == 0, ok.stderr
    assert "skipping 2 file(s)" in ok.stdout and "p3.png" in ok.stdout and (tmp_path / "ck.pt").is_file()


def test_a_corrupt_denoiser_or_adapter_is_one_clear_error(tmp_path, mirror):
    from test_comicdiff_inference import SMALL32

    unet = cd.build_unet(SMALL32, seed=0)
    cd.save_denoiser(unet, tmp_path / "denoiser")
    res = _train_real(cd.ComicDiff(cd.offline_components(unet=unet, announce=False)), tmp_path / "run")
    weights = res.adapter_dir / lora.WEIGHT_NAME
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot be loaded"):
        cd.load_translator(res.adapter_dir, denoiser=tmp_path / "denoiser")
    (tmp_path / "denoiser" / "diffusion_pytorch_model.safetensors").write_bytes(b"junk")
    out = _cli("stylize", _photo(tmp_path), "--method", "comicdiff", "--adapter", res.adapter_dir,
               "--denoiser", tmp_path / "denoiser", "--out", tmp_path / "o")
    assert out.returncode == 1 and len(out.stderr.strip().splitlines()) == 1 and "denoiser" in out.stderr


def test_stylize_and_evaluate_use_the_same_pix2pix_stylizer(tmp_path):
    """One checkpoint, one picture: the CLI runs comicutils.stylizers, with per-image BatchNorm statistics."""
    from comicutils import stylizers

    t = _trainer()
    for m in t.generator.modules():                       # running statistics unlike any one image's
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.fill_(0.3)
            m.running_var.fill_(2.0)
    t.save_generator(tmp_path / "g.pt")
    photo = _photo(tmp_path, size=32)
    assert cli.main(["stylize", str(photo), "--method", "pix2pix", "--checkpoint", str(tmp_path / "g.pt"),
                     "--out", str(tmp_path / "o")]) == 0
    got = I.load_tensor(tmp_path / "o" / "p_pix2pix.png")
    want = stylizers.build("pix2pix", checkpoint=tmp_path / "g.pt")(I.load_tensor(photo, 32))
    running = pix2pix.translate(pix2pix.load_generator(tmp_path / "g.pt"), I.load_tensor(photo, 32))
    assert (got - want).abs().max() <= 1 / 255 + 1e-6
    assert (running - want).abs().max() > 0.01           # the other rule would give another picture


# --------------------------------------------------------------------------- the adversarial option
def _adv_data():
    ds, photos, _ = fixed_batch()
    return cd.LatentPairs(ds.keys, ds.latents, ds.comics, photos)


def test_the_adversarial_option_trains_a_patchgan_and_ramps_its_weight(tmp_path):
    ds = _adv_data()
    cfg = cd.TrainConfig(**{**CFG, "adversarial_weight": 0.1, "adversarial_warmup": 4}, max_steps=4)
    res = cd.train_lora(tiny_model(), ds, cfg, out_dir=tmp_path, loss_fn=mse_only(), show_progress=False)
    ws = [r["adversarial_weight"] for r in res.history]
    assert ws == pytest.approx([0.025, 0.05, 0.075, 0.1])
    for r in res.history:
        assert r["loss"] == pytest.approx(r["mse"] + r["adversarial_weight"] * r["adversarial"], rel=1e-5)
        assert r["discriminator"] > 0
    assert any(p.name.startswith("model") for p in (tmp_path / cdtrain.CHECKPOINT_NAME).iterdir()), \
        "the discriminator belongs in the checkpoint"
    # resuming restores the discriminator too: the same losses as one uninterrupted run
    half = tmp_path / "half"
    cd.train_lora(tiny_model(), ds, cd.TrainConfig(**{**CFG, "adversarial_weight": 0.1, "adversarial_warmup": 4},
                                                    max_steps=2), out_dir=half, loss_fn=mse_only(), show_progress=False)
    rest = cd.train_lora(tiny_model(), ds, cfg, out_dir=half, loss_fn=mse_only(), show_progress=False)
    assert rest.history[3]["loss"] == pytest.approx(res.history[3]["loss"], rel=1e-4)
    assert rest.history[3]["discriminator"] == pytest.approx(res.history[3]["discriminator"], rel=1e-4)
    with pytest.raises(checkpoints.ProvenanceMismatch, match="adversarial"):
        cd.train_lora(tiny_model(), ds, cd.TrainConfig(**CFG, max_steps=5), out_dir=half, loss_fn=mse_only(),
                      show_progress=False)


def test_the_adversarial_option_needs_the_photos():
    ds, _, _ = fixed_batch()
    cfg = cd.TrainConfig(**{**CFG, "adversarial_weight": 0.1}, max_steps=1)
    with pytest.raises(ValueError, match="needs the photos"):
        cd.train_lora(tiny_model(), ds, cfg, loss_fn=mse_only(), show_progress=False)

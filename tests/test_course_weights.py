"""Course weights: registry, fp16 export, loading, the download path, and regenerating each one."""
from __future__ import annotations

import json
import shlex
import shutil

import pytest
import torch

from comicutils import course_weights as W
from comicutils.cli import build_parser, main
from comicutils.comicdiff import components as C
from comicutils.comicdiff import train as T

pytestmark = pytest.mark.usefixtures("one_thread")
REGISTERED = sorted(W.registry())


# --------------------------------------------------------------------------- the shipped registry
def test_registry_entries_are_complete_and_within_budget():
    total = 0
    for name, e in W.registry().items():
        assert name in W.RECIPES
        for key in ("command", "data", "licence", "steps", "start_digest", "first_loss", "seconds", "machine", "files"):
            assert e.get(key) not in (None, "", {}), (name, key)
        assert e["command"] == W.RECIPES[name].command(e["steps"])
        args = build_parser()[0].parse_args(shlex.split(e["command"])[3:])   # the command parses
        assert (args.action, args.name, args.steps) == ("train", name, e["steps"])
        for rel, meta in e["files"].items():
            assert rel.startswith(f"{name}/")
            total += meta["bytes"]
    assert total <= W.SIZE_BUDGET


@pytest.mark.parametrize("name", REGISTERED)
def test_registered_files_match_their_checksums(name):
    folder = W.path(name)                    # raises on a missing or changed file
    assert folder.is_dir()
    for rel in W.entry(name)["files"]:
        assert rel.endswith((".safetensors", ".json"))
        if rel.endswith(".safetensors"):
            from safetensors import safe_open
            with safe_open(str(folder.parent / rel), "pt") as fh:
                dtypes = {fh.get_slice(k).get_dtype() for k in fh.keys()}
            # fp16 weights (integer buffers as they are); an int8 recipe: int8 filters with fp16 scales
            allowed = {"F16", "I64"} | ({"I8"} if W.RECIPES[name].store == "int8" else set())
            assert dtypes <= allowed, (rel, dtypes)
            assert W.entry(name).get("store", "fp16") == W.RECIPES[name].store


@pytest.mark.slow
@pytest.mark.parametrize("name", REGISTERED)
def test_recorded_command_starts_from_the_recorded_state(name, tmp_path, capsys):
    """Run the registry's command for one step: same start digest, same first loss."""
    e = W.entry(name)
    argv = shlex.split(e["command"])[3:]
    i = argv.index("--steps")
    argv[i + 1] = "1"
    assert main(argv + ["--work", str(tmp_path / "work")]) == 0
    run = json.loads((tmp_path / "work" / "run.json").read_text())
    assert run["start_digest"] == e["start_digest"]
    assert run["steps"] == 1
    assert run["first_loss"] == pytest.approx(e["first_loss"], rel=1e-3)


# --------------------------------------------------------------------------- lookups and errors
def test_unknown_and_unexported_weights_say_what_to_run(tmp_path, monkeypatch, capsys):
    with pytest.raises(ValueError, match="unknown course weight 'pix2pixx'.*choose from"):
        W.entry("pix2pixx")
    monkeypatch.setenv(W.PRETRAINED_ENV, str(tmp_path))
    (tmp_path / W.REGISTRY_NAME).write_text("{}")
    with pytest.raises(W.CourseWeightMissing, match="course-weights train pix2pix"):
        W.path("pix2pix")
    assert not W.available("pix2pix")
    with pytest.raises(SystemExit) as err:
        main(["course-weights", "train", "pix2pixx"])
    assert err.value.code == 2
    assert main(["course-weights", "export", "pix2pix", "--work", str(tmp_path / "none")]) == 1
    assert "nothing trained in" in capsys.readouterr().err


def _tiny_pix2pix_run(tmp_path, monkeypatch, steps=2):
    """The real pix2pix recipe at 32 px and ngf 4 (settings patched), trained for ``steps``."""
    recipe = W.RECIPES["pix2pix"]
    small = W.Recipe(recipe.name, recipe.chapter, recipe.what, steps,
                     {**recipe.settings, "size": 32, "ngf": 4}, recipe.data)
    monkeypatch.setitem(W.RECIPES, "pix2pix", small)
    work = tmp_path / "work"
    run = W.train("pix2pix", steps, work=work, show_progress=False)
    return work, run


def test_export_writes_fp16_and_loads_back(tmp_path, monkeypatch):
    work, run = _tiny_pix2pix_run(tmp_path, monkeypatch)
    assert run["steps"] == 2 and run["first_loss"] > 0
    out = tmp_path / "pretrained"
    item = W.export("pix2pix", work=work, out=out)
    assert item["steps"] == 2 and item["command"].endswith("--steps 2")
    assert item["start_digest"] == run["start_digest"]
    monkeypatch.setenv(W.PRETRAINED_ENV, str(out))
    assert W.verify() == [("pix2pix", "ok")]
    generator = W.load_pix2pix()
    from comicutils import pix2pix as P
    from comicutils.checkpoints import load_file
    ref = P.build_generator("unet", 32, ngf=4)
    ref.load_state_dict(load_file(work / "trainer.pt")["generator"])
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        mine = P.translate(generator, x, norm_stats="image")
        full = P.translate(ref.eval(), x, norm_stats="image")
    torch.testing.assert_close(mine, full, atol=2e-2, rtol=0)    # fp16 weights, same picture
    # a changed file is refused, and verify says so with exit code 1
    f = out / "pix2pix" / "generator.safetensors"
    f.write_bytes(f.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ValueError, match="does not match its sha256"):
        W.path("pix2pix")
    assert main(["course-weights", "verify"]) == 1


def test_export_refuses_to_go_over_the_size_budget(tmp_path, monkeypatch):
    work, _ = _tiny_pix2pix_run(tmp_path, monkeypatch, steps=1)
    monkeypatch.setattr(W, "SIZE_BUDGET", 1000)
    with pytest.raises(ValueError, match="over the"):
        W.export("pix2pix", work=work, out=tmp_path / "pretrained")
    assert not (tmp_path / "pretrained" / W.REGISTRY_NAME).exists()
    assert not (tmp_path / "pretrained" / "pix2pix").exists()          # nothing half-exported


def test_training_resumes_where_it_stopped(tmp_path, monkeypatch):
    work, run = _tiny_pix2pix_run(tmp_path, monkeypatch, steps=2)
    again = W.train("pix2pix", 3, work=work, show_progress=False)
    assert again["steps"] == 3 and again["start_digest"] == run["start_digest"]
    assert again["first_loss"] == run["first_loss"]
    other = dict(W.RECIPES["pix2pix"].settings, ngf=8)
    monkeypatch.setitem(W.RECIPES, "pix2pix", W.Recipe("pix2pix", "02", "", 3, other))
    with pytest.raises(ValueError, match="another start state or settings"):
        W.train("pix2pix", 4, work=work, show_progress=False)


def test_installed_package_downloads_and_checks_the_files(tmp_path, monkeypatch):
    """No checkout, no COMICUTILS_PRETRAINED: the files come from the course's address (here a
    file:// copy of it), land in the cache only when their sha256 matches."""
    work, _ = _tiny_pix2pix_run(tmp_path, monkeypatch, steps=1)
    site = tmp_path / "site"
    W.export("pix2pix", work=work, out=site)
    monkeypatch.setattr(W, "PACKAGED_REGISTRY", site / W.REGISTRY_NAME)
    monkeypatch.setattr(W, "project_root", lambda: None)
    monkeypatch.delenv(W.PRETRAINED_ENV, raising=False)
    monkeypatch.delenv("COMICUTILS_OFFLINE", raising=False)
    monkeypatch.setenv(W.URL_ENV, site.as_uri())
    folder = W.path("pix2pix")
    assert folder != site / "pix2pix" and (folder / "generator.safetensors").is_file()
    assert W.load_pix2pix().config["ngf"] == 4
    # a server answering with other bytes: nothing lands in the cache
    shutil.rmtree(folder)
    (site / "pix2pix" / "generator.safetensors").write_bytes(b"not the file")
    with pytest.raises(W.CourseWeightMissing, match="could not be fetched.*sha256"):
        W.path("pix2pix")
    assert not (folder / "generator.safetensors").exists()
    monkeypatch.setenv("COMICUTILS_OFFLINE", "1")
    with pytest.raises(W.CourseWeightMissing, match="downloads are off"):
        W.path("pix2pix")


# --------------------------------------------------------------------------- resumable pre-training
def test_pretrain_denoiser_resumes_to_the_same_weights(tmp_path):
    config = {**C.SMALL_UNET_CONFIG, "block_out_channels": [8, 16, 32], "in_channels": 4, "out_channels": 4,
              "cross_attention_dim": 8, "attention_head_dim": 2, "norm_num_groups": 4}
    latents = torch.randn(6, 4, 8, 8)
    prompt = torch.randn(1, 2, 8)
    sched = dict(C.OFFLINE_SCHEDULER_CONFIG)
    straight = C.build_unet(config, seed=0)
    T.pretrain_denoiser(straight, latents, prompt, sched, steps=4, batch_size=2, seed=3, show_progress=False)
    resumed = C.build_unet(config, seed=0)
    ckpt = tmp_path / "pretrain.pt"
    first = T.pretrain_denoiser(resumed, latents, prompt, sched, steps=2, batch_size=2, seed=3,
                                show_progress=False, checkpoint=ckpt, checkpoint_every=1)
    again = C.build_unet(config, seed=0)
    rest = T.pretrain_denoiser(again, latents, prompt, sched, steps=4, batch_size=2, seed=3,
                               show_progress=False, checkpoint=ckpt, checkpoint_every=1)
    assert [r["step"] for r in rest.history] == [1, 2, 3, 4]
    assert rest.history[:2] == first.history
    assert W.state_digest(again) == W.state_digest(straight)
    with pytest.raises(ValueError, match="was written with"):
        T.pretrain_denoiser(C.build_unet(config, seed=0), latents, prompt, sched, steps=5, batch_size=3,
                            seed=3, show_progress=False, checkpoint=ckpt)


def test_state_digest_ignores_precision_but_not_values():
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(layer.weight.half().float())
        layer.bias.copy_(layer.bias.half().float())
    d = W.state_digest(layer)
    assert W.state_digest(layer.half()) == d
    with torch.no_grad():
        layer.weight[0, 0] += 1
    assert W.state_digest(layer) != d


def test_stylegan_recipes_export_generators_and_latents(tmp_path, monkeypatch):
    """Both StyleGAN recipes at a test size: the photo generator ships its z per training photo,
    the comic generator starts as the exported photo generator and keeps those z's fixed."""
    for name, extra in (("stylegan-photo", {"width": 16, "style_dim": 8, "size": 16}), ("stylegan-comic", {"size": 16})):
        r = W.RECIPES[name]
        monkeypatch.setitem(W.RECIPES, name, W.Recipe(name, r.chapter, r.what, 2, {**r.settings, **extra},
                                                      r.data, r.needs))
    out = tmp_path / "pretrained"
    monkeypatch.setenv(W.PRETRAINED_ENV, str(out))
    with pytest.raises(W.CourseWeightMissing, match="stylegan-photo"):
        W.train("stylegan-comic", 1, work=tmp_path / "c", show_progress=False)
    W.train("stylegan-photo", 2, work=tmp_path / "p", show_progress=False)
    W.export("stylegan-photo", work=tmp_path / "p", out=out)
    G, z = W.load_stylegan("stylegan-photo", with_latents=True)
    assert z.shape == (2 * (100 + 90), 8) and G.size == 16
    run = W.train("stylegan-comic", 2, work=tmp_path / "c", show_progress=False)
    assert run["start_digest"] == W.state_digest(G)          # starts as the photo generator
    W.export("stylegan-comic", work=tmp_path / "c", out=out)
    comic = W.load_stylegan("stylegan-comic")
    assert W.state_digest(comic) != W.state_digest(G)
    with pytest.raises(ValueError, match="carries no latents"):
        W.load_stylegan("stylegan-comic", with_latents=True)
    assert comic.generate([0, 1]).shape == (2, 3, 16, 16)


def test_a_terminated_training_command_exits_130_and_keeps_its_bookkeeping(tmp_path, mirror):
    """``kill PID`` on a running `course-weights train`: exit 130, run.json says how long it ran,
    no temporary file is left."""
    import os
    import signal
    import subprocess
    import sys
    import time

    work = tmp_path / "work"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "COMICUTILS_PROGRESS": "0"}
    proc = subprocess.Popen([sys.executable, "-m", "comicutils", "course-weights", "train", "pix2pix",
                             "--steps", "100000", "--work", str(work)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (work / "run.json").is_file() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    time.sleep(3)                                  # a few training steps
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err
    run = json.loads((work / "run.json").read_text())
    assert run["seconds"] > 0
    assert not [p for p in work.iterdir() if p.name.startswith(".")]


def test_course_adapter_names_are_recipes_and_others_are_refused():
    from comicutils import stylizers

    assert set(stylizers.COURSE_ADAPTERS.values()) == set(W.ADAPTERS) <= set(W.RECIPES)
    assert W.RECIPES["comicdiff-adapter-adv"].settings["adversarial_weight"] > 0
    same = {k: v for k, v in W.RECIPES["comicdiff-adapter"].settings.items()}
    assert {k: W.RECIPES["comicdiff-adapter-adv"].settings[k] for k in same} == same   # an ablation: one change
    gan = W.RECIPES["comicdiff-adapter-gan"]          # a warm start: the adapter recipe trained on, term added
    assert {k: gan.settings[k] for k in same} == same and gan.settings["init"] == "comicdiff-adapter"
    assert gan.settings["adversarial_weight"] > W.RECIPES["comicdiff-adapter-adv"].settings["adversarial_weight"]
    assert "comicdiff-adapter" in gan.needs
    style = W.RECIPES["comicdiff-adapter-style"]      # the same warm start with the Gram-matrix term instead
    assert {k: style.settings[k] for k in same} == same and style.settings["init"] == "comicdiff-adapter"
    assert style.settings["style_weight"] > 0 and "adversarial_weight" not in style.settings
    ink = W.RECIPES["comicdiff-adapter-ink"]          # the Gram-trained one trained on, the ink term added
    assert {k: ink.settings[k] for k in same} == same and ink.settings["init"] == "comicdiff-adapter-style"
    assert ink.settings["style_weight"] == style.settings["style_weight"] and ink.settings["edge_weight"] > 0
    assert "comicdiff-adapter-style" in ink.needs and "edge_weight" not in style.settings
    with pytest.raises(ValueError, match="adapter must be one of"):
        W.load_comicdiff("pix2pix")
    assert set(stylizers.COURSE_PIX2PIX.values()) == set(W.PIX2PIX) <= set(W.RECIPES)
    p2p = W.RECIPES["pix2pix-style"]                  # the pix2pix recipe trained on, the Gram term added
    assert {k: p2p.settings[k] for k in W.RECIPES["pix2pix"].settings} == W.RECIPES["pix2pix"].settings
    assert p2p.settings["init"] == "pix2pix" and p2p.settings["style_weight"] > 0 and "pix2pix" in p2p.needs
    assert p2p.settings["content_weight"] > 0 and p2p.settings["content_block"] in (1, 5, 9)   # chapter 01's other term
    with pytest.raises(ValueError, match="not a course pix2pix generator"):
        W.load_pix2pix(name="comicdiff-adapter")


def test_int8_storage_halves_the_bytes_and_stays_within_half_a_step_of_each_weight():
    g = torch.Generator().manual_seed(0)
    state = {"conv.weight": torch.randn(8, 4, 3, 3, generator=g) * torch.linspace(0.01, 2, 8).view(8, 1, 1, 1),
             "conv.bias": torch.randn(8, generator=g), "bn.num_batches_tracked": torch.tensor(7)}
    stored = W._int8_state(state)
    assert stored["conv.weight"].dtype == torch.int8 and stored["conv.bias"].dtype == torch.float16
    assert stored["conv.weight"].abs().amax((1, 2, 3)).eq(127).all()          # each filter uses its full range
    back = W._dequantized(stored)
    assert set(back) == set(state) and back["bn.num_batches_tracked"].item() == 7
    step = stored["conv.weight" + W.INT8_SCALE].float()
    assert ((back["conv.weight"] - state["conv.weight"]).abs() <= 0.5 * step * (1 + 1e-3) + 1e-6).all()
    fp16 = W._half_state(state)
    assert stored["conv.weight"].nbytes * 2 == fp16["conv.weight"].nbytes
    torch.testing.assert_close(W._dequantized(fp16)["conv.bias"], state["conv.bias"], atol=1e-3, rtol=1e-3)


@pytest.mark.slow
def test_a_warm_started_pix2pix_recipe_starts_from_the_course_generator(tmp_path, monkeypatch):
    """``pix2pix-style`` trains the shipped ``pix2pix`` generator on: its recorded start state is
    that generator's (not a fresh one's), and a step runs with the Gram term on."""
    r = W.RECIPES["pix2pix-style"]
    monkeypatch.setitem(W.RECIPES, r.name, W.Recipe(r.name, r.chapter, r.what, 1, r.settings, r.data, r.needs))
    run = W.train(r.name, 1, work=tmp_path / "w", show_progress=False)
    assert run["start_digest"] == W.state_digest(W.load_pix2pix(name="pix2pix"))
    assert run["start_digest"] != W.entry("pix2pix")["start_digest"]               # that one starts fresh
    assert run["steps"] == 1 and run["first_loss"] > 0


@pytest.mark.slow
def test_a_warm_started_adapter_recipe_starts_from_the_course_adapter(tmp_path, monkeypatch):
    """``comicdiff-adapter-gan`` trains the shipped ``comicdiff-adapter`` on (its ``init``): its
    recorded start state is that adapter's, not a fresh LoRA's, and one step moves it."""
    r = W.RECIPES["comicdiff-adapter-gan"]
    small = {**r.settings, "size": 64, "aug_copies": 0, "batch_size": 2}
    monkeypatch.setitem(W.RECIPES, r.name, W.Recipe(r.name, r.chapter, r.what, 1, small, r.data, r.needs))
    run = W.train(r.name, 1, work=tmp_path / "w", show_progress=False)
    course = W.load_comicdiff("comicdiff-adapter")
    assert run["start_digest"] == W.state_digest(course.unet)
    assert run["start_digest"] != W.entry("comicdiff-adapter")["start_digest"]     # that one starts from zero
    assert run["steps"] == 1

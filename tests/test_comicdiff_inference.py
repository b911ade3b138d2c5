"""Chapter 05's inference side of ComicDiff: loading adapters, the α and rank explorers, the
stylizer and CLI, img2img and the benchmark (tiny configurations)."""
from __future__ import annotations

import pytest
import torch

from comicutils import cli, comicdiff as cd, images as I, stylizers, widgets
from comicutils.comicdiff import lora

from test_comicdiff import TINY_UNET, images, tiny_model

SMALL32 = {**TINY_UNET, "in_channels": 32, "out_channels": 32}   # fits taef2's 32 latent channels


pytestmark = pytest.mark.usefixtures("one_thread")


def _randomise(model, std=0.1, seed=0):
    g = torch.Generator().manual_seed(seed)
    for p in lora.lora_parameters(model.unet):
        p.data = torch.randn(p.shape, generator=g) * std
    return model


@pytest.fixture()
def offline_run(tmp_path, mirror):
    """A run folder like chapter 04's: denoiser/ and lora-r2/adapter/ (taef2 codec)."""
    unet = cd.build_unet(SMALL32, seed=0)
    cd.save_denoiser(unet, tmp_path / "denoiser")
    model = cd.ComicDiff(cd.offline_components(unet=unet, announce=False))
    model.add_lora(2)
    _randomise(model)
    model.save_adapter(tmp_path / "lora-r2" / "adapter", {"path": "offline", "size": [32, 32], "timestep": 1})
    return tmp_path, model


def test_load_translator_reproduces_the_trained_model(offline_run):
    run, model = offline_run
    x = images(2, 32)
    want = model.translate(x)
    loaded = cd.load_translator(run / "lora-r2" / "adapter")
    assert torch.allclose(loaded.translate(x), want, atol=1e-5)
    merged = cd.load_translator(run / "lora-r2" / "adapter", merge=True)
    assert torch.allclose(merged.translate(x), want, atol=1e-4)
    assert loaded.info["rank"] == 2


def test_load_translator_needs_its_denoiser(offline_run, tmp_path_factory):
    run, _ = offline_run
    elsewhere = tmp_path_factory.mktemp("moved")
    (run / "lora-r2" / "adapter").rename(elsewhere / "adapter")
    with pytest.raises(FileNotFoundError, match="denoiser"):
        cd.load_translator(elsewhere / "adapter")
    assert cd.load_translator(elsewhere / "adapter", denoiser=run / "denoiser").path == "offline"


def test_alpha_widget_functions_match_translate():
    m = _randomise(tiny_model().add_lora(4))
    x = images(1, 32)
    state = widgets.prepare_alpha(m, x[0], target=images(1, 32, seed=9)[0], identity=False)
    for alpha in (0.0, 0.4, 1.0, 1.25):
        assert torch.allclose(widgets.render_alpha(state, alpha), m.translate(x, alpha), atol=1e-6)
    readout = widgets.alpha_readout(state, widgets.render_alpha(state, 0.0))
    assert set(readout) == {"SSIM to photo", "SSIM to comic"} and 0 < readout["SSIM to photo"] <= 1
    with pytest.raises(ValueError, match="one photo"):
        widgets.prepare_alpha(m, images(2, 32), identity=False)
    with pytest.raises(ValueError, match="multiples"):
        widgets.prepare_alpha(m, images(1, 30), identity=False)
    box = widgets.alpha_slider(state, alpha=1.0)
    assert box.image.value[:4] == b"\x89PNG"
    assert box.image.layout.width == f"{widgets.DISPLAY_PX}px"               # fixed display size
    assert len(box.children[0].children) == 3                                 # photo | ComicDiff | comic
    before_image, before_text = box.image.value, box.readout.value
    box.slider.value = 0.0                                                     # moving the slider re-renders
    assert box.image.value != before_image and box.readout.value != before_text


def test_rank_explorer_functions():
    models = {r: _randomise(tiny_model().add_lora(r), seed=r) for r in (1, 4)}
    photos, comics = images(2, 32), images(2, 32, seed=3)
    entries = widgets.rank_summary(models, photos, comics)
    assert [e.rank for e in entries] == [1, 4]
    assert entries[1].trainable == 4 * entries[0].trainable        # r (d_in + d_out) scales with r
    image, desc = widgets.render_rank(entries, 4, photos[0])
    assert torch.allclose(image, models[4].translate(photos[:1]), atol=1e-6)
    assert desc["LoRA parameters"] == entries[1].trainable and "ssim" in desc
    with pytest.raises(ValueError, match="no adapter of rank 2"):
        widgets.render_rank(entries, 2, photos[0])
    explorer = widgets.rank_explorer(entries, photos[0])
    assert explorer.buttons.options == (1, 4) and explorer.buttons.value == 4   # opens on the largest rank
    assert widgets.rank_explorer(entries, photos[0], rank=1).buttons.value == 1
    with pytest.raises(ValueError, match="no adapter of rank 2"):
        widgets.rank_explorer(entries, photos[0], rank=2)


def test_comicdiff_stylizer_keeps_size_and_range():
    m = _randomise(tiny_model().add_lora(2))
    m.info = {"size": [32, 32], "rank": 2}
    s = stylizers.build("comicdiff", model=m, alpha=0.5)
    x = torch.rand(2, 3, 40, 48)
    out = s(x)
    assert out.shape == x.shape and out.min() >= 0 and out.max() <= 1
    assert s.describe()["setting alpha"] == 0.5
    with pytest.raises(ValueError, match="adapter"):
        stylizers.build("comicdiff")


def test_stylize_cli_with_an_adapter(offline_run, tmp_path_factory):
    run, model = offline_run
    out = tmp_path_factory.mktemp("out")
    photo = out / "face.png"
    I.save_image(images(1, 32)[0], photo)
    assert cli.main(["stylize", str(photo), "--method", "comicdiff", "--adapter",
                     str(run / "lora-r2" / "adapter"), "--alpha", "0.5", "--out", str(out)]) == 0
    result = I.load_tensor(out / "face_comicdiff.png")
    assert result.shape[-2:] == (32, 32)
    with pytest.raises(SystemExit):
        cli.main(["stylize", str(photo), "--method", "comicdiff", "--out", str(out)])


def test_img2img_calls_the_unet_38_times():
    m = tiny_model()
    calls = []
    hook = m.unet.register_forward_hook(lambda *a: calls.append(1))
    out = cd.img2img(m, images(1, 32), steps=50, strength=0.75)
    hook.remove()
    assert len(calls) == cd.unet_calls_img2img(50, 0.75) == 38
    assert out.shape == (1, 3, 32, 32) and 0 <= out.min() and out.max() <= 1
    with pytest.raises(ValueError, match="strength"):
        cd.img2img(m, images(1, 32), strength=0)


def test_benchmark_reports_parts_ratios_and_bound():
    from comicutils import bench

    m = _randomise(tiny_model().add_lora(2))
    r = bench.comicdiff_timings(size=32, model=m, repeats=1, warmup=0, img2img_steps=8, strength=0.5,
                                text_encoder=False)
    for k in ("E", "U", "D", "a_single_step", "b_img2img", "U_merged", "a_merged", "d_alpha_update"):
        assert r[k] > 0
    assert r["img2img_unet_calls"] == 4
    e, u, d = r["E"], r["U"], r["D"]
    assert r["bound_speedup"] == pytest.approx((e + 4 * u + d) / (e + u + d))
    assert r["speedup"] == pytest.approx(r["b_img2img"] / r["a_single_step"])
    assert set(r["targets"]) == {"a within 10% of E+U+D", "speed-up within 10% of the bound",
                                 "alpha update under 200 ms"}
    assert not lora.lora_parameters(m.unet)[0].is_inference()   # merged and unmerged back, still trainable


def test_alpha_sweep_matches_translate_at_every_alpha():
    m = _randomise(tiny_model().add_lora(2))
    photos, comics = images(2, 32), images(2, 32, seed=4)
    rows, outs = cd.alpha_sweep(m, photos, comics, alphas=(0.0, 0.5, 1.25), identity=False)
    assert [r["alpha"] for r in rows] == [0.0, 0.5, 1.25]
    for r in rows:
        assert torch.allclose(outs[r["alpha"]], m.translate(photos, r["alpha"]), atol=1e-6)
        assert -1 <= r["SSIM"] <= 1 and r["MSE"] >= 0


def test_training_entry_point_on_a_folder(tmp_path, mirror, capsys):
    from comicutils.comicdiff import train

    for sub in ("photos", "comics"):
        (tmp_path / sub).mkdir()
        for i in range(3):
            I.save_image(images(1, 32, seed=i + (10 if sub == "comics" else 0))[0], tmp_path / sub / f"p{i}.png")
    unet = cd.build_unet(SMALL32, seed=0)
    cd.save_denoiser(unet, tmp_path / "denoiser")
    out = tmp_path / "run"
    assert train.main(["--data", str(tmp_path), "--out", str(out), "--path", "offline", "--size", "32",
                       "--denoiser", str(tmp_path / "denoiser"), "--max-steps", "2", "--batch-size", "2",
                       "--test-fraction", "0.34", "--lpips-weight", "0", "--mixed-precision", "no"]) == 0
    info = cd.read_adapter_info(out / "adapter")
    assert info["step"] == 2 and info["rank"] == 8 and info["size"] == [32, 32]
    with pytest.raises(SystemExit) as err:
        train.main(["--data", str(out), "--out", str(tmp_path / "x")])
    assert err.value.code == 2 and "photos" in capsys.readouterr().err


def test_evaluate_cli_scores_a_comicdiff_adapter(offline_run, tmp_path_factory, capsys):
    import json

    run, _ = offline_run
    out = tmp_path_factory.mktemp("eval") / "eval.json"
    assert cli.main(["evaluate", "--methods", "identity", "comicdiff", "--adapter", str(run / "lora-r2" / "adapter"),
                     "--size", "32", "--limit", "2", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["identity", "comicdiff"]
    assert 0 <= rows[1]["mse"] <= 1
    assert cli.main(["evaluate", "--methods", "comicdiff", "--size", "32"]) == 2
    assert "adapter" in capsys.readouterr().err


def test_translate_faces_aligns_then_translates(mirror):
    from comicutils import data, faces

    m = _randomise(tiny_model().add_lora(2))
    photo = data.astronaut(256)
    aligned, comics = cd.translate_faces(m, photo, size=64)
    assert aligned.shape == comics.shape == (1, 3, 64, 64)
    assert torch.allclose(comics, m.translate(aligned), atol=1e-6)
    with pytest.raises(faces.NoFaceFound, match="image 0"):
        cd.translate_faces(m, torch.full((1, 3, 64, 64), 0.5), size=64)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU refusal")
def test_training_memory_needs_cuda():
    from comicutils import bench

    with pytest.raises(RuntimeError, match="CUDA"):
        bench.comicdiff_training_memory(device="cpu")


def test_the_comicdiff_stylizer_follows_alpha(offline_run):
    """α = 0 is the VAE reconstruction; the further α goes, the further the output moves from it
    (a stylizer that ignored α, or used it twice, fails)."""
    _, model = offline_run
    model.info = {"size": [32, 32], "rank": 2}           # the stylizer works at the adapter's size: no resize here
    x = images(2, 32)
    outs = {a: stylizers.build("comicdiff", model=model, alpha=a)(x) for a in (0.0, 0.5, 1.0, 1.5)}
    with torch.no_grad():
        recon = model.decode(model.encode(x)).clamp(0, 1)
    torch.testing.assert_close(outs[0.0], recon, atol=2e-3, rtol=0)
    moved = [float((outs[a] - outs[0.0]).abs().mean()) for a in (0.5, 1.0, 1.5)]
    assert 0 < moved[0] < moved[1] < moved[2], moved
    for a in (0.5, 1.0):
        torch.testing.assert_close(outs[a], model.translate(x, alpha=a), atol=2e-3, rtol=0)


def test_an_adapter_without_its_base_model_recorded_is_refused(offline_run):
    import json

    run, _ = offline_run
    adapter = run / "lora-r2" / "adapter"
    (info_file,) = [p for p in adapter.glob("*.json") if "provenance" in p.read_text()]
    info = json.loads(info_file.read_text())
    assert info["provenance"]["base"].startswith("unet-sha256:")      # save_adapter records it by itself
    cd.load_translator(adapter)                                         # the right denoiser: loads
    del info["provenance"]
    info_file.write_text(json.dumps(info))
    with pytest.raises(ValueError, match="records no base model"):
        cd.load_translator(adapter)

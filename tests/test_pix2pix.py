"""Tests of comicutils.pix2pix: generators, PatchGAN, losses, trainer, files and the CLI."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from comicutils import assets, cli, images, pix2pix
from comicutils.data import PairDataset, PairSet


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """These models are tiny: one thread is faster than two (no OpenMP hand-offs), and much
    faster when another process keeps the cores busy."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _pm1(*shape, seed=0):
    return _rand(*shape, seed=seed) * 2 - 1


# --------------------------------------------------------------------------- generators
@pytest.mark.parametrize("name,kw", [("unet", {"ngf": 8}), ("ures9", {"ngf": 8})])
@pytest.mark.parametrize("size", [128, 256])
def test_generators_map_images_to_images_in_minus1_1(name, kw, size):
    g = pix2pix.build_generator(name, size, **kw)
    y = g(_pm1(2, 3, size, size))
    assert y.shape == (2, 3, size, size)
    assert y.min() >= -1 and y.max() <= 1


def test_unet_depth_follows_size_and_512_has_one_more_level():
    assert [pix2pix.UNetGenerator(s, ngf=2).n_downs for s in (128, 256, 512)] == [7, 8, 9]
    g = pix2pix.UNetGenerator(512, ngf=2).eval()
    with torch.no_grad():
        assert g(_pm1(1, 3, 512, 512)).shape == (1, 3, 512, 512)


def _hand_count_unet(chans):
    """Parameters of a pix2pix U-Net with encoder channels ``chans``, counted layer by layer:
    4x4 convolutions (bias only where no BatchNorm follows), BatchNorm = 2 per channel."""
    def conv(c_in, c_out, bias):
        return 16 * c_in * c_out + (c_out if bias else 0)

    n, total, c_in = len(chans), 0, 3
    for i, c in enumerate(chans):                       # encoder
        norm = 0 < i < n - 1
        total += conv(c_in, c, bias=not norm) + (2 * c if norm else 0)
        c_in = c
    for j in range(n - 1, 0, -1):                       # decoder: ConvT (no bias) + BN
        c_in = chans[j] if j == n - 1 else 2 * chans[j]
        total += conv(c_in, chans[j - 1], bias=False) + 2 * chans[j - 1]
    return total + conv(2 * chans[0], 3, bias=True)     # last ConvT to RGB


def test_unet_512_has_the_seeds_extra_32_filter_level():
    assert pix2pix.unet_channels(512) == [32, 64, 128, 256, 512, 512, 512, 512, 512]
    assert pix2pix.unet_channels(256) == [64, 128, 256, 512, 512, 512, 512, 512]
    with torch.device("meta"):
        g = pix2pix.build_generator("unet", 512)
    first = g.downs[0][0]
    assert (first.in_channels, first.out_channels, first.kernel_size, first.stride) == (3, 32, (4, 4), (2, 2))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in g.downs[0])   # sees the image
    assert g.downs[1][0].out_channels == 64 and isinstance(g.downs[1][1], nn.BatchNorm2d)
    last_up = g.ups[-1][0]                                # back to 32 filters at 256 px ...
    assert (last_up.in_channels, last_up.out_channels) == (128, 32)
    assert g.final[0].in_channels == 64                   # ... + the 32-filter skip
    assert pix2pix.count_parameters(g) == _hand_count_unet([32, 64, 128, 256] + [512] * 5) == 54_508_387
    g = pix2pix.build_generator("unet", 512).eval()
    with torch.no_grad():
        assert g(_pm1(1, 3, 512, 512)).shape == (1, 3, 512, 512)


def test_unet_256_and_128_are_unchanged_pix2pix():
    with torch.device("meta"):
        assert pix2pix.count_parameters(pix2pix.UNetGenerator(256)) == 54_414_531
        assert pix2pix.count_parameters(pix2pix.UNetGenerator(128)) == 41_829_571
    assert _hand_count_unet([64, 128, 256, 512, 512, 512, 512, 512]) == 54_414_531


def test_unet_default_is_the_pix2pix_size():
    # 54 M parameters at 256 px (DESIGN.md's cost table); built on the meta device: no memory
    with torch.device("meta"):
        assert 54e6 < pix2pix.count_parameters(pix2pix.UNetGenerator(256)) < 55e6


@pytest.mark.parametrize("hw", [(100, 128), (128, 127), (64, 64), (129, 129)])
def test_unet_rejects_sizes_it_cannot_halve_with_a_clear_error(hw):
    g = pix2pix.UNetGenerator(128, ngf=4)
    with pytest.raises(ValueError, match="multiples of 128"):
        g(_pm1(1, 3, *hw))
    with pytest.raises(ValueError, match="power of two"):
        pix2pix.UNetGenerator(200)


def test_ures9_rejects_non_multiples_of_16_and_has_nine_residual_blocks():
    g = pix2pix.UResNetGenerator(ngf=4, size=128)
    assert sum(isinstance(m, pix2pix.ResidualBlock) for m in g.modules()) == 9
    with pytest.raises(ValueError, match="multiples of 16"):
        g(_pm1(1, 3, 120, 128))


def test_residual_block_is_identity_plus_body_then_relu():
    block = pix2pix.ResidualBlock(4).eval()
    x = _pm1(1, 4, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), F.relu(x + block.body(x)))
        for m in block.body:               # zero body -> ReLU(x)
            if isinstance(m, nn.BatchNorm2d):
                m.weight.zero_()
                m.bias.zero_()
        torch.testing.assert_close(block(x), F.relu(x))


def test_ures50_offline_shows_the_banner_maps_shapes_and_full_mode_raises(capsys, monkeypatch):
    g = pix2pix.UResNet50Generator(pretrained=True, size=128).eval()
    out = capsys.readouterr().out
    assert "SUBSTITUTE IN USE" in out and "ResNet-50 ImageNet weights" in out
    assert g.weights == "random (substitute)"
    with torch.no_grad():
        for size in (128, 256):
            y = g(_pm1(1, 3, size, size))
            assert y.shape == (1, 3, size, size) and y.abs().max() <= 1
    with pytest.raises(ValueError, match="multiples of 32"):
        g(_pm1(1, 3, 100, 128))
    monkeypatch.setenv("COMICUTILS_MODE", "full")
    with pytest.raises(assets.AssetUnavailable):
        pix2pix.UResNet50Generator(pretrained=True)


def test_ures50_loads_a_torchvision_state_dict_strictly(tmp_path, monkeypatch):
    from torchvision.models import resnet50

    ref = resnet50(weights=None)
    with torch.no_grad():
        ref.conv1.weight.fill_(0.25)
    torch.save(ref.state_dict(), tmp_path / "r50.pth")
    monkeypatch.setattr(assets, "fetch_or_substitute", lambda *a, **k: tmp_path / "r50.pth")
    g = pix2pix.UResNet50Generator(pretrained=True)
    assert g.weights == "ImageNet"
    assert torch.equal(g.encoder.conv1.weight, ref.conv1.weight)
    assert torch.equal(g.encoder.layer4[2].conv3.weight, ref.layer4[2].conv3.weight)
    state = ref.state_dict()
    del state["layer1.0.conv1.weight"]
    torch.save(state, tmp_path / "r50.pth")
    with pytest.raises(RuntimeError, match="layer1.0.conv1.weight"):
        pix2pix.UResNet50Generator(pretrained=True)


def test_build_generator_rejects_unknown_names():
    with pytest.raises(ValueError, match="unet, ures9, ures50"):
        pix2pix.build_generator("resnet9")


# --------------------------------------------------------------------------- discriminator
def test_patch_discriminator_output_shape_and_receptive_field_formula():
    d = pix2pix.PatchDiscriminator(ndf=8)
    x = _pm1(2, 3, 256, 256)
    assert d(x, x).shape == (2, 1, 30, 30) and pix2pix.patch_output_size(256) == 30
    assert pix2pix.patch_output_size(128) == 14
    assert [pix2pix.receptive_field(n) for n in (2, 3, 4)] == [34, 70, 142]
    with pytest.raises(ValueError):
        d(x, x[:, :, :128])


@pytest.mark.parametrize("n_layers", [2, 3])
def test_one_logit_sees_exactly_a_receptive_field_window(n_layers):
    # eval mode: in training mode BatchNorm's batch statistics connect every pixel
    d = pix2pix.PatchDiscriminator(ndf=8, n_layers=n_layers).eval()
    photo = _pm1(1, 3, 128, 128).requires_grad_(True)
    comic = _pm1(1, 3, 128, 128, seed=1).requires_grad_(True)
    logits = d(photo, comic)
    i = logits.shape[-1] // 2
    logits[0, 0, i, i].backward()
    for grad in (photo.grad, comic.grad):      # D sees both images of the pair
        hit = grad.abs().sum(dim=(0, 1)) > 0
        rows, cols = hit.any(1).nonzero(), hit.any(0).nonzero()
        r = pix2pix.receptive_field(n_layers)
        assert rows.max() - rows.min() + 1 == r and cols.max() - cols.min() + 1 == r


# --------------------------------------------------------------------------- losses
def test_gan_loss_vanilla_and_lsgan():
    logits = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]])
    vanilla = pix2pix.GANLoss("vanilla")
    assert vanilla(torch.zeros(1, 1, 2, 2), True).item() == pytest.approx(0.6931472)
    want = F.binary_cross_entropy(torch.sigmoid(logits), torch.ones_like(logits))
    assert vanilla(logits, True).item() == pytest.approx(want.item(), rel=1e-5)
    assert pix2pix.GANLoss("lsgan")(logits, False).item() == pytest.approx((0 + 4 + 1 + 9) / 4)
    assert pix2pix.GANLoss("lsgan")(logits, True).item() == pytest.approx((1 + 1 + 4 + 4) / 4)
    with pytest.raises(ValueError):
        pix2pix.GANLoss("wgan")


class _FakeBackbone(nn.Module):
    """Two 'layers': the image itself and its 2x2 average pool."""

    def forward(self, x):
        return {"id": x, "pool": F.avg_pool2d(x, 2)}


def test_perceptual_mse_and_mae_equal_hand_computations_and_differ():
    pred, target = _rand(1, 3, 4, 4), _rand(1, 3, 4, 4, seed=1)
    mse = pix2pix.PerceptualLoss(_FakeBackbone(), "mse", layers=["id", "pool"])
    mae = pix2pix.PerceptualLoss(_FakeBackbone(), "mae", layers=["id", "pool"])
    pp, tp = F.avg_pool2d(pred, 2), F.avg_pool2d(target, 2)
    want_mse = ((pred - target) ** 2).mean() + ((pp - tp) ** 2).mean()
    want_mae = (pred - target).abs().mean() + (pp - tp).abs().mean()
    assert mse(pred, target).item() == pytest.approx(want_mse.item(), rel=1e-6)
    assert mae(pred, target).item() == pytest.approx(want_mae.item(), rel=1e-6)
    assert mse(pred, target).item() != pytest.approx(mae(pred, target).item())
    assert mse(target, target).item() == 0.0


def test_perceptual_vgg_offline_falls_back_to_taef2_with_banner_and_is_frozen(capsys):
    loss = pix2pix.PerceptualLoss("vgg16", "mse")
    assert "SUBSTITUTE IN USE" in capsys.readouterr().out
    assert loss.info.used == "taef2" and loss.layers == pix2pix.PERCEPTUAL_LAYERS["taef2"]
    assert not any(p.requires_grad for p in loss.parameters())
    loss.train()
    assert not loss.net.training
    pred = _rand(1, 3, 32, 32).requires_grad_(True)
    value = loss(pred, _rand(1, 3, 32, 32, seed=1))
    value.backward()
    assert value.item() > 0 and pred.grad.abs().sum() > 0


def test_generator_loss_is_seed_equation_1():
    gan = pix2pix.GANLoss()
    logits = torch.randn(2, 1, 3, 3, generator=torch.Generator().manual_seed(0))
    fake, target = _pm1(2, 3, 8, 8), _pm1(2, 3, 8, 8, seed=1)
    perc = pix2pix.PerceptualLoss(_FakeBackbone(), "mse", layers=["id"])
    parts = pix2pix.generator_loss(logits, fake, target, gan_loss=gan, perceptual=perc)
    assert parts["adv"].item() == pytest.approx(gan(logits, True).item())
    assert parts["l1"].item() == pytest.approx((fake - target).abs().mean().item())
    # the perceptual network sees [0, 1] images
    want_perc = (((fake + 1) / 2 - (target + 1) / 2) ** 2).mean()
    assert parts["perc"].item() == pytest.approx(want_perc.item(), rel=1e-6)
    torch.testing.assert_close(parts["total"],
                               parts["adv"] + 0.001 * parts["perc"] + 100.0 * parts["l1"])
    plain = pix2pix.generator_loss(logits, fake, target, gan_loss=gan, lambda_l1=0.0)
    assert plain["perc"].item() == 0.0
    assert plain["total"].item() == pytest.approx(plain["adv"].item())


def test_discriminator_loss_is_halved():
    gan = pix2pix.GANLoss()
    real, fake = torch.full((1, 1, 2, 2), 3.0), torch.full((1, 1, 2, 2), -1.0)
    want = 0.5 * (gan(real, True) + gan(fake, False))
    assert pix2pix.discriminator_loss(real, fake, gan).item() == pytest.approx(want.item())
    zero = torch.zeros(1, 1, 2, 2)
    assert pix2pix.discriminator_loss(zero, zero, gan).item() == pytest.approx(0.6931472)


# --------------------------------------------------------------------------- training
def _pairs(n=2, size=64, seed=0):
    photos = _rand(n, 3, size, size, seed=seed)
    comics = (1 - photos).flip(-1)              # a deterministic photo -> comic mapping
    return PairSet([f"k{i}" for i in range(n)], photos, comics)


def test_unet_overfits_one_pair():
    # a smooth "photo" and a colour-changed "comic"; full loss (adversarial + 100 L1)
    torch.manual_seed(0)
    photo = F.interpolate(_rand(1, 3, 8, 8), size=64, mode="bilinear")
    pairs = PairSet(["a"], photo, (1 - photo).roll(1, dims=1))
    g = pix2pix.UNetGenerator(64, ngf=8, dropout=0.0)
    trainer = pix2pix.Pix2PixTrainer(g, pix2pix.PatchDiscriminator(ndf=8), lr=1e-3, device="cpu")
    history = trainer.train(PairDataset(pairs), steps=60, show_progress=False)
    assert [r["step"] for r in history] == list(range(1, 61))
    first = history[0]["g_l1"]
    last = sum(r["g_l1"] for r in history[-5:]) / 5
    assert last < 0.5 * first, (first, last)
    assert all(k in history[-1] for k in ("d", "g_total", "g_adv", "g_l1", "g_perc", "epoch"))


def test_translate_returns_0_1_leaves_input_alone_and_restores_mode():
    g = pix2pix.UNetGenerator(64, ngf=4)
    x = _rand(3, 3, 64, 64)
    before = x.clone()
    y = pix2pix.translate(g, x, batch_size=2)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    assert torch.equal(x, before) and g.training
    assert pix2pix.translate(g, x[0]).shape == (3, 64, 64)
    torch.testing.assert_close(pix2pix.translate(g, x), y)      # eval: deterministic
    with pytest.raises(images.ImageError):
        pix2pix.translate(g, x * 2 - 1)


def _trainer(**kw):
    torch.manual_seed(0)
    return pix2pix.Pix2PixTrainer(pix2pix.UNetGenerator(32, ngf=4),
                                  pix2pix.PatchDiscriminator(ndf=4, n_layers=2), device="cpu", **kw)


def test_checkpoint_round_trip_resume_and_samples(tmp_path):
    ckpt = tmp_path / "run.pt"
    ds = PairDataset(_pairs(3, 32))
    a = _trainer()
    a.train(ds, epochs=1, checkpoint=ckpt, sample_pairs=_pairs(2, 32, seed=5), show_progress=False)
    assert a.step == 3 and a.epoch == 1 and sorted(a.samples) == [0, 1]
    assert a.samples[1].shape == (2, 3, 32, 32)
    assert 0 <= a.samples[1].min() <= a.samples[1].max() <= 1
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]           # no temp file left
    b = _trainer()
    b.train(ds, epochs=2, checkpoint=ckpt, show_progress=False)        # resumes at step 3
    assert b.step == 6 and b.epoch == 2
    assert [r["step"] for r in b.history] == [1, 2, 3, 4, 5, 6]
    assert [r["epoch"] for r in b.history] == [1, 1, 1, 2, 2, 2]
    c = _trainer()
    c.train(ds, steps=7, checkpoint=ckpt, show_progress=False)
    assert c.step == 7 and c.epoch == 2
    # generator files: identical outputs in eval mode
    b.save_generator(tmp_path / "g.pt")
    x = _rand(2, 3, 32, 32, seed=9)
    want = pix2pix.translate(b.generator, x)
    for path in (tmp_path / "g.pt", ckpt):
        g = pix2pix.load_generator(path)
        assert not g.training
        if path == ckpt:
            continue
        torch.testing.assert_close(pix2pix.translate(g, x), want, rtol=0, atol=0)
    with pytest.raises(ValueError, match="ures9"):
        pix2pix.load_generator(tmp_path / "g.pt", name="ures9")
    wrong = pix2pix.Pix2PixTrainer(pix2pix.UNetGenerator(32, ngf=8),
                                   pix2pix.PatchDiscriminator(ndf=4, n_layers=2), device="cpu")
    with pytest.raises(ValueError, match="this trainer has .*ngf.: 8.*start afresh"):
        wrong.train(ds, epochs=3, checkpoint=ckpt, show_progress=False)


def test_the_chapter01_terms_add_exactly_their_weighted_distances():
    """``style_weight`` (beyond the report) adds w · relative Gram distance (output vs its own comic,
    taef2 features) to G's loss, ``content_weight`` w · the deepest block's feature distance to the
    photo, and nothing else: same start, same batch, same randomness."""
    import copy

    from comicutils.comicdiff.model import relative_gram_distance
    from comicutils.taesd import FeatureExtractor

    g, d = pix2pix.UNetGenerator(64, ngf=8, dropout=0.0), pix2pix.PatchDiscriminator(ndf=8)
    off = pix2pix.Pix2PixTrainer(copy.deepcopy(g), copy.deepcopy(d), device="cpu")
    on = pix2pix.Pix2PixTrainer(copy.deepcopy(g), copy.deepcopy(d), device="cpu", style_weight=3.0)
    photo, comic = _rand(1, 3, 64, 64), _rand(1, 3, 64, 64, seed=1)
    with torch.no_grad():
        fake01 = (g.train()(photo * 2 - 1) + 1) / 2
        fx = FeatureExtractor(blocks=(1, 5, 9))
        want = relative_gram_distance(fx(fake01), fx(comic)).item()
    row_off, row_on = off.train_step(photo, comic), on.train_step(photo, comic)
    assert "g_style" not in row_off and row_on["d"] == pytest.approx(row_off["d"])
    assert row_on["g_style"] == pytest.approx(want, rel=1e-4) and want > 0
    assert row_on["g_total"] == pytest.approx(row_off["g_total"] + 3.0 * row_on["g_style"], rel=1e-5)
    assert on.config["trainer"]["style_weight"] == 3.0 and "style_weight" not in off.config["trainer"]
    with pytest.raises(ValueError, match="style_weight must be >= 0"):
        pix2pix.Pix2PixTrainer(g, d, device="cpu", style_weight=-1.0)
    both = pix2pix.Pix2PixTrainer(copy.deepcopy(g), copy.deepcopy(d), device="cpu", style_weight=3.0,
                                  content_weight=2.0)
    row = both.train_step(photo, comic)            # the content term: output vs the *photo*, deepest block
    with torch.no_grad():
        fo, fp = fx(fake01), fx(photo)
        from comicutils.taesd import feature_distance
        want_content = feature_distance(fo, fp, blocks=(9,)).item()
    assert row["g_content"] == pytest.approx(want_content, rel=1e-4) and want_content > 0
    assert row["g_total"] == pytest.approx(row_off["g_total"] + 3.0 * row["g_style"] + 2.0 * row["g_content"], rel=1e-5)
    with pytest.raises(ValueError, match="content_weight must be >= 0"):
        pix2pix.Pix2PixTrainer(g, d, device="cpu", content_weight=float("nan"))
    mid = pix2pix.Pix2PixTrainer(copy.deepcopy(g), copy.deepcopy(d), device="cpu", content_weight=2.0,
                                 content_block=5)      # a shallower block: the parts' shapes too
    row = mid.train_step(photo, comic)
    assert row["g_content"] == pytest.approx(feature_distance(fo, fp, blocks=(5,)).item(), rel=1e-4)
    assert row["g_content"] != pytest.approx(want_content, rel=1e-2)
    assert mid.config["trainer"]["content_block"] == 5 and "content_block" not in on.config["trainer"]
    with pytest.raises(ValueError, match="content_block must be one of the taef2 blocks 1, 5, 9; got 4"):
        pix2pix.Pix2PixTrainer(g, d, device="cpu", content_weight=1.0, content_block=4)
    from comicutils.metrics import edge_histogram_distance
    inked = pix2pix.Pix2PixTrainer(copy.deepcopy(g), copy.deepcopy(d), device="cpu", edge_weight=5.0)
    row = inked.train_step(photo, comic)           # the ink term: sorted edge strengths vs the comic's
    want_edges = edge_histogram_distance(fake01, comic).item()
    assert row["g_edges"] == pytest.approx(want_edges, rel=1e-4) and want_edges > 0
    assert row["g_total"] == pytest.approx(row_off["g_total"] + 5.0 * row["g_edges"], rel=1e-5)
    assert inked.config["trainer"]["edge_weight"] == 5.0 and "edge_weight" not in off.config["trainer"]
    assert inked.style_features is None            # no feature encoder needed for it
    with pytest.raises(ValueError, match="edge_weight must be >= 0"):
        pix2pix.Pix2PixTrainer(g, d, device="cpu", edge_weight=-2.0)


def test_nan_guard_raises_a_clear_error():
    trainer = _trainer()
    photo = _rand(1, 3, 32, 32)
    with pytest.raises(FloatingPointError, match="step 1"):
        trainer.train_step(photo, torch.full_like(photo, float("nan")))
    with pytest.raises(ValueError, match="epochs"):
        trainer.train(PairDataset(_pairs(2, 32)))


# --------------------------------------------------------------------------- CLI
def test_cli_stylize_with_a_tiny_checkpoint_writes_a_png(tmp_path, capsys):
    g = pix2pix.UNetGenerator(32, ngf=4)
    pix2pix.save_generator(g, tmp_path / "g.pt")
    photo = images.save_image(_rand(3, 48, 40), tmp_path / "face.png")
    rc = cli.main(["stylize", str(photo), "--method", "pix2pix", "--checkpoint",
                   str(tmp_path / "g.pt"), "--out", str(tmp_path / "out")])
    assert rc == 0
    out = tmp_path / "out" / "face_pix2pix.png"
    assert out.is_file() and str(out) in capsys.readouterr().out
    assert images.load_tensor(out).shape == (1, 3, 32, 32)      # the checkpoint's size
    with pytest.raises(SystemExit):
        cli.main(["stylize", str(photo), "--method", "pix2pix", "--out", str(tmp_path)])


def test_cli_train_pix2pix_on_the_v2_preview_then_resume(tmp_path, capsys):
    ckpt = tmp_path / "run.pt"
    args = ["train-pix2pix", "--generator", "unet", "--size", "32", "--ngf", "4", "--data", "v2",
            "--perceptual", "none", "--out", str(ckpt)]
    assert cli.main(args + ["--steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "40 train pairs, 10 held out" in out and "photo (identity)" in out
    assert cli.main(args + ["--steps", "3"]) == 0
    assert "after 3 steps" in capsys.readouterr().out
    assert pix2pix.load_generator(ckpt).config["size"] == 32


def test_cli_bench_pix2pix_writes_json(tmp_path):
    import json

    path = tmp_path / "b.json"
    assert cli.main(["bench", "pix2pix", "--generators", "unet", "--sizes", "32", "--batches",
                     "1", "--steps", "1", "--warmup", "0", "--infer-batch", "1",
                     "--json", str(path)]) == 0
    row = json.loads(path.read_text())["rows"][0]
    assert row["generator"] == "unet" and row["train_s_per_step_b1"] > 0
    assert row["infer_images_per_s"] > 0


def test_stage_shapes_trace_the_u(tmp_path):
    from comicutils import viz

    g = pix2pix.build_generator("unet", size=64, ngf=4)
    table = pix2pix.stage_shapes(g, 64)
    enc = table[table.part == "encoder"]
    assert list(enc.resolution) == [32, 16, 8, 4, 2, 1]       # log2(64) downsamplings
    assert table.iloc[-1].resolution == 64 and table.iloc[-1].channels == 3
    assert table.parameters.sum() == pix2pix.count_parameters(g)
    assert g.training                                          # mode restored
    fig = viz.architecture_diagram(table, title="U-Net")
    assert len(fig.axes) == 1


def test_translate_with_per_image_norm_stats_keeps_running_stats_and_is_deterministic():
    g = pix2pix.build_generator("unet", size=64, ngf=4)
    g.train()
    g(torch.rand(2, 3, 64, 64) * 2 - 1)          # give the running stats some values
    before = {k: v.clone() for k, v in g.state_dict().items()}
    x = torch.rand(3, 3, 64, 64)
    a = pix2pix.translate(g, x, norm_stats="image")
    b = pix2pix.translate(g, x, norm_stats="image")
    assert torch.equal(a, b) and a.shape == x.shape and 0 <= a.min() and a.max() <= 1
    assert all(torch.equal(before[k], v) for k, v in g.state_dict().items())
    assert g.training
    # per-image statistics: an image's output does not depend on its batch mates
    assert torch.allclose(pix2pix.translate(g, x[:1], norm_stats="image"), a[:1], atol=1e-6)
    assert not torch.allclose(pix2pix.translate(g, x, norm_stats="running"), a)
    with pytest.raises(ValueError):
        pix2pix.translate(g, x, norm_stats="batch")


def test_checkpoint_every_n_epochs_saves_less_often_and_always_at_the_end(tmp_path, monkeypatch):
    ckpt = tmp_path / "run.pt"
    ds = PairDataset(_pairs(2, 32))
    trainer = _trainer()
    saved = []
    real_save = trainer.save_checkpoint
    monkeypatch.setattr(trainer, "save_checkpoint", lambda path: (saved.append(trainer.epoch), real_save(path))[1])
    trainer.train(ds, epochs=5, checkpoint=ckpt, checkpoint_every=2, show_progress=False)
    assert saved == [2, 4, 5]                                   # every 2nd epoch, then the end, once
    resumed = _trainer()
    resumed.train(ds, epochs=5, checkpoint=ckpt, show_progress=False)
    assert resumed.epoch == 5 and resumed.step == 10            # nothing left to do
    with pytest.raises(ValueError, match="checkpoint_every"):
        _trainer().train(ds, epochs=1, checkpoint_every=0)


def test_training_samples_are_the_stylizers_pictures(tmp_path):
    from comicutils import stylizers

    photos = _pairs(2, 32, seed=4)
    trainer = _trainer()
    trainer.train(PairDataset(_pairs(3, 32)), epochs=1, sample_pairs=photos, show_progress=False)
    want = stylizers.Pix2Pix(generator=trainer.generator, norm_stats="image")(photos.photos)
    torch.testing.assert_close(trainer.samples[1], want, rtol=0, atol=1e-6)

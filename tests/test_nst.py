"""Tests of comicutils.nst: Gram matrices, losses, optimisation, backbones and the CLI."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from comicutils import assets, cli, images, nst


def _tiny_vgg(layers=("conv1_1", "conv1_2", "conv2_1")):
    return nst.VGGFeatures("vgg16", layers, seed=0)


# --------------------------------------------------------------------------- Gram matrix
def test_gram_symmetric_psd_and_shape():
    f = torch.randn(2, 5, 6, 7, dtype=torch.float64)
    g = nst.gram_matrix(f)
    assert g.shape == (2, 5, 5)
    torch.testing.assert_close(g, g.transpose(1, 2))
    assert torch.linalg.eigvalsh(g).min() >= -1e-6


def test_gram_invariant_to_pixel_permutation():
    f = torch.randn(1, 4, 5, 6, dtype=torch.float64)
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(1))
    shuffled = f.reshape(1, 4, 30)[:, :, perm].reshape(1, 4, 5, 6)
    torch.testing.assert_close(nst.gram_matrix(shuffled), nst.gram_matrix(f))


def test_gram_equals_hand_computation():
    f = torch.arange(12, dtype=torch.float64).reshape(1, 3, 2, 2)
    g = nst.gram_matrix(f)[0]
    c, h, w = 3, 2, 2
    for i in range(c):
        for j in range(c):
            want = sum(f[0, i, y, x] * f[0, j, y, x] for y in range(h) for x in range(w))
            assert g[i, j].item() == pytest.approx(want.item() / (c * h * w))


def test_gram_rejects_wrong_rank():
    with pytest.raises(ValueError, match="N, C, H, W"):
        nst.gram_matrix(torch.zeros(3, 4, 4))


# --------------------------------------------------------------------------- losses
def test_style_loss_zero_for_identical_and_positive_otherwise():
    feats = {"a": torch.randn(1, 4, 5, 5), "b": torch.randn(1, 8, 3, 3)}
    grams = {k: nst.gram_matrix(v) for k, v in feats.items()}
    assert nst.style_loss(feats, grams).item() == 0.0
    other = {k: v + 0.1 * torch.randn_like(v) for k, v in feats.items()}
    assert nst.style_loss(other, grams).item() > 0.0
    # layer weights: a layer with weight 0 does not count
    only_b = {"a": other["a"], "b": feats["b"]}
    assert nst.style_loss(only_b, grams, {"a": 0.0, "b": 1.0}).item() == 0.0


def test_content_loss_gradient_matches_hand_derivation():
    x = torch.randn(1, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 2, 3, 3, dtype=torch.float64)
    nst.content_loss(x, t).backward()
    torch.testing.assert_close(x.grad, 2 * (x.detach() - t) / x.numel())
    assert torch.autograd.gradcheck(lambda a: nst.content_loss({"l": a}, {"l": t}), (x,))


def test_total_variation_zero_for_constant_image():
    assert nst.total_variation(torch.full((1, 3, 8, 8), 0.3)).item() == 0.0
    assert nst.total_variation(torch.rand(1, 3, 8, 8)).item() > 0.0


# --------------------------------------------------------------------------- optimisation
@pytest.mark.parametrize("optimizer", ["adam", "lbfgs"])
def test_steps_lower_the_loss_and_keep_inputs(optimizer):
    g = torch.Generator().manual_seed(0)
    content = torch.rand(1, 3, 32, 32, generator=g)
    style = torch.rand(3, 40, 40, generator=g)  # (3, H, W), another size: resized inside
    c0, s0 = content.clone(), style.clone()
    net = _tiny_vgg()
    r = nst.stylize(content, style, backbone=net, style_layers=("conv1_1", "conv2_1"),
                    content_layers=("conv1_2",), steps=8, style_weight=1e4,
                    optimizer=optimizer, init="noise", snapshots=(0, 4, 8), tv_weight=1e-3,
                    device="cpu", show_progress=False)
    assert r.history["total"][-1] < r.history["total"][0]
    assert all(len(v) >= 8 for v in r.history.values())
    assert r.image.shape == content.shape
    assert 0.0 <= r.image.min() and r.image.max() <= 1.0
    assert set(r.snapshots) == {0, 4, 8}
    assert all(s.shape == content.shape for s in r.snapshots.values())
    assert torch.equal(content, c0) and torch.equal(style, s0)
    assert r.steps == 8 and r.seconds > 0


def test_random_vgg_backbone_by_name_and_nan_guard():
    content = torch.rand(1, 3, 32, 32)
    r = nst.stylize(content, content.flip(-1), backbone="vgg16-random", steps=2,
                    device="cpu", show_progress=False, snapshots=[2])
    assert r.backbone.weights == "random" and not r.backbone.substitute
    assert list(r.snapshots) == [2]
    with pytest.raises(FloatingPointError, match="lower lr"):
        nst.stylize(content, content, backbone="vgg16-random", steps=2, style_weight=float("nan"),
                    device="cpu", show_progress=False)


def test_bad_arguments():
    x = torch.rand(1, 3, 32, 32)
    with pytest.raises(ValueError, match="optimizer"):
        nst.stylize(x, x, optimizer="sgd")
    with pytest.raises(ValueError, match="snapshot"):
        nst.stylize(x, x, backbone="vgg16-random", steps=3, snapshots=(5,))
    with pytest.raises(ValueError, match="unknown backbone"):
        nst.resolve_backbone("resnet")
    with pytest.raises(ValueError, match="available"):
        nst.VGGFeatures("vgg16", ["conv5_4"])


def test_vgg_layer_names_match_torchvision_indices():
    tv = pytest.importorskip("torchvision")
    for arch, build in (("vgg16", tv.models.vgg16), ("vgg19", tv.models.vgg19)):
        names = nst.vgg_layer_names(arch)
        with torch.device("meta"):  # structure only: no weights are initialised
            feats = build(weights=None).features
        assert len(names) == len(feats)
        for name, module in zip(names, feats):
            kind = {"conv": nn.Conv2d, "relu": nn.ReLU, "pool": nn.MaxPool2d}[name[:4]]
            assert isinstance(module, kind), (arch, name, module)
    assert "conv5_4" in nst.vgg_layer_names("vgg19") and "conv5_4" not in nst.vgg_layer_names("vgg16")


def test_vgg_truncated_after_deepest_layer_and_frozen():
    net = _tiny_vgg(("conv1_1", "conv2_1"))
    assert list(net.body._modules)[-1] == "conv2_1"
    assert not any(p.requires_grad for p in net.parameters()) and not net.training
    out = net(torch.rand(1, 3, 16, 16))
    assert set(out) == {"conv1_1", "conv2_1"} and out["conv2_1"].shape == (1, 128, 8, 8)


# --------------------------------------------------------------------------- weights
def test_vgg_key_mapping_loads_torchvision_file(tmp_path, monkeypatch):
    tv = pytest.importorskip("torchvision")
    with torch.device("meta"):  # torchvision's structure without the slow classifier init
        feats = tv.models.vgg16(weights=None).features
    feats = feats.to_empty(device="cpu")
    g = torch.Generator().manual_seed(0)
    for t in feats.state_dict().values():
        t.copy_(torch.randn(t.shape, generator=g) * 0.05)
    state = {f"features.{k}": v for k, v in feats.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)  # ignored
    path = tmp_path / "vgg16-397923af.pth"
    torch.save(state, path)
    monkeypatch.setattr(assets, "fetch", lambda name, **kw: path)
    info = nst.resolve_backbone("vgg16")
    assert (info.used, info.weights, info.substitute) == ("vgg16", "ImageNet", False)
    model = nst.load_backbone(info, ["conv1_1", "conv3_2"])
    torch.testing.assert_close(model.body.conv1_1.weight, feats[0].weight)
    torch.testing.assert_close(model.body.conv3_2.weight, feats[12].weight)
    torch.testing.assert_close(model.body.conv3_2.bias, feats[12].bias)
    # the same features as torchvision's own network on normalised input
    x = torch.rand(1, 3, 16, 16)
    mean = torch.tensor(nst.IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(nst.IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x)["conv3_2"], feats[:13]((x - mean) / std))


def test_vgg_offline_auto_falls_back_to_taef2_with_banner(monkeypatch, capsys):
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    info = nst.resolve_backbone("vgg16")
    assert (info.requested, info.used, info.substitute) == ("vgg16", "taef2", True)
    assert info.weights == "taef2 pretrained"
    out = capsys.readouterr().out
    assert "SUBSTITUTE IN USE" in out and "VGG-16 ImageNet features" in out and "taef2" in out


def test_vgg_offline_full_mode_raises(monkeypatch):
    monkeypatch.setenv("COMICUTILS_MODE", "full")
    with pytest.raises(assets.AssetUnavailable, match="COMICUTILS_MIRROR"):
        nst.resolve_backbone("vgg19")


def test_taef2_backbone_features(mirror):
    net = nst.load_backbone("taef2", nst.DEFAULT_LAYERS["taef2"]["style"])
    out = net(torch.rand(1, 3, 32, 32))
    assert [tuple(out[k].shape) for k in ("block1", "block5", "block9", "block13")] == [
        (1, 64, 32, 32), (1, 64, 16, 16), (1, 64, 8, 8), (1, 64, 4, 4)]


# --------------------------------------------------------------------------- CLI
def test_cli_stylize_writes_png(tmp_path, capsys):
    photo = tmp_path / "me.png"
    style = tmp_path / "comic.png"
    g = torch.Generator().manual_seed(0)
    images.save_image(torch.rand(3, 48, 40, generator=g), photo)
    images.save_image(torch.rand(3, 40, 40, generator=g), style)
    out_dir = tmp_path / "out"
    rc = cli.main(["stylize", str(photo), "--method", "nst", "--style", str(style), "--out",
                   str(out_dir), "--size", "32", "--steps", "2", "--backbone", "vgg16-random"])
    assert rc == 0
    written = out_dir / "me_nst.png"
    assert written.is_file() and str(written) in capsys.readouterr().out
    assert images.load_tensor(written).shape == (1, 3, 32, 32)
    # the CLI's image is the library's: the same stylizer on the same inputs, up to 8-bit rounding
    from comicutils import stylizers

    lib = stylizers.build("nst", style=images.load_tensor(style, 32), backbone="vgg16-random", size=32, steps=2,
                          seed=0)(images.load_tensor(photo, 32))
    assert (images.load_tensor(written) - lib).abs().max() <= 1 / 255 + 1e-6
    assert (lib - images.load_tensor(photo, 32)).abs().mean() > 1e-3      # and it did change the photo


def test_cli_unknown_method_lists_methods(tmp_path, capsys):
    with pytest.raises(SystemExit):
        cli.main(["stylize", "x.png", "--method", "magic", "--style", "y.png", "--out",
                  str(tmp_path)])
    err = capsys.readouterr().err
    assert "magic" in err and "nst" in err


def test_bench_nst_cli_writes_json(tmp_path, capsys):
    import json

    from comicutils.cli import main

    out = tmp_path / "b.json"
    assert main(["bench", "nst", "--sizes", "32", "--backbones", "vgg16-random", "--optimizers",
                 "adam", "--steps", "1", "--warmup", "0", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert rows[0]["size"] == 32 and rows[0]["seconds_per_step"] > 0

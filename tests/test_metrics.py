"""Metrics: pinned values and ranges, input rejection, LPIPS loading without network, tables.

Everything runs offline on tiny images; the LPIPS tests use a fake AlexNet trunk file.
"""
from __future__ import annotations

import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from skimage.metrics import structural_similarity

from comicutils import assets, metrics
from comicutils.images import ImageError, to_minus1_1

SIZE = 32


@pytest.fixture(autouse=True)
def _fresh_lpips_cache():
    """A fake-weight model cached by one test must never serve another."""
    metrics.clear_lpips_cache()
    yield
    metrics.clear_lpips_cache()


def smooth_images(n: int = 2, size: int = SIZE, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    """Blurred noise: images with structure at several scales, values well inside [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 4, size // 4, generator=g, dtype=torch.float64)
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    x = 0.7 * x + 0.3 * torch.rand(n, 3, size, size, generator=g, dtype=torch.float64)
    return (0.05 + 0.85 * x).clamp(0, 0.9).to(dtype)


def noisy(x: torch.Tensor, sigma: float, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (x + sigma * torch.randn(x.shape, generator=g, dtype=x.dtype)).clamp(0, 1)


# --------------------------------------------------------------------------- pinned values
def test_identical_images():
    x = smooth_images(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PSNR = inf must not spam divide-by-zero warnings
        s, p = metrics.ssim(x, x), metrics.psnr(x, x)
    assert s.shape == (3,) and s.dtype == torch.float64
    assert torch.allclose(s, torch.ones(3, dtype=torch.float64), atol=1e-12)
    assert torch.isinf(p).all() and (p > 0).all()
    assert torch.equal(metrics.mse(x, x), torch.zeros(3, dtype=torch.float64))
    assert torch.equal(metrics.rmse(x, x), torch.zeros(3, dtype=torch.float64))


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-9), (torch.float32, 1e-5)])
def test_constant_offset_gives_exact_values(dtype, tol):
    target = smooth_images(2, dtype=dtype)          # values <= 0.9: + 0.1 stays inside [0, 1]
    pred = target + 0.1
    assert float(pred.max()) <= 1.0
    assert metrics.mse(pred, target).tolist() == pytest.approx([0.01, 0.01], abs=tol / 10)
    assert metrics.rmse(pred, target).tolist() == pytest.approx([0.1, 0.1], abs=tol)
    assert metrics.psnr(pred, target).tolist() == pytest.approx([20.0, 20.0], abs=tol * 10)


def test_ssim_matches_direct_skimage_call_at_pinned_settings():
    x = smooth_images(2)
    y = noisy(x, 0.1)
    ours = metrics.ssim(y, x)
    for i in range(2):
        a = x[i].permute(1, 2, 0).numpy()
        b = y[i].permute(1, 2, 0).numpy()
        direct = structural_similarity(a, b, data_range=1.0, channel_axis=-1)
        assert float(ours[i]) == pytest.approx(direct, abs=1e-12)
        # the settings matter: a Gaussian window gives a different number
        gauss = structural_similarity(a, b, data_range=1.0, channel_axis=-1, gaussian_weights=True)
        assert abs(gauss - direct) > 1e-3


def test_ssim_and_psnr_decrease_monotonically_with_noise():
    x = smooth_images(1)
    sigmas = [0.0, 0.02, 0.05, 0.1, 0.2, 0.4]
    batch = torch.cat([noisy(x, s) for s in sigmas])
    ref = x.expand_as(batch)
    s = metrics.ssim(batch, ref).tolist()
    p = metrics.psnr(batch, ref).tolist()
    assert s[0] == pytest.approx(1.0) and all(a > b for a, b in zip(s, s[1:])), s
    assert math.isinf(p[0]) and all(a > b for a, b in zip(p, p[1:])), p


# --------------------------------------------------------------------------- ranges
def test_seed000_squashed_ground_truth_is_visible():
    """The seed-000 bug: ground truth mapped into [0.5, 1] turns a good prediction into ~9 dB."""
    target = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3),
                        dtype=torch.float64)
    pred = noisy(target, 0.02)
    squashed = 0.5 + 0.5 * target                      # still inside [0, 1]: not an input error
    good, bad = metrics.psnr(pred, target), metrics.psnr(pred, squashed)
    assert (good > 30).all() and (bad < 12).all(), (good, bad)
    assert (metrics.ssim(pred, squashed) < metrics.ssim(pred, target) - 0.2).all()
    # the other way the range goes wrong, [-1, 1] data, is refused outright
    for fn in (metrics.ssim, metrics.psnr, metrics.mse, metrics.rmse, metrics.fsim,
               metrics.lpips):
        with pytest.raises(ImageError, match=r"\[-1, 1\]"):
            fn(to_minus1_1(pred), to_minus1_1(target))
    with pytest.raises(ImageError, match=r"\[-1, 1\]"):
        metrics.score_pairs(pred, to_minus1_1(target), metrics=["psnr"])


@pytest.mark.parametrize("fn", [metrics.ssim, metrics.psnr, metrics.mse, metrics.fsim,
                                metrics.lpips])
def test_bad_inputs_are_rejected(fn):
    x = smooth_images(1)
    with pytest.raises(ImageError, match="255"):
        fn(x * 255, x * 255)
    with pytest.raises(ImageError, match="float"):
        fn((x * 255).to(torch.uint8), (x * 255).to(torch.uint8))
    with pytest.raises(ImageError, match="channels|shape"):
        fn(x.permute(0, 2, 3, 1), x.permute(0, 2, 3, 1))      # NHWC by mistake
    with pytest.raises(ImageError, match="shape"):
        fn(x[0, 0], x[0, 0])
    with pytest.raises(ImageError, match=r"\(1, 3, 32, 32\).*\(1, 3, 16, 16\)"):
        fn(x, x[..., :16, :16])


def test_single_image_accepted():
    x = smooth_images(1)
    assert metrics.mse(x[0], x[0]).shape == (1,)


def test_fsim():
    x = smooth_images(2)
    same = metrics.fsim(x, x)
    assert same.shape == (2,) and same.dtype == torch.float64
    assert torch.allclose(same, torch.ones(2, dtype=torch.float64), atol=1e-6)
    vals = [metrics.fsim(noisy(x, s), x) for s in (0.05, 0.2)]
    for v in vals:
        assert ((v > 0) & (v <= 1)).all() and (v < 0.9999).all(), v
    assert (vals[1] < vals[0]).all()
    with pytest.raises(ImageError, match="at least 7x7"):
        metrics.fsim(x[..., :6, :6], x[..., :6, :6])


# --------------------------------------------------------------------------- LPIPS offline
@pytest.mark.parametrize("net, label", [("vgg", "LPIPS-VGG"), ("alex", "LPIPS-Alex")])
def test_lpips_unavailable_offline(net, label):
    x = smooth_images(1)
    with pytest.raises(metrics.MetricUnavailable, match=f"{label} n/a.*not available offline"):
        metrics.lpips(x, x, net=net)
    with pytest.raises(metrics.MetricUnavailable):
        metrics.lpips_model(net, "cpu")


def test_score_pairs_marks_lpips_na_and_computes_the_rest():
    x = smooth_images(3)
    y = noisy(x, 0.05)
    df = metrics.score_pairs(y, x)
    assert list(df.columns) == [m for m in metrics.METRICS if m != "id_dist"]
    for col in ("lpips_vgg", "lpips_alex"):
        assert df[col].isna().all()
        assert "n/a" in df.attrs["unavailable"][col]
    for col in ("ssim", "psnr", "mse", "rmse", "fsim"):
        assert np.isfinite(df[col]).all(), col
        assert col not in df.attrs["unavailable"]
    assert df["psnr"].tolist() == pytest.approx(metrics.psnr(y, x).tolist())


def test_score_pairs_raises_in_full_mode(monkeypatch):
    monkeypatch.setenv("COMICUTILS_MODE", "full")
    x = smooth_images(1)
    with pytest.raises(metrics.MetricUnavailable):
        metrics.score_pairs(x, x, metrics=["psnr", "lpips_vgg"])
    df = metrics.score_pairs(x, x, metrics=["psnr", "lpips_vgg"], strict=False)
    assert df["lpips_vgg"].isna().all()


# --------------------------------------------------------------------------- LPIPS loading
ALEX_FEATURES = {0: (64, 3, 11, 11), 3: (192, 64, 5, 5), 6: (384, 192, 3, 3),
                 8: (256, 384, 3, 3), 10: (256, 256, 3, 3)}


def fake_alexnet_state() -> dict[str, torch.Tensor]:
    """torchvision AlexNet ``features.*`` keys with random values (~2.5 M parameters)."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for i, shape in ALEX_FEATURES.items():
        fan_in = shape[1] * shape[2] * shape[3]
        state[f"features.{i}.weight"] = torch.randn(shape, generator=g) * math.sqrt(2 / fan_in)
        state[f"features.{i}.bias"] = torch.randn(shape[0], generator=g) * 0.01
    return state


@pytest.fixture
def fake_alex(tmp_path, monkeypatch):
    state = fake_alexnet_state()
    path = tmp_path / "alexnet-owt-7be5be79.pth"
    torch.save(state, path)
    asked = []

    def fake_fetch(name, **kwargs):
        asked.append(name)
        if name != "alexnet-imagenet":
            raise assets.AssetUnavailable(f"{name} not in this test")
        return path

    monkeypatch.setattr(assets, "fetch", fake_fetch)
    return state, path, asked


def test_lpips_loads_trunk_from_the_asset_registry(fake_alex):
    state, _, asked = fake_alex
    model = metrics.lpips_model("alex", "cpu")
    assert asked == ["alexnet-imagenet"]
    trunk = dict(model.net.named_parameters())
    assert len(trunk) == len(state) == 10
    for name, param in trunk.items():
        _, idx, kind = name.split(".")
        assert torch.equal(param.detach(), state[f"features.{idx}.{kind}"]), name
    # the linear heads are the calibrated ones shipped with lpips, not random
    import lpips as lpips_pkg
    heads = torch.load(Path(lpips_pkg.__file__).parent / "weights/v0.1/alex.pth",
                       map_location="cpu", weights_only=True)
    assert torch.equal(model.lin0.model[1].weight, heads["lin0.model.1.weight"])
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())
    # cached per weight file: the file is looked up again, the model is not rebuilt
    assert metrics.lpips_model("alex", "cpu") is model and asked == ["alexnet-imagenet"] * 2

    x = smooth_images(3)
    y = noisy(x, 0.1)
    same, diff = metrics.lpips(x, x, net="alex", device="cpu"), metrics.lpips(y, x, net="alex",
                                                                              device="cpu")
    assert same.shape == diff.shape == (3,) and diff.dtype == torch.float64
    assert torch.allclose(same, torch.zeros(3, dtype=torch.float64), atol=1e-7)
    assert (diff > 1e-4).all()
    # chunking does not change the numbers
    chunked = metrics.lpips(y, x, net="alex", device="cpu", batch_size=2)
    assert torch.allclose(chunked, diff, atol=1e-6)

    df = metrics.score_pairs(y, x, metrics=["lpips_alex", "lpips_vgg"], device="cpu")
    assert df["lpips_alex"].tolist() == pytest.approx(diff.tolist(), abs=1e-6)
    assert df["lpips_vgg"].isna().all() and list(df.attrs["unavailable"]) == ["lpips_vgg"]
    with pytest.raises(ImageError, match="at least 31x31"):
        metrics.lpips(x[..., :24, :24], x[..., :24, :24], net="alex", device="cpu")


@pytest.mark.parametrize("break_it, match", [
    (lambda s: s.pop("features.8.bias"), "missing features.8.bias"),
    (lambda s: s.update({"features.3.weight": torch.zeros(192, 64, 3, 3)}),
     r"wrong shapes features.3.weight \(192, 64, 3, 3\)"),
])
def test_lpips_rejects_a_weight_file_that_does_not_fit(fake_alex, break_it, match):
    state, path, _ = fake_alex
    break_it(state)
    torch.save(state, path)
    with pytest.raises(metrics.BackboneWeightsError, match=match):
        metrics.lpips_model("alex", "cpu")
    with pytest.raises(metrics.BackboneWeightsError):      # not turned into NaN by tables
        metrics.score_pairs(smooth_images(1), smooth_images(1), metrics=["lpips_alex"])


def test_lpips_rejects_unknown_net():
    with pytest.raises(ValueError, match="'vgg' or 'alex'"):
        metrics.lpips_model("squeeze")


# --------------------------------------------------------------------------- tables
def test_score_pairs_table_layout():
    x = smooth_images(5)
    y = noisy(x, 0.05)
    names = ["a", "b", "c", "d", "e"]
    df = metrics.score_pairs(y, x, metrics=["psnr", "ssim", "mse"], names=names, batch_size=2)
    assert list(df.columns) == ["psnr", "ssim", "mse"]
    assert list(df.index) == names and df.index.name == "pair"
    assert df.dtypes.eq("float64").all() and df.attrs["unavailable"] == {}
    assert df["ssim"].tolist() == pytest.approx(metrics.ssim(y, x).tolist())
    plain = metrics.score_pairs(y, x, metrics=["mse"])
    assert list(plain.index) == list(range(5)) and plain.index.name == "pair"

    with pytest.raises(ValueError, match="unknown metric"):
        metrics.score_pairs(y, x, metrics=["psnr", "niqe"])
    with pytest.raises(ValueError, match="photos="):
        metrics.score_pairs(y, x, metrics=["id_dist"])
    with pytest.raises(ValueError, match="4 names for 5 pairs"):
        metrics.score_pairs(y, x, metrics=["mse"], names=names[:4])
    with pytest.raises(ImageError, match=r"\(5, 3, 32, 32\).*\(4, 3, 32, 32\)"):
        metrics.score_pairs(y, x[:4])


def test_score_pairs_small_images_mark_size_limited_metrics():
    x = smooth_images(2, size=20)
    df = metrics.score_pairs(noisy(x, 0.05), x, metrics=["psnr", "ssim", "lpips_alex"])
    assert np.isfinite(df[["psnr", "ssim"]]).all().all()
    assert "31x31" in df.attrs["unavailable"]["lpips_alex"]
    tiny = smooth_images(2, size=12)
    df = metrics.score_pairs(tiny, tiny, metrics=["mse", "id_dist"], photos=x)
    assert df["mse"].eq(0).all() and "16x16" in df.attrs["unavailable"]["id_dist"]
    with pytest.raises(ImageError, match="at least 16x16"):
        metrics.score_pairs(tiny, tiny, metrics=["mse", "id_dist"], photos=x, strict=True)


def test_id_dist_without_faces_module(monkeypatch):
    monkeypatch.setitem(sys.modules, "comicutils.faces", None)   # import now fails
    x = smooth_images(2)
    df = metrics.score_pairs(x, x, photos=x)
    assert list(df.columns) == list(metrics.METRICS)
    assert df["id_dist"].isna().all() and "id_dist n/a" in df.attrs["unavailable"]["id_dist"]
    with pytest.raises(ImageError, match="2 predictions but 1 photos"):
        metrics.id_dist(x, x[:1])


def test_id_dist_column_with_faces_module():
    pytest.importorskip("comicutils.faces")
    x = smooth_images(2, size=64)                       # noise: no face anywhere
    df = metrics.score_pairs(x, x, metrics=["mse", "id_dist"], photos=x)
    assert list(df.columns) == ["mse", "id_dist"]
    assert df["id_dist"].isna().all()                   # NaN per pair, or n/a with a reason
    if "id_dist" in df.attrs["unavailable"]:
        assert "id_dist n/a" in df.attrs["unavailable"]["id_dist"]


def test_summarize_psnr_inf_rule_and_na():
    df = pd.DataFrame({"psnr": [math.inf, 20.0, 30.0], "ssim": [1.0, 0.5, np.nan],
                       "lpips_vgg": [np.nan] * 3}, index=pd.Index(["a", "b", "c"], name="pair"))
    df.attrs["unavailable"] = {"lpips_vgg": "LPIPS-VGG n/a: weights not available offline"}
    s = metrics.summarize(df)
    assert list(s.index) == ["psnr", "ssim", "lpips_vgg"]
    assert s.loc["psnr", "mean"] == pytest.approx(25.0)
    assert s.loc["psnr", "std"] == pytest.approx(np.std([20.0, 30.0], ddof=1))
    assert (s.loc["psnr", "n"], s.loc["psnr", "n_inf"]) == (2, 1)
    assert "identical" in s.loc["psnr", "note"]
    assert s.loc["ssim", "mean"] == pytest.approx(0.75) and s.loc["ssim", "n_missing"] == 1
    assert s.loc["lpips_vgg", "mean"] == "n/a" and s.loc["lpips_vgg", "std"] == "n/a"
    assert "offline" in s.loc["lpips_vgg", "note"]

    all_identical = metrics.summarize(pd.DataFrame({"psnr": [math.inf, math.inf]}))
    assert math.isinf(all_identical.loc["psnr", "mean"])
    assert all_identical.loc["psnr", "n_inf"] == 2


def test_summarize_of_real_table():
    x = smooth_images(3)
    y = torch.cat([x[:1], noisy(x[1:], 0.05)])          # first pair identical: PSNR inf
    s = metrics.summarize(metrics.score_pairs(y, x, metrics=["psnr", "mse", "lpips_alex"]))
    assert np.isfinite(s.loc["psnr", "mean"]) and s.loc["psnr", "n_inf"] == 1
    assert s.loc["lpips_alex", "mean"] == "n/a"


def test_mae_is_the_mean_absolute_difference():
    x = torch.full((2, 3, 8, 8), 0.5)
    y = x.clone()
    y[0] += 0.2
    assert torch.allclose(metrics.mae(y, x), torch.tensor([0.2, 0.0], dtype=torch.float64))


def test_sharpness_and_edge_density_see_lines_and_blur():
    from comicutils.metrics import edge_density, sharpness

    x = torch.full((1, 3, 32, 32), 0.8)
    x[..., 15:17, :] = 0.0                                    # one dark ink line
    blurred = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    flat = torch.full((1, 3, 32, 32), 0.5)
    assert sharpness(x) > sharpness(blurred) > sharpness(flat) == 0
    assert edge_density(x) > edge_density(blurred) and edge_density(flat) == 0
    assert 0 < edge_density(x).item() < 0.3 and sharpness(torch.rand(2, 3, 16, 16)).shape == (2,)


def descend(start: torch.Tensor, loss, steps: int = 100) -> torch.Tensor:
    """Adam on the pixels of ``start`` to lower ``loss(pixels).sum()``: where a term pulls an image."""
    y = start.clone().requires_grad_(True)
    opt = torch.optim.Adam([y], lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        loss(y).sum().backward()
        opt.step()
    return y.detach().clamp(0, 1)


def test_edge_histogram_distance_is_blind_to_where_lines_sit_and_sees_blur():
    """The ink term's defining property: a line moved elsewhere costs nothing, the same line
    blurred (the average of misaligned targets) costs something, and it pulls a blurred image
    towards sharp lines and flat areas (its gradient raises the strongest edges)."""
    from comicutils.metrics import ImageError, edge_density, edge_histogram_distance

    x = torch.full((1, 3, 32, 32), 0.8)
    x[..., 15:17, :] = 0.0
    moved = torch.roll(x, 7, dims=2)                         # the same line elsewhere
    blurred = torch.nn.functional.avg_pool2d(x, 5, stride=1, padding=2, count_include_pad=False)
    assert edge_histogram_distance(moved, x).item() == pytest.approx(0.0, abs=1e-6)
    assert edge_histogram_distance(blurred, x).item() > 0.01
    assert edge_histogram_distance(torch.cat([x, blurred]), torch.cat([x, x])).shape == (2,)
    sharpened = descend(blurred, lambda y: edge_histogram_distance(y, x))
    assert edge_histogram_distance(sharpened, x) < edge_histogram_distance(blurred, x) / 2
    assert edge_density(sharpened) > edge_density(blurred)
    with pytest.raises(ImageError, match="same shape"):
        edge_histogram_distance(x, x[..., :16, :])
    with pytest.raises(ImageError, match="RGB"):
        edge_histogram_distance(x[:, :1], x[:, :1])


def test_palette_distance_is_blind_to_where_colours_sit_and_pulls_grain_to_flat_tones():
    """The palette term's defining property: the same colours rearranged cost nothing; the
    flat two-tone picture with grain added costs something, and its gradient removes the grain
    (fewer colours: palette_size falls)."""
    from comicutils.metrics import ImageError, palette_distance, palette_size

    g = torch.Generator().manual_seed(0)
    flat = torch.full((1, 3, 32, 32), 0.2)
    flat[:, 0, :, 16:], flat[:, 2, :, 16:] = 0.9, 0.4         # two flat tones
    shuffled = flat.flatten(2)[:, :, torch.randperm(32 * 32, generator=g)].reshape(flat.shape)
    grainy = (flat + 0.08 * torch.randn(flat.shape, generator=g)).clamp(0, 1)
    assert palette_distance(shuffled, flat).item() == pytest.approx(0.0, abs=1e-7)
    assert palette_distance(grainy, flat).item() > 0.02
    assert palette_distance(torch.cat([flat, grainy]), torch.cat([flat, flat])).shape == (2,)
    assert palette_size(flat).item() == 2 and palette_size(grainy).item() > 20
    cleaned = descend(grainy, lambda y: palette_distance(y, flat))
    assert palette_distance(cleaned, flat) < palette_distance(grainy, flat) / 3
    assert palette_size(cleaned) < palette_size(grainy) / 2
    with pytest.raises(ImageError, match="same shape"):
        palette_distance(flat, flat[..., :16, :])
    with pytest.raises(ImageError, match="RGB"):
        palette_distance(flat[:, :1], flat[:, :1])
    with pytest.raises(ImageError, match="3 channels"):
        palette_size(flat[:, :2])
    with pytest.raises(ImageError, match="divide by 255"):
        palette_size(flat * 255)
    with pytest.raises(ValueError, match="levels"):
        palette_size(flat, levels=1)


def test_flatness_distance_paints_regions_flat_and_keeps_their_boundary():
    """The flat term's defining property: a picture already painted in flat regions is its own
    superpixel-flattened copy (distance 0); grain inside the regions costs something, and the
    term's gradient removes the grain while the boundary between the regions stays sharp."""
    from comicutils.metrics import ImageError, flatness_distance, palette_size, superpixel_flatten

    g = torch.Generator().manual_seed(0)
    flat = torch.full((1, 3, 32, 32), 0.2)
    flat[:, 0, :, 16:], flat[:, 2, :, 16:] = 0.9, 0.4
    grainy = (flat + 0.03 * torch.randn(flat.shape, generator=g)).clamp(0, 1)
    assert torch.allclose(superpixel_flatten(flat, segments=8), flat, atol=1e-6)
    assert flatness_distance(flat, segments=8).item() == pytest.approx(0.0, abs=1e-6)
    assert flatness_distance(grainy, segments=8).item() > 0.015
    cleaned = descend(grainy, lambda y: flatness_distance(y, segments=8), steps=60)
    assert flatness_distance(cleaned, segments=8) < flatness_distance(grainy, segments=8) / 3
    assert palette_size(cleaned) < palette_size(grainy) / 2
    assert (cleaned[:, 0, :, 12:14] - cleaned[:, 0, :, 18:20]).abs().mean() > 0.6   # the boundary is still there
    with pytest.raises(ImageError, match="3 channels"):
        flatness_distance(flat[:, :2])
    with pytest.raises(ValueError, match="segments"):
        superpixel_flatten(flat, segments=0)

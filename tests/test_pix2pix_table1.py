"""Tests of seed 003's experiments in comicutils.pix2pix: Table 1 rows, the per-epoch metric
curve and the magnitudes of the loss terms."""
from __future__ import annotations

import math

import pytest
import torch

from comicutils import metrics, nst, pix2pix
from comicutils.data import PairDataset, PairSet
from comicutils.stylizers import Pix2Pix


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _rand(*shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


def _pairs(n=2, size=32, seed=0):
    photos = _rand(n, 3, size, size, seed=seed)
    return PairSet([f"k{i}" for i in range(n)], photos, (1 - photos).flip(-1))


# --------------------------------------------------------------------------- Table 1
def test_table1_rows_are_the_seeds_numbers():
    assert list(pix2pix.TABLE1_ROWS) == ["U-Net", "U-Res9", "U-Res50", "U-Res9-VGG-mse",
                                         "U-Res50-VGG-mae", "U-Res50-VGG-mse"]
    row = pix2pix.TABLE1_ROWS["U-Res9-VGG-mse"]
    assert (row["psnr"], row["rmse"], row["ssim"], row["fsim"]) == (20.38, 24.42, 0.208, 0.443)
    for name, row in pix2pix.TABLE1_ROWS.items():
        # the seed's RMSE is in 0-255 levels and follows from its PSNR
        assert 255 * 10 ** (-row["psnr"] / 20) == pytest.approx(row["rmse"], abs=0.05), name


def test_table1_config_follows_the_seed():
    cfg = pix2pix.table1_config("U-Res9-VGG-mse")
    assert cfg["generator"] == {"name": "ures9", "size": 512}
    assert cfg["perceptual"] == {"backbone": "vgg16", "criterion": "mse"}
    assert cfg["trainer"]["lambda_l1"] == 100 and cfg["trainer"]["alpha"] == 0.001
    assert cfg["trainer"]["lr"] == 2e-4 and cfg["train"] == {"epochs": 20, "batch_size": 1}
    assert cfg["discriminator"] == {"n_layers": 4}          # one downsampling more at 512 px
    assert pix2pix.patch_output_size(512, 4) == pix2pix.patch_output_size(256, 3) == 30
    assert pix2pix.table1_config("u-res9-vgg-mse", size=256)["discriminator"] == {"n_layers": 3}
    assert pix2pix.table1_config("U-Net")["perceptual"] is None
    assert pix2pix.table1_config("U-Res50-VGG-mae")["generator"]["pretrained"] is True
    assert pix2pix.table1_config("U-Res50")["report_input_range"] == "[0, 1]"
    with pytest.raises(ValueError, match="U-Res9-VGG-mse"):
        pix2pix.table1_config("U-Res18")


@pytest.mark.parametrize("row", list(pix2pix.TABLE1_ROWS))
def test_every_table1_row_builds_and_takes_a_training_step(row):
    # U-Res50's deepest map is 1/32 of the image: at batch 1 its BatchNorm needs 64 px
    size = 64 if pix2pix.TABLE1_ROWS[row]["generator"] == "ures50" else 32
    cfg = pix2pix.table1_config(row, size=size)
    if cfg["generator"]["name"] != "ures50":
        cfg["generator"]["ngf"] = 4
    cfg["discriminator"]["ndf"] = 4
    torch.manual_seed(0)
    trainer = pix2pix.build_trainer(cfg, device="cpu")
    pairs = _pairs(1, size)
    out = trainer.train_step(pairs.photos, pairs.comics)
    assert all(math.isfinite(v) for v in out.values())
    assert trainer.config["generator"]["name"] == cfg["generator"]["name"]
    if cfg["perceptual"] is None:
        assert trainer.perceptual is None and out["g_perc"] == 0.0
    else:
        assert trainer.perceptual.criterion == cfg["perceptual"]["criterion"] and out["g_perc"] > 0
        assert out["g_total"] == pytest.approx(out["g_adv"] + 0.001 * out["g_perc"] + 100 * out["g_l1"],
                                               rel=1e-5)


# --------------------------------------------------------------------------- metric curve
def _trainer():
    torch.manual_seed(0)
    return pix2pix.Pix2PixTrainer(pix2pix.UNetGenerator(32, ngf=4),
                                  pix2pix.PatchDiscriminator(ndf=4, n_layers=2), device="cpu")


def test_metric_history_has_one_row_per_epoch_and_survives_a_checkpoint(tmp_path):
    ckpt = tmp_path / "run.pt"
    ds = PairDataset(_pairs(2, 32))
    test = _pairs(1, 32, seed=7)
    a = _trainer()
    a.train(ds, epochs=2, eval_pairs=(test.photos, test.comics),
            eval_metrics=("ssim", "psnr", "rmse"), checkpoint=ckpt, show_progress=False)
    assert [(r["epoch"], r["step"]) for r in a.metric_history] == [(1, 2), (2, 4)]
    for r in a.metric_history:
        assert -1 <= r["ssim"] <= 1 and 0 < r["psnr"] < 100 and 0 <= r["rmse"] <= 1
        assert r["psnr"] == pytest.approx(-20 * math.log10(r["rmse"]), rel=1e-6)
    # the last row is the stylizer's translation (per-image BatchNorm statistics) scored now
    pred = Pix2Pix(generator=a.generator)(test.photos)
    torch.testing.assert_close(pred, pix2pix.translate(a.generator, test.photos, norm_stats="image"))
    assert a.metric_history[-1]["ssim"] == pytest.approx(metrics.ssim(pred, test.comics).item())
    assert a.evaluate(test.photos, test.comics, ["ssim"]) == {"ssim": a.metric_history[-1]["ssim"]}
    b = _trainer()
    b.load_checkpoint(ckpt)
    assert b.metric_history == a.metric_history
    b.train(ds, epochs=3, eval_pairs=test, eval_metrics=("ssim", "psnr", "rmse"), checkpoint=ckpt,
            show_progress=False)
    assert [r["epoch"] for r in b.metric_history] == [1, 2, 3]
    c = _trainer()
    c.load_checkpoint(ckpt)
    assert c.metric_history == b.metric_history
    c.train(ds, epochs=4, show_progress=False)                 # no eval pairs: no new row
    assert len(c.metric_history) == 3


def test_eval_options_are_checked_before_training():
    t = _trainer()
    ds = PairDataset(_pairs(2, 32))
    test = _pairs(1, 32)
    with pytest.raises(ValueError, match="unknown"):
        t.train(ds, epochs=1, eval_pairs=test, eval_metrics=("sharpness",), show_progress=False)
    with pytest.raises(ValueError, match="differ"):
        t.train(ds, epochs=1, eval_pairs=(test.photos, test.comics[..., :16]), show_progress=False)
    assert t.step == 0


# --------------------------------------------------------------------------- loss terms
def test_loss_term_magnitudes_are_weight_times_raw_and_change_nothing():
    trainer = _trainer()
    trainer.perceptual = pix2pix.PerceptualLoss("vgg16-random", "mse")
    trainer.alpha, trainer.lambda_l1 = 0.001, 100.0
    pairs = _pairs(2, 32)
    before = {k: v.clone() for k, v in {**trainer.generator.state_dict(),
                                        **trainer.discriminator.state_dict()}.items()}
    out = pix2pix.loss_term_magnitudes(trainer, pairs.photos, pairs.comics)
    for k in ("adv", "l1", "l1_01", "perc", "w_adv", "w_l1", "w_perc", "total",
              "grad_adv", "grad_l1", "grad_perc", "alpha_matching_l1"):
        assert math.isfinite(out[k]) and out[k] > 0, k
    assert out["w_adv"] == out["adv"]
    assert out["w_l1"] == pytest.approx(100.0 * out["l1"]) and out["l1_01"] == out["l1"] / 2
    assert out["w_perc"] == pytest.approx(0.001 * out["perc"])
    assert out["total"] == pytest.approx(out["w_adv"] + out["w_l1"] + out["w_perc"])
    assert sum(out[f"share_{k}"] for k in ("adv", "l1", "perc")) == pytest.approx(1.0)
    assert out["alpha_matching_l1"] * out["perc"] == pytest.approx(out["w_l1"])
    assert sum(out["perc_layers"].values()) == pytest.approx(out["perc"], rel=1e-5)
    assert set(out["perc_keras"]) == {"0-255", "0-1", "-1-1"}
    assert all(math.isfinite(v) and v > 0 for v in out["perc_keras"].values())
    assert "vgg16" in out["backbone"]
    net = trainer.perceptual.net                               # normalisation restored
    assert torch.equal(net.mean.flatten(), torch.tensor(nst.IMAGENET_MEAN))
    after = {**trainer.generator.state_dict(), **trainer.discriminator.state_dict()}
    assert all(torch.equal(before[k], v) for k, v in after.items())
    assert trainer.generator.training and trainer.discriminator.training
    # the weights given override the trainer's; the terms scale with them
    half = pix2pix.loss_term_magnitudes(trainer, pairs.photos, pairs.comics, alpha=0.0005,
                                        lambda_l1=50.0, keras_ranges=())
    assert half["w_perc"] == pytest.approx(out["w_perc"] / 2)
    assert half["grad_l1"] == pytest.approx(out["grad_l1"] / 2, rel=1e-5)
    assert half["perc_keras"] == {}


def test_loss_term_magnitudes_without_a_perceptual_loss():
    trainer = _trainer()
    pairs = _pairs(1, 32)
    out = pix2pix.loss_term_magnitudes(trainer, pairs.photos, pairs.comics)
    assert out["perc"] == 0.0 and out["grad_perc"] == 0.0 and out["backbone"] is None
    assert math.isnan(out["alpha_matching_l1"])
    measured = pix2pix.loss_term_magnitudes(
        trainer, pairs.photos, pairs.comics,
        perceptual=pix2pix.PerceptualLoss("vgg16-random", "mae"))
    assert measured["perc"] > 0 and measured["w_perc"] == pytest.approx(0.001 * measured["perc"])

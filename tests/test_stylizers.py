import pytest
import torch

from comicutils import metrics, pix2pix, stylizers


def _all(tmp_path):
    g = pix2pix.build_generator("unet", size=32, ngf=4)
    ckpt = pix2pix.save_generator(g, tmp_path / "g.pt")
    return [
        stylizers.build("identity"),
        stylizers.build("cartoon", colors=6),
        stylizers.build("nst", style=torch.rand(1, 3, 40, 40), backbone="vgg16-random", steps=2,
                        size=32),
        stylizers.build("pix2pix", checkpoint=ckpt),
        stylizers.build("pix2pix", generator=g),
    ]


def test_every_stylizer_keeps_size_range_and_input(tmp_path):
    x = torch.rand(2, 3, 36, 44)
    before = x.clone()
    for s in _all(tmp_path):
        y = s(x)
        assert y.shape == x.shape, s.name
        assert 0 <= y.min() and y.max() <= 1, s.name
        assert torch.equal(x, before), s.name
        assert s(x[0]).shape == x[0].shape
        row = s.describe()
        assert row["method"] == s.name and "weights" in row and row["parameters"] >= 0


def test_identity_baseline_scores_perfectly_against_itself():
    x = torch.rand(3, 3, 32, 32)
    y = stylizers.build("identity")(x)
    assert torch.equal(y, x)
    assert torch.allclose(metrics.ssim(y, x), torch.ones(3, dtype=torch.float64))
    assert torch.isinf(metrics.psnr(y, x)).all()
    assert (metrics.mse(y, x) == 0).all()


def test_unknown_method_and_missing_arguments_are_clear():
    with pytest.raises(ValueError, match="available: .*cartoon"):
        stylizers.build("watercolour")
    with pytest.raises(ValueError, match="style image"):
        stylizers.build("nst")
    with pytest.raises(ValueError, match="checkpoint"):
        stylizers.build("pix2pix")


def test_stylizers_reject_wrong_ranges():
    from comicutils.images import ImageError

    with pytest.raises(ImageError):
        stylizers.build("identity")(torch.rand(1, 3, 16, 16) * 255)

import numpy as np
import pytest
import torch

from comicutils import cartoon, metrics
from comicutils.images import ImageError, load_tensor


def test_output_has_input_size_and_range_and_input_is_untouched():
    x = torch.rand(2, 3, 40, 56)
    before = x.clone()
    y = cartoon.cartoonize(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert 0 <= y.min() and y.max() <= 1
    assert torch.equal(x, before)
    assert cartoon.cartoonize(x[0]).shape == (3, 40, 56)


def test_deterministic():
    x = torch.rand(1, 3, 32, 32)
    assert torch.equal(cartoon.cartoonize(x), cartoon.cartoonize(x))


def test_quantisation_leaves_few_colours():
    rgb = (np.random.default_rng(0).random((32, 32, 3)) * 255).astype(np.uint8)
    q = cartoon.quantize(rgb, 5)
    assert len(np.unique(q.reshape(-1, 3), axis=0)) <= 5
    with pytest.raises(ValueError):
        cartoon.quantize(rgb, 1)


def test_flat_image_has_no_outlines_and_keeps_its_colour():
    x = torch.full((1, 3, 32, 32), 0.6)
    y = cartoon.cartoonize(x)
    assert torch.allclose(y, x, atol=1 / 255)


def test_a_sharp_edge_gets_a_dark_line():
    x = torch.ones(1, 3, 32, 32)
    x[..., :, 16:] = 0.3
    y = cartoon.cartoonize(x, line_color=0.0)
    assert (y[0, 0, 8:24, 12:20] == 0).any()          # a line near the boundary
    assert (y[0, 0, :, :6] > 0.9).all()               # flat regions untouched


def test_bad_inputs():
    with pytest.raises(ImageError):
        cartoon.cartoonize(torch.rand(1, 3, 16, 16) * 2 - 1)
    with pytest.raises(ValueError):
        cartoon.outlines(np.zeros((8, 8, 3), np.uint8), block=4)


def test_on_a_real_portrait_it_stylises_but_keeps_structure(portrait_paths):
    x = load_tensor(portrait_paths[0], 128)
    y = cartoon.cartoonize(x)
    s = metrics.ssim(y, x).item()
    assert 0.3 < s < 0.95      # visibly changed, still the same picture

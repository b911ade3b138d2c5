import numpy as np
import pytest
import torch
from torch import nn

from comicutils import fid
from comicutils.metrics import MetricUnavailable


class Tiny(nn.Module):
    """A tiny fixed feature extractor: channel means and stds at two scales (12-d)."""

    def forward(self, x):
        small = nn.functional.avg_pool2d(x, 4)
        return torch.cat([x.mean((2, 3)), x.std((2, 3)), small.mean((2, 3)), small.std((2, 3))], 1)


def test_fid_of_a_set_against_itself_is_zero_and_grows_with_a_shift():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(40, 3, 16, 16, generator=g) * 0.5
    assert fid.fid(x, x, Tiny()) == pytest.approx(0.0, abs=1e-6)
    near, far = fid.fid(x, x + 0.05, Tiny()), fid.fid(x, x + 0.3, Tiny())
    assert 0 < near < far


def test_frechet_distance_matches_the_closed_form_for_1d_gaussians():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 1, (20000, 1))
    b = rng.normal(2, 3, (20000, 1))
    # (mu_a - mu_b)^2 + (sigma_a - sigma_b)^2 = 4 + 4
    assert fid.frechet_distance(a, b) == pytest.approx(8.0, rel=0.05)


def test_kid_is_near_zero_for_the_same_distribution_and_positive_otherwise():
    rng = np.random.default_rng(1)
    a, b = rng.normal(0, 1, (200, 8)), rng.normal(0, 1, (200, 8))
    c = rng.normal(1, 1, (200, 8))
    same, _ = fid.kernel_inception_distance(a, b, subsets=20, subset_size=100)
    diff, _ = fid.kernel_inception_distance(a, c, subsets=20, subset_size=100)
    assert abs(same) < 0.05 and diff > 10 * abs(same)


@pytest.mark.parametrize("bad", [np.zeros((1, 4)), np.zeros((5,)), np.full((3, 2), np.nan)])
def test_bad_feature_sets_are_rejected(bad):
    with pytest.raises(ValueError):
        fid.frechet_distance(bad, np.zeros((5, 4)))


def test_fid_inception_is_not_available_offline():
    fid.fid_inception.cache_clear()
    with pytest.raises(MetricUnavailable, match="n/a"):
        fid.fid(torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32))


def test_fid_inception_architecture_matches_the_weight_file_layout():
    """The pytorch-fid file holds torchvision Inception-v3 keys with 1008 classes, no aux head."""
    model = fid.FIDInception()
    keys = set(model.net.state_dict())
    assert "fc.weight" in keys and not any(k.startswith("AuxLogits") for k in keys)
    assert model.net.fc.weight.shape == (1008, 2048)
    out = model(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 2048)

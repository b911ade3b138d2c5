import pytest
import torch

from comicutils import metrics, taesd
from comicutils.images import ImageError, load_tensor


def test_untrained_shapes():
    enc, dec = taesd.build_encoder(), taesd.build_decoder()
    z = enc(torch.rand(1, 3, 32, 48))
    assert z.shape == (1, 32, 4, 6) and dec(z).shape == (1, 3, 32, 48)


def test_weights_load_strictly_and_are_frozen(mirror):
    enc = taesd.load_encoder()
    assert not enc.training and not any(p.requires_grad for p in enc.parameters())
    assert sum(p.numel() for p in enc.parameters()) > 1_000_000


def test_real_portraits_reconstruct_well(portrait_paths):
    x = torch.cat([load_tensor(p, 128) for p in portrait_paths[:2]])
    with torch.no_grad():
        z = taesd.encode(x)
        y = taesd.decode(z)
    assert z.shape == (2, 32, 16, 16) and y.shape == x.shape
    assert 0 <= y.min() and y.max() <= 1
    # a wrong architecture or weight mapping gives ~17-25 dB; the pretrained model > 28 dB
    assert metrics.psnr(y, x).min() > 28
    assert torch.equal(taesd.encode(x), z)  # deterministic


def test_bad_inputs(mirror):
    with pytest.raises(ValueError, match="divisible by 8"):
        taesd.encode(torch.rand(1, 3, 30, 32))
    with pytest.raises(ImageError):
        taesd.encode(torch.rand(1, 3, 32, 32) * 2 - 1)
    with pytest.raises(ValueError, match="latents"):
        taesd.decode(torch.rand(1, 4, 4, 4))


def test_feature_extractor_returns_the_requested_blocks(mirror):
    fx = taesd.FeatureExtractor((1, 5, 9, 13))
    feats = fx(torch.rand(1, 3, 64, 64))
    assert {k: tuple(v.shape) for k, v in feats.items()} == {
        1: (1, 64, 64, 64), 5: (1, 64, 32, 32), 9: (1, 64, 16, 16), 13: (1, 64, 8, 8)}
    with pytest.raises(ValueError):
        taesd.FeatureExtractor((14,))


def test_perceptual_distance_is_zero_for_identical_images_and_bounded(mirror):
    d = taesd.PerceptualDistance()
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 3, 32, 32, generator=g)
    assert torch.allclose(d(x, x), torch.zeros(2), atol=1e-6)
    diff = d(x, y)
    assert (diff > 0).all() and (diff <= 4).all()
    fx, fy = d.features(x), d.features(y)
    per_block = [taesd.feature_distance(fx, fy, (k,)) for k in fx]
    assert torch.allclose(diff, sum(per_block) / len(per_block), atol=1e-6)     # mean over blocks
    with pytest.raises(ValueError, match="at least one block"):
        taesd.feature_distance(fx, fy, ())

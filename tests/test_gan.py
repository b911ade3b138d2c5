"""Write-up 002's DCGAN and cGAN, the style classifier and the Inception Score (tiny widths, CPU)."""
import math

import pytest
import torch
from torch import nn

from comicutils import gan
from comicutils.metrics import MetricUnavailable

pytestmark = pytest.mark.usefixtures("one_thread")

G_W, D_W = (8, 8, 4, 4), (4, 4, 8, 8)       # tiny widths, the real 64 px geometry


def tiny_pair(conditional=False, seed=0):
    torch.manual_seed(seed)
    if conditional:
        return (gan.ConditionalGenerator(nz=8, widths=G_W, embed_dim=4),
                gan.ConditionalDiscriminator(widths=D_W, dropout=0.0))
    return gan.DCGANGenerator(nz=8, widths=G_W), gan.DCGANDiscriminator(widths=D_W, dropout=0.0)


def test_generator_maps_noise_to_64px_images_in_tanh_range_and_generate_to_unit_range():
    G, _ = tiny_pair()
    out = G(torch.randn(3, 8) * 10)
    assert out.shape == (3, 3, 64, 64) and out.min() >= -1 and out.max() <= 1
    images = gan.generate(G, n=5, seed=1)
    assert images.shape == (5, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    assert torch.equal(images, gan.generate(G, n=5, seed=1)) and G.training


def test_generator_block_structure_is_the_write_ups():
    G, _ = tiny_pair()
    shapes = []
    G.project.register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    for block in G.blocks:
        block.register_forward_hook(lambda m, i, o: shapes.append(tuple(o.shape[1:])))
    G(torch.randn(2, 8))
    assert shapes[0] == (2, G_W[0] * 8 * 8)          # Linear -> an 8 x 8 map of widths[0] channels
    assert shapes[1:] == [(8, 16, 16), (4, 32, 32), (4, 64, 64)]
    for block in G.blocks:
        assert [type(m) for m in block] == [nn.Upsample, nn.Conv2d, nn.BatchNorm2d, nn.ReLU]
    assert isinstance(G.to_rgb[-1], nn.Tanh)
    with pytest.raises(ValueError, match="widths"):
        gan.DCGANGenerator(widths=(8, 4))


def test_discriminator_is_spectrally_normalised_and_outputs_probabilities():
    _, D = tiny_pair()
    convs = [m for m in D.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(convs) == 5 and all(hasattr(m, "parametrizations") and "weight" in m.parametrizations
                                   for m in convs)
    assert any(isinstance(m, nn.LeakyReLU) for m in D.features)
    assert any(isinstance(m, nn.Dropout) for m in D.features)
    p = D(torch.rand(4, 3, 64, 64) * 2 - 1)
    assert p.shape == (4,) and ((p > 0) & (p < 1)).all()
    with pytest.raises(ValueError):
        D(torch.rand(4, 3, 32, 32))


def test_one_step_changes_both_networks_and_a_few_lower_the_loss_on_a_fixed_batch():
    G, D = tiny_pair()
    trainer = gan.GANTrainer(G, D, device="cpu")
    real = torch.rand(8, 3, 64, 64, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    noise = torch.randn(8, 8, generator=torch.Generator().manual_seed(1))
    g0, d0 = G.to_rgb[0].weight.clone(), D.head.parametrizations.weight.original.clone()
    trainer.train_step(real, noise=noise)
    assert not torch.equal(g0, G.to_rgb[0].weight)
    assert not torch.equal(d0, D.head.parametrizations.weight.original)
    for _ in range(5):
        trainer.train_step(real, noise=noise)
    first, last = trainer.history[0], trainer.history[-1]
    assert last["d"] < first["d"] and last["d_real"] > first["d_real"]
    assert trainer.config["trainer"]["lr"] == 2e-4 and trainer.config["trainer"]["betas"][0] == 0.5


def test_conditional_generator_responds_to_the_label_and_to_mixed_embeddings():
    G, D = tiny_pair(conditional=True)
    G.eval()
    z = torch.randn(1, 8).repeat(3, 1)
    out = G(z, torch.tensor([0, 1, 2]))
    assert not torch.allclose(out[0], out[1]) and not torch.allclose(out[1], out[2])
    e = G.embed(torch.tensor([1, 2]))
    torch.testing.assert_close(G(z[:1], embedding=e[:1]), out[1:2])
    mid = G(z[:1], embedding=0.5 * (e[:1] + e[1:]))
    assert not torch.allclose(mid, out[1:2]) and not torch.allclose(mid, out[2:3])
    p = D(out, torch.tensor([0, 1, 2]))
    assert p.shape == (3,) and ((p > 0) & (p < 1)).all()
    with pytest.raises(ValueError):
        gan.GANTrainer(G, gan.DCGANDiscriminator(widths=D_W))


def test_trainer_checkpoint_round_trip_samples_and_resume(tmp_path):
    G, D = tiny_pair(conditional=True)
    trainer = gan.GANTrainer(G, D, device="cpu")
    images, labels = torch.rand(6, 3, 64, 64), torch.tensor([0, 1, 2, 0, 1, 2])
    ckpt = tmp_path / "cgan.pt"
    trainer.train(images, labels, epochs=2, batch_size=3, n_samples=3, checkpoint=ckpt,
                  show_progress=False)
    assert trainer.step == 4 and sorted(trainer.samples) == [0, 1, 2]
    assert trainer.samples[2].shape == (3, 3, 64, 64) and ckpt.is_file()
    G2, D2 = tiny_pair(conditional=True, seed=1)
    other = gan.GANTrainer(G2, D2, device="cpu")
    other.load_checkpoint(ckpt)
    assert other.step == 4 and other.history == trainer.history
    for a, b in zip(G.state_dict().values(), G2.state_dict().values()):
        assert torch.equal(a, b)
    other.train(images, labels, epochs=3, batch_size=3, n_samples=3, checkpoint=ckpt, show_progress=False)
    assert other.epoch == 3 and other.step == 6
    small = gan.GANTrainer(gan.ConditionalGenerator(nz=8, widths=(4, 4, 4, 4), embed_dim=4),
                           gan.ConditionalDiscriminator(widths=D_W), device="cpu")
    with pytest.raises(ValueError, match="generator"):
        small.load_checkpoint(ckpt)


def test_a_non_finite_loss_raises_before_weights_or_files_change(tmp_path):
    G, D = tiny_pair()
    trainer = gan.GANTrainer(G, D, device="cpu")
    with torch.no_grad():
        G.to_rgb[0].bias.fill_(float("nan"))
    before = {k: v.clone() for k, v in D.named_parameters()}
    ckpt = tmp_path / "run.pt"
    with pytest.raises(FloatingPointError, match="discriminator loss"):
        trainer.train(torch.rand(4, 3, 64, 64), epochs=1, batch_size=4, checkpoint=ckpt,
                      show_progress=False)
    assert not ckpt.exists() and list(tmp_path.iterdir()) == []
    assert all(torch.equal(before[k], v) for k, v in D.named_parameters()) and trainer.step == 0


def test_inception_score_closed_forms():
    K = 4
    one_hot = torch.eye(K).repeat(10, 1)                    # 40 rows, each split holds all K classes
    mean, std = gan.inception_score(one_hot, splits=10)
    assert mean == pytest.approx(K) and std == pytest.approx(0.0, abs=1e-9)
    same = torch.tensor([[0.7, 0.2, 0.1]]).repeat(20, 1)
    assert gan.inception_score(same, splits=4) == (pytest.approx(1.0), pytest.approx(0.0, abs=1e-9))
    half = torch.tensor([[1.0, 0.0], [0.5, 0.5]]).repeat(5, 1)   # KL by hand
    p_y = torch.tensor([0.75, 0.25])
    kl = 0.5 * math.log(1 / 0.75) + 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert gan.inception_score(half, splits=1)[0] == pytest.approx(math.exp(kl))
    assert p_y.sum() == 1
    with pytest.raises(ValueError):
        gan.inception_score(torch.rand(5, 3), splits=1)    # rows do not sum to 1
    with pytest.raises(ValueError):
        gan.inception_score(one_hot[:3], splits=10)


def test_inception_probabilities_are_unavailable_offline_and_sum_to_one_on_the_network():
    from comicutils import fid

    getattr(fid.fid_inception, "cache_clear", lambda: None)()
    with pytest.raises(MetricUnavailable, match="IS n/a"):
        gan.inception_probabilities(torch.rand(2, 3, 32, 32))
    torch.manual_seed(0)
    net = fid.FIDInception()                               # random weights: the code path only
    probs = gan.inception_probabilities(torch.rand(1, 3, 32, 32), net)
    assert probs.shape == (1, 1008)
    torch.testing.assert_close(probs.sum(1), torch.ones(1))


class _Brightness(nn.Module):
    """A toy 'classifier': class 0 if the image is dark, 1 if bright."""

    classes = ("dark", "bright")

    def predict(self, images):
        return (images.mean(dim=(1, 2, 3)) > 0.5).long()


def test_style_accuracy_and_confusion_matrix_on_a_toy_classifier():
    images = torch.cat([torch.full((3, 3, 8, 8), 0.9), torch.full((1, 3, 8, 8), 0.1)])
    assert gan.style_accuracy(images, "bright", _Brightness()) == pytest.approx(0.75)
    assert gan.style_accuracy(images, 0, _Brightness()) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        gan.style_accuracy(images, "comic v3", _Brightness())
    cm = gan.confusion_matrix(torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 1, 1]), 3)
    torch.testing.assert_close(cm, torch.tensor([[0.5, 0.5, 0], [0, 1, 0], [0, 0, 0]], dtype=torch.float64))


def test_diversity_and_nearest_neighbours():
    x = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    assert gan.mean_pairwise_distance(x[:1].repeat(4, 1, 1, 1)) == pytest.approx(0.0)
    two = torch.stack([torch.zeros(3, 8, 8), torch.ones(3, 8, 8)])
    assert gan.mean_pairwise_distance(two) == pytest.approx(1.0)
    idx, dist = gan.nearest_neighbours(x[[3, 1]], x)
    assert idx.tolist() == [3, 1] and torch.allclose(dist, torch.zeros(2))


def test_style_classifier_learns_a_colour_rule_and_round_trips(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.rand(24, 3, 16, 16, generator=g) * 0.3
    images = base.clone()
    images[8:16, 0] += 0.6                                   # class 1: red cast
    images[16:, 2] += 0.6                                    # class 2: blue cast
    labels = torch.arange(24) // 8
    clf = gan.train_style_classifier(images, labels, steps=40, batch_size=12, width=4, size=16,
                                     lr=1e-2, device="cpu", show_progress=False)
    assert (clf.predict(images) == labels).float().mean() > 0.9
    probs = clf.predict_proba(images)
    assert probs.shape == (24, 3) and torch.allclose(probs.sum(1), torch.ones(24))
    path = gan.save_classifier(clf, tmp_path / "clf.pt")
    torch.testing.assert_close(gan.load_classifier(path).predict_proba(images), probs)


def test_style_dataset_splits_both_grids_by_position(mirror):
    train_x, train_y, train_keys = gan.style_dataset(16, "train")
    test_x, test_y, test_keys = gan.style_dataset(16, "test")
    assert train_x.shape == (160, 3, 16, 16) and test_x.shape == (40, 3, 16, 16)
    assert torch.bincount(train_y).tolist() == [80, 40, 40]
    _, balanced, keys = gan.style_dataset(16, "train", photo_grids=("v2",))
    assert torch.bincount(balanced).tolist() == [40, 40, 40]
    assert all(k.startswith("v2_") for k, y in zip(keys, balanced) if y == 0)
    quick = gan.course_style_classifier(size=16, steps=2, show_progress=False)
    assert quick.classes == gan.STYLE_LABELS and not quick.training
    position = lambda k: k.split("_", 1)[1].split("/")[0]   # noqa: E731
    assert not {position(k) for k in train_keys} & {position(k) for k in test_keys}

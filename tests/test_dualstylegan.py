"""comicutils.stylegan.dual: DualStyleGAN's extrinsic path on tiny generators (16 px, 8 channels)."""
from __future__ import annotations

import copy

import pytest
import torch

from comicutils import checkpoints, stylegan as sg
from comicutils.stylegan import dual as ds

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(size: int = 16, seed: int = 0) -> sg.Generator:
    torch.manual_seed(seed)
    G = sg.Generator(sg.GeneratorConfig(size=size, style_dim=16, n_mlp=2,
                                        channels={r: 8 for r in [2 ** i for i in range(2, size.bit_length())]}))
    G.update_w_avg(256)
    return G


def codes(G: sg.Generator, n: int = 2, seed: int = 0) -> torch.Tensor:
    return G.mapping(G.sample_z(n, seed=seed, plus=True)).detach()


def trained_like(dual: ds.DualStyleGenerator, seed: int = 1, scale: float = 0.3) -> ds.DualStyleGenerator:
    """A copy whose zero-initialised layers have been moved (stands in for a trained extrinsic path)."""
    g = torch.Generator().manual_seed(seed)
    out = copy.deepcopy(dual)
    with torch.no_grad():
        for p in out.extrinsic_parameters():
            p.add_(torch.randn(p.shape, generator=g) * scale)
    return out


# --------------------------------------------------------------------------- architecture
def test_layer_groups_follow_the_coarse_resolution():
    G = tiny(16)
    dual = ds.DualStyleGenerator(G)
    assert dual.coarse_resolution == 8 and dual.n_coarse == 3 and dual.n_fine == G.n_latent - 3
    assert len(dual.modres) == 3 and len(dual.color) == dual.n_fine
    table = dual.layer_table()
    assert list(table.group) == ["structure"] * 3 + ["colour"] * dual.n_fine
    assert ds.default_coarse_resolution(1024) == 32 and ds.default_coarse_resolution(64) == 16
    assert ds.DualStyleGenerator(G, coarse_resolution=4).n_coarse == 1
    with pytest.raises(ValueError, match="coarse_resolution"):
        ds.DualStyleGenerator(G, coarse_resolution=16)
    assert not any(p.requires_grad for p in dual.base.parameters())
    assert all(p.requires_grad for p in dual.extrinsic_parameters())
    assert all(p.requires_grad for p in G.parameters())           # the original is not touched


def test_identity_at_initialisation():
    G = tiny(16)
    dual = ds.DualStyleGenerator(G)
    w, e = codes(G, 2, 0), codes(G, 2, 1)
    # structure on, colour off: the zero-initialised ModRes blocks add exactly nothing
    assert torch.equal(dual(w, e, 1.0, 0.0), G.synthesis(w))
    # colour on: T_c starts as the identity, so this is style mixing with the exemplar's fine latents
    mixed = torch.cat([w[:, :dual.n_coarse], e[:, dual.n_coarse:]], 1)
    assert torch.equal(dual(w, e, 1.0, 1.0), G.synthesis(mixed))


def test_zero_weights_give_the_base_generator_exactly_after_training():
    G = tiny(16)
    dual = trained_like(ds.DualStyleGenerator(G))
    w, e = codes(G, 3, 0), codes(G, 3, 1)
    assert torch.equal(dual(w, e, 0.0, 0.0), G.synthesis(w))
    assert torch.equal(dual(w, e, [0.0] * G.n_latent, [0.0] * G.n_latent), G.synthesis(w))
    assert not torch.allclose(dual(w, e, 1.0, 1.0), G.synthesis(w))


def test_colour_weights_touch_only_the_fine_layers():
    G = tiny(16)
    dual = trained_like(ds.DualStyleGenerator(G))
    w, e = codes(G, 2, 0), codes(G, 2, 1)
    _, off = dual(w, e, 1.0, 0.0, return_features=True)
    _, on = dual(w, e, 1.0, 1.0, return_features=True)
    assert len(off) == G.num_layers
    for i in range(dual.n_coarse):
        assert torch.equal(off[i], on[i]), i
    assert all(not torch.allclose(off[i], on[i]) for i in range(dual.n_coarse, G.num_layers))


def test_structure_weight_changes_the_coarse_structure():
    G = tiny(16)
    dual = trained_like(ds.DualStyleGenerator(G))
    w, e = codes(G, 2, 0), codes(G, 2, 1)
    img0, f0 = dual(w, e, 0.0, 0.0, return_features=True)
    img1, f1 = dual(w, e, 1.0, 0.0, return_features=True)
    assert not torch.allclose(f0[0], f1[0])                     # already at 4 px
    low = torch.nn.functional.avg_pool2d
    assert (low(img1, 4) - low(img0, 4)).abs().mean() > 1e-3    # the 4x4 layout moves
    # per-layer weights: only the last structure layer on -> earlier coarse features unchanged
    only_last = [0.0] * (dual.n_coarse - 1) + [1.0]
    _, f2 = dual(w, e, only_last, 0.0, return_features=True)
    assert torch.equal(f2[0], f0[0]) and not torch.allclose(f2[dual.n_coarse - 1], f0[dual.n_coarse - 1])
    # intermediate weight interpolates the residual
    _, fh = dual(w, e, 0.5, 0.0, return_features=True)
    assert torch.allclose(fh[0], (f0[0] + f1[0]) / 2, atol=1e-5)


def test_shapes_ranges_and_weight_checks():
    G = tiny(16)
    dual = ds.DualStyleGenerator(G)
    w = codes(G, 3, 0)
    out = dual(w, codes(G, 1, 1), 0.5, [0.2] * dual.n_fine)            # one exemplar for all three
    assert out.shape == (3, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    raw = dual(w, codes(G, 1, 1), return_raw=True)
    assert torch.allclose(dual(w, codes(G, 1, 1)), ((raw + 1) / 2).clamp(0, 1))
    assert dual(G.mapping(G.sample_z(2, seed=0)), codes(G, 2, 1)).shape == (2, 3, 16, 16)   # w (N, D)
    with pytest.raises(ValueError, match="structure weights"):
        dual(w, codes(G, 3, 1), [1.0, 1.0])
    with pytest.raises(ValueError, match="finite"):
        dual(w, codes(G, 3, 1), 1.0, float("nan"))
    with pytest.raises(ValueError, match="extrinsic codes"):
        dual(w, codes(G, 2, 1))
    with pytest.raises(ValueError, match="extrinsic code must be"):
        dual(w, torch.zeros(3, 2, 16))


def test_initialisation_is_seeded_and_leaves_the_global_random_state():
    G = tiny(16)
    state = torch.random.get_rng_state()
    a, b = ds.DualStyleGenerator(G, seed=3), ds.DualStyleGenerator(G, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    for (k, v), (_, u) in zip(a.extrinsic_state().items(), b.extrinsic_state().items()):
        assert torch.equal(v, u), k
    c = ds.DualStyleGenerator(G, seed=4)
    assert not torch.equal(a.modres[0].conv.weight, c.modres[0].conv.weight)


# --------------------------------------------------------------------------- codes and training
def test_codes_are_wplus_inversions():
    G = tiny(16)
    target = G.generate([7, 8])
    e = ds.exemplar_code(G, target, steps=30, lr=0.1)
    assert e.shape == (2, G.n_latent, G.style_dim)
    start = sg.mse_loss(G.synthesis(G.w_avg[None].expand(2, -1)), target).mean()
    assert sg.mse_loss(G.synthesis(e), target).mean() < 0.5 * start
    w = ds.photo_code(ds.DualStyleGenerator(G), torch.nn.functional.interpolate(target, size=32), steps=2,
                      space="z+")
    assert w.shape == (2, G.n_latent, G.style_dim)                 # resized to 16 px, Z+ mapped to W+
    with pytest.raises(ValueError, match="space"):
        ds.exemplar_code(G, target, steps=1, space="w")


def _pairs(G):
    photos = G.generate([1, 2, 3, 4])
    comics = (1 - photos).flip(-1) * 0.8                           # another colour scheme and layout
    wp = codes(G, 4, 10)
    we = codes(G, 4, 11)
    return photos, comics, wp, we


def test_training_lowers_the_loss_on_a_fixed_batch():
    G = tiny(16)
    dual = ds.DualStyleGenerator(G)
    photos, comics, wp, we = _pairs(G)
    fit = ds.train_dual(dual, photos, comics, 40, batch_size=4, lr=0.01, lambda_perc=0.0,
                        photo_codes=wp, comic_codes=we)
    losses = fit.losses()
    assert len(losses) == 40 and {"step", "loss", "l1"} <= set(fit.history[0])
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3
    assert not dual.training and torch.equal(dual.base.state_dict()["conv1.conv.weight"],
                                             G.state_dict()["conv1.conv.weight"])
    assert not torch.equal(dual.modres[0].out.weight, torch.zeros_like(dual.modres[0].out.weight))


def test_weight_regulariser_keeps_the_path_near_the_base():
    G = tiny(16)
    photos, comics, wp, we = _pairs(G)
    departures = []
    for reg in (0.0, 10.0):
        dual = ds.DualStyleGenerator(G)
        assert dual.departure().item() == 0
        fit = ds.train_dual(dual, photos, comics, 15, lr=0.01, lambda_perc=0.0, lambda_reg=reg,
                            photo_codes=wp, comic_codes=we)
        assert ("reg" in fit.history[-1]) == bool(reg)
        departures.append(dual.departure().item())
    assert 0 < departures[1] < departures[0]


def test_training_is_deterministic_with_a_seed():
    G = tiny(16)
    photos, comics, _, _ = _pairs(G)
    runs = []
    for _ in range(2):
        dual = ds.DualStyleGenerator(G, seed=0)
        fit = ds.train_dual(dual, photos, comics, 5, batch_size=2, lambda_perc=0.0, invert_steps=3, seed=5)
        runs.append((fit.losses(), dual.extrinsic_state()))
    assert runs[0][0] == runs[1][0]
    for k, v in runs[0][1].items():
        assert torch.equal(v, runs[1][1][k]), k


def test_non_finite_loss_raises_before_the_step():
    G = tiny(16)
    dual = ds.DualStyleGenerator(G)
    before = copy.deepcopy(dual.extrinsic_state())
    photos, comics, wp, we = _pairs(G)

    def nan_perceptual(a, b):
        return a.flatten(1).mean(1) * float("nan")

    with pytest.raises(checkpoints.NonFiniteState, match="perceptual.*step 1"):
        ds.train_dual(dual, photos, comics, 3, perceptual=nan_perceptual, photo_codes=wp, comic_codes=we)
    for k, v in dual.extrinsic_state().items():
        assert torch.equal(v, before[k]), k


def test_adversarial_term_and_default_perceptual_distance(mirror):
    from comicutils import runtime

    G = tiny(16)
    dual = ds.DualStyleGenerator(G)
    photos, comics, wp, we = _pairs(G)
    fit = ds.train_dual(dual, photos, comics, 2, batch_size=2, lambda_adv=0.1, photo_codes=wp, comic_codes=we)
    assert {"d", "adv", "perceptual", "l1"} <= set(fit.history[-1])
    assert isinstance(fit.discriminator, sg.Discriminator)
    assert any("taef2" in s.used for s in runtime.substitutes_in_use())
    with pytest.raises(ValueError, match="aligned"):
        ds.train_dual(dual, photos, comics[:3], 1, photo_codes=wp, comic_codes=we)


def test_stylize_with_exemplar_shapes_and_range():
    G = tiny(16)
    dual = trained_like(ds.DualStyleGenerator(G))
    photos = torch.rand(2, 3, 24, 24)
    out = ds.stylize_with_exemplar(dual, photos, torch.rand(3, 24, 24), structure=0.5, color=0.7, steps=2)
    assert out.shape == (2, 3, 16, 16) and out.min() >= 0 and out.max() <= 1
    one = ds.stylize_with_exemplar(dual, photos[0], torch.rand(1, 3, 16, 16), steps=2)
    assert one.shape == (3, 16, 16)
    with pytest.raises(Exception, match=r"\[0, 1\]"):
        ds.stylize_with_exemplar(dual, photos * 255, photos, steps=1)


def test_save_and_load_round_trip_and_base_provenance(tmp_path):
    G = tiny(16)
    dual = trained_like(ds.DualStyleGenerator(G, coarse_resolution=4))
    path = ds.save_dual(dual, tmp_path / "dual.pt")
    back = ds.load_dual(path, G)
    w, e = codes(G, 2, 0), codes(G, 2, 1)
    assert back.coarse_resolution == 4 and torch.equal(back(w, e, 0.7, 0.4), dual(w, e, 0.7, 0.4))
    with pytest.raises(checkpoints.ProvenanceMismatch, match="base weights"):
        ds.load_dual(path, tiny(16, seed=1))


# --------------------------------------------------------------------------- comparison
def test_comparison_rows_have_the_expected_columns():
    G = tiny(16)
    dual = ds.DualStyleGenerator(G)
    photos, comics = G.generate([1, 2]), G.generate([3, 4])
    rows = ds.comparison_rows(dual, photos, comics, names=["a", "b"], invert_steps=2,
                              nst={"backbone": "vgg16-random", "steps": 2})
    assert list(rows.columns) == ["method", "weights", "pair", "against", "ssim", "psnr"]
    assert len(rows) == 2 * 2 * 2                                    # methods x references x pairs
    assert set(rows.method) == {"DualStyleGAN (micro)", "NST (VGG-16)"}
    assert set(rows.against) == {"photo", "comic"} and set(rows.pair) == {"a", "b"}
    assert rows.ssim.between(-1, 1).all() and (rows.psnr > 0).all()
    summary = ds.summarize_comparison(rows)
    assert ("ssim", "mean") in summary.columns and len(summary) == 4
    one = ds.comparison_rows(dual, photos, comics, exemplars=comics[:1], against=("photo",), metrics=("ssim",),
                             invert_steps=1, nst={"backbone": "vgg16-random", "steps": 1})
    assert list(one.columns) == ["method", "weights", "pair", "against", "ssim"] and len(one) == 4
    with pytest.raises(ValueError, match="against"):
        ds.comparison_rows(dual, photos, comics, against=("style",))
    assert ds.SEED004_COMPARISON["test_images"] == 15 and ds.SEED004_COMPARISON["numbers"] is None

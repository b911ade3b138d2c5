"""comicutils.stylegan: tiny generators (8-32 px, a few channels), milliseconds each."""
from __future__ import annotations

import copy

import pytest
import torch

from comicutils import data, stylegan as sg
from comicutils.data import PairedFolder

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config(size: int = 16) -> sg.GeneratorConfig:
    return sg.GeneratorConfig(size=size, style_dim=16, n_mlp=2,
                              channels={r: 8 for r in [2 ** i for i in range(2, size.bit_length())]})


def tiny(size: int = 16, seed: int = 0) -> sg.Generator:
    torch.manual_seed(seed)
    G = sg.Generator(tiny_config(size))
    G.update_w_avg(256)
    return G


def perturbed(G: sg.Generator, seed: int = 1) -> sg.Generator:
    """A copy of G with every parameter moved (stands in for a fine-tuned style generator)."""
    g = torch.Generator().manual_seed(seed)
    H = copy.deepcopy(G)
    with torch.no_grad():
        for p in H.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)
    return H


# --------------------------------------------------------------------------- generator
@pytest.mark.parametrize("size", [8, 16, 32])
def test_generator_shape_range_and_latent_count(size):
    G = tiny(size)
    out = G(G.sample_z(3, seed=0))
    assert out.shape == (3, 3, size, size)
    assert out.min() >= 0 and out.max() <= 1
    assert G.n_latent == 2 * int(torch.log2(torch.tensor(size))) - 2
    assert len(G.latent_resolutions()) == G.n_latent


def test_raw_output_is_not_clamped_and_maps_to_images():
    G = tiny(16)
    z = G.sample_z(2, seed=3)
    raw = G(z, return_raw=True)
    assert torch.allclose(G(z), ((raw + 1) / 2).clamp(0, 1))


def test_same_seed_same_image_and_different_seeds_differ():
    G = tiny(16)
    a, b, c = G.generate([5]), G.generate([5]), G.generate([6])
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_random_noise_mode_varies_const_does_not():
    G = tiny(16)
    with torch.no_grad():
        for name, p in G.named_parameters():
            if name.endswith("noise.weight"):
                p.fill_(1.0)
    z = G.sample_z(1, seed=0)
    assert torch.equal(G(z, noise_mode="const"), G(z, noise_mode="const"))
    assert not torch.allclose(G(z, noise_mode="random"), G(z, noise_mode="random"))


def test_truncation_psi_zero_gives_the_average_latent_image():
    G = tiny(16)
    z = G.sample_z(2, seed=1)
    out = G(z, psi=0.0)
    avg = G.synthesis(G.w_avg[None].expand(2, -1))
    assert torch.allclose(out, avg, atol=1e-6)
    assert torch.equal(G.truncate(G.mapping(z), 1.0), G.mapping(z))


def test_input_spaces_agree():
    G = tiny(16)
    z = G.sample_z(2, seed=2)
    w = G.mapping(z)
    zplus = z[:, None].repeat(1, G.n_latent, 1)
    ref = G(z)
    assert torch.allclose(G(w, input_space="w"), ref, atol=1e-6)
    assert torch.allclose(G(G.to_wplus(w), input_space="w+"), ref, atol=1e-6)
    assert torch.allclose(G(zplus, input_space="z+"), ref, atol=1e-5)
    with pytest.raises(ValueError):
        G(zplus, input_space="z")


def test_upfirdn2d_upsample_preserves_constant_and_doubles_size():
    x = torch.ones(1, 2, 6, 6)
    up = sg.model.Upsample()
    y = up(x)
    assert y.shape == (1, 2, 12, 12)
    assert torch.allclose(y[..., 2:-2, 2:-2], torch.ones(1, 2, 8, 8))  # interior: DC gain 1


def test_modulated_conv_equals_grouped_weight_form():
    torch.manual_seed(0)
    conv = sg.model.ModulatedConv2d(4, 5, 3, 6)
    x, w = torch.randn(2, 4, 7, 7), torch.randn(2, 6)
    s = conv.modulation(w)
    weight = conv.weight * conv.scale * s[:, None, :, None, None]          # (N, out, in, k, k)
    weight = weight * torch.rsqrt(weight.pow(2).sum((2, 3, 4)) + 1e-8)[:, :, None, None, None]
    ref = torch.nn.functional.conv2d(x.reshape(1, 8, 7, 7), weight.reshape(10, 4, 3, 3), padding=1, groups=2)
    assert torch.allclose(conv(x, w), ref.reshape(2, 5, 7, 7), atol=1e-5)


def test_rosinality_key_names():
    keys = set(tiny(16).state_dict())
    for k in ["style.1.weight", "style.2.bias", "input.input", "conv1.conv.weight",
              "conv1.conv.modulation.weight", "conv1.noise.weight", "conv1.activate.bias",
              "to_rgb1.conv.weight", "to_rgb1.bias", "convs.0.conv.blur.kernel", "convs.3.noise.weight",
              "to_rgbs.1.upsample.kernel", "noises.noise_0", "noises.noise_4"]:
        assert k in keys, k
    assert tiny(16).state_dict()["conv1.conv.weight"].shape == (1, 8, 8, 3, 3)


# --------------------------------------------------------------------------- checkpoints
def test_checkpoint_round_trip(tmp_path):
    G = tiny(16)
    path = sg.save_checkpoint(G, tmp_path / "g.pt")
    H = sg.load_checkpoint(path)
    z = G.sample_z(2, seed=0)
    assert torch.equal(G(z), H(z))
    assert torch.equal(G.w_avg, H.w_avg)


def test_bare_rosinality_state_dict_infers_architecture(tmp_path):
    G = tiny(32)
    torch.save({"g_ema": G.state_dict(), "latent_avg": G.w_avg}, tmp_path / "r.pt")
    H = sg.load_checkpoint(tmp_path / "r.pt")
    assert H.config.channels == G.config.channels and H.size == 32
    z = G.sample_z(1, seed=0)
    assert torch.equal(G(z), H(z))


def test_mismatched_checkpoint_is_a_clear_error(tmp_path):
    G = tiny(16)
    state = dict(G.state_dict())
    state.pop("to_rgb1.bias")
    state["extra.weight"] = torch.zeros(1)
    torch.save({"g_ema": state}, tmp_path / "bad.pt")
    with pytest.raises(sg.CheckpointMismatch, match="missing: to_rgb1.bias.*unexpected: extra.weight"):
        sg.load_checkpoint(tmp_path / "bad.pt", tiny_config(16))
    torch.save({"g_ema": tiny(32).state_dict()}, tmp_path / "other.pt")
    with pytest.raises(sg.CheckpointMismatch):
        sg.load_checkpoint(tmp_path / "other.pt", tiny_config(16))
    torch.save({"g": G.state_dict()}, tmp_path / "nokey.pt")
    with pytest.raises(sg.CheckpointMismatch, match="no 'g_ema'"):
        sg.load_checkpoint(tmp_path / "nokey.pt")


def test_ffhq_config_matches_rosinality_layout():
    with torch.device("meta"):
        G = sg.Generator(sg.GeneratorConfig(1024))
    assert G.n_latent == 18 and G.num_layers == 17
    assert G.state_dict()["convs.12.conv.weight"].shape == (1, 64, 128, 3, 3)  # 512 px: 32*2
    assert sum(p.numel() for p in G.parameters()) == pytest.approx(30.37e6, rel=0.01)


# --------------------------------------------------------------------------- blending
def test_blend_all_zero_is_base_all_one_is_style_exactly():
    G, S = tiny(16), perturbed(tiny(16))
    zero = sg.blend(G, S, {r: 0.0 for r in G.config.resolutions})
    one = sg.blend(G, S, {r: 1.0 for r in G.config.resolutions}, mapping="style")
    for k, v in zero.state_dict().items():
        assert torch.equal(v, G.state_dict()[k]), k
    for k, v in one.state_dict().items():
        assert torch.equal(v, S.state_dict()[k]), k


def test_blend_intermediate_interpolates_per_resolution():
    G, S = tiny(16), perturbed(tiny(16))
    weights = {4: 0.25, 8: 0.5, 16: 0.75}
    B = sg.blend(G, S, weights)
    sb, ss, sm = G.state_dict(), S.state_dict(), B.state_dict()
    for key, res in [("conv1.conv.weight", 4), ("convs.0.conv.weight", 8), ("to_rgbs.1.bias", 16),
                     ("noises.noise_4", 16)]:
        assert torch.allclose(sm[key], (1 - weights[res]) * sb[key] + weights[res] * ss[key], atol=1e-6)
    assert torch.equal(sm["style.1.weight"], sb["style.1.weight"])      # mapping kept from base
    assert torch.equal(B.w_avg, G.w_avg)
    # inputs untouched
    assert not torch.equal(G.state_dict()["conv1.conv.weight"], S.state_dict()["conv1.conv.weight"])


def test_blend_options_and_errors():
    G, S = tiny(16), perturbed(tiny(16))
    B = sg.blend(G, S, {4: 1, 8: 1, 16: 1}, blend_torgb=False)
    assert torch.equal(B.state_dict()["to_rgbs.0.conv.weight"], G.state_dict()["to_rgbs.0.conv.weight"])
    assert torch.equal(B.state_dict()["convs.0.conv.weight"], S.state_dict()["convs.0.conv.weight"])
    with pytest.raises(ValueError, match="miss resolutions"):
        sg.blend(G, S, {4: 0.5})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        sg.blend(G, S, {4: 0.5, 8: 2.0, 16: 0.0})
    with pytest.raises(ValueError, match="same architecture"):
        sg.blend(G, tiny(32), {4: 0, 8: 0, 16: 0})
    table = sg.blend_table(G, {4: 0.1, 8: 0.2, 16: 0.3})
    assert set(table.key) == set(G.state_dict())


def test_swap_weights_and_resampled_seed003_curve():
    assert sg.swap_weights(64, 16) == {4: 0.0, 8: 0.0, 16: 1.0, 32: 1.0, 64: 1.0}
    same = sg.resample_blend_weights(sg.SEED003_CUSTOM_BLEND, 512)
    assert same == pytest.approx(sg.SEED003_CUSTOM_BLEND)
    small = sg.resample_blend_weights(sg.SEED003_CUSTOM_BLEND, 64)
    assert sorted(small) == [4, 8, 16, 32, 64]
    assert small[4] == sg.SEED003_CUSTOM_BLEND[4] and small[64] == sg.SEED003_CUSTOM_BLEND[512]
    assert min(small.values()) >= 0.2 and max(small.values()) <= 0.9
    with pytest.raises(ValueError):
        sg.swap_weights(64, 12)


# --------------------------------------------------------------------------- mixing
def test_style_mixing_endpoints_and_cut():
    G = tiny(16)
    src = G.mapping(G.sample_z(2, seed=0, plus=True))
    ref = G.mapping(G.sample_z(2, seed=1, plus=True))
    L = G.n_latent
    assert torch.equal(sg.mix_latents(src, ref, 0), ref)
    assert torch.equal(sg.mix_latents(src, ref, L), src)
    mixed = sg.mix_latents(src, ref, 3)
    assert torch.equal(mixed[:, :3], src[:, :3]) and torch.equal(mixed[:, 3:], ref[:, 3:])
    assert torch.equal(sg.reference_guided(G, src, ref, 0), G.synthesis(ref))
    assert torch.equal(sg.reference_guided(G, src, ref, L), G.synthesis(src))
    with pytest.raises(ValueError):
        sg.mix_latents(src, ref, L + 1)


def test_multimodal_keeps_coarse_layers_when_mixing_late():
    G = tiny(16)
    w = G.to_wplus(G.mapping(G.sample_z(1, seed=0)))
    outs = sg.multimodal(G, w, G.n_latent, n=3)       # nothing mixed in: three equal images
    assert torch.allclose(outs[0], outs[1]) and torch.allclose(outs[1], outs[2])
    outs = sg.multimodal(G, w, 2, n=3)
    assert not torch.allclose(outs[0], outs[1])


# --------------------------------------------------------------------------- inversion
@pytest.mark.parametrize("space", ["w", "w+", "z+"])
def test_inversion_lowers_reconstruction_loss(space):
    G = tiny(16)
    target = G.generate([11])
    start = sg.mse_loss(G.synthesis(G.to_wplus(sg.latent_to_wplus(G, sg.initial_latent(G, 1, space), space))),
                        target)
    inv = sg.invert(G, target, space=space, steps=40, lr=0.1)
    assert inv.final_loss.item() < 0.5 * start.item()
    assert inv.wplus.shape == (1, G.n_latent, G.style_dim)
    assert inv.losses[-1] < inv.losses[0]
    assert not any(p.requires_grad for p in G.parameters())


def test_inversion_rejects_bad_targets():
    G = tiny(16)
    with pytest.raises(ValueError, match="16x16"):
        sg.invert(G, torch.rand(1, 3, 8, 8), steps=1)
    with pytest.raises(ValueError, match="space"):
        sg.invert(G, torch.rand(1, 3, 16, 16), space="v", steps=1)


def test_multilevel_pseudo_pairs_shapes_and_levels():
    G = tiny(16)
    G_star = perturbed(G)
    comics = G_star.generate([1, 2])
    pp = sg.multilevel_pseudo_pairs(G, G_star, comics, semantic=sg.mse_loss, steps=(10, 10, 5))
    for k in (1, 2, 3):
        photo, comic, w = pp.level(k)
        assert photo.shape == comics.shape and w.shape == (2, G.n_latent, G.style_dim)
        assert torch.allclose(photo, G.synthesis(w), atol=1e-6)
    # level 2 starts where level 1 ended and lowers the semantic loss through G*
    assert pp.inversions[2].losses[-1] < pp.inversions[2].losses[0]


# --------------------------------------------------------------------------- losses
def _toy_extractor():
    torch.manual_seed(0)
    conv1, conv2 = torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Conv2d(4, 4, 3, stride=2, padding=1)

    class Ex(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c1, self.c2 = conv1, conv2

        def forward(self, x):
            a = torch.relu(self.c1(x))
            return {1: a, 2: torch.relu(self.c2(a))}

    return Ex()


def test_semantic_loss_zero_for_identical_positive_otherwise_and_differentiable():
    dist = sg.FeatureDistances(_toy_extractor(), lpips_blocks=(1, 2), id_block=2)
    loss = sg.SemanticLoss(dist, announce=False)
    assert isinstance(loss.identity, sg.IdentityLoss)       # dlib's network: Lu & Zhou's identity term
    a, b = torch.rand(2, 3, 16, 16), torch.rand(2, 3, 16, 16)
    assert torch.allclose(loss(a, a), torch.zeros(2), atol=1e-5)
    assert (loss(a, b) > 0).all()
    perc, _ = dist(a, b)
    assert torch.allclose(loss(a, b), perc + sg.LAMBDA_ID * loss.identity(a, b))
    assert loss.identity.landmark_sources == {"template": 4}   # a and b, each looked up once; 16 px: the template
    x = a.clone().requires_grad_(True)
    loss(x, b).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_semantic_loss_announces_its_substitutes(capsys):
    from comicutils import runtime

    sg.SemanticLoss(sg.FeatureDistances(_toy_extractor(), lpips_blocks=(1,), id_block=2), announce=True)
    used = " ".join(s.used for s in runtime.substitutes_in_use())
    assert "taef2" in used and "LPIPS" in capsys.readouterr().out
    assert not any("identity" in s.wanted.lower() for s in runtime.substitutes_in_use())   # dlib's ResNet is real


# --------------------------------------------------------------------------- training
def test_trainer_step_updates_generator_and_discriminator_and_ema():
    G = tiny(16)
    D = sg.Discriminator(16, G.config.channels)
    before_g, before_d = copy.deepcopy(G.state_dict()), copy.deepcopy(D.state_dict())
    tr = sg.GANTrainer(G, D, batch_size=4)
    tr.fit(torch.rand(6, 3, 16, 16), 2)
    assert not torch.equal(before_g["conv1.conv.weight"], G.state_dict()["conv1.conv.weight"])
    assert not torch.equal(before_d["from_rgb.weight"], D.state_dict()["from_rgb.weight"])
    assert not torch.equal(tr.G_ema.state_dict()["conv1.conv.weight"], before_g["conv1.conv.weight"])
    assert len(tr.history) == 2 and {"d", "g_adv", "r1"} <= set(tr.history[0])
    assert [r["step"] for r in tr.history] == [1, 2] and tr.step == 2
    with pytest.raises(ValueError, match="16, 16"):
        tr.fit(torch.rand(2, 3, 8, 8), 1)


def test_finetune_logs_constraints_and_leaves_inputs_untouched():
    G = tiny(16)
    D = sg.Discriminator(16, G.config.channels)
    before = copy.deepcopy(G.state_dict())
    comics = torch.rand(4, 3, 16, 16)
    wplus = G.to_wplus(G.mapping(G.sample_z(4, seed=0)))
    tr = sg.finetune(G, D, comics, 2, semantic=lambda a, b: sg.mse_loss(a, b),
                     pairs=(wplus, comics), paired_loss=sg.mse_loss, batch_size=2)
    assert {"semantic", "paired"} <= set(tr.history[-1])
    for k, v in G.state_dict().items():
        assert torch.equal(v, before[k]), k
    with pytest.raises(ValueError, match="paired_loss"):
        sg.finetune(G, D, comics, 1, pairs=(wplus, comics))


def test_reconstruction_warm_start_fits_images_and_anchor_term_logs():
    G = tiny(16)
    images = torch.rand(4, 3, 16, 16)
    fit = sg.fit_reconstruction(G, images, 60, batch_size=4, lr=0.01, latent_lr=0.05)
    assert fit.z.shape == (4, G.style_dim)
    first = sum(h["reconstruction"] for h in fit.history[:5]) / 5
    last = sum(h["reconstruction"] for h in fit.history[-5:]) / 5
    assert last < 0.7 * first
    assert not any(p.requires_grad for p in G.parameters())
    D = sg.Discriminator(16, G.config.channels)
    tr = sg.GANTrainer(G, D, batch_size=2,
                       extra_losses={"anchor": (1.0, sg.reconstruction_term(fit.z, images, batch=2))})
    tr.fit(images, 1)
    assert 0 < tr.history[0]["anchor"] < first          # the fitted latents' reconstruction error, not a fresh one


def test_diff_augment_shape_and_gradient():
    x = torch.rand(3, 3, 16, 16, requires_grad=True)
    y = sg.diff_augment(x * 2 - 1, torch.Generator().manual_seed(0))
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad.abs().sum() > 0


def test_diff_augment_changes_every_image_and_repeats_with_its_generator():
    """An augmentation that returned its input (or ignored its generator) would fail."""
    x = torch.rand(4, 3, 16, 16) * 2 - 1
    a = sg.diff_augment(x, torch.Generator().manual_seed(0))
    b = sg.diff_augment(x, torch.Generator().manual_seed(0))
    c = sg.diff_augment(x, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert all((a[i] - x[i]).abs().mean() > 1e-3 for i in range(len(x)))


# --------------------------------------------------------------------------- pairs on disk
def test_write_pairs_readable_by_chapter02_loader(tmp_path):
    G = tiny(16)
    B = sg.blend(G, perturbed(G), sg.swap_weights(16, 8))
    photo_dir, comic_dir = sg.write_pairs(G, B, [3, 1, 2], tmp_path / "pairs")
    ds = PairedFolder(photo_dir, comic_dir, size=16)
    assert ds.keys == [sg.pair_key(s) for s in (1, 2, 3)] and not any(ds.unpaired.values())
    item = ds[0]
    assert item["photo"].shape == (3, 16, 16)
    assert torch.allclose(item["photo"], G.generate([1], psi=0.7)[0], atol=1 / 255 + 1e-6)
    assert torch.allclose(item["comic"], B.generate([1], psi=0.7)[0], atol=1 / 255 + 1e-6)
    train, test = data.split_keys(ds.keys, test_fraction=0.34)
    assert len(train) + len(test) == 3
    with pytest.raises(FileExistsError):
        sg.write_pairs(G, B, [4], tmp_path / "pairs")
    with pytest.raises(ValueError, match="distinct"):
        sg.write_pairs(G, B, [4, 4], tmp_path / "other")


def test_micro_config_channels():
    cfg = sg.micro_config(64, width=128)
    assert cfg.channels == {4: 128, 8: 128, 16: 128, 32: 64, 64: 32} and cfg.n_latent == 10


def test_ffhq_stand_in_is_announced_and_full_mode_refuses(monkeypatch):
    from comicutils import assets, runtime

    assert sg.ffhq_or_none() is None                      # smoke mode: the micro stand-in
    assert any("micro StyleGAN2" in s.used for s in runtime.substitutes_in_use())
    monkeypatch.setenv("COMICUTILS_MODE", "full")
    with pytest.raises(assets.AssetUnavailable):
        sg.ffhq_or_none()


# --------------------------------------------------------------------------- the V space
def test_closed_form_basis_is_orthonormal_along_the_modulation_singular_vectors():
    G = tiny(16)
    E = sg.closed_form_basis(G)
    assert E.shape == (G.style_dim, G.style_dim)
    torch.testing.assert_close(E.T @ E, torch.eye(G.style_dim), atol=1e-5, rtol=0)
    A = torch.cat([v for k, v in G.state_dict().items()
                   if "modulation" in k and k.endswith("weight") and "to_rgbs" not in k]).double()
    gram = A.T @ A
    moved = (gram @ E.double()).norm(dim=0)             # |A^T A e_k| = sigma_k^2, strongest first
    assert torch.all(moved[:-1] >= moved[1:] - 1e-6)
    torch.testing.assert_close(gram @ E.double(), E.double() * moved, atol=1e-4, rtol=1e-4)


def test_v_inversion_is_w_in_the_closed_form_basis_and_lowers_the_loss():
    G = tiny(16)
    target = G.generate([11])
    start = sg.invert_v(G, target, steps=0)
    torch.testing.assert_close(start.wplus, G.to_wplus(G.w_avg[None]), atol=1e-5, rtol=0)
    inv = sg.invert_v(G, target, steps=40, lr=0.1)
    assert inv.space == "v" and inv.latent.shape == (1, G.style_dim)
    w = inv.latent @ inv.basis.T
    torch.testing.assert_close(inv.wplus, G.to_wplus(w))
    assert inv.final_loss.item() < 0.5 * start.final_loss.item()
    assert not any(p.requires_grad for p in G.parameters())
    with pytest.raises(ValueError, match="basis"):
        sg.invert_v(G, target, basis=torch.eye(3), steps=1)
    with pytest.raises(ValueError, match="16x16"):
        sg.invert_v(G, torch.rand(1, 3, 8, 8), steps=1)


def _pooled_extractor(block):
    torch.manual_seed(1)
    conv = torch.nn.Conv2d(3, 6, 3, padding=1)

    class Ex(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return {block: torch.relu(self.conv(x))}

    return Ex()


class _Flat(torch.nn.Module):
    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 2).flatten(1)


def test_style_set_distances_give_fid_whenever_the_inception_is_there(monkeypatch):
    from comicutils import fid
    from comicutils.metrics import MetricUnavailable

    style, other = torch.rand(6, 3, 16, 16), torch.rand(5, 3, 16, 16) * 0.5
    with_fid = sg.StyleSetDistances(style, fid_extractor=_Flat(), fd_extractor=_pooled_extractor(13), fd_size=16)
    got = with_fid(other)
    assert with_fid.has_fid and with_fid.fid_unavailable is None
    assert got["FID"] == pytest.approx(fid.fid(other, style, _Flat()))
    assert got["FD taef2"] > 0 and with_fid(style)["FID"] == pytest.approx(0.0, abs=1e-6)

    def missing():
        raise MetricUnavailable("FID/KID n/a: no weights here")

    monkeypatch.setattr(fid, "fid_inception", missing)
    monkeypatch.setenv("COMICUTILS_MODE", "smoke")
    without = sg.StyleSetDistances(style, fd_extractor=_pooled_extractor(13), fd_size=16)
    got = without(other)
    assert not without.has_fid and "no weights" in without.fid_unavailable
    assert got["FID"] != got["FID"] and got["FD taef2"] == pytest.approx(with_fid(other)["FD taef2"])
    monkeypatch.setenv("COMICUTILS_MODE", "full")
    with pytest.raises(MetricUnavailable):
        sg.StyleSetDistances(style, fd_extractor=_pooled_extractor(13), fd_size=16)
    with pytest.raises(ValueError, match="2 images"):
        sg.StyleSetDistances(style[:1], fid=False, fd_extractor=_pooled_extractor(13))

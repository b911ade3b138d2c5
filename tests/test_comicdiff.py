"""Tests of comicutils.comicdiff on tiny configurations (no downloads): LoRA init and training
behaviour, α = 0, adapter files, parameter counts, the training loop, the NaN guard, resuming,
and the inference API (size, batch, determinism, merge)."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from comicutils import comicdiff as cd
from comicutils.comicdiff import lora
from comicutils.comicdiff.components import LatentCodec

TINY_UNET = {
    "sample_size": 4, "in_channels": 4, "out_channels": 4,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [16, 32], "layers_per_block": 1, "attention_head_dim": 4,
    "cross_attention_dim": 8, "norm_num_groups": 8,
}


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyCodec(LatentCodec):
    """A fixed random /4 autoencoder with 4 latent channels (stands in for a VAE in tests)."""

    name = "tiny"

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.enc = nn.Conv2d(3, 4, 4, stride=4)
        self.dec = nn.ConvTranspose2d(4, 3, 4, stride=4)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3
        self.requires_grad_(False)
        self.latent_channels, self.downscale_factor = 4, 4

    def encode(self, images):
        self.check_size(images)
        return self.enc(images * 2 - 1)

    def decode(self, latents):
        return torch.sigmoid(self.dec(latents))


def tiny_model(seed: int = 0) -> cd.ComicDiff:
    unet = cd.build_unet(TINY_UNET, seed=seed)
    comp = cd.Components("offline", TinyCodec(), unet, cd.fixed_prompt_embedding(8, tokens=3),
                         dict(cd.OFFLINE_SCHEDULER_CONFIG))
    return cd.ComicDiff(comp).eval()


def images(n=2, size=32, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def fixed_batch(n=4, size=32):
    """Photos and reachable targets: the output of a teacher whose adapter has random B."""
    teacher = tiny_model()
    teacher.add_lora(rank=4, seed=7)
    for name, p in teacher.unet.named_parameters():
        if "lora_B" in name:
            p.data = torch.randn(p.shape, generator=torch.Generator().manual_seed(8)) * 0.3
    photos = images(n, size, 0)
    with torch.no_grad():
        comics = teacher(photos)
    return cd.LatentPairs([f"k{i}" for i in range(n)], TinyCodec().encode(photos), comics), photos, comics


def mse_only() -> cd.ComicDiffLoss:
    return cd.ComicDiffLoss(None, lpips_weight=0.0, name="none")


# --------------------------------------------------------------------------- LoRA behaviour
def test_fresh_adapter_leaves_the_output_unchanged():
    m, x = tiny_model(), images()
    with torch.no_grad():
        before = m(x)
        m.add_lora(rank=4)
        after = m(x)
    assert lora.has_lora(m.unet)
    assert torch.allclose(before, after, atol=1e-5)     # B = 0: unchanged up to float rounding
    # B is zero, A is not: the known "both zero" bug would make training impossible
    for name, p in m.unet.named_parameters():
        if "lora_B" in name:
            assert torch.count_nonzero(p) == 0
        if "lora_A" in name:
            assert p.abs().sum() > 0


def test_zero_initialisation_of_both_matrices_is_refused():
    with pytest.raises(ValueError, match="nothing trains"):
        lora.lora_config(4, init=False)
    with pytest.raises(ValueError, match="rank"):
        lora.lora_config(0)


def test_one_step_changes_the_output_and_only_lora_gets_gradients():
    m, x = tiny_model(), images()
    m.add_lora(rank=4)
    y = images(seed=5)
    with torch.no_grad():
        before = m(x)
    loss = ((m(x) - y) ** 2).mean()
    loss.backward()
    graded = {n for n, p in m.named_parameters() if p.grad is not None}
    assert graded and all("lora_" in n for n in graded)
    assert not any(p.requires_grad for n, p in m.named_parameters() if "lora_" not in n)
    assert any(p.grad.abs().sum() > 0 for n, p in m.unet.named_parameters() if "lora_B" in n)
    opt = torch.optim.AdamW(m.trainable_parameters(), lr=1e-2)
    opt.step()
    with torch.no_grad():
        after = m(x)
    assert (after - before).abs().max() > 1e-4


def test_alpha_zero_is_exactly_the_vae_reconstruction():
    m, x = tiny_model(), images()
    m.add_lora(rank=4)
    for p in lora.lora_parameters(m.unet):
        p.data.normal_()
    with torch.no_grad():
        recon = m.codec.decode(m.codec.encode(x))
        assert torch.equal(m(x, alpha=0.0), recon)
        assert not torch.equal(m(x, alpha=1.0), recon)
    assert torch.equal(m.translate(x, alpha=0.0), recon)


def test_forward_is_the_blend_formula():
    m, x = tiny_model(), images()
    with torch.no_grad():
        z = m.encode(x)
        dz = m.delta(z)
        assert torch.allclose(m(x, alpha=0.5), m.decode(z + 0.5 * dz))
        assert torch.allclose(m(latents=z, alpha=1.25), m.decode(z + 1.25 * dz))


def test_trainable_parameter_count_is_rank_times_in_plus_out():
    from diffusers.models.attention import BasicTransformerBlock

    for ff in (False, True):
        unet = cd.build_unet(TINY_UNET)
        blocks = sum(isinstance(m, BasicTransformerBlock) for m in unet.modules())   # 1 down + 1 mid + 2 up
        layers = lora.targeted_layers(unet, feed_forward=ff)
        assert blocks == 4 and len(layers) == blocks * (2 * 4 + (2 if ff else 0))   # attn1, attn2 x q/k/v/out
        expected = lora.expected_lora_parameters(unet, 4, feed_forward=ff)
        assert expected == sum(4 * (layer.in_features + layer.out_features) for layer in layers.values())
        lora.add_lora(unet, 4, feed_forward=ff)
        assert lora.count_trainable(unet) == expected


def test_sd21_counts_on_the_meta_device():
    unet = cd.build_unet(cd.SD21_UNET_CONFIG, device="meta")
    assert sum(p.numel() for p in unet.parameters()) == 865_910_724
    assert lora.expected_lora_parameters(unet, 8) == 1_659_904
    lora.add_lora(unet, 8, seed=None)
    assert lora.count_trainable(unet) == 1_659_904


# --------------------------------------------------------------------------- adapter files
def test_adapter_round_trip_reproduces_outputs(tmp_path):
    m, x = tiny_model(), images()
    m.add_lora(rank=4, alpha=8)
    for p in lora.lora_parameters(m.unet):
        p.data.normal_(0, 0.2)
    with torch.no_grad():
        want = m(x)
    folder = m.save_adapter(tmp_path / "adapter", {"note": "test"})
    from safetensors import safe_open
    with safe_open(str(folder / lora.WEIGHT_NAME), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("unet.") and ".lora" in k for k in keys)   # adapter only
    info = cd.read_adapter_info(folder)
    assert info["rank"] == 4 and info["alpha"] == 8 and info["note"] == "test"
    fresh = tiny_model()
    fresh.load_adapter(folder)
    with torch.no_grad():
        assert torch.allclose(fresh(x), want, atol=1e-6)
    with pytest.raises(ValueError, match="already carries"):
        fresh.load_adapter(folder)
    with pytest.raises(FileExistsError):
        m.save_adapter(folder)
    m.save_adapter(folder, overwrite=True)


def test_a_failed_save_leaves_nothing(tmp_path):
    m = tiny_model()
    m.add_lora(rank=2)
    lora.lora_parameters(m.unet)[0].data[0, 0] = math.nan
    with pytest.raises(ValueError, match="non-finite"):
        m.save_adapter(tmp_path / "adapter")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(FileNotFoundError, match="not a ComicDiff adapter"):
        cd.read_adapter_info(tmp_path)


# --------------------------------------------------------------------------- training
def test_training_lowers_the_loss_on_a_fixed_batch(tmp_path):
    ds, photos, comics = fixed_batch()
    m = tiny_model()
    cfg = cd.TrainConfig(rank=4, lr=1e-2, batch_size=4, epochs=30, mixed_precision="no", seed=0)
    res = cd.train_lora(m, ds, cfg, loss_fn=mse_only(), show_progress=False)
    losses = [row["loss"] for row in res.history]
    assert res.steps == 30 and len(losses) == 30
    assert losses[-1] < 0.5 * losses[0]


def test_a_nan_loss_stops_training_without_writing(tmp_path):
    ds, _, _ = fixed_batch()
    ds.comics[0, 0, 0, 0] = math.nan
    out = tmp_path / "run"
    with pytest.raises(cd.NonFiniteLoss, match="no checkpoint"):
        cd.train_lora(tiny_model(), ds, cd.TrainConfig(rank=2, epochs=1, mixed_precision="no"),
                      out_dir=out, loss_fn=mse_only(), show_progress=False)
    assert not out.exists() or list(out.iterdir()) == []


def test_resuming_continues_the_step_count(tmp_path):
    ds, _, _ = fixed_batch()
    cfg = cd.TrainConfig(rank=2, lr=1e-3, batch_size=2, epochs=10, max_steps=3, mixed_precision="no")
    first = cd.train_lora(tiny_model(), ds, cfg, out_dir=tmp_path, loss_fn=mse_only(), show_progress=False)
    assert first.steps == 3 and (tmp_path / "adapter" / lora.WEIGHT_NAME).is_file()
    cfg.max_steps = 5
    second = cd.train_lora(tiny_model(), ds, cfg, out_dir=tmp_path, loss_fn=mse_only(), show_progress=False)
    assert second.steps == 5
    assert [row["step"] for row in second.history] == [1, 2, 3, 4, 5]
    assert second.history[2]["loss"] == pytest.approx(first.history[2]["loss"])


def test_denoiser_pretraining_lowers_its_loss():
    unet = cd.build_unet(TINY_UNET)
    latents = torch.randn(8, 4, 8, 8, generator=torch.Generator().manual_seed(0)) * 0.5
    for kind in ("epsilon", "v_prediction"):
        cfg = {**cd.OFFLINE_SCHEDULER_CONFIG, "prediction_type": kind}
        r = cd.pretrain_denoiser(unet, latents, cd.fixed_prompt_embedding(8, tokens=3), cfg,
                                 steps=40, batch_size=8, lr=2e-3, show_progress=False)
        first = sum(h["loss"] for h in r.history[:5]) / 5
        last = sum(h["loss"] for h in r.history[-5:]) / 5
        assert last < first
    assert not any(p.requires_grad for p in unet.parameters())


def test_loss_terms_and_ranges():
    x, y = images(seed=0), images(seed=1)
    perc = lambda a, b: (a - b).abs().mean(dim=(1, 2, 3))  # noqa: E731 - a stand-in perceptual net
    terms = cd.ComicDiffLoss(perc, lpips_weight=0.8, name="l1")(x, y)
    assert torch.isclose(terms["mse"], ((x - y) ** 2).mean())
    assert torch.isclose(terms["loss"], terms["mse"] + 0.8 * terms["perceptual"])
    zero = cd.ComicDiffLoss(perc, 0.8)(x, x)
    assert zero["loss"] == 0
    with pytest.raises(ValueError, match="differ"):
        cd.ComicDiffLoss(perc)(x, y[:, :, :16])


def test_the_gram_style_distance_ignores_where_a_texture_sits_and_its_scale():
    from comicutils.comicdiff.model import relative_gram_distance

    g = torch.Generator().manual_seed(0)
    a = {1: torch.randn(2, 8, 6, 6, generator=g), 5: torch.randn(2, 8, 3, 3, generator=g)}
    moved = {k: v.flatten(2)[:, :, torch.randperm(v[0, 0].numel(), generator=g)].reshape(v.shape) for k, v in a.items()}
    assert torch.allclose(relative_gram_distance(moved, a), torch.zeros(2), atol=1e-6)   # positions shuffled: 0
    b = {k: torch.randn(v.shape, generator=g) for k, v in a.items()}
    d = relative_gram_distance(b, a)
    assert d.shape == (2,) and (d > 0).all()
    assert torch.allclose(relative_gram_distance({k: 3 * v for k, v in b.items()}, {k: 3 * v for k, v in a.items()}), d)


def test_the_style_option_adds_its_weighted_term(mirror):
    x, y = images(seed=0), images(seed=1)
    perc = lambda a, b: (a - b).abs().mean(dim=(1, 2, 3))  # noqa: E731 - a stand-in perceptual net
    terms = cd.ComicDiffLoss(perc, 0.8, "l1", style_weight=2.0)(x, y)
    assert terms["style"] > 0
    assert torch.isclose(terms["loss"], terms["mse"] + 0.8 * terms["perceptual"] + 2.0 * terms["style"])
    assert cd.ComicDiffLoss(perc, 0.8, style_weight=2.0)(x, x)["style"] == 0
    assert "style" not in cd.ComicDiffLoss(perc, 0.8)(x, y)                  # off by default, as in the report
    from comicutils.metrics import edge_histogram_distance
    inked = cd.ComicDiffLoss(perc, 0.8, "l1", style_weight=2.0, edge_weight=4.0)(x, y)
    assert inked["edges"] == pytest.approx(edge_histogram_distance(x, y).mean().item(), rel=1e-5) and inked["edges"] > 0
    assert torch.isclose(inked["loss"], terms["loss"] + 4.0 * inked["edges"])
    assert "edges" not in terms
    from comicutils.metrics import palette_distance
    toned = cd.ComicDiffLoss(perc, 0.8, "l1", style_weight=2.0, edge_weight=4.0, palette_weight=3.0)(x, y)
    assert toned["palette"] == pytest.approx(palette_distance(x, y).mean().item(), rel=1e-5) and toned["palette"] > 0
    assert torch.isclose(toned["loss"], inked["loss"] + 3.0 * toned["palette"])
    assert "palette" not in inked
    from comicutils.metrics import flatness_distance
    painted = cd.ComicDiffLoss(perc, 0.8, "l1", palette_weight=3.0, flat_weight=2.0)(x, y)
    assert painted["flat"] == pytest.approx(flatness_distance(x).mean().item(), rel=1e-5) and painted["flat"] > 0
    assert torch.isclose(painted["loss"], terms["mse"] + 0.8 * terms["perceptual"] + 3.0 * painted["palette"]
                         + 2.0 * painted["flat"])


# --------------------------------------------------------------------------- inference
def test_translate_sizes_batches_and_determinism():
    m = tiny_model()
    m.add_lora(rank=2)
    for p in lora.lora_parameters(m.unet):
        p.data.normal_(0, 0.1)
    odd = torch.rand(2, 3, 37, 50, generator=torch.Generator().manual_seed(3))
    out = m.translate(odd)
    assert out.shape == odd.shape and out.min() >= 0 and out.max() <= 1
    assert torch.equal(out, m.translate(odd))                    # deterministic
    one = m.translate(odd[1])                                    # single image (3, H, W)
    assert one.shape == odd.shape[1:]
    assert torch.allclose(one, out[1], atol=1e-6)                # batch == per image
    assert torch.allclose(m.translate(odd, batch_size=1), out, atol=1e-6)
    tiny = m.translate(torch.rand(1, 3, 5, 9))
    assert tiny.shape == (1, 3, 5, 9)
    with pytest.raises(ValueError):
        m.translate(torch.rand(1, 4, 32, 32))


def test_merged_and_unmerged_adapters_agree():
    m, x = tiny_model(), images()
    m.add_lora(rank=4)
    for p in lora.lora_parameters(m.unet):
        p.data.normal_(0, 0.2)
    unmerged = m.translate(x)
    cd.merge(m.unet)
    merged = m.translate(x)
    cd.unmerge(m.unet)
    assert torch.allclose(merged, unmerged, atol=1e-5)
    assert torch.allclose(m.translate(x), unmerged, atol=1e-5)


def test_sd_vae_codec_reads_scaling_and_downscale_from_its_config():
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4,
                        scaling_factor=0.5)
    codec = cd.SDVAECodec(vae)
    assert codec.downscale_factor == 2 and codec.scaling_factor == 0.5
    x = images(1, 16)
    with torch.no_grad():
        z = codec.encode(x)
        mean = vae.encode(x * 2 - 1).latent_dist.mean
        assert torch.allclose(z, mean * 0.5)
        y = codec.decode(z)
    assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1
    with pytest.raises(ValueError, match="divisible"):
        codec.encode(images(1, 15))


def test_load_components_rejects_unknown_paths():
    with pytest.raises(ValueError, match="path must be"):
        cd.load_components("sd3")


def test_denoiser_round_trip_and_refusals(tmp_path):
    m, x = tiny_model(), images()
    folder = cd.save_denoiser(m.unet, tmp_path / "denoiser")
    back = cd.load_denoiser(folder)
    z = m.encode(x)
    t = torch.ones(2, dtype=torch.long)
    c = m.prompt_embeds.expand(2, -1, -1)
    want = m.unet.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in back.state_dict().items()) and len(want) == len(back.state_dict())
    with torch.no_grad():
        assert torch.allclose(back(z, t, c).sample, m.unet(z, t, c).sample, atol=1e-5)
    m.add_lora(rank=2)
    with pytest.raises(ValueError, match="before adding LoRA"):
        cd.save_denoiser(m.unet, tmp_path / "other")
    assert not (tmp_path / "other").exists()
    with pytest.raises(FileNotFoundError, match="no saved U-Net"):
        cd.load_denoiser(tmp_path)


def test_predict_clean_inverts_add_noise_for_a_perfect_predictor():
    z = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    for kind in ("epsilon", "v_prediction"):
        cfg = {**cd.OFFLINE_SCHEDULER_CONFIG, "prediction_type": kind}
        t = 300
        zt = cd.add_noise(z, t, cfg, seed=1)
        a = cd.train._alphas(cfg, torch.tensor([t]))[0]
        eps = (zt - a.sqrt() * z) / (1 - a).sqrt()
        target = eps if kind == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * z

        class Oracle(nn.Module):
            def forward(self, x, t, encoder_hidden_states=None):
                return type("Out", (), {"sample": target})()

        assert torch.allclose(cd.predict_clean(Oracle(), zt, t, torch.zeros(1, 1, 8), cfg), z, atol=1e-5)


def test_random_sd21_components_have_the_real_shapes():
    comp = cd.components.random_sd21_components("meta")
    assert comp.path == "sd21" and comp.prediction_type == "v_prediction"
    assert (comp.codec.latent_channels, comp.codec.downscale_factor, comp.codec.scaling_factor) == (4, 8, 0.18215)
    assert sum(p.numel() for p in comp.unet.parameters()) == 865_910_724
    assert comp.prompt_embeds.shape == (1, 77, 1024)


def test_the_palette_and_flat_options_reach_the_loss_and_the_history(mirror):
    ds, _, _ = fixed_batch()
    cfg = cd.TrainConfig(rank=2, lr=1e-3, batch_size=2, epochs=1, max_steps=1, mixed_precision="no",
                         lpips_weight=0.0, palette_weight=3.0, flat_weight=2.0)
    row = cd.train_lora(tiny_model(), ds, cfg, show_progress=False).history[0]     # the loss built from cfg
    assert row["palette"] > 0 and row["flat"] > 0
    assert row["loss"] == pytest.approx(row["mse"] + 3.0 * row["palette"] + 2.0 * row["flat"], rel=1e-5)
    plain = cd.train_lora(tiny_model(), ds, cd.TrainConfig(rank=2, epochs=1, max_steps=1, mixed_precision="no"),
                          loss_fn=mse_only(), show_progress=False).history[0]
    assert "palette" not in plain and "flat" not in plain


def test_training_on_a_frozen_loaded_adapter_warm_starts_and_unfreezes_only_lora(monkeypatch):
    ds, _, _ = fixed_batch()
    cfg = cd.TrainConfig(rank=2, lr=1e-3, batch_size=2, epochs=10, max_steps=2, mixed_precision="no")
    model = tiny_model()
    cd.train_lora(model, ds, cfg, loss_fn=mse_only(), show_progress=False)
    model.requires_grad_(False)                        # as load_translator leaves an adapter
    before = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    cd.train_lora(model, ds, cfg, loss_fn=mse_only(), show_progress=False)
    after = dict(model.unet.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before if "lora_" in n)
    assert all(torch.equal(before[n], after[n]) for n in before if "lora_" not in n)
    assert all(p.requires_grad == ("lora_" in n) for n, p in after.items())
    monkeypatch.setattr(lora, "lora_parameters", lambda unet: [])      # LoRA lost on the way: refused
    with pytest.raises(RuntimeError, match="no LoRA"):
        cd.train_lora(tiny_model(), ds, cfg, loss_fn=mse_only(), show_progress=False)

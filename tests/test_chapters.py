"""Cross-chapter hand-overs (comicutils.chapters): an earlier chapter's result at the right size
is used as it is; a missing or mismatched one, or any smoke run, trains a quick one and says so
in a notice (never an orange substitute banner of its own). Tiny sizes, one or two steps."""
from __future__ import annotations

import pytest
import torch
from test_comicdiff import TinyCodec  # a fixed random /4 autoencoder standing in for SD 2.1's VAE

from comicutils import chapters, data, pix2pix, runtime
from comicutils import comicdiff as cd
from comicutils.comicdiff import components as cd_components
from comicutils.comicdiff import lora

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 32
TINY_OFFLINE_UNET = {      # the offline path's layout (32 taef2 channels), a few thousand parameters
    "sample_size": 4, "in_channels": 32, "out_channels": 32,
    "down_block_types": ["CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [16, 32], "layers_per_block": 1, "attention_head_dim": 4,
    "cross_attention_dim": 8, "norm_num_groups": 8,
}
TINY_SD_UNET = {**TINY_OFFLINE_UNET, "in_channels": 4, "out_channels": 4}
QUICK = dict(quick_steps=1, pretrain_steps=1, pretrain_batch=2, unet_config=TINY_OFFLINE_UNET)


def tiny_pairs(n: int = 4, size: int = SIZE) -> data.PairSet:
    g = torch.Generator().manual_seed(0)
    return data.PairSet([f"p{i}" for i in range(n)], torch.rand(n, 3, size, size, generator=g),
                        torch.rand(n, 3, size, size, generator=g))


def fake_sd21(**kwargs) -> cd.Components:
    """What ``load_sd21`` returns, in miniature (same seed, same U-Net every call)."""
    return cd.Components("sd21", TinyCodec(), cd.build_unet(TINY_SD_UNET, seed=3),
                         cd.fixed_prompt_embedding(8, tokens=3), dict(cd.SD21_SCHEDULER_CONFIG),
                         {"unet": "tiny stand-in for SD 2.1"})


def no_sd21(**kwargs):
    raise cd.SD21Unavailable("not in the Hugging Face cache")


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """An empty runs root (COMICUTILS_RUNS), auto mode, and SD 2.1 absent unless a test says so."""
    monkeypatch.setenv("COMICUTILS_RUNS", str(tmp_path))
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    monkeypatch.setattr(cd_components, "load_sd21", no_sd21)
    return tmp_path


def forbid(monkeypatch, *names):
    for name in names:
        def fail(*a, _name=name, **k):
            raise AssertionError(f"{_name} should not run when the chapter's result is found")
        monkeypatch.setattr(cd, name, fail)


# --------------------------------------------------------------------------- chapter 02
def write_pix2pix(folder, name: str, size: int):
    G = pix2pix.build_generator("unet", size=size, ngf=4)
    return pix2pix.save_generator(G, folder / "02" / f"{name}.pt")


def test_pix2pix_checkpoints_of_chapter_02_at_this_size_are_used(runs, capsys):
    write_pix2pix(runs, "U-Net", SIZE)
    write_pix2pix(runs, "U-Res9", SIZE * 2)                      # another size: not offered
    got = chapters.pix2pix_from_chapter_02(SIZE, tiny_pairs(), quick_steps=1, quick_ngf=4)
    assert not got.trained_here and list(got.stylizers) == ["pix2pix U-Net"]
    assert [p.name for p in got.checkpoints] == ["U-Net.pt"]
    assert "checkpoint U-Net.pt" in got.stylizers["pix2pix U-Net"].weights
    assert got.stylizers["pix2pix U-Net"](torch.rand(1, 3, 40, 40)).shape == (1, 3, 40, 40)
    assert "NOTE" not in capsys.readouterr().out


def test_pix2pix_of_another_size_is_not_used_a_quick_unet_is_trained(runs, capsys):
    write_pix2pix(runs, "U-Net", SIZE * 2)
    got = chapters.pix2pix_from_chapter_02(SIZE, tiny_pairs(), quick_steps=1, quick_ngf=4)
    out = capsys.readouterr().out
    assert got.trained_here and list(got.stylizers) == ["pix2pix U-Net"] and got.checkpoints == []
    assert "NOTE" in out and str(runs / "02") in out and "U-Net.pt (64 px)" in out
    assert "trained for 1 steps at 32 px" in out and "SUBSTITUTE" not in out
    s = got.stylizers["pix2pix U-Net"]
    assert "trained here (1 steps)" in s.weights and s.size == SIZE


def test_pix2pix_in_smoke_mode_always_trains(runs, monkeypatch, capsys):
    write_pix2pix(runs / "smoke", "U-Net", SIZE)
    write_pix2pix(runs, "U-Net", SIZE)
    monkeypatch.setenv("COMICUTILS_MODE", "smoke")
    got = chapters.pix2pix_from_chapter_02(SIZE, tiny_pairs(), quick_steps=1, quick_ngf=4)
    assert got.trained_here and "smoke mode never reuses" in capsys.readouterr().out


def test_quick_training_pairs_must_have_the_size_asked_for(runs):
    with pytest.raises(ValueError, match="expected 32 x 32"):
        chapters.pix2pix_from_chapter_02(SIZE, tiny_pairs(size=16), quick_steps=1)


# --------------------------------------------------------------------------- chapter 04
@pytest.fixture(scope="module")
def quick_offline(tmp_path_factory):
    """A quick offline ComicDiff, trained once for this module (smoke mode, SD 2.1 absent)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COMICUTILS_CACHE", str(tmp_path_factory.mktemp("cache")))
        mp.setenv("COMICUTILS_OFFLINE", "1")
        mp.setenv("COMICUTILS_MODE", "smoke")
        mp.setattr(cd_components, "load_sd21", no_sd21)
        return chapters.comicdiff_from_chapter_04(SIZE, tiny_pairs(), **QUICK)


def write_chapter_04(folder, result: chapters.ComicDiffResult, *, denoiser: bool = True):
    """Lay out a chapter-04 run folder from ``result``: rank-8 adapter (+ the denoiser)."""
    if denoiser:
        cd.save_denoiser(result.base_components().unet, folder / "04" / "denoiser")
    result.model.save_adapter(folder / "04" / "lora-r8" / "adapter", result.model.info)


def test_a_quick_comicdiff_is_trained_in_smoke_mode_on_the_offline_path(quick_offline):
    got = quick_offline
    assert got.trained_here and got.path == "offline" and got.adapter is None and got.steps == 1
    assert got.model.info["size"] == [SIZE, SIZE] and got.model.info["rank"] == 8
    assert lora.has_lora(got.model.unet) and not lora.has_lora(got.base_components().unet)
    assert got.base_components().unet is not got.model.unet
    out = got.model.translate(torch.rand(2, 3, SIZE, SIZE))
    assert out.shape == (2, 3, SIZE, SIZE) and 0 <= out.min() and out.max() <= 1
    assert got.stylizer().settings["size"] == SIZE and "trained here" in got.stylizer().weights


def test_comicdiff_of_chapter_04_at_this_size_is_used_with_its_denoiser(runs, quick_offline, monkeypatch, capsys):
    write_chapter_04(runs, quick_offline)
    forbid(monkeypatch, "train_lora", "pretrain_denoiser")
    got = chapters.comicdiff_from_chapter_04(SIZE, tiny_pairs(), **QUICK)
    assert not got.trained_here and got.path == "offline"
    assert got.adapter == runs / "04" / "lora-r8" / "adapter" and got.denoiser == runs / "04" / "denoiser"
    assert "chapter 04" in capsys.readouterr().out
    x = torch.rand(2, 3, SIZE, SIZE)
    assert torch.allclose(got.model.translate(x), quick_offline.model.translate(x), atol=1e-5)
    base = got.base_components()
    assert not lora.has_lora(base.unet) and base.unet is not got.model.unet
    assert any(s.wanted.startswith("Stable Diffusion 2.1") for s in runtime.substitutes_in_use())


@pytest.mark.parametrize("problem", ["size", "denoiser", "other denoiser", "nothing"])
def test_comicdiff_missing_or_mismatched_trains_a_quick_one(runs, quick_offline, problem, capsys):
    if problem == "size":
        write_chapter_04(runs, quick_offline)
        got = chapters.comicdiff_from_chapter_04(SIZE * 2, tiny_pairs(size=SIZE * 2), **QUICK)
        why = "trained at 32 px, not 64 px"
    elif problem == "denoiser":
        write_chapter_04(runs, quick_offline, denoiser=False)
        got = chapters.comicdiff_from_chapter_04(SIZE, tiny_pairs(), **QUICK)
        why = "denoiser"
    elif problem == "other denoiser":                            # a U-Net the adapter does not fit
        write_chapter_04(runs, quick_offline, denoiser=False)
        other = cd.build_unet({**TINY_OFFLINE_UNET, "block_out_channels": [8, 16], "norm_num_groups": 4})
        cd.save_denoiser(other, runs / "04" / "denoiser")
        got = chapters.comicdiff_from_chapter_04(SIZE, tiny_pairs(), **QUICK)
        why = "cannot be loaded with the denoiser beside it (ProvenanceMismatch: adapter"
    else:
        got = chapters.comicdiff_from_chapter_04(SIZE, tiny_pairs(), **QUICK)
        why = "no rank-8 adapter there"
    out = capsys.readouterr().out
    assert got.trained_here and got.path == "offline"
    assert "NOTE" in out and why in out and str(runs / "04") in out and "quick" in out


def test_comicdiff_in_smoke_mode_never_reuses_chapter_04(runs, quick_offline, monkeypatch, capsys):
    write_chapter_04(runs / "smoke", quick_offline)
    write_chapter_04(runs, quick_offline)
    monkeypatch.setenv("COMICUTILS_MODE", "smoke")
    got = chapters.comicdiff_from_chapter_04(SIZE, tiny_pairs(), **QUICK)
    assert got.trained_here and "smoke mode never reuses" in capsys.readouterr().out


def test_a_quick_comicdiff_takes_sd21_when_it_is_cached(runs, monkeypatch):
    monkeypatch.setattr(cd_components, "load_sd21", fake_sd21)
    forbid(monkeypatch, "pretrain_denoiser")                    # SD 2.1's U-Net comes pretrained
    got = chapters.comicdiff_from_chapter_04(SIZE, tiny_pairs(), **QUICK)
    assert got.trained_here and got.path == "sd21" and got.model.info["path"] == "sd21"
    assert not lora.has_lora(got.base_components().unet)


def test_an_sd21_adapter_of_chapter_04_is_used_when_sd21_loads(runs, monkeypatch):
    monkeypatch.setattr(cd_components, "load_sd21", fake_sd21)
    model = cd.ComicDiff(fake_sd21())
    cd.train_lora(model, cd.encode_pairs(model.codec, tiny_pairs(), show_progress=False),
                  cd.TrainConfig(max_steps=1, lpips_weight=0.0), out_dir=runs / "04" / "lora-r8")
    assert cd.read_adapter_info(runs / "04" / "lora-r8" / "adapter")["path"] == "sd21"
    forbid(monkeypatch, "train_lora")
    got = chapters.comicdiff_from_chapter_04(SIZE, tiny_pairs(), **QUICK)
    assert not got.trained_here and got.path == "sd21" and got.denoiser is None
    x = torch.rand(1, 3, SIZE, SIZE)
    assert torch.allclose(got.model.translate(x), model.translate(x), atol=1e-5)
    assert not lora.has_lora(got.base_components().unet)


def test_an_sd21_adapter_without_sd21_here_trains_a_quick_offline_one(runs, monkeypatch, capsys):
    monkeypatch.setattr(cd_components, "load_sd21", fake_sd21)
    model = cd.ComicDiff(fake_sd21())
    cd.train_lora(model, cd.encode_pairs(model.codec, tiny_pairs(), show_progress=False),
                  cd.TrainConfig(max_steps=1, lpips_weight=0.0), out_dir=runs / "04" / "lora-r8")
    monkeypatch.setattr(cd_components, "load_sd21", no_sd21)
    got = chapters.comicdiff_from_chapter_04(SIZE, tiny_pairs(), **QUICK)
    assert got.trained_here and got.path == "offline"
    assert "Stable Diffusion 2.1, which cannot be loaded here" in capsys.readouterr().out


# --------------------------------------------------------------------------- chapter 03
SG_SIZE = 16
SG_QUICK = dict(quick_steps=1, width=8, style_dim=8)


def write_chapter_03(folder, size: int = SG_SIZE, seed: int = 5):
    from comicutils import stylegan as sg

    torch.manual_seed(seed)
    G = sg.Generator(sg.micro_config(size, width=8, style_dim=8, n_mlp=2))
    G.update_w_avg(64)
    sg.save_checkpoint(G, folder / "03" / "photo_generator.pt", mode="auto")
    return G.eval()


def test_stylegan_of_chapter_03_at_this_size_is_used(runs, monkeypatch, capsys):
    from comicutils import stylegan as sg

    G = write_chapter_03(runs)
    monkeypatch.setattr(sg, "fit_reconstruction", lambda *a, **k: pytest.fail("must not train"))
    got = chapters.stylegan_from_chapter_03(SG_SIZE, **SG_QUICK)
    out = capsys.readouterr().out
    assert not got.trained_here and got.path == runs / "03" / "photo_generator.pt" and got.looked_in == runs / "03"
    assert "chapter 03" in out and "NOTE" not in out and "PosixPath" not in out
    w = G.mapping(G.sample_z(2, seed=1))
    assert torch.equal(got.generator.synthesis(G.to_wplus(w)), G.synthesis(G.to_wplus(w)))
    assert not any(p.requires_grad for p in got.generator.parameters()) and not got.generator.training


@pytest.mark.parametrize("problem", ["nothing", "size", "corrupt", "foreign"])
def test_stylegan_missing_mismatched_or_unreadable_trains_a_quick_one(runs, problem, capsys):
    folder = runs / "03"
    if problem == "size":
        write_chapter_03(runs, size=SG_SIZE * 2)
        why = "a 32 px generator, not 16 px"
    elif problem in ("corrupt", "foreign"):
        folder.mkdir(parents=True)
        if problem == "corrupt":
            (folder / "photo_generator.pt").write_bytes(b"PK\x03\x04 not a whole zip file")
        else:
            torch.save({"something": torch.zeros(2)}, folder / "photo_generator.pt")
        why = "photo_generator.pt there cannot be read as a StyleGAN2 generator ("
    else:
        why = "no photo_generator.pt there"
    got = chapters.stylegan_from_chapter_03(SG_SIZE, **SG_QUICK)
    out = capsys.readouterr().out
    assert got.trained_here and got.path is None and got.steps == 1 and got.generator.size == SG_SIZE
    assert "NOTE" in out and why in out and str(folder) in out and "SUBSTITUTE" not in out
    assert "Traceback" not in out and "warm-started by regression for 1 steps" in out
    (note,) = [line for line in out.splitlines() if line.startswith("NOTE")]      # one line, no traceback
    reason = note.split("Why: ", 1)[1].split(". Instead:", 1)[0]
    assert why in reason and len(reason) < 260, reason
    assert got.generator.style_dim == 8 and not got.generator.training
    assert "warm-started here for 1 regression steps" in got.describe()


def test_stylegan_in_smoke_mode_always_trains(runs, monkeypatch, capsys):
    write_chapter_03(runs / "smoke")
    write_chapter_03(runs)
    monkeypatch.setenv("COMICUTILS_MODE", "smoke")
    got = chapters.stylegan_from_chapter_03(SG_SIZE, **SG_QUICK)
    assert got.trained_here and "smoke mode never reuses" in capsys.readouterr().out

import io

import pytest
import torch

from comicutils import animegan, assets, stylizers


def test_generator_shapes_and_range():
    g = animegan.AnimeGANv2Generator().eval()
    with torch.no_grad():
        y = g(torch.rand(2, 3, 64, 48) * 2 - 1)
    assert y.shape == (2, 3, 64, 48) and -1 <= y.min() and y.max() <= 1


def test_architecture_matches_the_published_weight_file():
    """Our state dict, saved by torch, is the size of face_paint_512_v2.pt (to 0.1 %):
    the same tensors in the same layout (2,143,552 parameters, 77 entries)."""
    g = animegan.AnimeGANv2Generator()
    buf = io.BytesIO()
    torch.save(g.state_dict(), buf)
    published = assets.get_asset(animegan.ASSET).size
    assert abs(buf.tell() - published) / published < 1e-3
    assert sum(p.numel() for p in g.parameters()) == 2_143_552


def test_weights_load_strictly_from_a_file_in_the_registry_layout(tmp_path, monkeypatch):
    g = animegan.AnimeGANv2Generator()
    path = tmp_path / "face_paint_512_v2.pt"
    torch.save(g.state_dict(), path)
    monkeypatch.setattr(animegan.assets, "fetch", lambda name, **k: path)
    loaded = animegan.load_generator("cpu")
    assert all(torch.equal(a, b) for a, b in zip(g.state_dict().values(), loaded.state_dict().values()))
    x = torch.rand(1, 3, 40, 60)
    y = animegan.face2paint(loaded, x, size=64)
    assert y.shape == x.shape and 0 <= y.min() and y.max() <= 1
    assert torch.equal(y[..., :, :10], x[..., :, :10])     # outside the centre square: untouched


def test_offline_it_is_skipped_with_a_banner_and_full_mode_raises(monkeypatch, capsys):
    monkeypatch.setenv("COMICUTILS_MIRROR", "")
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    with pytest.raises(stylizers.MethodUnavailable, match="skipped"):
        stylizers.build("animegan")
    assert "AnimeGANv2" in capsys.readouterr().out
    monkeypatch.setenv("COMICUTILS_MODE", "full")
    with pytest.raises(assets.AssetUnavailable, match="face_paint_512_v2"):
        animegan.load_generator()

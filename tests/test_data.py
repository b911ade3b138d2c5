import random

import pytest
import torch
from PIL import Image

from comicutils import data
from comicutils.images import ImageError


def _synthetic_grid(rows=4, cols=4, tile=8):
    """Tile (r, c) has value (r * cols + c) / 100 so pairing can be checked exactly."""
    g = torch.zeros(1, 3, rows * tile, cols * tile)
    for r in range(rows):
        for c in range(cols):
            g[..., r * tile:(r + 1) * tile, c * tile:(c + 1) * tile] = (r * cols + c) / 100
    return g


def test_slice_grid_shapes_and_tile_positions():
    tiles = data.slice_grid(_synthetic_grid(), rows=4, cols=4)
    assert tiles.shape == (4, 4, 3, 8, 8)
    assert tiles[2, 3].unique().item() == pytest.approx((2 * 4 + 3) / 100)


def test_grid_pairs_pair_r_c_with_r_c_plus_half():
    pairs = data.grid_pairs(_synthetic_grid(), prefix="t", rows=4, cols=4)
    assert len(pairs) == 8 and pairs.keys[:3] == ["t_r0c0", "t_r0c1", "t_r1c0"]
    for i, key in enumerate(pairs.keys):
        r, c = data.grid_position(key)
        assert pairs.photos[i].unique().item() == pytest.approx((r * 4 + c) / 100)
        assert pairs.comics[i].unique().item() == pytest.approx((r * 4 + c + 2) / 100)


def test_grid_that_does_not_divide_is_an_error():
    with pytest.raises(ImageError, match="does not divide"):
        data.slice_grid(torch.zeros(1, 3, 30, 32), rows=4, cols=4)
    with pytest.raises(ImageError, match="even number"):
        data.grid_pairs(torch.zeros(1, 3, 30, 30), prefix="x", rows=3, cols=3)


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_real_face2comics_grids_give_50_pairs(mirror, version):
    pairs = data.face2comics_pairs(version, size=32)
    assert len(pairs) == 50 and pairs.photos.shape == (50, 3, 32, 32)
    assert 0 <= pairs.photos.min() and pairs.comics.max() <= 1
    # A comic is a stylised copy of its own photo: by grey-level correlation it matches its
    # own photo far more often than chance (1/50). v1 keeps the tones (~98 %); v2 repaints
    # hair and background (~50 %).
    def unit(x):
        g = x.mean(1).flatten(1)
        g = g - g.mean(1, keepdim=True)
        return g / g.norm(dim=1, keepdim=True)

    hits = ((unit(pairs.comics) @ unit(pairs.photos).T).argmax(1) == torch.arange(50))
    assert hits.float().mean() > 0.4


def test_unknown_version_is_an_error():
    with pytest.raises(ValueError, match="v1"):
        data.face2comics_pairs("v3")


def test_split_is_deterministic_disjoint_and_order_free():
    keys = [f"k{i}" for i in range(50)]
    train, test = data.split_keys(keys, 0.2, seed=0)
    assert len(test) == 10 and len(train) == 40
    assert not set(train) & set(test) and set(train) | set(test) == set(keys)
    shuffled = keys[:]
    random.Random(1).shuffle(shuffled)
    assert data.split_keys(shuffled, 0.2, seed=0) == (train, test)
    assert data.split_keys(keys, 0.2, seed=1)[1] != test


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1])
def test_split_rejects_bad_fractions(bad):
    with pytest.raises(ValueError):
        data.split_keys(["a", "b", "c"], bad)


def test_split_needs_unique_keys_and_two_items():
    with pytest.raises(ValueError, match="unique"):
        data.split_keys(["a", "a", "b"])
    with pytest.raises(ValueError, match="at least 2"):
        data.split_keys(["a"])
    assert data.split_keys(["a", "b"], 0.05)[1]  # at least one test item


def test_train_test_pairs_never_share_a_pair():
    pairs = data.grid_pairs(_synthetic_grid(10, 10), prefix="s")
    tr, te = data.train_test_pairs(pairs)
    assert len(tr) + len(te) == 50 and not set(tr.keys) & set(te.keys)
    i = pairs.keys.index(te.keys[0])
    assert torch.equal(te.photos[0], pairs.photos[i]) and torch.equal(te.comics[0], pairs.comics[i])


def test_joint_augment_keeps_pairs_aligned():
    """An identical photo and comic stay identical: geometry is shared, pixel for pixel."""
    torch.manual_seed(0)
    x = torch.rand(4, 3, 32, 32)
    aug = data.JointAugment(jitter_comic=True)
    p, c = aug(x, x.clone(), torch.Generator().manual_seed(3))
    assert torch.allclose(p, c) and not torch.allclose(p, x)
    assert p.shape == x.shape and 0 <= p.min() and p.max() <= 1


def test_joint_augment_is_reproducible_and_single_images_work():
    x, y = torch.rand(3, 16, 16), torch.rand(3, 16, 16)
    aug = data.JointAugment()
    a = aug(x, y, torch.Generator().manual_seed(5))
    b = aug(x, y, torch.Generator().manual_seed(5))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[0].shape == (3, 16, 16)


def test_joint_augment_identity_settings_change_nothing():
    x = torch.rand(2, 3, 16, 16)
    aug = data.JointAugment(flip_p=0, max_rotation=0, scale=(1, 1), brightness=0, contrast=0,
                            saturation=0, hue=0)
    p, c = aug(x, x)
    assert torch.allclose(p, x, atol=1e-5)


def test_flip_only_mirrors_both():
    x = torch.rand(1, 3, 8, 8)
    aug = data.JointAugment(flip_p=1, max_rotation=0, scale=(1, 1), brightness=0, contrast=0,
                            saturation=0, hue=0)
    p, c = aug(x, x * 0.5)
    assert torch.allclose(p, x.flip(-1), atol=1e-5) and torch.allclose(c, x.flip(-1) * 0.5, atol=1e-5)


def test_photo_only_jitter_leaves_comic_geometry_shared():
    x = torch.rand(1, 3, 16, 16)
    aug = data.JointAugment(flip_p=1, max_rotation=0, scale=(1, 1), brightness=0.5, jitter_comic=False)
    p, c = aug(x, x, torch.Generator().manual_seed(0))
    assert torch.allclose(c, x.flip(-1), atol=1e-5) and not torch.allclose(p, c)


def _write_pair_folders(tmp_path):
    photos, comics = tmp_path / "faces", tmp_path / "comics"
    photos.mkdir()
    comics.mkdir()
    for i, name in enumerate(["003", "001", "002"]):
        Image.new("RGB", (20, 20), (i * 40, 0, 0)).save(photos / f"{name}.jpg")
    for name in ["001", "002", "004"]:
        Image.new("RGB", (20, 20), (0, 0, 200)).save(comics / f"{name}.png")
    return photos, comics


def test_paired_folder_pairs_by_basename_and_reports_unpaired(tmp_path):
    photos, comics = _write_pair_folders(tmp_path)
    ds = data.PairedFolder(photos, comics, size=16)
    assert ds.keys == ["001", "002"] and len(ds) == 2
    assert ds.unpaired == {"photo_only": ["003"], "comic_only": ["004"]}
    item = ds[0]
    assert item["key"] == "001" and item["photo"].shape == (3, 16, 16)
    assert ds.subset(["002"]).keys == ["002"]
    assert ds.to_pairset().photos.shape == (2, 3, 16, 16)


def test_paired_folder_check_lists_unpaired_and_unreadable_files_before_training(tmp_path, capsys):
    photos, comics = _write_pair_folders(tmp_path)
    good = data.PairedFolder(photos, comics, size=16).subset(["001", "002"])
    good.unpaired = {"photo_only": [], "comic_only": []}
    assert good.check(show_progress=False).ok
    (comics / "002.png").write_bytes((comics / "002.png").read_bytes()[:40])     # truncated
    ds = data.PairedFolder(photos, comics, size=16)
    with pytest.raises(data.DataFolderError) as err:
        ds.check(show_progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "002.png" in msg and "003" in msg and "004" in msg and "--skip-bad" in msg
    assert ds.keys == ["001", "002"]                                   # nothing dropped without asking
    report = ds.check(skip_bad=True, show_progress=False)
    assert ds.keys == ["001"] and report.pairs == 1 and len(report.problems) == 3
    assert "002.png" in capsys.readouterr().out                       # what was skipped is listed
    (photos / "001.jpg").write_bytes(b"not an image")
    with pytest.raises(data.DataFolderError, match="no readable pairs left"):
        data.PairedFolder(photos, comics, size=16).check(skip_bad=True, show_progress=False)


def test_decompression_bomb_is_a_clear_image_error(tmp_path, monkeypatch):
    from PIL import Image as PILImage
    from comicutils import images

    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 100)          # as if the file had 182 MP
    with pytest.raises(images.ImageError, match="too large to open safely"):
        images.load_image(tmp_path / "big.png")


def test_paired_folder_without_pairs_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    with pytest.raises(ValueError, match="no photo/comic pairs"):
        data.PairedFolder(tmp_path / "a", tmp_path / "b")
    with pytest.raises(FileNotFoundError):
        data.PairedFolder(tmp_path / "a", tmp_path / "missing")


def test_pair_dataset_items_and_seeded_augmentation():
    pairs = data.grid_pairs(_synthetic_grid(), prefix="s", rows=4, cols=4)
    ds = data.PairDataset(pairs, data.JointAugment(), seed=7)
    a, b = ds[1], ds[1]
    assert a["key"] == "s_r0c1" and torch.equal(a["photo"], b["photo"])
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=4)))
    assert batch["photo"].shape == (4, 3, 8, 8) and len(batch["key"]) == 4


def test_extract_tar_is_atomic_and_refuses_escaping_paths(tmp_path):
    import io
    import tarfile

    good = tmp_path / "good.tar"
    with tarfile.open(good, "w") as tar:
        info = tarfile.TarInfo("faces/001.jpg")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"abc"))
    out = data.extract_tar(good, tmp_path / "out")
    assert (out / "faces" / "001.jpg").read_bytes() == b"abc"
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tar:
        info = tarfile.TarInfo("../escape.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(ValueError, match="unsafe"):
        data.extract_tar(evil, tmp_path / "out2")
    assert not (tmp_path / "out2").exists() and not (tmp_path / "escape.txt").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_portraits_and_astronaut(mirror):
    names, t = data.portraits(size=32, names=["portrait-001", "portrait-030"])
    assert names == ["portrait-001", "portrait-030"] and t.shape == (2, 3, 32, 32)
    a = data.astronaut(48)
    assert a.shape == (1, 3, 48, 48) and 0 <= a.min() and a.max() <= 1


def test_grid_position_parses_keys_and_rejects_others():
    assert data.grid_position("v2_r9c4") == (9, 4)
    with pytest.raises(ValueError, match="not a grid pair key"):
        data.grid_position("portrait-001")


def test_build_face_dataset_writes_crops_and_reports_skips(portrait_paths, tmp_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (200, 200), (128, 128, 128)).save(blank)
    out = tmp_path / "faces"
    report = data.build_face_dataset([portrait_paths[0], blank], out, min_side=64, out_size=96)
    assert report.kept == ["001"] and report.skipped == {"blank": "no face"}
    files = sorted(p.name for p in out.iterdir())
    assert files == ["001.png"]
    from comicutils.images import load_tensor
    assert load_tensor(out / "001.png").shape == (1, 3, 96, 96)
    with pytest.raises(FileExistsError):
        data.build_face_dataset([portrait_paths[0]], out)


def test_build_face_dataset_leaves_nothing_after_a_failure(portrait_paths, tmp_path, monkeypatch):
    import comicutils.images as images_mod

    def fail(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(images_mod, "save_image", fail)
    with pytest.raises(OSError):
        data.build_face_dataset([portrait_paths[0]], tmp_path / "faces", min_side=64, out_size=64)
    assert list(tmp_path.iterdir()) == []

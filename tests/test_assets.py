import hashlib
import io
import os
import urllib.error

import pytest

from comicutils import assets
from comicutils.cli import main as cli_main



def _fake_asset(monkeypatch, data: bytes, *, sha=None, name="fake-asset", size=None):
    a = assets.Asset(name, "https://example.invalid/fake.bin", hashlib.sha256(data).hexdigest() if sha is None else sha,
                     len(data) if size is None else size, "CC0", "test file", "fake/fake.bin", "fake")
    monkeypatch.setitem(assets.REGISTRY, name, a)
    return a


class _Resp(io.BytesIO):
    def __init__(self, data, fail_after=None):
        super().__init__(data)
        self.headers = {"Content-Length": str(len(data))}
        self.fail_after = fail_after
        self.sent = 0

    def read(self, n=-1):
        if self.fail_after is not None and self.sent >= self.fail_after:
            raise ConnectionResetError("connection reset mid-download")
        chunk = super().read(min(n, 1000) if n > 0 else 1000)
        self.sent += len(chunk)
        return chunk

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _cache_files():
    root = assets.cache_dir()
    return [p for p in root.rglob("*") if p.is_file()] if root.exists() else []


def test_registry_holds_every_mirrored_file_of_sources_md(mirror):
    sources = mirror / "SOURCES.md"              # the mirror (COMICUTILS_MIRROR) documents what it holds
    assert sources.is_file(), f"{sources} is missing"
    text = sources.read_text()
    mirrored = assets.list_assets(mirrored=True)
    assert len(mirrored) == 94          # 2 grids, 2 taef2 files, 30 + 60 portraits
    for a in mirrored:
        assert a.sha256 in text, a.name
        assert a.url.split("/")[-1].replace("%20", " ") in text or a.filename in text
    for a in assets.REGISTRY.values():
        assert a.url.startswith("https://") and a.license and a.description


def test_registry_covers_the_full_mode_downloads():
    names = set(assets.REGISTRY)
    for needed in ["vgg16-imagenet", "vgg19-imagenet", "resnet50-imagenet", "alexnet-imagenet",
                   "fid-inception", "animeganv2-face-paint-512-v2", "stylegan2-ffhq-config-f",
                   "sd21-unet-fp16", "sd21-vae", "sd21-text-encoder", "face2comics-v2-faces",
                   "face2comics-v2-comics", "face2comics-v1"]:
        assert needed in names
    tv = assets.get_asset("vgg16-imagenet")
    assert tv.sha256.startswith("397923af")  # torchvision's file-name hash prefix


def test_fetch_uses_the_mirror_and_verifies(mirror):
    path = assets.fetch("taef2-encoder")
    assert path.is_file() and mirror in path.parents
    assert assets.sha256_of(path) == assets.get_asset("taef2-encoder").sha256
    assert _cache_files() == []  # mirror files are used in place, not copied


def test_verify_passes_for_every_mirrored_asset(mirror):
    results = assets.verify()
    by_status = {}
    for r in results:
        by_status.setdefault(r.status, []).append(r.name)
    assert not [r for r in results if r.failed], [r for r in results if r.failed]
    assert set(by_status["ok"]) >= {a.name for a in assets.list_assets(mirrored=True)}


def test_offline_fetch_fails_clearly_and_leaves_nothing(monkeypatch):
    monkeypatch.setenv("COMICUTILS_MIRROR", "")
    monkeypatch.delenv("COMICUTILS_OFFLINE")

    def no_network(*a, **k):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(assets.urllib.request, "urlopen", no_network)
    with pytest.raises(assets.AssetUnavailable) as err:
        assets.fetch("taef2-encoder")
    msg = str(err.value)
    assert assets.get_asset("taef2-encoder").url in msg and "COMICUTILS_MIRROR" in msg
    assert _cache_files() == []


def test_cli_fetch_offline_exits_nonzero_with_message(monkeypatch, capsys):
    monkeypatch.setenv("COMICUTILS_MIRROR", "")
    assert cli_main(["assets", "fetch", "portrait-001"]) == 1
    err = capsys.readouterr().err
    assert "raw.githubusercontent.com/cjdowner/interfaces" in err and "COMICUTILS_MIRROR" in err
    assert _cache_files() == []


def test_download_goes_through_a_temp_file_and_lands_verified(monkeypatch):
    data = os.urandom(5000)
    _fake_asset(monkeypatch, data)
    monkeypatch.delenv("COMICUTILS_OFFLINE")
    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda *a, **k: _Resp(data))
    path = assets.fetch("fake-asset")
    assert path.read_bytes() == data and path == assets.cache_dir() / "fake/fake.bin"
    assert _cache_files() == [path]


def test_interrupted_download_leaves_nothing(monkeypatch):
    data = os.urandom(5000)
    _fake_asset(monkeypatch, data)
    monkeypatch.delenv("COMICUTILS_OFFLINE")
    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda *a, **k: _Resp(data, fail_after=2000))
    with pytest.raises(assets.AssetUnavailable, match="connection reset"):
        assets.fetch("fake-asset")
    assert _cache_files() == []


def test_wrong_checksum_download_is_rejected_and_leaves_nothing(monkeypatch):
    data = os.urandom(3000)
    _fake_asset(monkeypatch, data, sha="0" * 64)
    monkeypatch.delenv("COMICUTILS_OFFLINE")
    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda *a, **k: _Resp(data))
    with pytest.raises(assets.ChecksumMismatch, match="nothing was written"):
        assets.fetch("fake-asset")
    assert _cache_files() == []


def test_corrupt_cached_file_is_a_checksum_error(monkeypatch):
    _fake_asset(monkeypatch, b"good bytes")
    bad = assets.cache_dir() / "fake/fake.bin"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"bad bytes!")
    with pytest.raises(assets.ChecksumMismatch, match="expected sha256"):
        assets.fetch("fake-asset")
    [r] = assets.verify(["fake-asset"])
    assert r.status == "mismatch" and r.failed


def test_corrupt_mirror_copy_is_refused(monkeypatch, tmp_path):
    _fake_asset(monkeypatch, b"good bytes")
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "fake.bin").write_bytes(b"tampered!!")
    monkeypatch.setenv("COMICUTILS_MIRROR", str(tmp_path))
    with pytest.raises(assets.ChecksumMismatch):
        assets.fetch("fake-asset")


def test_a_flat_mirror_folder_works_too(monkeypatch, tmp_path):
    data = b"flat mirror"
    _fake_asset(monkeypatch, data)
    (tmp_path / "fake.bin").write_bytes(data)
    monkeypatch.setenv("COMICUTILS_MIRROR", os.pathsep.join(["/nonexistent", str(tmp_path)]))
    assert assets.fetch("fake-asset") == tmp_path / "fake.bin"


def test_unpinned_asset_is_pinned_on_first_use(monkeypatch, tmp_path):
    a = _fake_asset(monkeypatch, b"v1 bytes", sha="")
    assert not a.pinned
    (tmp_path / "fake.bin").write_bytes(b"v1 bytes")
    monkeypatch.setenv("COMICUTILS_MIRROR", str(tmp_path))
    assets.fetch("fake-asset")
    assert assets._read_pins()["fake-asset"] == hashlib.sha256(b"v1 bytes").hexdigest()
    (tmp_path / "fake.bin").write_bytes(b"v2 bytes")
    os.utime(tmp_path / "fake.bin", ns=(1, 1))  # a different file state, whatever the clock
    with pytest.raises(assets.ChecksumMismatch):
        assets.fetch("fake-asset")


def test_unknown_asset_suggests_names():
    with pytest.raises(assets.UnknownAsset, match="taef2-encoder"):
        assets.get_asset("taef2-encodr")


def test_fetch_or_substitute(monkeypatch, capsys):
    monkeypatch.setenv("COMICUTILS_MIRROR", "")
    monkeypatch.setenv("COMICUTILS_MODE", "auto")
    assert assets.fetch_or_substitute("vgg19-imagenet", wanted="VGG-19", substitute="taef2") is None
    assert "SUBSTITUTE IN USE" in capsys.readouterr().out
    monkeypatch.setenv("COMICUTILS_MODE", "full")
    with pytest.raises(assets.AssetUnavailable, match="download.pytorch.org"):
        assets.fetch_or_substitute("vgg19-imagenet", wanted="VGG-19", substitute="taef2")


def test_fetch_group_links_files_into_one_folder(mirror):
    folder = assets.fetch_group("taesd")
    assert sorted(p.name for p in folder.iterdir()) == ["taef2_decoder.pth", "taef2_encoder.pth"]


def test_cli_list_and_verify(capsys, mirror):
    assert cli_main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    assert "face2comics-v2-preview" in out and "pinned on first use" in out
    assert cli_main(["assets", "verify"]) == 0
    assert "0 failed" in capsys.readouterr().out


# --------------------------------------------------------------------------- first sight of an unpinned asset
def _unpinned_asset(monkeypatch, filename: str, name: str = "fake-unpinned"):
    a = assets.Asset(name, f"https://example.invalid/{filename}", "", None, "CC0", "test file",
                     f"fake/{filename}", "fake")
    monkeypatch.setitem(assets.REGISTRY, name, a)
    return a


def _garbage(n: int = 4096) -> bytes:
    import random

    return random.Random(0).randbytes(n)


def _tar_bytes(mode: str = "w", members: int = 2) -> bytes:
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=mode) as tf:
        for i in range(members):
            data = _garbage(3000 + i)
            info = tarfile.TarInfo(f"faces/{i:03d}.jpg")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _real_file(kind: str) -> bytes:
    """A small genuine file of each checked format."""
    import json
    import zipfile

    import torch
    from PIL import Image

    buf = io.BytesIO()
    if kind == "tar":
        return _tar_bytes()
    if kind == "tar.gz":
        return _tar_bytes("w:gz")
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr("a.txt", "hello" * 100)
    elif kind == "pt":
        torch.save({"w": torch.arange(300.0)}, buf)
    elif kind == "pth":                                            # torch's legacy format
        torch.save({"w": torch.arange(300.0)}, buf, _use_new_zipfile_serialization=False)
    elif kind == "safetensors":
        from safetensors.torch import save

        return save({"w": torch.arange(300.0).reshape(30, 10)})
    elif kind in ("jpg", "png"):
        Image.new("RGB", (32, 32), (200, 40, 10)).save(buf, format="JPEG" if kind == "jpg" else "PNG")
    elif kind == "json":
        return json.dumps({"a": list(range(50))}).encode()
    return buf.getvalue()


CHECKED = ["tar", "tar.gz", "zip", "pt", "pth", "safetensors", "jpg", "png", "json"]
TRUNCATION_DETECTED = ["tar", "tar.gz", "zip", "pt", "safetensors", "jpg", "png", "json"]   # not legacy .pth


@pytest.mark.parametrize("kind", CHECKED)
def test_format_check_accepts_a_real_file_and_rejects_garbage(kind, tmp_path):
    a = assets.Asset("x", f"https://example.invalid/x.{kind}", "", None, "CC0", "t", f"x/x.{kind}", "x")
    good = tmp_path / "good"
    good.write_bytes(_real_file(kind))
    assert assets.check_format(a, good)
    for name, data in [("garbage", _garbage()), ("html", b"<!DOCTYPE html><html><body>Sign in</body></html>"),
                       ("empty", b"")] + ([("truncated", _real_file(kind)[: len(_real_file(kind)) // 2])]
                                          if kind in TRUNCATION_DETECTED else []):
        bad = tmp_path / name
        bad.write_bytes(data)
        with pytest.raises(assets.FormatMismatch) as err:
            assets.check_format(a, bad)
        msg = str(err.value)
        assert "\n" not in msg and "'x'" in msg and assets.expected_format(a) in msg and "not pinned" in msg, msg
    assert "HTML" in str(pytest.raises(assets.FormatMismatch, assets.check_format, a, tmp_path / "html").value)


def test_file_types_without_a_format_check_only_refuse_an_empty_file(tmp_path):
    for suffix in ("onnx", "bin"):
        a = assets.Asset("x", f"https://example.invalid/x.{suffix}", "", None, "CC0", "t", f"x/x.{suffix}", "x")
        assert assets.expected_format(a) is None
        (tmp_path / "f").write_bytes(_garbage())
        assert "not checked" in assets.check_format(a, tmp_path / "f")
        (tmp_path / "f").write_bytes(b"")
        with pytest.raises(assets.FormatMismatch, match="empty"):
            assets.check_format(a, tmp_path / "f")


def test_the_unpinned_registry_assets_are_format_checked():
    for a in assets.REGISTRY.values():
        if not a.pinned:
            assert assets.expected_format(a) == "tar archive", a.name


def test_random_bytes_for_an_unpinned_asset_are_refused_and_the_genuine_file_then_pins(monkeypatch, tmp_path):
    _unpinned_asset(monkeypatch, "faces.tar")
    mirror_file = tmp_path / "fake" / "faces.tar"
    mirror_file.parent.mkdir()
    mirror_file.write_bytes(_garbage())
    monkeypatch.setenv("COMICUTILS_MIRROR", str(tmp_path))
    with pytest.raises(assets.FormatMismatch, match="not a valid tar archive") as err:
        assets.fetch("fake-unpinned")
    assert "fake-unpinned" in str(err.value) and "\n" not in str(err.value)
    assert "fake-unpinned" not in assets._read_pins()
    [r] = assets.verify(["fake-unpinned"])
    assert r.status == "mismatch" and r.failed and "tar archive" in r.detail

    genuine = _tar_bytes()
    mirror_file.write_bytes(genuine)
    os.utime(mirror_file, ns=(1, 1))
    digest = hashlib.sha256(genuine).hexdigest()
    [r] = assets.verify(["fake-unpinned"])                       # first sight: reported, not pinned
    assert (r.status, r.failed, r.verified, r.sha256) == ("unpinned", False, False, digest)
    assert digest in r.detail and "2 members" in r.detail
    assert "fake-unpinned" not in assets._read_pins()
    assert assets.fetch("fake-unpinned") == mirror_file            # the use pins it
    assert assets._read_pins()["fake-unpinned"] == digest
    [r] = assets.verify(["fake-unpinned"])
    assert r.status == "ok" and r.verified and "pinned on first use" in r.detail


def test_downloaded_garbage_for_an_unpinned_asset_is_not_kept_or_pinned(monkeypatch):
    _unpinned_asset(monkeypatch, "faces.tar")
    monkeypatch.delenv("COMICUTILS_OFFLINE")
    monkeypatch.setenv("COMICUTILS_MIRROR", "")
    page = b"<!DOCTYPE html><html><body>rate limited</body></html>"
    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda *a, **k: _Resp(page))
    with pytest.raises(assets.FormatMismatch, match="nothing was written to the cache or pinned") as err:
        assets.fetch("fake-unpinned")
    assert "HTML" in str(err.value)
    assert _cache_files() == [] and "fake-unpinned" not in assets._read_pins()
    genuine = _tar_bytes()
    monkeypatch.setattr(assets.urllib.request, "urlopen", lambda *a, **k: _Resp(genuine))
    path = assets.fetch("fake-unpinned")
    assert path.read_bytes() == genuine
    assert assets._read_pins()["fake-unpinned"] == hashlib.sha256(genuine).hexdigest()

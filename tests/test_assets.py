import hashlib
import io
import os
import urllib.error
from pathlib import Path

import pytest

from comicutils import assets
from comicutils.cli import main as cli_main

SOURCES = Path(__file__).resolve().parents[2] / "shared" / "assets" / "SOURCES.md"


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


def test_registry_holds_every_mirrored_file_of_sources_md():
    if not SOURCES.is_file():
        pytest.skip("shared/assets/SOURCES.md not beside the checkout")
    text = SOURCES.read_text()
    mirrored = assets.list_assets(mirrored=True)
    assert len(mirrored) == 34
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

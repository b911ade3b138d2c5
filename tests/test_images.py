import io

import numpy as np
import pytest
import torch
from PIL import Image

from comicutils import images
from comicutils.images import ImageError


def _gradient(w=40, h=30):
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([np.broadcast_to(x, (h, w, 1)), np.broadcast_to(y, (h, w, 1)),
                          np.full((h, w, 1), 128, np.float32)], axis=2)
    return Image.fromarray(rgb.astype(np.uint8))


@pytest.mark.parametrize("mode", ["1", "L", "LA", "P", "RGBA", "CMYK", "I;16", "I", "F", "YCbCr"])
def test_every_mode_becomes_rgb(mode, tmp_path):
    img = _gradient()
    src = img.convert("L").convert(mode) if mode in {"I;16", "I", "F"} else img.convert(mode)
    fmt = {"CMYK": "JPEG", "YCbCr": "JPEG"}.get(mode, "PNG" if mode not in {"F", "I"} else "TIFF")
    path = tmp_path / f"x.{fmt.lower()}"
    src.save(path, format=fmt)
    out = images.load_image(path)
    assert out.mode == "RGB" and out.size == img.size


def test_sixteen_bit_is_scaled_not_clipped():
    arr = np.full((20, 20), 65535, np.uint16)
    arr[:, :10] = 32768
    out = np.asarray(images.load_image(_as_i16(arr)))
    assert out[0, 0, 0] == 128 and out[0, 15, 0] == 255


def test_transparency_is_composited_on_white():
    rgba = Image.new("RGBA", (20, 20), (255, 0, 0, 0))
    assert np.asarray(images.load_image(rgba))[0, 0].tolist() == [255, 255, 255]


def test_exif_orientation_is_applied():
    img = _gradient(40, 20)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    out = images.load_image(buf.getvalue())
    assert out.size == (20, 40)


def test_non_image_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("this is not a JPEG")
    with pytest.raises(ImageError, match="not a readable image"):
        images.load_image(bad)
    trunc = tmp_path / "truncated.png"
    buf = io.BytesIO()
    _gradient().save(buf, format="PNG")
    trunc.write_bytes(buf.getvalue()[:60])
    with pytest.raises(ImageError):
        images.load_image(trunc)
    with pytest.raises(ImageError, match="no such image file"):
        images.load_image(tmp_path / "missing.png")


def test_tiny_image_is_rejected():
    with pytest.raises(ImageError, match="at least 16 px"):
        images.load_image(Image.new("RGB", (8, 64)))
    assert images.load_image(Image.new("RGB", (8, 64)), min_size=8).size == (8, 64)


@pytest.mark.parametrize("arr,msg", [
    (np.zeros((4, 4, 4, 4)), "not an image"),
    (np.full((20, 20, 3), 2.0), "expected \\[0, 1\\]"),
    (np.full((20, 20, 3), np.nan), "NaN"),
    (np.zeros((20, 20, 3), np.int64), "dtype"),
])
def test_bad_arrays_are_rejected(arr, msg):
    with pytest.raises(ImageError, match=msg):
        images.load_image(arr)


def test_to_tensor_is_nchw_float_in_unit_range():
    t = images.to_tensor([_gradient(), _gradient()])
    assert t.shape == (2, 3, 30, 40) and t.dtype == torch.float32
    assert 0 <= t.min() and t.max() <= 1 and t.max() == 1.0
    with pytest.raises(ImageError, match="differ in size"):
        images.to_tensor([_gradient(40, 30), _gradient(30, 40)])


def test_check_image_tensor_names_the_range_bug():
    x = torch.rand(1, 3, 8, 8)
    assert images.check_image_tensor(x) is x
    with pytest.raises(ImageError, match=r"\[-1, 1\]"):
        images.check_image_tensor(x * 2 - 1)
    with pytest.raises(ImageError, match="255"):
        images.check_image_tensor(x * 255)
    with pytest.raises(ImageError, match="3 channels"):
        images.check_image_tensor(torch.rand(1, 4, 8, 8))
    with pytest.raises(ImageError, match="float"):
        images.check_image_tensor(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


def test_pil_roundtrip_is_exact_for_8bit_values():
    t = torch.randint(0, 256, (1, 3, 17, 19)).float() / 255
    back = images.to_tensor(images.to_pil(t[0]))
    assert torch.equal(back, t)


def test_minus1_1_conversions_are_inverse():
    x = torch.rand(2, 3, 4, 4)
    assert torch.allclose(images.from_minus1_1(images.to_minus1_1(x)), x)


def test_resize_and_center_crop_shapes():
    x = torch.rand(2, 3, 30, 40)
    assert images.resize(x, 16).shape == (2, 3, 16, 16)
    assert images.center_crop(x, (10, 20)).shape == (2, 3, 10, 20)
    y = images.resize_center_crop(x, 24)
    assert y.shape == (2, 3, 24, 24) and 0 <= y.min() and y.max() <= 1
    with pytest.raises(ImageError, match="cannot crop"):
        images.center_crop(x, 50)


def test_center_crop_takes_the_middle():
    x = torch.zeros(1, 3, 10, 10)
    x[..., 4:6, 4:6] = 1
    assert images.center_crop(x, 2).min() == 1


def test_make_grid_places_images():
    x = torch.stack([torch.full((3, 4, 4), v) for v in (0.0, 0.5, 1.0)])
    g = images.make_grid(x, nrow=2, padding=1, pad_value=0.25)
    assert g.shape == (3, 2 * 5 + 1, 2 * 5 + 1)
    assert g[0, 1, 1] == 0.0 and g[0, 1, 6] == 0.5 and g[0, 6, 1] == 1.0 and g[0, 0, 0] == 0.25


def test_save_image_is_atomic_and_roundtrips(tmp_path, monkeypatch):
    t = torch.randint(0, 256, (1, 3, 20, 20)).float() / 255
    path = images.save_image(t, tmp_path / "out" / "x.png")
    assert torch.equal(images.load_tensor(path), t)
    with pytest.raises(ImageError, match="batch"):
        images.save_image(torch.rand(2, 3, 8, 8), tmp_path / "y.png")

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(OSError):
        images.save_image(t, tmp_path / "out" / "z.png")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["x.png"]


def test_load_folder_sorted_and_sized(tmp_path):
    for name in ("b", "a"):
        _gradient().save(tmp_path / f"{name}.png")
    (tmp_path / "readme.txt").write_text("x")
    names, t = images.load_folder(tmp_path, size=16)
    assert names == ["a", "b"] and t.shape == (2, 3, 16, 16)


def _as_i16(arr):
    img = Image.fromarray(arr)
    assert img.mode.startswith("I;16")
    return img


def test_uint16_array_scales_like_a_16bit_image():
    arr = np.full((20, 20, 3), 65535, np.uint16)
    assert np.asarray(images.load_image(arr)).min() == 255


def test_tiny_tensor_is_rejected_too():
    with pytest.raises(ImageError, match="at least"):
        images.load_image(torch.rand(1, 3, 8, 8))

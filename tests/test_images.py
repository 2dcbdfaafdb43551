"""User images (control pictures, masks): bad files get one clear message, odd formats are converted correctly."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine.errors import UserError
from engine.images.io import fit_image, load_mask, load_rgb, size_for_aspect


def png_header_only(path, width, height):
    """A PNG whose header claims width x height (a decompression bomb), with almost no data."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("make,message", [
    (lambda p: p.write_text("hello, not a picture"), "not an image"),
    (lambda p: p.write_bytes(b""), "the file is empty"),
    (lambda p: png_header_only(p, 20000, 20000), "too large"),
    (lambda p: png_header_only(p, 9000, 9000), "9000x9000 pixels is too large"),
    (lambda p: p.write_bytes(_png_bytes()[:200]), "damaged or cut off"),
    (lambda p: None, "file not found"),
])
def test_bad_images_are_refused_with_a_reason(tmp_path, make, message):
    path = tmp_path / "picture.png"
    make(path)
    with pytest.raises(UserError, match=message) as info:
        load_rgb(path, "control image")
    assert "control image" in str(info.value) and str(path) in str(info.value)


def _png_bytes():
    import io

    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def test_grayscale_becomes_rgb(tmp_path):
    Image.fromarray(np.array([[0, 100, 255]], np.uint8), "L").save(tmp_path / "g.png")
    rgb = np.asarray(load_rgb(tmp_path / "g.png"))
    assert rgb.shape == (1, 3, 3) and (rgb == np.array([0, 100, 255])[None, :, None]).all()


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    Image.fromarray(np.array([[0, 257 * 100, 65535]], np.uint16)).save(tmp_path / "d16.png")
    assert Image.open(tmp_path / "d16.png").mode.startswith("I")
    assert np.asarray(load_rgb(tmp_path / "d16.png"))[0, :, 0].tolist() == [0, 100, 255]


def test_float_image_is_stretched(tmp_path):
    Image.fromarray(np.array([[-2.0, 0.0, 2.0]], np.float32), "F").save(tmp_path / "f.tiff")
    assert np.asarray(load_rgb(tmp_path / "f.tiff"))[0, :, 0].tolist() == [0, 128, 255]


def test_transparency_is_black(tmp_path):
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (200, 100, 50, 255)  # opaque
    rgba[0, 1] = (255, 255, 255, 0)  # transparent white
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    assert np.asarray(load_rgb(tmp_path / "a.png")).tolist() == [[[200, 100, 50], [0, 0, 0]]]
    palette = Image.fromarray(rgba, "RGBA").convert("P")
    palette.save(tmp_path / "p.png", transparency=palette.getpixel((1, 0)))
    assert np.asarray(load_rgb(tmp_path / "p.png"))[0, 1].tolist() == [0, 0, 0]


def test_painted_mask_layer(tmp_path):
    """A brush layer (white strokes on transparent) is a mask: strokes repaint, the rest is kept."""
    layer = np.zeros((4, 4, 4), np.uint8)
    layer[:2] = (255, 255, 255, 255)
    Image.fromarray(layer, "RGBA").save(tmp_path / "m.png")
    mask = np.asarray(load_mask(tmp_path / "m.png"))
    assert mask.dtype == np.uint8 and mask[:2].min() == 255 and mask[2:].max() == 0


def test_cmyk_and_exif_rotation(tmp_path):
    Image.new("CMYK", (4, 2), (0, 255, 255, 0)).save(tmp_path / "c.jpg")
    assert load_rgb(tmp_path / "c.jpg").mode == "RGB"
    img = Image.new("RGB", (40, 20), (10, 20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # "rotate 90 degrees": a portrait photo from a phone
    img.save(tmp_path / "r.jpg", exif=exif)
    assert load_rgb(tmp_path / "r.jpg").size == (20, 40)


def test_fit_and_aspect():
    img = Image.new("RGB", (200, 100), (50, 50, 50))
    assert fit_image(img, 256, 256, "crop").size == (256, 256)
    fitted = np.asarray(fit_image(img, 256, 256, "fit"))
    assert fitted.shape == (256, 256, 3) and fitted[0, 0].max() == 0 and fitted[128, 128].tolist() == [50] * 3
    mask = fit_image(Image.new("L", (200, 100), 0), 256, 256, "fit", fill=255)
    assert np.asarray(mask)[0, 0] == 255  # padding added by "fit" is repainted
    assert size_for_aspect((200, 100), 512, 512) == (720, 368)
    assert size_for_aspect((100, 300), 1024, 1024) == (592, 1776)
    assert size_for_aspect((1, 50), 1024, 1024) == (256, 4096)

"""Images the user names (control images, masks): read safely, converted to 8-bit RGB or L, fitted to a size.

Every problem (missing, empty, not an image, damaged, too many pixels) is a UserError naming the file;
odd modes (16-bit, 32-bit, float, palette, alpha, CMYK) are converted, transparency composited on black.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from engine.errors import UserError

MAX_PIXELS = 8192 * 8192  # decoded size cap (about 200 MB as RGB); decompression bombs are refused before decoding
MAX_ASPECT = 20  # longest side / shortest side: a thinner strip is no picture to follow (and was a memory trap)


class ImageFileError(UserError):
    """A user image cannot be used."""


def open_user_image(path, what: str = "image"):
    """The file at `path` as a loaded PIL image (any mode), after checking it is a sane, readable image."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not isinstance(path, (str, Path)) or not str(path).strip():
        raise ImageFileError(f"the {what} path is empty")
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ImageFileError(f"{what} {p}: file not found")
    if p.stat().st_size == 0:
        raise ImageFileError(f"{what} {p}: the file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(p) as img:
                _check_pixels(p, what, img.size)
                img.load()
                return ImageOps.exif_transpose(img) or img
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageFileError(f"{what} {p}: the image is far too large to open safely (over "
                             f"{MAX_PIXELS // 10**6} megapixels)") from None
    except UnidentifiedImageError:
        raise ImageFileError(f"{what} {p}: not an image (or a format Pillow cannot read); use PNG, JPEG or WebP") \
            from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise ImageFileError(f"{what} {p}: the image is damaged or cut off ({exc})") from None


def _check_pixels(p, what, size) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise ImageFileError(f"{what} {p}: the image has no pixels ({w}x{h})")
    if w * h > MAX_PIXELS:
        raise ImageFileError(f"{what} {p}: {w}x{h} pixels is too large (the limit is {MAX_PIXELS // 10**6} "
                             "megapixels); scale it down first")
    if max(w, h) > MAX_ASPECT * min(w, h):
        raise ImageFileError(f"{what} {p}: {w}x{h} pixels is a {max(w, h) / min(w, h):.0f}:1 strip; pictures up to "
                             f"{MAX_ASPECT}:1 are used (crop it first)")


def to_8bit(img):
    """16-bit, 32-bit integer and float images scaled to 8-bit L, not clipped (PIL's convert would clip)."""
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        if img.mode == "F" or a.max() > 65535 or a.min() < 0:  # float or 32-bit data: stretch its range
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) / (hi - lo or 1.0)
        elif img.mode == "I" and a.max() <= 255:  # 8-bit values stored as 32-bit
            a = a / 255.0
        else:
            a = a / 65535.0
        return Image.fromarray(np.clip(a * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    return img


def as_rgb(img):
    """Any mode -> 8-bit RGB; transparency composited on black (transparent = nothing drawn)."""
    from PIL import Image

    img = to_8bit(img)
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        black = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(black, rgba).convert("RGB")
    return img.convert("RGB")


def load_rgb(path, what: str = "image"):
    return as_rgb(open_user_image(path, what))


def load_mask(path, what: str = "mask"):
    """A mask as 8-bit L: white = repaint. Transparent parts count as black (keep)."""
    return as_rgb(open_user_image(path, what)).convert("L")


def size_for_aspect(image_size: tuple[int, int], width: int, height: int, multiple: int = 16,
                    lo: int = 256, hi: int = 4096) -> tuple[int, int]:
    """An output size with the image's aspect ratio and about width x height pixels, sides multiples of 16
    within lo..hi (an extreme ratio grows or shrinks as a whole to fit)."""
    iw, ih = image_size
    w = math.sqrt(width * height * iw / ih)
    h = w * ih / iw
    scale = max(1.0, lo / min(w, h))
    scale *= min(1.0, hi / max(w * scale, h * scale))
    return tuple(int(max(lo, min(hi, round(x * scale / multiple) * multiple))) for x in (w, h))


def fit_image(img, width: int, height: int, mode: str, fill=0):
    """`img` at exactly width x height: "crop" fills and centre-crops, "fit" letterboxes on `fill`,
    "image" (the output already has the image's aspect ratio) behaves like "crop" for the rounding.

    Memory stays within the picture plus the output: the crop is cut from the picture's own pixels and
    resized straight to the output size (resizing the whole picture first made a 1x8000 strip a 2 GB image)."""
    from PIL import Image

    if img.size == (width, height):
        return img.copy()
    iw, ih = img.size
    if mode == "fit":
        scale = min(width / iw, height / ih)
        nw, nh = min(width, max(1, round(iw * scale))), min(height, max(1, round(ih * scale)))
        canvas = Image.new(img.mode, (width, height), fill if img.mode == "L" else (fill,) * 3)
        canvas.paste(img.resize((nw, nh), Image.Resampling.LANCZOS), ((width - nw) // 2, (height - nh) // 2))
        return canvas
    scale = max(width / iw, height / ih)
    crop_w, crop_h = width / scale, height / scale  # the part of the picture that fills the output
    left, top = (iw - crop_w) / 2, (ih - crop_h) / 2
    return img.resize((width, height), Image.Resampling.LANCZOS, box=(left, top, left + crop_w, top + crop_h))

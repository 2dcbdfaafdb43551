"""The picture an img2img / inpaint / outpaint generation works on, and how its result goes back.

A Canvas is the full output picture before generating (the init image, extended by outpaint margins), the
repaint mask over it (white = repaint; grown and blurred), and the region that is generated: the whole
canvas, or ("masked" area only, the A1111/Forge habit) the masked part plus padding, cropped to the aspect
of width x height and generated at that size. The result is scaled back into the region and composited
through the mask, so pixels where the mask is 0 are the init image's exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from engine.errors import SettingsError
from engine.settings import MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE

MAX_PASS_PIXELS = 2048 * 2048  # a larger whole picture is generated scaled down (and scaled back), with a note
MIN_INPUT_SIDE = 16


@dataclass
class Region:
    """A box (left, top, right, bottom) of the canvas, generated at `size` (w, h; multiples of 16)."""

    box: tuple[int, int, int, int]
    size: tuple[int, int]

    @property
    def box_size(self) -> tuple[int, int]:
        return self.box[2] - self.box[0], self.box[3] - self.box[1]

    def crop(self, image):
        """The box of `image` at the generation size."""
        from PIL import Image

        part = image.crop(self.box)
        return part if part.size == self.size else part.resize(self.size, Image.Resampling.LANCZOS)

    def uncrop(self, image):
        """A generated picture (at `size`) back at the box's size."""
        from PIL import Image

        return image if image.size == self.box_size else image.resize(self.box_size, Image.Resampling.LANCZOS)


@dataclass
class Canvas:
    picture: object  # PIL RGB: the init image plus outpaint fill (kept pixels come from here)
    mask: object | None  # PIL L at the canvas size, white = repaint (grown, blurred); None: img2img everywhere
    region: Region
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.picture.size

    def work_picture(self):
        return self.region.crop(self.picture)

    def work_mask(self):
        """The mask over the generated region at its size (PIL L), or None."""
        return None if self.mask is None else self.region.crop(self.mask)

    def paste(self, generated):
        """The output: `generated` (PIL RGB at the region's size) put back into the canvas through the mask."""
        from PIL import Image

        part = self.region.uncrop(generated)
        if self.mask is None and self.region.box == (0, 0, *self.size):
            return part
        out = self.picture.copy()
        if self.mask is None:
            out.paste(part, self.region.box)
        else:
            kept = self.picture.crop(self.region.box)
            out.paste(Image.composite(part, kept, self.mask.crop(self.region.box)), self.region.box)
        return out


def build(picture, mask, settings) -> Canvas:
    """The canvas for an init image (PIL RGB) and optional mask (PIL L, white = repaint) under `settings`
    (outpaint, mask_grow, mask_blur, inpaint_area, inpaint_padding, width, height)."""
    notes = []
    w, h = picture.size
    if min(w, h) < MIN_INPUT_SIDE:
        raise SettingsError(f"the init image is {w}x{h} pixels: too small to work on (at least {MIN_INPUT_SIDE} "
                            "a side)")
    if mask is not None and mask.size != picture.size:
        from PIL import Image

        notes.append(f"the mask ({mask.width}x{mask.height}) was resized to the init image's {w}x{h}")
        mask = mask.resize(picture.size, Image.Resampling.BILINEAR)
    picture, mask = extend(picture, mask, settings.outpaint)
    if mask is not None:
        mask = shape_mask(mask, settings.mask_grow, settings.mask_blur)
        if not np.asarray(mask).any():
            raise SettingsError("the mask is all black (after growing/shrinking it): nothing to repaint; paint "
                                "white where the picture should change")
    if mask is not None and settings.inpaint_area == "masked":
        region = masked_region(mask, settings.inpaint_padding, settings.width, settings.height)
    else:
        size, note = pass_size(picture.size)
        region = Region((0, 0, *picture.size), size)
        notes += [note] if note else []
    return Canvas(picture, mask, region, notes)


def extend(picture, mask, margins):
    """Outpaint: the picture with `margins` (left, right, top, bottom) px added, filled by stretching its edge
    pixels; the mask gets the margins white (repaint). No margins: both unchanged."""
    from PIL import Image

    left, right, top, bottom = margins
    if not any(margins):
        return picture, mask
    w, h = picture.size
    if max(w + left + right, h + top + bottom) > MAX_SIDE * 4:
        raise SettingsError(f"outpaint to {w + left + right}x{h + top + bottom} is too large")
    a = np.pad(np.asarray(picture), ((top, bottom), (left, right), (0, 0)), mode="edge")
    m = np.full(a.shape[:2], 255, np.uint8)
    m[top:top + h, left:left + w] = np.asarray(mask) if mask is not None else 0
    return Image.fromarray(a), Image.fromarray(m, "L")


def shape_mask(mask, grow: int, blur: int):
    """Grow (> 0) or shrink (< 0) the white part by `grow` px, then feather its edge over `blur` px."""
    import cv2
    from PIL import Image, ImageFilter

    a = np.asarray(mask)
    if grow:
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * abs(grow) + 1, 2 * abs(grow) + 1))
        a = (cv2.dilate if grow > 0 else cv2.erode)(a, kernel)
    out = Image.fromarray(np.ascontiguousarray(a), "L")
    return out.filter(ImageFilter.GaussianBlur(blur / 2)) if blur else out


def masked_region(mask, padding: int, width: int, height: int) -> Region:
    """The box around the mask's white part plus `padding`, widened to width:height where the canvas allows,
    generated at width x height."""
    cw, ch = mask.size
    ys, xs = np.nonzero(np.asarray(mask))
    left, top = max(0, int(xs.min()) - padding), max(0, int(ys.min()) - padding)
    right, bottom = min(cw, int(xs.max()) + 1 + padding), min(ch, int(ys.max()) + 1 + padding)
    bw, bh = right - left, bottom - top
    if bw / bh < width / height:  # too narrow: widen
        bw = min(cw, math.ceil(bh * width / height))
    else:
        bh = min(ch, math.ceil(bw * height / width))
    left = min(max(0, (left + right - bw) // 2), cw - bw)
    top = min(max(0, (top + bottom - bh) // 2), ch - bh)
    return Region((left, top, left + bw, top + bh), (width, height))


def pass_size(size: tuple[int, int]) -> tuple[tuple[int, int], str]:
    """The generation size for a whole picture: its own, sides rounded to multiples of 16, scaled into
    MIN_SIDE..MAX_SIDE and MAX_PASS_PIXELS; a note when it had to be scaled."""
    w, h = size
    scale = min(1.0, math.sqrt(MAX_PASS_PIXELS / (w * h)), MAX_SIDE / max(w, h))
    scale = max(scale, MIN_SIDE / min(w, h)) if min(w, h) * scale < MIN_SIDE else scale
    out = tuple(max(SIDE_MULTIPLE, int(round(x * scale / SIDE_MULTIPLE)) * SIDE_MULTIPLE) for x in (w, h))
    out = tuple(min(MAX_SIDE, x) for x in out)
    note = ""
    if scale < 1:
        note = (f"the {w}x{h} picture is generated at {out[0]}x{out[1]} (the limit for one pass is about "
                f"{MAX_PASS_PIXELS / 2**20:.0f} MP) and scaled back; to work at full size, use inpaint area "
                "'masked' or upscale with tiles")
    elif scale > 1:
        note = f"the {w}x{h} picture is generated at {out[0]}x{out[1]} (at least {MIN_SIDE} px a side) and scaled back"
    return out, note

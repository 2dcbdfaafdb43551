"""The pictures a LoRA is made from: checked up front (count, readable, big enough), then cropped as
DiffSynth-Studio's Image2LoRA unit does: scaled (bilinear) to cover 1024x1024, centre-cropped to it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engine.errors import UserError
from engine.hashing import file_sha256
from engine.images.io import as_rgb, open_user_image

MAX_PICTURES = 16
MIN_SIDE = 128  # smaller pictures blow up into a blur at 1024 px: nothing of a style left to read
CROP = 1024


@dataclass(frozen=True)
class Picture:
    path: Path
    sha256: str
    size: tuple[int, int]


def check(paths) -> list[Picture]:
    """Every picture readable and large enough, 1 to MAX_PICTURES of them; UserError naming the first problem."""
    paths = [p for p in (paths or []) if p is not None and str(p).strip()]
    if not paths:
        raise UserError("no picture given: give 1 to 16 pictures of the style to capture")
    if len(paths) > MAX_PICTURES:
        raise UserError(f"{len(paths)} pictures given; at most {MAX_PICTURES} (the LoRA's rank grows with each: "
                        "pick the most typical ones)")
    found = []
    for path in paths:
        image = open_user_image(path, "picture")
        w, h = image.size
        if min(w, h) < MIN_SIDE:
            raise UserError(f"picture {path}: {w}x{h} pixels is too small (at least {MIN_SIDE} px on the short side; "
                            f"the encoders look at a {CROP}x{CROP} crop)")
        found.append(Picture(Path(path).resolve(), file_sha256(path), (w, h)))
    return found



def centre_crop(image, side: int = CROP):
    """PIL RGB -> side x side: bilinear resize so the picture covers the square, then the centre, rounded as
    torchvision's resize (round) and center_crop (int(round((size - side) / 2))) round."""
    from PIL import Image

    w, h = image.size
    scale = max(side / w, side / h)
    image = image.resize((round(w * scale), round(h * scale)), Image.Resampling.BILINEAR)
    w, h = image.size
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    return image.crop((left, top, left + side, top + side))


def rgb(image):
    """8-bit RGB; transparency composited on white, as transformers' processors convert pictures."""
    from PIL import Image

    if image.mode in ("RGBA", "LA", "PA", "P") and ("transparency" in image.info or image.mode != "P"):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return as_rgb(image)


def crops(pictures: list[Picture]) -> torch.Tensor:
    """uint8 [N, 3, 1024, 1024] of the pictures' centre crops."""
    arrays = [np.asarray(centre_crop(rgb(open_user_image(p.path, "picture")))) for p in pictures]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()

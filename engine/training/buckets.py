"""Aspect-ratio buckets: each image trains at a size of about N x N pixels with its own shape, sides multiples
of 32 (the VAE's 8x times the transformer's 2x patches, with room to spare), so nothing is squashed and a
batch holds images of one size."""

from __future__ import annotations

import math

STEP = 32
MAX_ASPECT = 4.0  # wider images are cropped to 4:1


def bucket_size(width: int, height: int, resolution: int, step: int = STEP) -> tuple[int, int]:
    """(W, H): multiples of `step`, W x H at most resolution^2, the aspect ratio nearest the image's (within
    MAX_ASPECT); between equally near ones, the larger."""
    aspect = math.log(min(MAX_ASPECT, max(1 / MAX_ASPECT, width / height)))
    area = resolution * resolution
    best, best_key = (resolution, resolution), None
    for w in range(step, int(math.sqrt(area * MAX_ASPECT)) + 1, step):
        h = area // w // step * step
        if h < step:
            break
        key = (round(abs(math.log(w / h) - aspect), 9), -w * h)
        if best_key is None or key < best_key:
            best, best_key = (w, h), key
    return best


def resolutions_for(width: int, height: int, resolutions) -> list[int]:
    """The chosen resolutions an image trains at: those it has the pixels for (no upscaling), and always the
    smallest one (a smaller image is scaled up to it)."""
    used = [r for r in resolutions if r * r <= width * height]
    return used or [min(resolutions)]


def fit(image, size: tuple[int, int]):
    """The image scaled to cover `size` and centre-cropped to it (PIL RGB in, PIL RGB out)."""
    from engine.images.io import fit_image

    return fit_image(image, size[0], size[1], "crop")

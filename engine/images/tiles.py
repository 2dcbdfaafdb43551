"""Overlapping tiles over a big picture and their feathered blend: memory bounded by the tile, not the picture.

Used by the upscaler models (tiles of pixels in, tiles of upscaled pixels out) and by tiled generation (each
tile a pass of its own). Tiles have the same size (the last row and column are shifted back inside the
picture); each tile's weight ramps linearly from 0 to 1 across the overlap on the sides it shares with another
tile, so the blend has no seams and the picture's own border keeps full weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, length - tile, step)) + [length - tile]
    return sorted(set(starts))


@dataclass(frozen=True)
class Tiling:
    tile: int  # tile side, pixels
    overlap: int  # pixels shared by neighbouring tiles

    def boxes(self, width: int, height: int) -> list[tuple[int, int, int, int]]:
        """(left, top, right, bottom) of each tile, row by row, covering width x height."""
        tw, th = min(self.tile, width), min(self.tile, height)
        return [(x, y, x + tw, y + th) for y in _starts(height, th, self.overlap)
                for x in _starts(width, tw, self.overlap)]


def ramp(box, width: int, height: int, overlap: int) -> np.ndarray:
    """[h, w] float32 weights of a tile at `box` in a width x height picture: a linear ramp over `overlap`
    pixels on the sides that are inside the picture, 1 elsewhere."""
    left, top, right, bottom = box
    w, h = right - left, bottom - top

    def axis(n, at_start, at_end):
        a = np.ones(n, np.float32)
        k = min(overlap, n // 2)
        if k:
            up = (np.arange(k, dtype=np.float32) + 1) / (k + 1)
            if not at_start:
                a[:k] = up
            if not at_end:
                a[n - k:] = np.minimum(a[n - k:], up[::-1])
        return a

    return np.outer(axis(h, top == 0, bottom == height), axis(w, left == 0, right == width))


class Blender:
    """Accumulates tiles (PIL RGB or [h, w, C] arrays) into a width x height picture with ramp weights."""

    def __init__(self, width: int, height: int, overlap: int, channels: int = 3):
        self.width, self.height, self.overlap = width, height, overlap
        self.sum = np.zeros((height, width, channels), np.float32)
        self.weight = np.zeros((height, width, 1), np.float32)

    def add(self, tile, box) -> None:
        a = np.asarray(tile, dtype=np.float32)
        if a.ndim == 2:
            a = a[..., None]
        left, top, right, bottom = box
        wgt = ramp(box, self.width, self.height, self.overlap)[..., None]
        self.sum[top:bottom, left:right] += a * wgt
        self.weight[top:bottom, left:right] += wgt

    def array(self) -> np.ndarray:
        return self.sum / np.maximum(self.weight, 1e-8)

    def result(self):
        from PIL import Image

        return Image.fromarray(np.clip(self.array() + 0.5, 0, 255).astype(np.uint8))

"""Control-map preprocessors: a picture in, the map a control model expects out, at the same size.

Modes: raw (the picture already is the map: HED, scribble, MLSD, tile, ...), gray, canny (OpenCV),
depth (Depth Anything V2) and pose (RT-DETR finds people, ViTPose places their keypoints, drawn as an
OpenPose skeleton). Model weights are fetched on first use (see hub.py); nothing loads at import.
Maps are cached by picture content and options, so a preview and the generation after it run once.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

_CACHE: OrderedDict = OrderedDict()
_CACHE_SIZE = 8


def options_for(mode: str, settings) -> tuple:
    """The settings a mode's result depends on."""
    if mode == "canny":
        return (settings.canny_low, settings.canny_high)
    if mode == "depth":
        return (settings.depth_model,)
    return ()


def control_map(image, mode: str, settings, locator, device):
    """The control map of `image` (PIL RGB) for `mode`, same size as `image`."""
    key = (hashlib.blake2b(image.tobytes(), digest_size=16).hexdigest(), image.size, mode, options_for(mode, settings),
           str(getattr(locator, "checkpoints", "")))
    if key in _CACHE:
        _CACHE.move_to_end(key)
        return _CACHE[key].copy()
    result = _run(image, mode, settings, locator, device)
    assert result.size == image.size and result.mode == "RGB", (result.size, result.mode)
    _CACHE[key] = result
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return result.copy()


def clear_cache() -> None:
    _CACHE.clear()


def _run(image, mode, settings, locator, device):
    if mode == "raw":
        return image.convert("RGB")
    if mode == "gray":
        return image.convert("L").convert("RGB")
    if mode == "canny":
        from engine.images.preprocess.canny import canny_map

        return canny_map(image, settings.canny_low, settings.canny_high)
    if mode == "depth":
        from engine.images.preprocess.depth import depth_map

        return depth_map(image, settings.depth_model, locator, device)
    if mode == "pose":
        from engine.images.preprocess.pose import pose_map

        return pose_map(image, locator, device)
    raise ValueError(f"unknown control mode {mode!r}")

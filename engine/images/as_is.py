"""Strength 0: the init image returned as it is (upscaled, or extended by outpaint margins, if asked), with no
model pass and without loading the model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field


@dataclass
class Unchanged:
    """A result like a generated one (engine.Engine.save reads these fields)."""

    image: object  # PIL RGB
    settings: object  # GenerationSettings
    batch_index: int = 0
    memory: dict = field(default_factory=dict)
    passes: list = field(default_factory=list)
    notes: list = field(default_factory=list)


def as_is(settings, upscalers=None) -> list[Unchanged]:
    """One picture: the init image, upscaled by `upscale` with `upscaler` (tiled for models)."""
    from engine.images.canvas import extend
    from engine.images.io import load_rgb
    from engine.images.upscalers import upscaled

    picture = load_rgb(settings.init_image, "init image")
    if settings.upscale > 1:
        picture = upscaled(picture, settings.upscale, settings.upscaler, upscalers)
    picture, _ = extend(picture, None, settings.outpaint)
    settings = settings.with_seed()
    return [Unchanged(picture, dataclasses.replace(settings, count=1, batch_size=1))]

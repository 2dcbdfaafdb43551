"""Generations that start from pictures or make bigger ones, as passes (models.z_image.passes):

- text-to-image, with the hires fix when `upscale` > 1: the base pass, its result upscaled (latents, or the
  decoded picture by lanczos or an upscaler model), then an img2img pass at the new size;
- an init image (img2img, inpaint, outpaint, upscale): the canvas (engine.images.canvas) generated in one pass,
  or, when the init is upscaled beyond TILED_ABOVE pixels, in overlapping tiles (each a normal pass, feathered
  together), so memory is bounded by the tile, not the picture. With a control image (e.g. Fun-ControlNet
  Tile) each tile is controlled by the same tile of the control picture.
Each run returns its pictures and a record of its passes (for the PNG).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from engine.images.tiles import Tiling
from engine.settings import SIDE_MULTIPLE, GenerationSettings
from models.z_image.passes import Conditioning, Pass, at_size, denoise, keep_mask

TILED_ABOVE = 2048 * 1024  # pixels: an upscaled init image larger than this is generated in tiles
TILE, OVERLAP = 1024, 128  # tile side and overlap, pixels


@dataclass
class Steps:
    """Reports the steps of all passes of a run as one count."""

    callback: object
    run: int
    total: int
    done: int = 0

    def for_pass(self, p: Pass):
        if self.callback is None:
            return None
        offset = self.done
        self.done += p.steps
        return lambda i, n, lat: self.callback(self.run, offset + i, self.total, lat)


@dataclass
class Work:
    """What a generation works on besides the prompt: nothing (text-to-image) or a canvas and its tiles."""

    canvas: object = None  # engine.images.canvas.Canvas
    tiles: list = field(default_factory=list)  # engine.images.canvas.Region per tile (tiled upscaling)
    controls: list = field(default_factory=list)  # ControlInputs per region (or tile), when controlled
    notes: list = field(default_factory=list)


def round16(x: float) -> int:
    return max(SIDE_MULTIPLE, int(round(x / SIDE_MULTIPLE)) * SIDE_MULTIPLE)


# ---- what to work on ---------------------------------------------------------------------------------

def prepare(model, settings: GenerationSettings, upscalers=None) -> Work:
    """The canvas (and tiles, control crops) of a generation with an init image; empty Work without one."""
    if not settings.init_image:
        return Work()
    from engine.images import canvas as C
    from engine.images.io import load_mask, load_rgb
    from engine.images.upscalers import upscaled

    picture = load_rgb(settings.init_image, "init image")
    if settings.upscale > 1:
        picture = upscaled(picture, settings.upscale, settings.upscaler, upscalers)
    mask = load_mask(settings.mask) if settings.mask else None
    canvas = C.build(picture, mask, settings)
    tiles = []
    if settings.upscale > 1 and picture.width * picture.height > TILED_ABOVE:
        tiles = [C.Region(box, (round16(box[2] - box[0]), round16(box[3] - box[1])))
                 for box in Tiling(TILE, OVERLAP).boxes(*picture.size)]
        canvas.notes.clear()  # the tiles are generated at full size: nothing scaled down
    regions = tiles or [canvas.region]
    controls = []
    if _controlled(model, settings):
        fitted = control_picture(settings, canvas)  # loaded and fitted once, whatever the number of tiles
        controls = [control_inputs(model, settings, canvas, r, fitted) for r in regions]
    return Work(canvas, tiles, controls, list(canvas.notes))


def _controlled(model, settings) -> bool:
    return getattr(model, "control", None) is not None and bool(settings.control_image)


def control_picture(settings: GenerationSettings, canvas):
    """The control picture fitted to the whole canvas (PIL RGB, canvas.size)."""
    from engine.images.io import fit_image, load_rgb

    fit = settings.control_fit if settings.control_fit != "image" else "crop"
    return fit_image(load_rgb(settings.control_image, "control image"), *canvas.size, fit)


def control_inputs(model, settings: GenerationSettings, canvas, region, fitted):
    """The control inputs of one region: `fitted` (control_picture) cropped like the region; its map; and
    for 2.x inpaint the init picture and mask of the region."""
    from PIL import Image

    from engine.images.preprocess import control_map
    from models.z_image.control import ControlInputs

    picture = region.crop(fitted)
    if settings.control_mode == "none":
        cmap = Image.new("RGB", region.size)
    else:
        cmap = control_map(picture, settings.control_mode, settings, model.control.locator, model.device)
    mask = region.crop(canvas.mask) if canvas.mask is not None else None
    return ControlInputs(region.crop(canvas.picture), cmap, mask)


# ---- runs ------------------------------------------------------------------------------------------

def planned_passes(settings: GenerationSettings, work: Work) -> list[Pass]:
    """The passes of one run (without their inputs), for step counts and the PNG record."""
    if work.canvas is None:
        first = Pass(settings)
        if settings.upscale <= 1:
            return [first]
        big = (round16(settings.width * settings.upscale), round16(settings.height * settings.upscale))
        return [first, Pass(at_size(settings, big, settings.hires_steps), settings.hires_strength)]
    regions = work.tiles or [work.canvas.region]
    keep = torch.zeros(1) if work.canvas.mask is not None else None
    return [Pass(at_size(settings, r.size), settings.strength, keep=keep) for r in regions]


def run(cond: Conditioning, work: Work, seed: int, callback=None, run_index: int = 0):
    """One run's pictures (PIL, one per batch element) and the record of its passes."""
    if work.canvas is not None and cond.settings.strength == 0:  # the picture as it is: no pass
        return [work.canvas.picture] * cond.settings.batch_size, []
    generator = torch.Generator("cpu").manual_seed(seed)
    plan = planned_passes(cond.settings, work)
    steps = Steps(callback, run_index, sum(p.steps for p in plan))
    if work.canvas is None:
        images = text_to_image(cond, plan, seed, generator, steps)
    elif work.tiles:
        images = tiled(cond, work, plan, seed, generator, steps)
    else:
        images = on_canvas(cond, work, plan[0], seed, generator, steps)
    return images, [p.record() for p in plan]


def text_to_image(cond: Conditioning, plan: list[Pass], seed, generator, steps: Steps) -> list:
    model, s = cond.model, cond.settings
    first = plan[0]
    latents = denoise(cond, first, seed, generator, steps.for_pass(first))
    if len(plan) == 1:
        return cond.decode(latents)
    second = plan[1]
    if s.upscaler == "latent":
        size = (second.settings.height // 8, second.settings.width // 8)
        second.latents = torch.nn.functional.interpolate(latents, size=size, mode="bicubic", align_corners=False)
    else:
        second.init = upscaled_pixels(model, cond.decode(latents), second.settings, s.upscaler, cond.upscalers)
    return cond.decode(denoise(cond, second, seed, generator, steps.for_pass(second)))


def upscaled_pixels(model, images, target: GenerationSettings, name: str, upscalers) -> torch.Tensor:
    """Pictures upscaled to the target size (lanczos or an upscaler model) as [B, 3, H, W] pixels."""
    from engine.images.upscalers import upscaled
    from models.z_image.vae import pixels

    size = (target.width, target.height)
    return torch.cat([pixels(upscaled(im, size[0] / im.width, name, upscalers, size), model) for im in images])


def on_canvas(cond: Conditioning, work: Work, p: Pass, seed, generator, steps: Steps) -> list:
    from models.z_image.vae import pixels

    model, canvas = cond.model, work.canvas
    p.init = pixels(canvas.work_picture(), model)
    mask = canvas.work_mask()
    p.keep = keep_mask(mask, (p.settings.height // 8, p.settings.width // 8)) if mask is not None else None
    p.control = work.controls[0] if work.controls else None
    latents = denoise(cond, p, seed, generator, steps.for_pass(p))
    return [canvas.paste(im) for im in cond.decode(latents)]


def tiled(cond: Conditioning, work: Work, plan: list[Pass], seed, generator, steps: Steps) -> list:
    """Each tile generated as a pass of its own, blended over the overlaps with feathered weights."""
    from engine.images.tiles import Blender
    from models.z_image.vae import pixels

    model, canvas = cond.model, work.canvas
    blenders = [Blender(*canvas.size, OVERLAP) for _ in range(cond.settings.batch_size)]
    for i, (region, p) in enumerate(zip(work.tiles, plan)):
        p.init = pixels(region.crop(canvas.picture), model)
        p.control = work.controls[i] if work.controls else None
        images = cond.decode(denoise(cond, p, seed, generator, steps.for_pass(p)))
        for blender, image in zip(blenders, images):
            blender.add(region.uncrop(image), region.box)
        p.init = p._dist = p.control = None  # bounded by one tile at a time
    return [b.result() for b in blenders]

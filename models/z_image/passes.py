"""Denoising passes: one sampler run at one size, from noise or from an init image noised to the strength's
point of the schedule (img2img), optionally keeping the init's latents outside a mask (inpaint).

Every generation is made of passes: text-to-image is one pass from noise; img2img and inpaint one pass from
the init picture; the hires fix two (the second an img2img pass on the upscaled first); tiled upscaling one
per tile. The sampler gets only the schedule's tail for the strength (engine.sampling.strength), while step
windows (NAG, control, LoRA schedules) read the full schedule, so a window means the same noise levels in
every pass. Noise and VAE samples come from the run's seeded generator, in diffusers' order (the init image's
latent sample, then the noise).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from engine import jobs, numerics
from engine.sampling.samplers import SAMPLERS
from engine.sampling.strength import noised, steps_to_run, truncate
from engine.settings import GenerationSettings


@dataclass
class Conditioning:
    """What every pass of one generation shares: the model, the encoded prompts and NAG, and the pipeline's
    building blocks (`tools`: compose, noise, captions, schedule, decode from models.z_image.pipeline, handed
    in so this module does not import it back)."""

    model: object  # models.z_image.pipeline.ZImageModel
    tools: object
    settings: GenerationSettings
    positive: torch.Tensor  # [tokens, caption dim]
    negative: torch.Tensor | None
    nag: object = None
    upscalers: object = None  # engine.images.upscalers.Upscalers (the upscaler folder), for the hires fix
    memory: object = None  # engine.placement.memory.MemoryMonitor: peaks per stage

    def stage(self, name: str):
        from contextlib import nullcontext

        return self.memory.stage(name) if self.memory is not None else nullcontext()

    def decode(self, latents: torch.Tensor) -> list:
        jobs.stage("decoding")
        with self.stage("decoding"):
            return self.tools.decode(self.model, latents)


@dataclass
class Pass:
    """One sampler run: the size and steps in `settings`, where it starts, what it keeps."""

    settings: GenerationSettings  # this pass's width, height and num_inference_steps
    strength: float = 1.0  # 1: from noise (unless it keeps a part of its init)
    init: torch.Tensor | None = None  # [1 or B, 3, H, W] pixels in [-1, 1] to start from, sampled through the VAE
    latents: torch.Tensor | None = None  # or [B, 16, h, w] latents to start from as they are
    keep: torch.Tensor | None = None  # [1, 1, h, w]: 1 where the init's latents are kept (inpaint)
    control: object = None  # models.z_image.control.ControlInputs at this pass's size, or None (settings')
    _dist: object = field(default=None, repr=False)  # the init's latent distribution, encoded once

    @property
    def steps(self) -> int:
        return steps_to_run(self.settings.num_inference_steps, self.strength)

    @property
    def from_init(self) -> bool:
        return (self.init is not None or self.latents is not None) and (self.strength < 1 or self.keep is not None)

    def record(self) -> dict:
        s = self.settings
        return {"size": [s.width, s.height], "steps": self.steps, "of": s.num_inference_steps,
                "strength": self.strength, "from": "noise" if not self.from_init else "init"}


def init_latents(model, p: Pass, batch: int, generator) -> torch.Tensor:
    """[batch, 16, h, w]: the pass's init as latents (a VAE sample drawn from `generator`, or given latents)."""
    if p.latents is not None:
        return p.latents.float()
    from models.z_image.vae import latent_dist, to_model

    if p._dist is None:
        p._dist = latent_dist(model, p.init.to(model.device, model.vae.dtype))
    known = to_model(model, p._dist.sample(generator))
    return known if known.shape[0] == batch else known.expand(batch, -1, -1, -1).contiguous()


def denoise(cond: Conditioning, p: Pass, seed: int, generator, on_step=None) -> torch.Tensor:
    """The pass's final latents [B, 16, h, w]."""
    model, s, tools = cond.model, p.settings, cond.tools
    full = tools.schedule(s, model.device)
    sigmas = truncate(full, p.strength)
    captions = tools.captions(cond.positive, s, seed, full)
    model_fn = tools.compose(model, s, captions, cond.negative, full, cond.nag, control=p.control)
    channels = model.transformer.config.in_channels
    if p.from_init:
        known = init_latents(model, p, s.batch_size, generator).to(model.device)
        noise = tools.noise(s, generator, channels).to(model.device)
        x = noised(known, noise, sigmas[0])
        if p.keep is not None:
            model_fn = keep_known(model_fn, p.keep.to(model.device), known)
    else:
        x = tools.noise(s, generator, channels).to(model.device)
    with cond.stage("denoising"):
        latents = SAMPLERS[s.sampler].fn(model_fn, x, sigmas, callback=on_step, generator=generator)
    numerics.check_latents(latents, model.dtype, bool(s.loras))
    return latents


def at_size(settings: GenerationSettings, size, steps: int | None = None) -> GenerationSettings:
    """The settings of a pass at `size` (w, h) and `steps`."""
    changes = dict(width=int(size[0]), height=int(size[1]))
    if steps:
        changes["num_inference_steps"] = int(steps)
    return dataclasses.replace(settings, **changes)


def keep_known(model_fn, keep: torch.Tensor, known: torch.Tensor):
    """Inpaint: where keep = 1 the flow points at the known latent, so those latents end exactly on it.

    v = (x - x0) / sigma makes any flow sampler's denoised estimate x - sigma * v equal x0 there.
    """
    def fn(x, sigma, *rest):
        v = model_fn(x, sigma, *rest)
        return torch.lerp(v.float(), (x - known) / float(sigma), keep)
    return fn


def keep_mask(mask, latent_size) -> torch.Tensor:
    """A repaint mask (PIL L at the pass size, white = repaint) -> keep [1, 1, h, w] at latent size: 1 - the mask
    binarized at 0.5 and resized (nearest), as diffusers' inpaint pipeline makes its latent mask."""
    import numpy as np
    import torch.nn.functional as F

    repaint = torch.from_numpy((np.asarray(mask, dtype=np.float32) / 255.0 >= 0.5).astype(np.float32))
    return 1 - F.interpolate(repaint[None, None], size=latent_size, mode="nearest")

"""Text-to-image for Z-Image: encode -> noise -> sampler(model_fn) -> decode.

The denoising loop is the project's own (core.samplers); guidance is composed into `model_fn` here,
so later additions (NAG, control, per-step LoRA strengths) wrap the same function.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from core.samplers import SAMPLERS
from core.schedules import shifted_simple
from core.settings import GenerationSettings
from models.z_image.control import add_control, output_size

VAE_SCALE = 8  # the VAE's down-sampling; the transformer's patch of 2 makes sizes multiples of 16


@dataclass
class ZImageModel:
    """A loaded model type: the three components plus what the PNG record needs."""

    model_type: str
    transformer: torch.nn.Module
    encoder: "PromptEncoder"  # noqa: F821 (models.z_image.text)
    vae: torch.nn.Module
    dtype: torch.dtype
    device: torch.device
    files: dict = field(default_factory=dict)
    passes: int = 0  # transformer forward passes, for the benchmark and tests
    control: object = None  # models.z_image.control.ControlModule for control model types


@dataclass
class GeneratedImage:
    image: object  # PIL.Image
    settings: GenerationSettings  # the exact settings that reproduce this image (its run's seed)
    batch_index: int


def initial_noise(settings: GenerationSettings, seed: int, channels: int) -> torch.Tensor:
    """[B, C, H/8, W/8] float32 Gaussian noise from a CPU generator, as diffusers' randn_tensor makes it."""
    from diffusers.utils.torch_utils import randn_tensor

    shape = (settings.batch_size, channels, settings.height // VAE_SCALE, settings.width // VAE_SCALE)
    return randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)


def flow(model: ZImageModel, x: torch.Tensor, sigma: torch.Tensor, captions: list[torch.Tensor]) -> torch.Tensor:
    """One transformer pass. x: [B, C, H, W]; captions: B tensors [tokens, hidden]; returns v [B, C, H, W]."""
    timestep = sigma * 1000  # via diffusers' timestep scale, so its rounding matches ZImagePipeline's
    t = ((1000 - timestep) / 1000).expand(x.shape[0]).to(x.device)
    inputs = list(x.to(model.dtype).unsqueeze(2).unbind(0))
    out = model.transformer(inputs, t, captions, return_dict=False)[0]
    model.passes += 1
    return -torch.stack([o.float() for o in out]).squeeze(2)


def make_model_fn(model: ZImageModel, settings: GenerationSettings, cond: torch.Tensor, uncond):
    """model_fn(x, sigma) -> v with classifier-free guidance composed in (positive and negative batched)."""
    w = settings.guidance_scale

    def model_fn(x, sigma):
        batch = x.shape[0]
        if uncond is None or w <= 0 or (1 - float(sigma)) > settings.cfg_truncation:
            return flow(model, x, sigma, [cond] * batch)
        both = flow(model, torch.cat([x, x]), sigma, [cond] * batch + [uncond] * batch)
        pos, neg = both[:batch], both[batch:]
        return normalize_guided(pos, pos + w * (pos - neg), settings.cfg_normalization)

    return model_fn


def normalize_guided(pos: torch.Tensor, guided: torch.Tensor, k: float) -> torch.Tensor:
    """Cap each sample's guided-prediction norm at k times the positive prediction's (k = 0: off)."""
    if k <= 0:
        return guided
    dims = tuple(range(1, pos.dim()))
    limit = torch.linalg.vector_norm(pos, dim=dims, keepdim=True) * k
    norm = torch.linalg.vector_norm(guided, dim=dims, keepdim=True)
    return torch.where(norm > limit, guided * (limit / norm), guided)


@torch.no_grad()
def decode(model: ZImageModel, latents: torch.Tensor) -> list:
    """Latents [B, 16, h, w] -> PIL images, as diffusers' VaeImageProcessor post-processes them."""
    from PIL import Image

    cfg = model.vae.config
    z = latents.to(model.device, model.vae.dtype) / cfg.scaling_factor + cfg.shift_factor
    pixels = model.vae.decode(z, return_dict=False)[0]
    arr = (pixels / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    return [Image.fromarray((a * 255).round().astype("uint8")) for a in arr]


@torch.no_grad()
def generate(model: ZImageModel, settings: GenerationSettings, callback=None) -> list[GeneratedImage]:
    """All images for `settings` (count runs of batch_size images, seeds seed, seed+1, ...)."""
    settings = output_size(settings.with_seed())  # control_fit "image" takes the control image's aspect ratio
    cfg = settings.guidance_scale > 0
    prompts = [settings.prompt] + ([settings.negative_prompt] if cfg else [])
    feats = model.encoder.encode(prompts)
    cond, uncond = feats[0], (feats[1] if cfg else None)
    sampler, _ = SAMPLERS[settings.sampler]
    sigmas = shifted_simple(settings.num_inference_steps, settings.flow_shift).to(model.device)
    model_fn = add_control(model, settings, sigmas, make_model_fn(model, settings, cond, uncond))
    results = []
    for run in range(settings.count):
        seed = settings.seed + run
        x = initial_noise(settings, seed, model.transformer.config.in_channels).to(model.device)
        step_cb = (lambda i, n, lat, r=run: callback(r, i, n, lat)) if callback else None
        latents = sampler(model_fn, x, sigmas, callback=step_cb)
        run_settings = dataclasses.replace(settings, seed=seed, count=1)
        results += [GeneratedImage(img, run_settings, b) for b, img in enumerate(decode(model, latents))]
    return results

"""Text-to-image for Z-Image: encode -> noise -> sampler(model_fn) -> decode.

The denoising loop is the project's own (core.samplers); guidance is composed into `model_fn` here,
so later additions (NAG, control, per-step LoRA strengths) wrap the same function.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

from core.lora.apply import scheduled
from core.samplers import SAMPLERS
from core.schedules import shifted_simple, step_index
from core.settings import GenerationSettings

from models.z_image.config import VAE_SCALE


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
    preview_projection: torch.Tensor | None = None  # latent -> RGB map for live previews, fitted on first use
    loras: object = None  # core.lora.apply.LoraStack once a LoRA was attached (models/z_image/lora.py)


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


def varied_captions(cond: torch.Tensor, settings: GenerationSettings, seed: int, sigmas: torch.Tensor):
    """captions(sigma) -> B caption tensors; seed variance puts seeded noise on the embedding [tokens, dim]
    for the first `seed_variance_steps` of the steps, so seeds differ more in composition."""
    plain = [cond] * settings.batch_size
    if settings.seed_variance <= 0 or settings.seed_variance_steps <= 0:
        return lambda sigma: plain
    gen = torch.Generator("cpu").manual_seed((seed + 0x5EED) % 2**63)  # not the image noise's stream
    shape = (settings.batch_size, *cond.shape)
    noise = torch.randn(shape, generator=gen)
    keep = torch.rand(shape, generator=gen) < settings.seed_variance_fraction
    scale = settings.seed_variance * cond.float().std().cpu()
    varied = [cond + (noise[b] * keep[b] * scale).to(cond.device, cond.dtype) for b in range(shape[0])]
    noisy_steps = settings.seed_variance_steps * (len(sigmas) - 1)
    return lambda sigma: varied if step_index(sigmas, sigma) < noisy_steps else plain


def make_model_fn(model: ZImageModel, settings: GenerationSettings, captions, uncond):
    """model_fn(x, sigma) -> v with classifier-free guidance composed in (positive and negative batched).
    `captions(sigma)` gives the positive caption per batch element."""
    w = settings.guidance_scale

    def model_fn(x, sigma):
        batch = x.shape[0]
        cond = captions(sigma)
        if uncond is None or w <= 0 or (1 - float(sigma)) > settings.cfg_truncation:
            return flow(model, x, sigma, cond)
        both = flow(model, torch.cat([x, x]), sigma, cond + [uncond] * batch)
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
    settings = settings.with_seed()
    cfg = settings.guidance_scale > 0
    prompts = [settings.prompt] + ([settings.negative_prompt] if cfg else [])
    feats = model.encoder.encode(prompts, settings.text_hidden_layer)
    cond, uncond = feats[0], (feats[1] if cfg else None)
    sampler, _ = SAMPLERS[settings.sampler]
    sigmas = shifted_simple(settings.num_inference_steps, settings.flow_shift).to(model.device)
    results = []
    for run in range(settings.count):
        seed = settings.seed + run
        model_fn = make_model_fn(model, settings, varied_captions(cond, settings, seed, sigmas), uncond)
        model_fn = scheduled(model_fn, model.loras, settings.loras, sigmas)
        x = initial_noise(settings, seed, model.transformer.config.in_channels).to(model.device)
        step_cb = (lambda i, n, lat, r=run: callback(r, i, n, lat)) if callback else None
        latents = sampler(model_fn, x, sigmas, callback=step_cb)
        run_settings = dataclasses.replace(settings, seed=seed, count=1)
        results += [GeneratedImage(img, run_settings, b) for b, img in enumerate(decode(model, latents))]
    return results

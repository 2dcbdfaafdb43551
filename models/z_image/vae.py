"""Pixels <-> latents through the Flux VAE, tiled above a size threshold so big pictures fit in memory.

Tiling is diffusers' own (AutoencoderKL's tiled encode/decode: overlapping tiles, blended edges), switched on
for one call when the picture is larger than TILE_ABOVE pixels; smaller pictures go through in one piece, as
diffusers' pipelines do, so they match them exactly.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np
import torch

from engine import numerics

TILE_ABOVE = 2048 * 1024  # pixels (about 2 MP): larger pictures are encoded and decoded in tiles
TILE_PX = 1024  # tile side in pixels (the Flux VAE's own sample size); tiles overlap by a quarter


def pixels(image, model) -> torch.Tensor:
    """PIL RGB -> [1, 3, H, W] in [-1, 1] on the VAE's device and dtype (as diffusers' VaeImageProcessor)."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    t = torch.from_numpy(a).permute(2, 0, 1)[None] * 2 - 1
    return t.to(model.device, model.vae.dtype)


@contextmanager
def tiled(vae, height: int, width: int):
    """diffusers' tiling on `vae` for this call when height x width (pixels) is above TILE_ABOVE."""
    if height * width <= TILE_ABOVE:
        yield False
        return
    saved = (vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size)
    scale = 2 ** (len(vae.config.block_out_channels) - 1)
    vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = True, TILE_PX, TILE_PX // scale
    try:
        yield True
    finally:
        vae.use_tiling, vae.tile_sample_min_size, vae.tile_latent_min_size = saved


@torch.no_grad()
def latent_dist(model, pix: torch.Tensor):
    """[1, 3, H, W] -> the latent distribution (diffusers' DiagonalGaussianDistribution), unscaled."""
    with tiled(model.vae, pix.shape[-2], pix.shape[-1]):
        return model.vae.encode(pix).latent_dist


def to_model(model, z: torch.Tensor) -> torch.Tensor:
    """VAE latents -> the transformer's latents (shifted and scaled), float32."""
    cfg = model.vae.config
    return ((z - cfg.shift_factor) * cfg.scaling_factor).float()


@torch.no_grad()
def encode_mode(model, pix: torch.Tensor) -> torch.Tensor:
    """[1, 3, H, W] -> [1, 16, H/8, W/8]: the distribution's mode as the transformer sees it."""
    return to_model(model, latent_dist(model, pix).mode())


@torch.no_grad()
def decode(model, latents: torch.Tensor) -> list:
    """Latents [B, 16, h, w] -> PIL images, as diffusers' VaeImageProcessor post-processes them."""
    from PIL import Image

    cfg = model.vae.config
    z = latents.to(model.device, model.vae.dtype) / cfg.scaling_factor + cfg.shift_factor
    scale = 2 ** (len(cfg.block_out_channels) - 1)
    with tiled(model.vae, z.shape[-2] * scale, z.shape[-1] * scale):
        pix = model.vae.decode(z, return_dict=False)[0]
    numerics.check_pixels(pix, model.dtype)  # NaN pixels would become a black PNG
    arr = (pix / 2 + 0.5).clamp(0, 1).cpu().permute(0, 2, 3, 1).float().numpy()
    return [Image.fromarray((a * 255).round().astype("uint8")) for a in arr]

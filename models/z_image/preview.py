"""Cheap live previews: a linear map from latents to RGB, fitted once per VAE from solid colours.

Decoding every step would cost as much as the final decode; a 16x3 linear map costs nothing and shows
the composition forming. The map is fitted on the VAE actually loaded, so it suits any Flux-style VAE.
"""

from __future__ import annotations

import itertools

import torch


@torch.no_grad()
def fit_projection(vae, size: int = 64) -> torch.Tensor:
    """[C + 1, 3] least-squares map from a latent pixel (plus bias) to RGB in [-1, 1]."""
    levels = (-1.0, 0.0, 1.0)
    colours = torch.tensor(list(itertools.product(levels, repeat=3)), dtype=torch.float32)  # [27, 3]
    param = next(vae.parameters())
    images = colours[:, :, None, None].expand(-1, -1, size, size).to(param.device, param.dtype)
    latents = vae.encode(images).latent_dist.mode()
    latents = (latents - vae.config.shift_factor) * vae.config.scaling_factor
    means = latents.float().mean(dim=(2, 3)).cpu()  # [27, C]
    design = torch.cat([means, torch.ones(len(means), 1)], dim=1)
    return torch.linalg.lstsq(design, colours).solution


def latents_to_image(latents: torch.Tensor, projection: torch.Tensor, longest: int = 384):
    """First image of a [B, C, h, w] batch as a PIL image, enlarged to at most `longest` pixels a side."""
    from PIL import Image

    z = latents[0].float().cpu().permute(1, 2, 0)  # [h, w, C]
    rgb = torch.cat([z, torch.ones(*z.shape[:2], 1)], dim=-1) @ projection
    arr = ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    image = Image.fromarray(arr)
    scale = longest / max(image.size)
    return image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)

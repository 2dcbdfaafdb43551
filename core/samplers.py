"""Samplers in k-diffusion style: short pure functions of (model_fn, x, sigmas, callback, generator).

`model_fn(x, sigma)` returns the flow v = noise - clean image (the direction of increasing sigma), so a
flow-matching Euler step is x + (sigma_next - sigma) * v. x: latents [B, C, H, W] in float32.
`callback(i, total, x)` runs after each step and may raise Interrupted to stop.
"""

from __future__ import annotations

from typing import Callable

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@torch.no_grad()
def sample_euler(model_fn: ModelFn, x: torch.Tensor, sigmas: torch.Tensor, callback=None, generator=None):
    """First-order flow-matching Euler: one model pass per step."""
    total = len(sigmas) - 1
    for i in range(total):
        v = model_fn(x, sigmas[i])
        x = x + (sigmas[i + 1] - sigmas[i]) * v.float()
        if callback is not None:
            callback(i, total, x)
    return x


# name -> (function, model passes per step)
SAMPLERS = {"euler": (sample_euler, 1)}

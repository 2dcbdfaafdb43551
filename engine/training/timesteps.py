"""Noise levels for flow-matching training: x_t = (1 - sigma) x0 + sigma * noise.

sigma is drawn uniformly from the shifted 1000-step grid (diffusers' and ai-toolkit's training scheduler:
sigma_i = shift * s / (1 + (shift - 1) * s) for s = i / 1000). "weighted" multiplies each sample's loss by a
bell-shaped weight over that grid (DiffSynth-Studio's and ai-toolkit's Turbo preset: exp(-2 ((1000 sigma - 500)
/ 1000)^2), shifted to 0 at its minimum and scaled to mean 1), so middle noise levels count most.
"""

from __future__ import annotations

import torch

GRID = 1000


def sigma_grid(shift: float, n: int = GRID) -> torch.Tensor:
    """[n] float32, ascending: the shifted noise levels the training draws from (last = 1, pure noise)."""
    s = torch.arange(1, n + 1, dtype=torch.float64) / n
    return (shift * s / (1 + (shift - 1) * s)).float()


def bell_weights(sigmas: torch.Tensor) -> torch.Tensor:
    """[n] loss weights for the grid `sigmas`, mean 1, zero at the least useful end."""
    x = sigmas.double() * GRID
    y = torch.exp(-2 * ((x - GRID / 2) / GRID) ** 2)
    y = y - y.min()
    return (y * (len(y) / y.sum())).float()


class NoiseLevels:
    """Draws (sigma [B], loss weight [B]) per training sample from a seeded generator."""

    def __init__(self, shift: float, kind: str = "weighted"):
        self.sigmas = sigma_grid(shift)
        self.weights = bell_weights(self.sigmas) if kind == "weighted" else torch.ones_like(self.sigmas)

    def sample(self, batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(0, len(self.sigmas), (batch,), generator=generator)
        return self.sigmas[index], self.weights[index]

"""Noise schedules: functions returning sigmas, from 1 (pure noise) down to a final 0.

Each returns a float32 tensor of length steps + 1. The sampler makes one model pass per step and
never evaluates the model at the final sigma = 0.
"""

from __future__ import annotations

import torch


def shifted_simple(steps: int, shift: float) -> torch.Tensor:
    """linspace(1, 1/steps, steps) warped by shift*s / (1 + (shift-1)*s), then 0.

    Computed in float32 in the same order as diffusers' FlowMatchEulerDiscreteScheduler, so both give
    bit-identical sigmas for the same steps and shift.
    """
    s = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float32)
    s = shift * s / (1 + (shift - 1) * s)
    return torch.cat([s, torch.zeros(1, dtype=torch.float32)])


SCHEDULES = {"simple": shifted_simple}


def step_index(sigmas: torch.Tensor, sigma) -> int:
    """Which step a model evaluation at `sigma` belongs to (intermediate evaluations count as their step)."""
    return int((sigmas[:-1] >= float(sigma)).sum()) - 1

"""Noise schedules: functions returning sigmas, from 1 (pure noise) down to a final 0.

Each flow schedule is f(steps, shift) and returns a float32 tensor of length steps + 1. A sampler makes one
or two model passes per step and never evaluates the model at the final sigma = 0.
"""

from __future__ import annotations

import torch

TRAINING_STEPS = 1000  # the flow models' training time grid (t = 1/1000 .. 1)


def warp(s: torch.Tensor, shift: float) -> torch.Tensor:
    """The static flow shift: shift*s / (1 + (shift-1)*s)."""
    return shift * s / (1 + (shift - 1) * s)


def _with_zero(s: torch.Tensor) -> torch.Tensor:
    return torch.cat([s.to(torch.float32), torch.zeros(1, dtype=torch.float32)])


def shifted_simple(steps: int, shift: float) -> torch.Tensor:
    """linspace(1, 1/steps, steps) warped by shift*s / (1 + (shift-1)*s), then 0.

    Computed in float32 in the same order as diffusers' FlowMatchEulerDiscreteScheduler, so both give
    bit-identical sigmas for the same steps and shift.
    """
    s = torch.linspace(1.0, 1.0 / steps, steps, dtype=torch.float32)
    return _with_zero(warp(s, shift))


def beta(steps: int, shift: float, a: float = 0.6, b: float = 0.6) -> torch.Tensor:
    """Times at the Beta(a, b) quantiles of 1 - i/steps, warped by the shift, then 0.

    ComfyUI's "beta" schedule (a = b = 0.6: denser steps at both ends), without its rounding to the
    1000-step grid. Quantiles from scipy's inverse regularized incomplete beta function.
    """
    from scipy.special import betaincinv

    q = 1.0 - torch.arange(steps, dtype=torch.float64) / steps
    t = torch.from_numpy(betaincinv(a, b, q.numpy()))
    return _with_zero(warp(t, shift))


def sgm_uniform(steps: int, shift: float) -> torch.Tensor:
    """SGM's uniform timesteps: steps + 1 evenly spaced times from the largest to the smallest training
    sigma, the last one dropped, then 0 (ComfyUI's "sgm_uniform" for flow models, where timestep = 1000*sigma).
    """
    sigma_min = float(warp(torch.tensor(1.0 / TRAINING_STEPS, dtype=torch.float64), shift))
    t = torch.linspace(1.0, sigma_min, steps + 1, dtype=torch.float64)[:-1]
    return _with_zero(warp(t, shift))


def rescale(sigmas: torch.Tensor, factor: float) -> torch.Tensor:
    """All sigmas times `factor` (1: unchanged); < 1 starts slightly below pure noise (RES4LYF's 0.996)."""
    return sigmas if factor == 1 else sigmas * factor


def twinflow_times(steps: int) -> torch.Tensor:
    """TwinFlow's unified-sampler times t (1 = noise, 0 = clean): 1 - linspace(g0, 1 - g1, steps), then 0.

    float64, length steps + 1. (g0, g1) from the official configs: 2 steps (0.001, 0.6) -> 0.999, 0.6, 0;
    4 steps (0.001, 0.5) -> 0.999, 0.833, 0.667, 0.5, 0. Other counts take the nearer config (1 step as 2,
    3 as 4); beyond 4 steps (0.001, 0), whose linspace has steps + 1 points with its last (t = 0) dropped.
    """
    g0, g1 = TWINFLOW_PRESETS[min(steps, 5)]
    if g1 == 0:
        t = 1 - torch.linspace(g0, 1.0, steps + 1, dtype=torch.float64)[:-1]
    else:
        t = 1 - torch.linspace(g0, 1.0 - g1, steps, dtype=torch.float64)
    return torch.cat([t, torch.zeros(1, dtype=torch.float64)])


# steps (5 = "more than 4") -> (g0, g1)
TWINFLOW_PRESETS = {1: (0.001, 0.6), 2: (0.001, 0.6), 3: (0.001, 0.5), 4: (0.001, 0.5), 5: (0.001, 0.0)}

# name -> f(steps, shift)
SCHEDULES = {"simple": shifted_simple, "beta": beta, "sgm_uniform": sgm_uniform}

"""Samplers in k-diffusion style: short pure functions of (model_fn, x, sigmas, callback, generator).

Flow samplers: `model_fn(x, sigma)` returns the flow v = noise - clean image (the direction of increasing
sigma), so x = (1 - sigma) * clean + sigma * noise, clean = x - sigma * v, and an Euler step is
x + (sigma_next - sigma) * v. x: latents [B, C, H, W] in float32; sigmas: descending, ending at 0 (never
evaluated there). TwinFlow's unified sampler takes a model_fn with a target time instead (see there).
`callback(i, total, x)` runs after each step and may raise Interrupted to stop. `generator` is a CPU
torch.Generator (continuing the image seed's stream) for samplers that add fresh noise.
"""

from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def fresh_noise(x: torch.Tensor, generator) -> torch.Tensor:
    """Gaussian noise shaped like x, drawn on the CPU so a seed gives the same image on every device."""
    return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(x.device)


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


@torch.no_grad()
def sample_euler_ancestral(model_fn: ModelFn, x, sigmas, callback=None, generator=None, eta: float = 1.0):
    """Euler ancestral for flow models: step down past sigma_next to sigma_down, then add fresh noise back.

    With eta = 1, sigma_down = sigma_next^2 / sigma. Rescaling by (1 - sigma_next) / (1 - sigma_down) restores
    the clean image's weight, and noise of std sqrt(sigma_next^2 - (sigma_down * that)^2) the noise's.
    """
    total = len(sigmas) - 1
    for i in range(total):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        v = model_fn(x, sigmas[i]).float()
        clean = x - s * v
        if s_next == 0:
            x = clean
        else:
            s_down = s_next * (1 + (s_next / s - 1) * eta)
            x = (s_down / s) * x + (1 - s_down / s) * clean  # deterministic move to s_down
            keep = (1 - s_next) / (1 - s_down)
            x = keep * x + math.sqrt(max(s_next**2 - (s_down * keep) ** 2, 0.0)) * fresh_noise(x, generator)
        if callback is not None:
            callback(i, total, x)
    return x


def _two_stage(c2: float):
    """Explicit 2-stage Runge-Kutta with its second stage at c2 of the step (Heun 1, Ralston 2/3)."""

    @torch.no_grad()
    def sample(model_fn: ModelFn, x, sigmas, callback=None, generator=None):
        total = len(sigmas) - 1
        for i in range(total):
            s, s_next = sigmas[i], sigmas[i + 1]
            h = s_next - s
            k1 = model_fn(x, s).float()
            s_mid = s + c2 * h
            if float(s_mid) == 0:  # Heun's last step: the model at sigma 0 would waste a pass
                x = x + h * k1
            else:
                k2 = model_fn(x + c2 * h * k1, s_mid).float()
                x = x + h * ((1 - 1 / (2 * c2)) * k1 + 1 / (2 * c2) * k2)
            if callback is not None:
                callback(i, total, x)
        return x

    return sample


sample_heun = _two_stage(1.0)
sample_ralston = _two_stage(2.0 / 3.0)


def _log_snr(s: float) -> float:
    """lambda = log(alpha / sigma) with alpha = 1 - sigma (-inf at pure noise, +inf at the clean image)."""
    if s >= 1:
        return -math.inf
    return math.log((1 - s) / s) if s > 0 else math.inf


@torch.no_grad()
def sample_dpmpp_2m(model_fn: ModelFn, x, sigmas, callback=None, generator=None):
    """DPM-Solver++(2M) on clean-image predictions, flow form (alpha = 1 - sigma): one pass per step.

    x_next = (s_next / s) x - alpha_next * expm1(-h) * D, h = lambda_next - lambda, D the clean prediction
    extrapolated with the previous one (first order on the first step, after a step from pure noise, and
    on the last step to sigma 0).
    """
    total = len(sigmas) - 1
    prev_clean, prev_h = None, None
    for i in range(total):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        clean = x - s * model_fn(x, sigmas[i]).float()
        if s_next == 0:
            x = clean
        else:
            h = _log_snr(s_next) - _log_snr(s)
            d = clean
            if prev_clean is not None and math.isfinite(prev_h):
                r = prev_h / h
                d = (1 + 1 / (2 * r)) * clean - (1 / (2 * r)) * prev_clean
            x = (s_next / s) * x - (1 - s_next) * math.expm1(-h) * d
            prev_clean, prev_h = clean, h
        if callback is not None:
            callback(i, total, x)
    return x


@torch.no_grad()
def sample_twinflow(model_fn, x: torch.Tensor, times: torch.Tensor, callback=None, generator=None):
    """TwinFlow's unified sampler (official configuration: clean target, stochastic ratio 1).

    times: sampler times t, descending from near 1 (noise) to a final 0, with x_t = (1 - t) x0 + t z
    (engine.sampling.schedules.twinflow_times). model_fn(x, t, target) -> F = z - x0, the velocity predicted by a
    model told to jump from time t to time `target` (always 0 here: the clean image). Each step:
    x0_hat = x - t * F, then x = (1 - t_next) * x0_hat + t_next * fresh noise. Returns the last x0_hat.
    One model pass per step.
    """
    total = len(times) - 1
    clean = x
    target = torch.zeros((), dtype=times.dtype, device=times.device)
    for i in range(total):
        t, t_next = times[i], times[i + 1]
        clean = x - float(t) * model_fn(x, t, target).float()
        if float(t_next) > 0:
            x = (1 - float(t_next)) * clean + float(t_next) * fresh_noise(x, generator)
        if callback is not None:
            callback(i, total, clean if float(t_next) == 0 else x)
    return clean


class SamplerInfo(NamedTuple):
    fn: Callable
    passes_per_step: int  # transformer passes per step (the UI says "costs two passes per step")
    label: str
    time_target: bool = False  # model_fn(x, t, target) instead of model_fn(x, sigma)
    one_pass_last_step: bool = False  # its last step (to sigma 0) is a one-pass Euler step


SAMPLERS = {
    "euler": SamplerInfo(sample_euler, 1, "Euler"),
    "euler_ancestral": SamplerInfo(sample_euler_ancestral, 1, "Euler ancestral (fresh noise each step)"),
    "heun": SamplerInfo(sample_heun, 2, "Heun (2nd order)", one_pass_last_step=True),
    "ralston": SamplerInfo(sample_ralston, 2, "Ralston (2nd order)"),
    "dpmpp_2m": SamplerInfo(sample_dpmpp_2m, 1, "DPM++ 2M"),
    "twinflow": SamplerInfo(sample_twinflow, 1, "TwinFlow unified", time_target=True),
}


def passes_per_image(name: str, steps: int) -> int:
    """Transformer passes for one image."""
    info = SAMPLERS[name]
    return steps * info.passes_per_step - (info.passes_per_step - 1 if info.one_pass_last_step else 0)

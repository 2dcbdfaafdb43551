"""TwinFlow's time conditioning on diffusers' ZImageTransformer2DModel (official inclusionAI/TwinFlow math).

A TwinFlow transformer has a second timestep embedder, `t_embedder_2` (attached by the loader). Told to
jump from model time t_m to a target model time tt_m, its time embedding is
    t_embedder(|t_m| * 1000) + t_embedder_2((tt_m - t_m) * 1000) * |t_m - tt_m|
with the times in float64. diffusers' forward computes `t_embedder(t * t_scale)`; a forward hook on
`t_embedder`, held only for the duration of a call, adds the second term. With target == current time the
term is exactly zero, so the model then behaves as a plain flow model.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def is_twinflow(transformer) -> bool:
    return getattr(transformer, "t_embedder_2", None) is not None


def model_time(t: torch.Tensor) -> torch.Tensor:
    """Sampler time (1 = noise, 0 = clean) -> model time sign(t) * (1 - |t|), float64; sign(0) = 0, so a
    clean target (t = 0) maps to model time 0."""
    t = t.to(torch.float64)
    return torch.sign(t) * (1 - t.abs())


def auxiliary_embedding(transformer, t_m: torch.Tensor, tt_m: torch.Tensor) -> torch.Tensor:
    """t_embedder_2((tt_m - t_m) * t_scale) * |t_m - tt_m|: [B] float64 times -> [B, 256] float64."""
    emb = transformer.t_embedder_2((tt_m - t_m) * transformer.t_scale)
    return emb.to(torch.float64) * (t_m - tt_m).abs()[:, None]


@contextmanager
def target_time(transformer, t_m: torch.Tensor, tt_m: torch.Tensor):
    """Within the block, the transformer's time embedding includes the jump to target model times tt_m.

    t_m, tt_m: [B] float64 model times; the transformer must be called with t = |t_m|.
    """

    def add_target(_module, _inputs, output):
        return (output.to(torch.float64) + auxiliary_embedding(transformer, t_m, tt_m)).to(output.dtype)

    handle = transformer.t_embedder.register_forward_hook(add_target)
    try:
        yield
    finally:
        handle.remove()

"""img2img through the schedule: strength S of N steps runs only the schedule's last steps, from the init
image noised to that point. One rule for every sampler (flow sigmas or TwinFlow times alike).

With x = (1 - s) * clean + s * noise for both kinds of schedule, starting at point k of a descending schedule
means x_k = (1 - s_k) * init + s_k * noise and the sampler gets schedule[k:], so no pass is wasted.
"""

from __future__ import annotations

import torch


def steps_to_run(steps: int, strength: float) -> int:
    """How many of `steps` run at `strength` (0-1), exactly as diffusers' Z-Image img2img/inpaint pipelines
    count them: N - int(N - N*S), i.e. ceil(S*N) (8 steps at 0.5 run 4; at 0.35, 3; at 0.3, 3)."""
    init = min(steps * strength, steps)
    return steps - int(max(steps - init, 0))


def truncate(schedule: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of a descending schedule (ending at 0) that `strength` runs: its last steps_to_run + 1 points."""
    total = len(schedule) - 1
    return schedule[total - steps_to_run(total, strength):]


def noised(init: torch.Tensor, noise: torch.Tensor, level) -> torch.Tensor:
    """The init latents at noise level `level` (a sigma or TwinFlow time): (1 - s) * init + s * noise, computed
    as diffusers' FlowMatchEulerDiscreteScheduler.scale_noise does."""
    s = torch.as_tensor(float(level), dtype=init.dtype, device=init.device)
    return s * noise + (1.0 - s) * init

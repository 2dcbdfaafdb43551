"""What an architecture can do: the UI and CLI read this instead of testing model names."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Capabilities:
    cfg: bool = False  # classifier-free guidance (guidance_scale > 0, negative prompt)
    nag: bool = False  # negative prompts through attention guidance (distilled models)
    control_modes: tuple[str, ...] = ()
    inpaint: bool = False
    unified_sampler: bool = False  # TwinFlow's any-step sampler
    shift: bool = True  # flow shift applies
    step_range: tuple[int, int] = (1, 200)  # what the UI offers
    samplers: tuple[str, ...] = ("euler",)  # the first is the default; engine.sampling.samplers.SAMPLERS has passes per step
    schedulers: tuple[str, ...] = ("simple",)  # engine.sampling.schedules.SCHEDULES; empty: the sampler brings its own
    loras: bool = True  # LoRAs from the family's LoRA folder (strength, per-step schedule, presets)
    available: bool = True  # False: defined but its generation arrives in a later version
    notes: tuple[str, ...] = field(default_factory=tuple)

"""Step windows: on which steps of a run a feature is active (NAG, control, seed variance, LoRA schedules).

One rule everywhere: step i (0-based) of n lies in the window [start, end) when start <= i / n < end, with
start and end fractions of the steps. Model calls name their step by the time or sigma they are made at;
`step_of` turns that back into the step (a second-order sampler's mid-step call belongs to its step).
"""

from __future__ import annotations

from dataclasses import dataclass

_EPS = 1e-9  # i / n and a fraction typed by the user meet exactly on the grid (0.25 of 8 steps is step 2)


@dataclass(frozen=True)
class StepWindow:
    start: float = 0.0
    end: float = 1.0

    def covers(self, step: int, total: int) -> bool:
        at = step / max(1, total)
        return self.start - _EPS <= at < self.end - _EPS

    def covers_call(self, schedule, value) -> bool:
        """Whether a model call at time/sigma `value` of the descending `schedule` falls in the window."""
        return self.covers(step_of(schedule, value), len(schedule) - 1)


def segment(step: int, total: int, parts: int) -> int:
    """Which of `parts` equal windows holds the step (a per-step schedule of `parts` values)."""
    return next(k for k in range(parts) if StepWindow(k / parts, (k + 1) / parts).covers(step, total)) \
        if step < total else parts - 1


def step_of(schedule, value) -> int:
    """The step a model call at time/sigma `value` belongs to, for a descending schedule: the last point at
    or above it (a stage between points i and i + 1 is step i; a call exactly at point i is step i)."""
    at_or_above = schedule[:-1] >= float(value) - 1e-7
    return min(max(0, int(at_or_above.sum()) - 1), len(schedule) - 2)

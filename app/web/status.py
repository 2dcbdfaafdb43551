"""The page's status area and the Generate button's label: what a job is doing (queued, loading, downloading
file k of n, encoding, step i/n, decoding, saving), with elapsed time and time left; results; and errors,
which stay until the next action with the same exact text and their details one click away.

Everything here is plain text to HTML (escaped): messages carry prompts and file names."""

from __future__ import annotations

import html
import time
from dataclasses import dataclass, field

from engine.weights.files import human_size

IDLE = "Ready. <kbd>Ctrl</kbd>+<kbd>Enter</kbd> generates from anywhere on the page."
OPENING = "Opening: your last settings and results come back..."  # until the page's load event has answered
GENERATE = "Generate"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def seconds(s: float) -> str:
    """3.2 s, 1 min 05 s, 1 h 02 min."""
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


@dataclass
class Clock:
    """Elapsed time of a job, and time left from the pace of its steps (or bytes): the estimate uses the work
    done since the first unit, so loading time does not distort it."""

    started: float = field(default_factory=time.perf_counter)
    first: tuple[float, float] | None = None  # (time, units done) at the first report of this pace
    unit_total: float = 0

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def left(self, done: float, total: float) -> float | None:
        """Seconds left at the pace since the first report with these totals; None before there is a pace."""
        now = time.perf_counter()
        if self.first is None or total != self.unit_total or done < self.first[1]:
            self.first, self.unit_total = (now, done), total
            return None
        t0, d0 = self.first
        if done <= d0 or now <= t0:
            return None
        return (total - done) * (now - t0) / (done - d0)


def bar(done: float, total: float) -> str:
    pct = 0 if not total else max(0.0, min(100.0, 100.0 * done / total))
    return (f'<div class="zi-bar" role="progressbar" aria-valuemin="0" aria-valuemax="100" '
            f'aria-valuenow="{pct:.0f}"><div style="width:{pct:.1f}%"></div></div>')


def running(stage: str, clock: Clock, done: float | None = None, total: float | None = None,
            left: float | None = None, extra: str = "") -> str:
    """The status while a job runs: its stage, a bar when there is a count, elapsed and left."""
    elapsed = clock.elapsed()
    times = (f'<span class="zi-elapsed" data-elapsed="{elapsed:.2f}">{_e(seconds(elapsed))}</span> elapsed'
             + (f" · about {_e(seconds(left))} left" if left is not None else "") + _e(extra))
    parts = [f'<div class="zi-stage" aria-live="polite">{_e(stage)}</div>']
    if total:
        parts.append(bar(done or 0, total))
    parts.append(f'<div class="zi-times">{times}</div>')
    return '<div class="zi-status zi-running">' + "".join(parts) + "</div>"


def queued_text(ahead: int) -> str:
    """Where a waiting job stands, in words (every action that waits for the GPU says it the same way)."""
    what = "the next job" if ahead <= 0 else f"{ahead} job{'s' if ahead != 1 else ''} ahead of yours"
    return f"Queued: {what}"


def queued(ahead: int, clock: Clock) -> str:
    return running(queued_text(ahead), clock)


def download_stage(what: str, done: int, total: int, overall: tuple[int, int] | None) -> str:
    """'downloading file 1 of 3: x.safetensors, 1.2 GB of 12.3 GB (total 1.2 GB of 20.6 GB)'."""
    text = f"{what[:1].upper()}{what[1:]}: {human_size(done)} of {human_size(total)}" if total else what
    if overall and overall[1]:
        text += f" (all files: {human_size(overall[0])} of {human_size(overall[1])})"
    return text


def finished(text: str, notes=()) -> str:
    lines = "".join(f"<li>{_e(n)}</li>" for n in notes)
    return (f'<div class="zi-status zi-done"><div>{_e(text)}</div>'
            + (f'<ul class="zi-notes">{lines}</ul>' if lines else "") + "</div>")


def error(message: str, details: str = "") -> str:
    """An error as it stays on the page: the exact message, and the details behind a disclosure."""
    more = (f"<details><summary>Details</summary><pre>{_e(details)}</pre></details>" if details else "")
    return (f'<div class="zi-status zi-error" role="alert"><div><strong>Error:</strong> '
            f'<span class="zi-error-text">{_e(message)}</span></div>{more}</div>')


def details(action: str, model_type: str | None = None, extra: str = "") -> str:
    """The details of an error: what was being done, when, and with which model type."""
    lines = [f"action: {action}", f"time: {time.strftime('%Y-%m-%d %H:%M:%S')}"]
    if model_type:
        lines.append(f"model type: {model_type}")
    if extra:
        lines.append(extra)
    return "\n".join(lines)

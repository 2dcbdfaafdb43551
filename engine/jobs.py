"""One GPU job at a time: the engine's one queue for every action that uses the model (generate, enhance,
control map, API jobs, and later training and image-to-LoRA).

A job is a function of a JobContext, run by one worker thread in submission order. It reports steps, tokens
and stages through the context; whoever waits on it reads them with `Job.events()`. Cancelling (only its
owner may) stops a running job at its next report and a queued one before it starts.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.errors import Interrupted, SettingsError

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


@dataclass
class StepEvent:
    run: int  # 0-based run (batch) index
    step: int  # 0-based step within the run
    total: int  # steps per run
    latents: object  # [B, C, h, w] after this step


@dataclass
class TokenEvent:
    tokens: int  # tokens the enhancer has written so far
    per_second: float


@dataclass
class NoteEvent:
    message: str  # a warning worth showing (e.g. LoRA keys that did not apply)


@dataclass
class StageEvent:
    name: str  # what the job is doing now: "loading", "decoding", "saving", ...


@dataclass
class ProgressEvent:
    done: int  # units of work done (blocks run, files read, ...)
    total: int
    what: str  # what is being done now, e.g. "DINOv3: block"


class JobContext:
    """Handed to a job's function: report progress through it; each report is also where Stop takes effect."""

    def __init__(self, job: "Job"):
        self.job = job

    def check(self) -> None:
        if self.job.cancel_requested.is_set():
            raise Interrupted("stopped by the user")

    def report(self, event) -> None:
        self.check()
        self.job.last_event = event
        self.job._events.put(event)

    def on_step(self, run: int, step: int, total: int, latents) -> None:
        self.report(StepEvent(run, step, total, latents))

    def on_token(self, tokens: int, per_second: float) -> None:
        self.report(TokenEvent(tokens, per_second))

    def note(self, message: str) -> None:
        self.job._events.put(NoteEvent(message))

    def stage(self, name: str) -> None:
        self.report(StageEvent(name))

    def progress(self, done: int, total: int, what: str) -> None:
        self.report(ProgressEvent(done, total, what))


@dataclass(eq=False)
class Job:
    id: str
    owner: str
    kind: str
    work: Callable[[JobContext], Any]
    state: str = QUEUED
    result: Any = None
    error: BaseException | None = None
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    last_event: object = None
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    done: threading.Event = field(default_factory=threading.Event)
    _events: queue.Queue = field(default_factory=queue.Queue)

    def events(self):
        """Yield the job's events as they come until it ends; then return (read `result`, or call `outcome`)."""
        while (event := self._events.get()) is not _END:
            yield event
        self._events.put(_END)  # for another reader

    def outcome(self):
        """The result once finished; its error re-raised (Interrupted when it was cancelled)."""
        self.done.wait()
        if self.error is not None:
            raise self.error
        return self.result


_END = object()


class JobQueue:
    """Submitted jobs run one after another on one worker thread."""

    def __init__(self, max_per_owner: int | None = None):
        self.max_per_owner = max_per_owner
        self._lock = threading.Lock()
        self._waiting: list[Job] = []
        self._wakeup = threading.Condition(self._lock)
        self._running: Job | None = None
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._worker: threading.Thread | None = None

    # ---- submitting and watching ----------------------------------------------------------------

    def submit(self, work: Callable[[JobContext], Any], owner: str = "", kind: str = "generate") -> Job:
        with self._lock:
            if self.max_per_owner is not None:
                mine = [j for j in self._waiting if j.owner == owner]
                if len(mine) >= self.max_per_owner:
                    raise SettingsError(f"you have {len(mine)} jobs waiting already (at most "
                                        f"{self.max_per_owner}); wait for one to finish or cancel one")
            job = Job(f"{next(self._ids):06d}", owner, kind, work)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._ensure_worker()
            self._wakeup.notify()
        return job

    def run(self, work: Callable[[JobContext], Any], owner: str = "", kind: str = "generate"):
        """Submit and wait: yields the job's events, then its result; re-raises its error. If the caller
        stops listening (a closed page), the job is cancelled."""
        job = self.submit(work, owner, kind)
        try:
            yield from job.events()
            yield job.outcome()
        finally:
            if not job.done.is_set():
                self.cancel(job.id, owner)

    def get(self, job_id: str) -> Job | None:
        return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """0 while it runs (or runs next), N when N jobs are ahead of it; -1 when finished."""
        with self._lock:
            if job.state in FINISHED:
                return -1
            if job is self._running:
                return 0
            ahead = self._waiting.index(job) if job in self._waiting else 0
            return ahead + (self._running is not None)

    @property
    def running(self) -> Job | None:
        return self._running

    # ---- stopping -------------------------------------------------------------------------------

    def cancel(self, job_id: str, owner: str) -> bool:
        """Cancel one job of `owner`'s (queued: never runs; running: stops at its next report)."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.owner != owner or job.state in FINISHED:
                return False
            job.cancel_requested.set()
            if job in self._waiting:
                self._waiting.remove(job)
                self._finish(job, CANCELLED, error=Interrupted("cancelled before it started"))
            return True

    def stop(self, owner: str) -> bool:
        """Cancel every unfinished job of `owner`'s; True if there was one."""
        with self._lock:
            ids = [j.id for j in [self._running, *self._waiting] if j is not None and j.owner == owner]
        return any([self.cancel(job_id, owner) for job_id in ids])

    # ---- the worker -----------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._work, daemon=True, name="gpu-jobs")
            self._worker.start()

    def _work(self) -> None:
        while True:
            with self._lock:
                while not self._waiting:
                    self._wakeup.wait()
                job = self._waiting.pop(0)
                self._running, job.state, job.started = job, RUNNING, time.monotonic()
            try:
                result = job.work(JobContext(job))
                outcome = (DONE, result, None)
            except Interrupted as exc:
                outcome = (CANCELLED, None, exc)
            except BaseException as exc:  # handed to whoever waits on the job, which reports it
                outcome = (FAILED, None, exc)
            with self._lock:
                self._running = None
                self._finish(job, outcome[0], outcome[1], outcome[2])

    def _finish(self, job: Job, state: str, result=None, error=None) -> None:
        job.state, job.result, job.error, job.finished = state, result, error, time.monotonic()
        job.work = None  # drop the closure (settings, pictures) once it has run
        job._events.put(_END)
        job.done.set()
        self._forget_old()

    def _forget_old(self, keep: int = 256) -> None:
        finished = [j for j in self._jobs.values() if j.state in FINISHED]
        for job in finished[: max(0, len(finished) - keep)]:
            del self._jobs[job.id]

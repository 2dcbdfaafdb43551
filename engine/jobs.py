"""One GPU job at a time: the engine's one queue for every action that uses the model (generate, enhance,
control map, API jobs, and later training and image-to-LoRA).

A job is a function of a JobContext, run by one worker thread in submission order. It reports steps, tokens
and stages through the context; whoever waits on it reads them with `Job.events()`. Cancelling (only its
owner may) stops a running job at its next report and a queued one before it starts.

The same queue feeds several workers (one per GPU, engine.workers) when made with `slots=N`: each slot is a
thread that takes the next job, preferring one for the model type its worker holds (`affinity`). A job whose
worker was lost raises `Retry` and goes back to the front of the queue, up to its `retries`.
"""

from __future__ import annotations

import itertools
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from engine.errors import Busy, Interrupted, ShuttingDown

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = (DONE, FAILED, CANCELLED)


@dataclass
class QueuedEvent:
    """The job still waits for the GPU, `ahead` jobs before it (sent by JobQueue.run when asked to poll)."""

    ahead: int


@dataclass
class StepEvent:
    run: int  # 0-based run (batch) index
    step: int  # 0-based step within the run
    total: int  # steps per run
    latents: object  # [B, C, h, w] after this step

    @property
    def done(self) -> int:
        """Steps done over all runs, this one included."""
        return self.run * self.total + self.step + 1


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
    done: int  # units of work done (blocks run, files read, bytes downloaded...)
    total: int
    what: str  # what is being done now, e.g. "DINOv3: block"
    overall: tuple[int, int] | None = None  # (done, total) of the whole action when this is one part of it


class Retry(Exception):
    """Raised by a job's work when its worker was lost: run it again (on any slot), up to the job's `retries`;
    after that the job fails with this message."""


class JobContext:
    """Handed to a job's function: report progress through it; each report is also where Stop takes effect.
    `slot`: which of the queue's workers runs it (0 with one worker).

    Code deep inside a job (loading, downloading, decoding) reports through the module functions `stage` and
    `progress`, which reach the context of the job running on this thread (and do nothing outside a job)."""

    def __init__(self, job: "Job", slot: int = 0):
        self.job = job
        self.slot = slot

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

    def progress(self, done: int, total: int, what: str, overall: tuple[int, int] | None = None) -> None:
        self.report(ProgressEvent(done, total, what, overall))


_current = threading.local()  # the context of the job this thread runs (JobQueue._work sets it)


def current() -> JobContext | None:
    """The context of the job running on this thread, or None outside a job."""
    return getattr(_current, "ctx", None)


def stage(name: str) -> None:
    """Report what the running job does now ("loading the model", "decoding", ...); Stop takes effect here.
    Nothing happens outside a job."""
    ctx = current()
    if ctx is not None:
        ctx.stage(name)


def progress(done: int, total: int, what: str, overall: tuple[int, int] | None = None) -> None:
    """Report progress of the running job's current part (e.g. bytes of a download); Stop takes effect here."""
    ctx = current()
    if ctx is not None:
        ctx.progress(done, total, what, overall)


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
    affinity: str | None = None  # the model type it needs: a worker holding it is preferred
    retries: int = 0  # runs again this many times at most after a Retry
    attempts: int = 0  # runs started
    slot: int | None = None  # the slot of its last run
    skipped: int = 0  # times a slot passed over it for a job of its own model type
    cancel_requested: threading.Event = field(default_factory=threading.Event)
    begun: threading.Event = field(default_factory=threading.Event)  # set when a worker takes it
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
    """Submitted jobs run one after another on one worker thread (or on `slots` threads, one per worker).
    `max_per_owner` / `max_waiting`: waiting jobs allowed per owner / in all (more: Busy)."""

    def __init__(self, max_per_owner: int | None = None, slots: int = 1, max_waiting: int | None = None):
        self.max_per_owner = max_per_owner
        self.max_waiting = max_waiting
        self.slots = slots
        self._lock = threading.Lock()
        self._waiting: list[Job] = []
        self._wakeup = threading.Condition(self._lock)
        self._running: dict[int, Job] = {}  # slot -> its job
        self._holds: dict[int, str | None] = {}  # slot -> model type its worker last ran
        self._jobs: dict[str, Job] = {}
        self._ids = itertools.count(1)
        self._workers: list[threading.Thread] = []
        self._closed: str | None = None  # why no new jobs are taken

    # ---- submitting and watching ----------------------------------------------------------------

    def submit(self, work: Callable[[JobContext], Any], owner: str = "", kind: str = "generate",
               affinity: str | None = None, retries: int = 0) -> Job:
        with self._lock:
            if self._closed:
                raise ShuttingDown(self._closed)
            if self.max_per_owner is not None:
                mine = [j for j in self._waiting if j.owner == owner]
                if len(mine) >= self.max_per_owner:
                    raise Busy(f"you have {len(mine)} jobs waiting already (at most "
                               f"{self.max_per_owner}); wait for one to finish or cancel one")
            if self.max_waiting is not None and len(self._waiting) >= self.max_waiting:
                raise Busy(f"the queue is full ({len(self._waiting)} jobs waiting); try again in a moment")
            job = Job(f"{next(self._ids):06d}", owner, kind, work, affinity=affinity, retries=retries)
            self._jobs[job.id] = job
            self._waiting.append(job)
            self._ensure_worker()
            self._wakeup.notify_all()
        return job

    def run(self, work: Callable[[JobContext], Any], owner: str = "", kind: str = "generate",
            poll: float | None = None):
        """Submit and wait: yields the job's events, then its result; re-raises its error. With `poll`
        (seconds), a QueuedEvent every `poll` seconds while the job waits for the GPU. If the caller stops
        listening (a closed page), the job is cancelled."""
        job = self.submit(work, owner, kind)
        try:
            while poll and job.state == QUEUED and not job.begun.wait(poll):
                yield QueuedEvent(self.position(job))
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
            if job.state == RUNNING or job not in self._waiting:
                return 0
            free = self.slots - len(self._running)
            return max(0, self._waiting.index(job) + 1 - free)

    @property
    def running(self) -> Job | None:
        """The running job (the first one, with several slots)."""
        jobs = list(self._running.values())
        return jobs[0] if jobs else None

    def running_jobs(self) -> list[Job]:
        with self._lock:
            return list(self._running.values())

    def finished(self) -> list[Job]:
        """Recently finished jobs, oldest first (the last few hundred are kept)."""
        with self._lock:
            return sorted((j for j in self._jobs.values() if j.state in FINISHED), key=lambda j: j.finished)

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
            ids = [j.id for j in [*self._running.values(), *self._waiting] if j.owner == owner]
        return any([self.cancel(job_id, owner) for job_id in ids])

    def close(self, reason: str = "the server is shutting down") -> None:
        """Take no new jobs (ShuttingDown with `reason`); jobs still waiting are cancelled with it. Running
        jobs go on (wait for them with `Job.done`)."""
        with self._lock:
            self._closed = reason
            for job in list(self._waiting):
                job.cancel_requested.set()
                self._waiting.remove(job)
                self._finish(job, CANCELLED, error=Interrupted(f"{reason}: the job never started"))

    # ---- the worker -----------------------------------------------------------------------------

    def _ensure_worker(self) -> None:
        if not self._workers:
            for slot in range(self.slots):
                name = "gpu-jobs" if self.slots == 1 else f"gpu-jobs-{slot}"
                self._workers.append(threading.Thread(target=self._work, args=(slot,), daemon=True, name=name))
                self._workers[-1].start()

    def _next(self, slot: int) -> Job:
        """Wait for a job this slot should take (see `pick`), and mark it running."""
        while True:
            idle = {s for s in range(self.slots) if s not in self._running and s != slot}
            index = pick(self._waiting, slot, self._holds, idle)
            if index is not None:
                job = self._waiting.pop(index)
                for skipped in self._waiting[:index]:
                    skipped.skipped += 1
                self._running[slot] = job
                job.state, job.started, job.slot = RUNNING, job.started or time.monotonic(), slot
                job.attempts += 1
                job.begun.set()
                return job
            self._wakeup.wait()

    def _work(self, slot: int) -> None:
        while True:
            with self._lock:
                job = self._next(slot)
            _current.ctx = JobContext(job, slot)
            try:
                result = job.work(_current.ctx)
                outcome = (DONE, result, None)
            except Interrupted as exc:
                outcome = (CANCELLED, None, exc)
            except BaseException as exc:  # handed to whoever waits on the job, which reports it
                outcome = (FAILED, None, exc)
            finally:
                _current.ctx = None
            with self._lock:
                del self._running[slot]
                lost = isinstance(outcome[2], Retry)
                self._holds[slot] = None if lost else job.affinity
                if lost and job.cancel_requested.is_set():
                    outcome = (CANCELLED, None, Interrupted("stopped by the user"))
                elif lost and job.attempts <= job.retries and not self._closed:
                    outcome = None
                    job.state, job.last_event = QUEUED, None  # its progress starts again
                    self._waiting.insert(0, job)  # first in line again, for whichever worker is free
                elif lost:
                    outcome = (FAILED, None, Retry(f"{outcome[2]} (tried {job.attempts} times)"))
                if outcome is not None:
                    self._finish(job, *outcome)
                self._wakeup.notify_all()

    def _finish(self, job: Job, state: str, result=None, error=None) -> None:
        job.state, job.result, job.error, job.finished = state, result, error, time.monotonic()
        job.begun.set()  # whoever waits for it to begin stops waiting
        job.work = None  # drop the closure (settings, pictures) once it has run
        job._events.put(_END)
        job.done.set()
        self._forget_old()

    def _forget_old(self, keep: int = 256) -> None:
        finished = [j for j in self._jobs.values() if j.state in FINISHED]
        for job in finished[: max(0, len(finished) - keep)]:
            del self._jobs[job.id]


def pick(waiting: list[Job], slot: int, holds: dict, idle: set) -> int | None:
    """Which waiting job the free slot `slot` takes. `holds`: slot -> model type its worker last ran; `idle`:
    the other free slots. First a job for the model type it holds (unless an older job was passed over too
    often), else the first job no other idle slot is better for: one holding its model type, or any other
    one for a job whose worker was lost on this slot. None: leave them to those slots."""
    if not waiting:
        return None
    mine = holds.get(slot)
    theirs = {holds.get(s) for s in idle} - {None}

    def retried_here(job):
        return job.attempts > 0 and job.slot == slot and bool(idle)

    if mine is not None and waiting[0].skipped < MAX_SKIPS:
        for i, job in enumerate(waiting):
            if job.affinity == mine and not retried_here(job):
                return i
    for i, job in enumerate(waiting):
        if not retried_here(job) and (job.affinity is None or job.affinity == mine or job.affinity not in theirs):
            return i
    return None


MAX_SKIPS = 4  # a job passed over this often (for jobs of a loaded model type) is taken next

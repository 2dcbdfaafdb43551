"""Where the API's jobs run: a JobQueue (engine.jobs) whose work is this process's engine or one of the worker
processes (engine.workers, one per GPU). app/api/ray_serve.py has the same interface over Ray Serve.

Every backend answers with JobView and writes a job's PNGs itself, atomically, into the outputs folder
(engine.outputs.write_png_bytes): a job is done only once all its files are there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from engine.jobs import QUEUED, StepEvent

SHUTDOWN_GRACE = 30.0  # seconds running jobs get to finish when the server stops


@dataclass
class Image:
    path: Path
    settings: dict


@dataclass
class JobView:
    """What GET /v1/jobs/{id} shows."""

    id: str
    state: str  # queued, running, done, failed, cancelled
    position: int | None = None  # jobs ahead (queued only)
    step: int = 0  # steps done, over all the job's runs
    steps: int = 0
    images: list[Image] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)
    attempts: int = 0
    worker: str | None = None  # which worker runs (or ran) it, when there are several


@dataclass
class Finished:
    images: list[Image]
    notes: list[str]


class Notes:
    """A job context that also keeps the notes its job reports (LoRA keys that did not apply...)."""

    def __init__(self, ctx, notes: list[str]):
        self._ctx, self.notes = ctx, notes

    def __getattr__(self, name):
        return getattr(self._ctx, name)

    def note(self, message: str) -> None:
        self.notes.append(message)
        self._ctx.note(message)

    def report(self, event) -> None:
        from engine.jobs import NoteEvent

        if isinstance(event, NoteEvent):
            self.notes.append(event.message)
        self._ctx.report(event)


def write_images(rendered, outputs) -> list[Image]:
    """The finished PNG files (engine.render's Rendered), written atomically into the outputs folder."""
    from engine.outputs import write_png_bytes

    return [Image(write_png_bytes(r.png, r.seed, outputs), r.settings) for r in rendered]


def in_process(engine):
    """The work of a job run by this process's engine."""
    from engine.render import render

    return lambda ctx, request: render(engine, request, ctx)


class LocalBackend:
    """API jobs on `queue`; each runs `runner(ctx, request)` (in_process(engine), or a WorkerPool's `run`)."""

    def __init__(self, queue, runner, outputs: Path, retries: int = 0, pool=None):
        self.queue = queue
        self.runner = runner
        self.outputs = Path(outputs)
        self.retries = retries
        self.pool = pool

    async def submit(self, request, owner: str) -> str:
        """Queue the job (Busy when the queue is full, ShuttingDown when stopping); its id."""
        def work(ctx):
            notes = list(request.notes)
            rendered = self.runner(Notes(ctx, notes), request)
            ctx.stage("saving")
            return Finished(write_images(rendered, self.outputs), notes)

        s = request.settings
        job = self.queue.submit(work, owner, "api", affinity=s.model_type, retries=self.retries)
        job.steps = s.num_inference_steps * s.count
        return job.id

    def _job(self, job_id: str, owner: str):
        job = self.queue.get(job_id)
        return job if job is not None and job.owner == owner and job.kind == "api" else None

    async def view(self, job_id: str, owner: str) -> JobView | None:
        job = self._job(job_id, owner)
        if job is None:
            return None
        view = JobView(job.id, job.state, steps=getattr(job, "steps", 0), attempts=job.attempts)
        if self.pool is not None and job.slot is not None:
            view.worker = f"{self.pool.devices[job.slot]} (worker {job.slot})"
        if job.state == QUEUED:
            view.position = self.queue.position(job)
        event = job.last_event
        if isinstance(event, StepEvent):  # the last step reported (running, or where it stopped)
            view.step = event.done
        if isinstance(job.result, Finished):
            view.images, view.notes, view.step = job.result.images, job.result.notes, view.steps
        if job.error is not None:
            view.error = str(job.error) or job.state
        return view

    async def cancel(self, job_id: str, owner: str) -> JobView | None:
        job = self._job(job_id, owner)
        if job is None:
            return None
        self.queue.cancel(job.id, owner)
        return await self.view(job_id, owner)

    async def close(self, grace: float = SHUTDOWN_GRACE) -> None:
        """Take no new jobs, cancel the waiting ones, give running ones `grace` seconds, stop the workers."""
        import asyncio

        self.queue.close("the server is shutting down")
        for job in self.queue.running_jobs():
            await asyncio.get_running_loop().run_in_executor(None, job.done.wait, grace)
        if self.pool is not None:
            self.pool.close()

"""One worker process per GPU, each with an Engine of its own on its device, fed from one JobQueue.

The queue (engine.jobs.JobQueue with a slot per worker) decides which job runs where; a slot's job calls
`pool.run(ctx, request)`, which hands the request to that slot's process and relays its progress. A worker
returns finished PNG files (engine.render): the caller writes them, so a worker that dies mid-job leaves
nothing behind. A dead worker is started again, and its job goes back to the queue (engine.jobs.Retry) to
run on whichever worker is free first; a second loss fails the job with the reason.

Processes are spawned (never forked: CUDA and torch's threads do not survive a fork). The engine factory is
handed in (app.setup builds it), so this module knows no front-end.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
import time
from dataclasses import dataclass, field

from engine.errors import Interrupted, UserError
from engine.jobs import NoteEvent, Retry, StageEvent, StepEvent, TokenEvent

POLL_SECONDS = 0.05  # how often a slot looks for a cancel or a dead worker while waiting for messages
START_TIMEOUT = 600.0  # importing torch and building an engine on a busy machine


def devices_from(text: str) -> list[str]:
    """`--gpus 0,1` -> ["cuda:0", "cuda:1"]; device names pass as they are ("cpu,cpu": two CPU workers)."""
    out = []
    for item in (x.strip() for x in str(text).split(",")):
        if not item:
            continue
        out.append(f"cuda:{item}" if item.isdigit() else item)
    if not out:
        raise UserError(f"--gpus {text!r}: give GPU numbers, e.g. 0,1 (or cpu,cpu for CPU workers)")
    return out


def threads_for(devices: list[str], cores: int | None = None) -> int:
    """Torch threads per CPU worker: the cores shared out, so CPU workers do not fight over them."""
    cpu_workers = sum(d.startswith("cpu") for d in devices) or 1
    return max(1, (cores or os.cpu_count() or 1) // cpu_workers)


@dataclass
class Worker:
    device: str
    process: object = None
    conn: object = None
    pid: int | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    failure: str = ""  # why it could not start
    lock: threading.Lock = field(default_factory=threading.Lock)


class WorkerPool:
    """`factory(device)` builds a worker's Engine (it must pickle: it travels to the new process)."""

    def __init__(self, factory, devices: list[str], threads: int | None = None,
                 start_timeout: float = START_TIMEOUT):
        self.factory = factory
        self.devices = list(devices)
        self.threads = threads or threads_for(self.devices)
        self.start_timeout = start_timeout
        self.workers = [Worker(d) for d in self.devices]
        self.restarts = 0
        self._context = multiprocessing.get_context("spawn")
        self._closed = False

    def start(self, wait: bool = True) -> "WorkerPool":
        for slot in range(len(self.workers)):
            self._spawn(slot)
        if wait:
            for slot in range(len(self.workers)):
                self._wait_ready(slot)
        return self

    # ---- running a job -----------------------------------------------------------------------

    def run(self, ctx, request):
        """Run `request` (engine.engine.Request) on the worker of `ctx.slot`; returns its engine.render.Rendered
        list. Stop (the job's cancel) is passed on to the worker; a lost worker raises Retry."""
        slot = ctx.slot
        worker = self._ensure(slot)
        try:
            worker.conn.send(("run", request))
        except (OSError, EOFError, BrokenPipeError):
            raise self._lost(slot, "before the job reached it") from None
        cancel_sent = False
        while True:
            if ctx.job.cancel_requested.is_set() and not cancel_sent:
                cancel_sent = self._send(worker, ("cancel",))
            try:
                if not worker.conn.poll(POLL_SECONDS):
                    if not worker.process.is_alive():
                        raise self._lost(slot, "while running this job")
                    continue
                message = worker.conn.recv()
            except (OSError, EOFError):
                raise self._lost(slot, "while running this job") from None
            kind, body = message[0], message[1:]
            if kind == "done":
                return body[0]
            if kind == "cancelled":
                raise Interrupted(body[0])
            if kind == "failed":
                user_error, text = body
                raise UserError(text) if user_error else RuntimeError(text)
            if not ctx.job.cancel_requested.is_set():
                ctx.report(_event(kind, body))

    def pid(self, slot: int) -> int | None:
        return self.workers[slot].pid

    def close(self) -> None:
        """Stop the workers (a running job is abandoned; its caller sees the worker lost)."""
        self._closed = True
        for worker in self.workers:
            self._send(worker, ("quit",))
        for worker in self.workers:
            if worker.process is not None:
                worker.process.join(timeout=10)
                if worker.process.is_alive():
                    worker.process.kill()
                    worker.process.join(timeout=5)

    # ---- the processes -----------------------------------------------------------------------

    def _spawn(self, slot: int) -> None:
        worker = self.workers[slot]
        parent, child = self._context.Pipe()
        process = self._context.Process(target=serve_worker, args=(self.factory, worker.device, self.threads, child),
                                        daemon=True, name=f"zimage-worker-{slot}")
        process.start()
        child.close()
        worker.process, worker.conn, worker.pid, worker.failure = process, parent, process.pid, ""
        worker.ready.clear()

    def _wait_ready(self, slot: int) -> Worker:
        worker = self.workers[slot]
        with worker.lock:
            if worker.ready.is_set():
                return worker
            deadline = time.monotonic() + self.start_timeout
            while time.monotonic() < deadline:
                try:
                    if worker.conn.poll(0.1):
                        kind, *body = worker.conn.recv()
                        if kind == "ready":
                            worker.ready.set()
                            return worker
                        worker.failure = body[0]
                        break
                except (OSError, EOFError):
                    break
                if not worker.process.is_alive():
                    break
            worker.process.join(timeout=5 if worker.failure or not worker.process.is_alive() else 0)
            alive = worker.process.is_alive()
            reason = worker.failure or (f"it stopped (exit code {worker.process.exitcode})" if not alive
                                        else "it did not start in time")
            raise UserError(f"the worker on {worker.device} could not start: {reason}")

    def _ensure(self, slot: int) -> Worker:
        """The slot's worker, started again first if it died while idle."""
        worker = self.workers[slot]
        if worker.process is None or not worker.process.is_alive():
            self.restarts += 1
            self._spawn(slot)
        return self._wait_ready(slot)

    def _lost(self, slot: int, when: str) -> Retry:
        """The worker died: start a new one now (it loads while the job waits for a worker) and say why."""
        worker = self.workers[slot]
        worker.process.join(timeout=5)
        code = worker.process.exitcode
        if not self._closed:
            self.restarts += 1
            self._spawn(slot)
        return Retry(f"the worker on {worker.device} stopped (exit code {code}) {when}")

    @staticmethod
    def _send(worker: Worker, message) -> bool:
        try:
            worker.conn.send(message)
            return True
        except (OSError, EOFError, AttributeError):
            return False


def _event(kind: str, body: tuple):
    if kind == "step":
        return StepEvent(*body, None)
    if kind == "token":
        return TokenEvent(*body)
    if kind == "note":
        return NoteEvent(*body)
    return StageEvent(*body)


# ---- inside a worker process ------------------------------------------------------------------------

def serve_worker(factory, device: str, threads: int, conn) -> None:
    """A worker process: build the engine, then run requests one at a time on its own job queue (cancel
    messages stop the running one) until told to quit or the parent goes away."""
    try:
        import torch

        if device.startswith("cpu"):
            torch.set_num_threads(threads)
        engine = factory(device)
    except BaseException as exc:  # say why, then end: the parent reports it
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    send_lock = threading.Lock()

    def send(message):
        with send_lock:
            conn.send(message)

    current = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent is gone
        if message[0] == "quit":
            return
        if message[0] == "cancel":
            job = current.get("job")
            if job is not None:
                engine.jobs.cancel(job.id, "worker")
            continue
        current["job"] = _start(engine, message[1], send)


def _start(engine, request, send):
    """Submit the request on the engine's queue; a thread relays its events and its outcome to the parent."""
    from engine.render import render

    job = engine.jobs.submit(lambda ctx: render(engine, request, ctx), "worker")

    def relay():
        for event in job.events():
            if isinstance(event, StepEvent):
                send(("step", event.run, event.step, event.total))
            elif isinstance(event, TokenEvent):
                send(("token", event.tokens, event.per_second))
            elif isinstance(event, NoteEvent):
                send(("note", event.message))
            elif isinstance(event, StageEvent):
                send(("stage", event.name))
        job.done.wait()
        if isinstance(job.error, Interrupted):
            send(("cancelled", str(job.error)))
        elif job.error is not None:
            send(("failed", isinstance(job.error, UserError), _describe(job.error)))
        else:
            send(("done", job.result))

    threading.Thread(target=relay, daemon=True, name="worker-relay").start()
    return job


def _describe(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, UserError) else f"{type(exc).__name__}: {exc}"

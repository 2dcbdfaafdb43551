"""`serve --ray`: the same /v1 API on Ray Serve, across machines (`pip install -r requirements-serve.txt`).

Two deployments, as in Ray's own Stable Diffusion example: `ImageWorker`, one replica per GPU holding its own
engine (max_ongoing_requests=1, a bounded queue: max_queued_requests), and `Ingress`, one replica serving the
FastAPI app of app.api.routes over `RayBackend`. Ray routes each job to a free replica and restarts dead ones;
the ingress keeps the job table, retries a job whose replica died (once), answers 429 with Retry-After when
the workers' queue is full, and writes the finished PNGs atomically into its outputs folder (the images
travel back as bytes, so workers may be on other machines).

Ray is imported only here, and only with --ray: home users never need it.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import Busy, ShuttingDown, UserError

APP_NAME = "zimage"
RETRY_AFTER = 5  # seconds a client is told to wait when the queue is full
ADMIT_SECONDS = 0.5  # a job not refused by then is queued (Ray refuses at once when its queue is full)
RETRIES = 1  # runs again after its replica died, at most
KEEP_FINISHED = 256
HEAD = "node:__internal_head__"  # Ray's resource of the head node: the ingress (and its images) stay there


def need_ray():
    try:
        import ray  # noqa: F401
        from ray import serve  # noqa: F401
    except ImportError:
        raise UserError("--ray needs Ray Serve: pip install -r requirements-serve.txt") from None


# ---- the worker replicas ---------------------------------------------------------------------------------

class ImageWorker:
    """One replica: an engine on its GPU (Ray gives it one: CUDA_VISIBLE_DEVICES), or the CPU without GPUs."""

    def __init__(self, factory, cpus: float = 1.0):
        import ray
        import torch

        device = "cuda" if ray.get_gpu_ids() and torch.cuda.is_available() else "cpu"
        if device == "cpu":
            torch.set_num_threads(max(1, int(cpus)))
        self.engine = factory(device)

    async def run(self, request):
        """Stream: ("started", pid), ("step", steps done over all runs)..., then ("done", [Rendered]) or ("failed", user
        error?, text). Cancelling the call (the client's DELETE) stops the job at its next step."""
        from engine.jobs import NoteEvent, StepEvent
        from engine.render import render

        job = self.engine.jobs.submit(lambda ctx: render(self.engine, request, ctx), "ray")
        yield ("started", os.getpid())
        events, loop, end = job.events(), asyncio.get_running_loop(), object()
        try:
            while (event := await loop.run_in_executor(None, next, events, end)) is not end:
                if isinstance(event, StepEvent):
                    yield ("step", event.done)
                elif isinstance(event, NoteEvent):
                    yield ("note", event.message)
        except (asyncio.CancelledError, GeneratorExit):
            self.engine.jobs.cancel(job.id, "ray")
            raise
        await loop.run_in_executor(None, job.done.wait)
        if job.error is None:
            yield ("done", job.result)
        else:
            yield ("failed", isinstance(job.error, UserError), str(job.error))


# ---- the ingress: the job table behind the /v1 routes ----------------------------------------------------

@dataclass
class RayJob:
    id: str
    owner: str
    steps: int
    state: str = "queued"
    step: int = 0
    attempts: int = 0
    images: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    error: str | None = None
    worker_pid: int | None = None
    task: object = None
    call: object = None  # the running DeploymentResponseGenerator (cancel stops it)
    admitted: object = None  # future: True once queued or started; an exception if refused
    finished_at: float | None = None


class RayBackend:
    """The backend of app.api.routes over the worker deployment's handle (same interface as LocalBackend)."""

    def __init__(self, handle, outputs: Path, retries: int = RETRIES):
        self.handle = handle
        self.outputs = Path(outputs)
        self.retries = retries
        self.jobs: dict[str, RayJob] = {}
        self.closed: str | None = None

    async def submit(self, request, owner: str) -> str:
        if self.closed:
            raise ShuttingDown(self.closed)
        s = request.settings
        job = RayJob(secrets.token_hex(6), owner, s.num_inference_steps * s.count)
        job.admitted = asyncio.get_running_loop().create_future()
        self.jobs[job.id] = job
        job.task = asyncio.ensure_future(self._drive(job, request))
        try:
            await asyncio.wait_for(asyncio.shield(job.admitted), ADMIT_SECONDS)
        except asyncio.TimeoutError:
            pass  # not refused: it waits in Ray's queue
        except Busy:
            del self.jobs[job.id]
            raise
        return job.id

    async def _drive(self, job: RayJob, request) -> None:
        """Run the job on a replica; again on another if its replica dies (up to `retries`); write its PNGs."""
        from ray.exceptions import ActorUnavailableError, RayActorError
        from ray.serve.exceptions import BackPressureError

        lost = None
        while job.attempts <= self.retries and job.state not in ("cancelled",):
            job.attempts += 1
            try:
                job.call = self.handle.options(stream=True).run.remote(request)
                async for item in job.call:
                    await self._on(job, item)
                return
            except BackPressureError:
                job.attempts -= 1
                self._admit(job, Busy(f"the queue is full ({request.settings.model_type} jobs waiting for a "
                                      "worker); try again in a moment", RETRY_AFTER))
                self._end(job, "failed", "the queue was full: submit it again")
                return
            except (RayActorError, ActorUnavailableError) as exc:
                lost = f"the worker replica stopped while running this job ({type(exc).__name__})"
                job.state, job.step = "queued", 0
            except asyncio.CancelledError:
                self._end(job, "cancelled", "stopped by the user")
                return
            except Exception as exc:  # anything else: the job fails with what it was
                self._admit(job, True)
                self._end(job, "failed", f"{type(exc).__name__}: {exc}")
                return
        if job.state != "cancelled":
            self._end(job, "failed", f"{lost} (tried {job.attempts} times)")

    async def _on(self, job: RayJob, item) -> None:
        kind = item[0]
        self._admit(job, True)
        if kind == "started":
            job.state, job.worker_pid, job.step = "running", item[1], 0
        elif kind == "step":
            job.step = item[1]
        elif kind == "note":
            job.notes.append(item[1])
        elif kind == "failed":
            self._end(job, "failed", item[2])
        elif kind == "done":
            from app.api.backend import write_images

            job.images = await asyncio.get_running_loop().run_in_executor(None, write_images, item[1], self.outputs)
            job.step = job.steps
            self._end(job, "done")

    @staticmethod
    def _admit(job: RayJob, outcome) -> None:
        if not job.admitted.done():
            if isinstance(outcome, BaseException):
                job.admitted.set_exception(outcome)
            else:
                job.admitted.set_result(outcome)

    def _end(self, job: RayJob, state: str, error: str | None = None) -> None:
        if job.finished_at is None:
            job.state, job.error, job.finished_at = state, error, time.monotonic()
        self._forget_old()

    def _forget_old(self) -> None:
        finished = sorted((j for j in self.jobs.values() if j.finished_at), key=lambda j: j.finished_at)
        for job in finished[: max(0, len(finished) - KEEP_FINISHED)]:
            del self.jobs[job.id]

    def _mine(self, job_id: str, owner: str) -> RayJob | None:
        job = self.jobs.get(job_id)
        return job if job is not None and job.owner == owner else None

    async def view(self, job_id: str, owner: str):
        from app.api.backend import JobView

        job = self._mine(job_id, owner)
        if job is None:
            return None
        position = None
        if job.state == "queued":
            queued = [j for j in self.jobs.values() if j.state == "queued"]
            position = queued.index(job)
        return JobView(job.id, job.state, position, job.step, job.steps, list(job.images), job.error,
                       list(job.notes), job.attempts, f"replica pid {job.worker_pid}" if job.worker_pid else None)

    async def cancel(self, job_id: str, owner: str):
        job = self._mine(job_id, owner)
        if job is None:
            return None
        if job.finished_at is None:
            job.state = "cancelled"
            if job.call is not None:
                job.call.cancel()
            job.task.cancel()
            self._end(job, "cancelled", "stopped by the user")
        return await self.view(job_id, owner)

    async def close(self, grace: float = 0) -> None:
        self.closed = "the server is shutting down"
        for job in list(self.jobs.values()):
            if job.state == "queued":
                await self.cancel(job.id, job.owner)


class Ingress:
    """The /v1 API (app.api.routes) over RayBackend; one replica (it holds the job table)."""

    def __init__(self, worker, factory, auth, output: str, types=None):
        self.engine = factory("cpu")  # validates settings and lists models; never loads one
        self.backend = RayBackend(worker, Path(output))
        self.auth, self.output, self.types = auth, output, types

    def __serve_build_asgi_app__(self):
        import contextlib

        from app.api.routes import build_api, root_app

        @contextlib.asynccontextmanager
        async def lifespan(_app):
            yield
            await self.backend.close()  # while Ray stops it: new jobs get 503, waiting ones are cancelled

        return root_app(build_api(self.backend, self.engine, self.auth, Path(self.output), self.types), lifespan)


# ---- building and running the application ----------------------------------------------------------------

def worker_options(args) -> dict:
    """The worker deployment's knobs from the flags: one GPU per replica, one job at a time, a bounded queue."""
    from ray.serve.config import BackpressureConfig

    options = dict(max_ongoing_requests=1, max_queued_requests=args.max_queue,
                   backpressure_config=BackpressureConfig(status_code=429, retry_after_s=RETRY_AFTER),
                   ray_actor_options={"num_gpus": args.replica_gpus, "num_cpus": args.replica_cpus},
                   graceful_shutdown_timeout_s=30)
    if args.min_replicas is not None or args.max_replicas is not None:
        low = args.min_replicas if args.min_replicas is not None else 1
        high = args.max_replicas if args.max_replicas is not None else max(low, 1)
        if not 0 <= low <= high or high < 1:
            raise UserError(f"--min-replicas {low} and --max-replicas {high}: need 0 <= min <= max, max >= 1")
        options["autoscaling_config"] = {"min_replicas": low, "max_replicas": high, "target_ongoing_requests": 1}
    else:
        options["num_replicas"] = args.replicas or 1
    return options


def build_application(args):
    """The bound Ray Serve application for these flags (the CLI's, or serve_config.yaml's `args.flags`)."""
    need_ray()
    from ray import serve

    from app.api.auth import ApiAuth
    from app.setup import WorkerEngine
    from app.auth import Logins

    auth = ApiAuth.from_args(args, Logins.from_args(args.auth, args.auth_file))  # digests travel, not passwords
    factory = WorkerEngine(args)
    if args.lock_model:
        factory("cpu").registry.get(args.lock_model)  # an unknown type: an error now, not in every replica
    worker = serve.deployment(ImageWorker, name="ImageWorker", **worker_options(args))
    ingress = serve.deployment(serve.ingress()(Ingress), name="Ingress", num_replicas=1,  # it holds the job table
                               ray_actor_options={"num_cpus": 0, "resources": {HEAD: 0.001}})
    types = [args.lock_model] if args.lock_model else None
    return ingress.bind(worker.bind(factory, args.replica_cpus), factory, auth, str(Path(args.output).resolve()),
                        types), auth


def runtime_env() -> dict:
    """Ray's workers import this app from the same folder as here (every machine needs the same checkout there:
    the weights, LoRAs and this code are not shipped by Ray)."""
    root = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    return {"env_vars": {"PYTHONPATH": path, "HF_HUB_DISABLE_TELEMETRY": "1", "GRADIO_ANALYTICS_ENABLED": "False"}}


def app_builder(config: dict):
    """For `serve run serve_config.yaml`: `args: {flags: [...]}` are `python app.py serve` flags."""
    from app.cli import build_parser

    flags = [str(f) for f in (config or {}).get("flags", [])]
    return build_application(build_parser().parse_args(["serve", *flags]))[0]


def serve_ray(args, block: bool = True, init: bool = True):
    """Start (or join, --ray-address) Ray, run the application; block=False returns the base URL."""
    need_ray()
    import ray
    from ray import serve

    from app.api.server import host_for

    application, auth = build_application(args)
    host = host_for(args, auth, lambda text: print(text, file=sys.stderr))
    if init:
        ray.init(address=args.ray_address or None, include_dashboard=False, runtime_env=runtime_env())
    serve.start(http_options={"host": host, "port": args.server_port})
    serve.run(application, name=APP_NAME, route_prefix="/")
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{args.server_port}"
    print(f"serving the API through Ray Serve at {url}/v1 (documentation: {url}/v1/docs)", file=sys.stderr)
    if not block:
        return url
    try:
        while True:
            time.sleep(1)
    except KeyboardInterrupt:
        print("stopping ...", file=sys.stderr)
    finally:
        serve.shutdown()
        if init:
            ray.shutdown()
    return 0

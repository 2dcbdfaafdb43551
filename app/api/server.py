"""`python app.py serve`: the API alone, on this process's GPU or on worker processes (`--gpus 0,1`).

Without a login or an API key it listens on 127.0.0.1 only, and says so.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.errors import UserError


def host_for(args, auth, say=print) -> str:
    """The address to bind: 127.0.0.1 unless asked otherwise, and never anything else without a login."""
    from app.auth import is_loopback

    host = args.server_name or ("0.0.0.0" if args.listen else "127.0.0.1")
    if auth.enabled:
        return host
    if not is_loopback(host):
        say(f"note: not listening on {host}: without --auth, --auth-file or --api-key-file the API serves this "
            "computer only")
    say("note: no login configured: the API answers this computer only (127.0.0.1)")
    return "127.0.0.1"


def local_backend(args, engine, threads: int | None = None):
    """Jobs on this process's engine, or (--gpus) on one worker process per device, fed by one queue.
    `threads`: torch threads of a CPU worker (default: the cores shared out)."""
    from app.api.backend import LocalBackend, in_process
    from engine.jobs import JobQueue

    outputs = Path(args.output)
    if not args.gpus:
        queue = engine.jobs
        queue.max_waiting, queue.max_per_owner = args.max_queue, args.max_jobs_per_user
        return LocalBackend(queue, in_process(engine), outputs)
    from app.setup import WorkerEngine
    from engine.workers import WorkerPool, devices_from

    devices = devices_from(args.gpus)
    pool = WorkerPool(WorkerEngine(args), devices, threads)
    print(f"starting {len(devices)} worker process{'es' if len(devices) > 1 else ''} ({', '.join(devices)}) ...",
          file=sys.stderr)
    pool.start()
    queue = JobQueue(max_per_owner=args.max_jobs_per_user, slots=len(devices), max_waiting=args.max_queue)
    return LocalBackend(queue, pool.run, outputs, retries=1, pool=pool)


def build_app(args, engine, backend, logins):
    from app.api.auth import ApiAuth
    from app.api.routes import build_api, root_app

    auth = ApiAuth.from_args(args, logins)

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        yield
        await backend.close()

    api = build_api(backend, engine, auth, Path(args.output), [args.lock_model] if args.lock_model else None)
    return root_app(api, lifespan), auth


@dataclass
class Running:
    """A server running on a thread (tests, benchmarks): its base URL, and `stop()`."""

    server: object
    thread: threading.Thread
    url: str
    backend: object = None

    def stop(self, timeout: float = 60) -> None:
        self.server.should_exit = True
        self.thread.join(timeout)

    def wait(self) -> None:
        """Until Ctrl+C (uvicorn handles the signal and stops cleanly)."""
        while self.thread.is_alive():
            self.thread.join(0.5)


def start(app, host: str, port: int, timeout: float = 60) -> tuple[object, threading.Thread]:
    """uvicorn serving `app` on a thread; returns once it accepts connections."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True, name="api-server")
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise UserError(f"the API server could not start on {host}:{port} (port in use?)")
        time.sleep(0.05)
    return server, thread


def serve(args, block: bool = True, threads: int | None = None) -> Running | int:
    """Serve the API (without Ray); block=False returns the running server."""
    from app.setup import make_engine
    from app.auth import Logins

    logins = Logins.from_args(args.auth, args.auth_file)
    engine = make_engine(args)
    if args.lock_model:
        engine.registry.get(args.lock_model)
    backend = local_backend(args, engine, threads)
    app, auth = build_app(args, engine, backend, logins)
    host = host_for(args, auth, lambda text: print(text, file=sys.stderr))
    server, thread = start(app, host, args.server_port)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{shown}:{args.server_port}"
    print(f"serving the API at {url}/v1 (documentation: {url}/v1/docs)", file=sys.stderr)
    running = Running(server, thread, url, backend)
    if not block:
        return running
    running.wait()
    return 0

"""The API next to the Gradio page, in the same process: mounted at /v1 on Gradio's own FastAPI app, its jobs
on the page's queue (one GPU: page and API jobs run one after another, each Stop stopping only its own)."""

from __future__ import annotations

import contextlib
from pathlib import Path


def add_flags(group) -> None:
    """The page's API flags (`python app.py ...`); `serve` takes the same."""
    group.add_argument("--api-key-file", metavar="FILE",
                       help="API keys, one NAME:KEY a line: callers send `Authorization: Bearer KEY` (the jobs "
                            "are NAME's)")
    group.add_argument("--no-api", action="store_true", help="do not serve the HTTP API (/v1) next to the page")


def page_lifespan(engine, args, logins, output_dir):
    """Gradio's `app_kwargs={"lifespan": ...}`: mounts /v1 on the page's app as it starts. The queue is the
    page's: it is not closed here (the page may go on in this process)."""
    from starlette.routing import Mount

    from app.api.auth import ApiAuth
    from app.api.backend import LocalBackend, in_process
    from app.api.routes import build_api

    auth = ApiAuth.from_args(args, logins)
    backend = LocalBackend(engine.jobs, in_process(engine), Path(output_dir))
    types = [args.lock_model] if args.lock_model else None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        api = build_api(backend, engine, auth, Path(output_dir), types)
        app.router.routes.insert(0, Mount("/v1", app=api))  # before Gradio's own routes
        yield

    return lifespan, auth

"""The /v1 routes over a backend (app.api.backend.LocalBackend or app.api.ray_serve.RayBackend).

POST /jobs takes a settings JSON (the fields of a PNG's settings), validates it with the engine (one merge
path, one validation: the page's and the CLI's) and answers at once with the job; GET /jobs/{id} shows its
state, progress, queue position and, once done, its images; DELETE cancels it; GET /models lists the model
types and their files. Bad settings: 422 naming the field; queue full: 429 with Retry-After; stopping: 503.
"""

# no `from __future__ import annotations`: FastAPI reads the routes' annotations, some of them local names
from pathlib import Path

from engine import APP_NAME, APP_VERSION
from engine.errors import Busy, ShuttingDown, UserError

from engine.settings import INPUT_FIELDS as PATH_FIELDS  # pictures by server path: not taken from API callers


def build_api(backend, engine, auth, outputs: Path, types: list[str] | None = None):
    """The API as a FastAPI app, meant to be mounted at /v1 (its docs at /v1/docs, schema /v1/openapi.json)."""
    from typing import Annotated

    from fastapi import Depends, FastAPI, HTTPException, Request
    from fastapi.concurrency import run_in_threadpool
    from fastapi.responses import FileResponse

    from app.api.schemas import JobOut, ModelOut, Problem, settings_model

    types = list(types or sorted(engine.registry.types))
    outputs = Path(outputs).resolve()
    Settings = settings_model()
    Owner = Annotated[str, Depends(auth.owner)]
    api = FastAPI(title=f"{APP_NAME} API", version=APP_VERSION, redoc_url=None,
                  description="Text-to-image jobs. Log in with HTTP Basic (the page's users) or an API key "
                              "(`Authorization: Bearer KEY`).")
    answers = {401: {"model": Problem}, 404: {"model": Problem}}

    async def find(job_id: str, owner: str):
        view = await backend.view(job_id, owner)
        if view is None:
            raise HTTPException(404, f"no job {job_id} of yours (unknown, someone else's, or long finished)")
        return view

    @api.post("/jobs", status_code=202, response_model=JobOut, summary="Submit a job",
              responses={**answers, 429: {"model": Problem, "description": "the queue is full: retry after "
                                                                                "Retry-After seconds"},
                         503: {"model": Problem, "description": "the server is shutting down"}})
    async def submit_job(settings: Settings, request: Request, owner: Owner):
        body = {k: v for k, v in settings.model_dump(exclude_unset=True).items() if v is not None}
        job_request = await run_in_threadpool(make_request, engine, body, types)
        try:
            job_id = await backend.submit(job_request, owner)
        except Busy as exc:
            raise HTTPException(429, str(exc), headers={"Retry-After": str(max(1, round(exc.retry_after)))}) \
                from None
        except ShuttingDown as exc:
            raise HTTPException(503, str(exc)) from None
        return job_out(await find(job_id, owner), request)

    @api.get("/jobs/{job_id}", response_model=JobOut, summary="A job's state, progress and images",
             responses=answers)
    async def get_job(job_id: str, request: Request, owner: Owner):
        return job_out(await find(job_id, owner), request)

    @api.delete("/jobs/{job_id}", response_model=JobOut, summary="Cancel a job (queued: never runs; running: "
                                                                  "stops at its next step)", responses=answers)
    async def cancel_job(job_id: str, request: Request, owner: Owner):
        view = await backend.cancel(job_id, owner)
        if view is None:
            await find(job_id, owner)  # 404
        return job_out(view, request)

    @api.get("/jobs/{job_id}/images/{n}", name="job_image", summary="One of a job's PNGs (settings embedded)",
             response_class=FileResponse, responses={**answers, 200: {"content": {"image/png": {}}}})
    async def job_image(job_id: str, n: int, owner: Owner):
        view = await find(job_id, owner)
        if not 0 <= n < len(view.images):
            raise HTTPException(404, f"job {job_id} has {len(view.images)} image(s) so far")
        path = Path(view.images[n].path).resolve()
        if not path.is_relative_to(outputs) or not path.is_file():
            raise HTTPException(404, f"image {n} of job {job_id} is no longer in the outputs folder")
        return FileResponse(path, media_type="image/png", filename=path.name)

    @api.get("/models", response_model=list[ModelOut], summary="Model types, and which of their files are "
                                                                "present", responses={401: {"model": Problem}})
    async def list_models(owner: Owner):
        return await run_in_threadpool(models, engine, types)

    return api


def job_out(view, request) -> dict:
    steps = max(view.steps, 1)
    return {"id": view.id, "url": str(request.url_for("get_job", job_id=view.id)), "state": view.state,
            "position": view.position, "attempts": view.attempts, "worker": view.worker, "error": view.error,
            "notes": view.notes,
            "progress": {"step": view.step, "steps": view.steps, "fraction": round(min(view.step / steps, 1), 4)},
            "images": [{"url": str(request.url_for("job_image", job_id=view.id, n=i)), "settings": image.settings}
                       for i, image in enumerate(view.images)]}


# ---- settings in -------------------------------------------------------------------------------------

def make_request(engine, body: dict, types: list[str]):
    """The engine request for an API settings body, or a 422 (RequestValidationError) naming the field."""
    body = dict(body)
    model_type = body.pop("model_type", None) or ("z_image" if "z_image" in types else types[0])
    if model_type not in types:
        invalid("model_type", f"unknown model type {model_type!r}: GET /v1/models lists them", model_type)
    for name in PATH_FIELDS:
        if body.get(name):
            invalid(name, f"{name} cannot be given through the HTTP API (it would name a file on the server); "
                          "use the page or the command line for input pictures and masks", body[name])
    try:
        return prepared(engine, model_type, body)
    except UserError as exc:
        field = blame(engine, model_type, body)
        invalid(field, str(exc), body.get(field))


def prepared(engine, model_type: str, changes: dict):
    from engine.merge import merge_settings

    return engine.prepare(merge_settings(engine, model_type, changes=changes).settings)


def blame(engine, model_type: str, changes: dict) -> str | None:
    """The field that makes `changes` invalid: the first one wrong on its own (over the type's defaults and a
    placeholder prompt), else the first one that makes those given before it wrong (e.g. NAG end below start)."""
    def fails(subset) -> bool:
        try:
            prepared(engine, model_type, {"prompt": "x", **subset})
            return False
        except UserError:
            return True

    for name, value in changes.items():
        if fails({name: value}):
            return name
    given = {}
    for name, value in changes.items():
        given[name] = value
        if fails(given):
            return name
    return None


def invalid(field: str | None, message: str, value=None):
    from fastapi.exceptions import RequestValidationError

    loc = ("body", field) if field else ("body",)
    raise RequestValidationError([{"type": "value_error", "loc": loc, "msg": message, "input": value}])


# ---- models ------------------------------------------------------------------------------------------

def models(engine, types: list[str]) -> list[dict]:
    """Each model type: what it is, whether this version generates with it, and its files (names only)."""
    out = []
    for name in types:
        model_def = engine.registry.get(name)
        handler = engine.registry.handler(name)
        entry = {"type": name, "name": model_def.name, "architecture": model_def.architecture,
                 "available": handler.capabilities(model_def.architecture).available, "files": []}
        try:
            for status in handler.file_status(model_def, engine.locator, engine.options):
                entry["files"].append({"component": status.component, "present": status.path is not None,
                                       "file": Path(status.path).name if status.path else status.source,
                                       "kind": status.kind, "download_bytes": None if status.path else status.size})
        except UserError as exc:
            entry["problem"] = str(exc)
        out.append(entry)
    return out


def root_app(api, lifespan=None):
    """A server's whole app: the API at /v1 (for `serve` alone and the Ray ingress)."""
    from fastapi import FastAPI

    app = FastAPI(docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.mount("/v1", api)
    return app

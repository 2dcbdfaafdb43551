"""An ASGI layer in front of Gradio's routes, for what Gradio leaves open:

- logins: the login check learns which client asks (`current_client()`, the remote address), and a client
  locked out after failed logins is answered 429 with Retry-After before Gradio reads its form;
- with logins on, the routes that act on jobs but ask no login in Gradio (cancel, reset, stream, heartbeat:
  closing another session's heartbeat cancels its jobs) answer 401 without one;
- each user (login name, else address) may have at most `max_gpu_jobs` GPU events running or waiting:
  joining the queue beyond that is answered 429 with one line;
- request bodies other than file uploads (whose size Gradio's max_file_size bounds) are read up to
  `max_body` bytes; a bigger one is answered 413 before anything parses it.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re

log = logging.getLogger("zimage.guard")
_client = contextvars.ContextVar("zimage_client", default="")

JOB_ROUTES = re.compile(r"/gradio_api/(cancel|reset|stream/|heartbeat/)")
LOGIN_ROUTE = re.compile(r"(^|/)login/?$")
UPLOAD_ROUTES = re.compile(r"/gradio_api/(upload|process_recording)/?$")
JOIN_ROUTE = re.compile(r"/gradio_api/queue/join/?$")
CALL_ROUTE = re.compile(r"/gradio_api/call/(?:v2/)?([^/]+)/?$")
GPU = "gpu"  # the concurrency id of the page's GPU events and the API's (app.web.page)


def current_client() -> str:
    """The address of the client whose request is being answered ("" outside a request)."""
    return _client.get()


class Guard:
    def __init__(self, app, logins=None, max_gpu_jobs: int | None = None, max_body: int = 4 * 2**20):
        self.app = app
        self.logins = logins
        self.max_gpu_jobs = max_gpu_jobs
        self.max_body = max_body

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path, method = scope.get("path", ""), scope.get("method", "GET")
        client = (scope.get("client") or ("", 0))[0]
        token = _client.set(client)
        try:
            refusal = self._refusal(scope, path, method, client)
            if refusal is None and method == "POST" and not UPLOAD_ROUTES.search(path):
                body = await _read_body(receive, self.max_body)
                if body is None:
                    refusal = (413, f"request body over {self.max_body >> 20} MiB", {})
                else:
                    receive = _replay(body, receive)
                    refusal = self._queue_refusal(scope, path, body, client)
            if refusal is not None:
                return await _answer(send, *refusal)
            return await self.app(scope, receive, send)
        finally:
            _client.reset(token)

    def _refusal(self, scope, path, method, client):
        if self.logins is None or not self.logins.enabled:
            return None
        if method == "POST" and LOGIN_ROUTE.search(path):
            wait = self.logins.retry_after(client)
            if wait > 0:
                seconds = int(wait) + 1
                return (429, f"too many failed logins from this address: try again in {seconds} s",
                        {"retry-after": str(seconds)})
        elif JOB_ROUTES.search(path) and user_of(scope) is None:
            return (401, "Not authenticated", {})
        return None

    def _queue_refusal(self, scope, path, body: bytes, client: str):
        """429 when this user's GPU events (running or waiting) would exceed the cap."""
        join, call = JOIN_ROUTE.search(path), CALL_ROUTE.search(path)
        if self.max_gpu_jobs is None or not (join or call):
            return None
        blocks = scope["app"].get_blocks()
        fn = _fn_for(blocks, body, call.group(1) if call else None)
        if fn is None or fn.concurrency_id != GPU:
            return None
        user = user_of(scope) if self.logins is not None and self.logins.enabled else None
        mine = [e for e in gpu_events(blocks) if _user_key(e) == (user or client)]
        if len(mine) >= self.max_gpu_jobs:
            return (429, f"you have {len(mine)} generation(s) running or waiting already (at most "
                         f"{self.max_gpu_jobs} per user): wait for one to finish, or stop one", {})
        return None


def user_of(scope) -> str | None:
    """The logged-in user of a request (Gradio's own session cookie), or None."""
    from starlette.requests import Request

    app = scope.get("app")
    if app is None or not hasattr(app, "tokens"):
        return None
    cookies = Request(scope).cookies
    token = cookies.get(f"access-token-{app.cookie_id}") or cookies.get(f"access-token-unsecure-{app.cookie_id}")
    return app.tokens.get(token) if token else None


def gpu_events(blocks) -> list:
    """Gradio events of the GPU concurrency group, running or waiting. Gradio's queue keeps them in
    `event_queue_per_concurrency_id` (waiting) and `active_jobs` (running); if a Gradio version moves
    them, the cap cannot count and is skipped (with a log line), rather than refusing everyone."""
    try:
        queue = blocks._queue
        waiting = list(getattr(queue.event_queue_per_concurrency_id.get(GPU), "queue", []))
        running = [e for job in queue.active_jobs if job for e in job if e.concurrency_id == GPU]
        return waiting + running
    except AttributeError:
        log.warning("cannot read Gradio's queue: the per-user cap on GPU jobs is not applied")
        return []


def _user_key(event) -> str:
    request = getattr(event, "request", None)
    host = getattr(getattr(request, "client", None), "host", "") or ""
    return event.username or host


def _fn_for(blocks, body: bytes, api_name: str | None):
    if api_name is not None:
        return next((f for f in blocks.fns.values() if f.api_name == api_name), None)
    try:
        index = json.loads(body).get("fn_index")
    except (ValueError, AttributeError, RecursionError):
        return None  # Gradio answers a malformed body itself
    return blocks.fns.get(index) if isinstance(index, int) else None


async def _read_body(receive, limit: int) -> bytes | None:
    """The whole request body, or None when it grows past `limit` bytes."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body"):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive):
    """A receive() that hands the app the body read already, then the client's later messages."""
    sent = False

    async def replay():
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _answer(send, status: int, detail: str, headers: dict) -> None:
    payload = json.dumps({"detail": detail, "error": detail}).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})

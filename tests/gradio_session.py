"""A browser session as Gradio's page speaks to the server (upload, queue/join, the SSE stream), over plain
HTTP, so tests can send what a hostile client would: any event, any value, with or without a login."""

from __future__ import annotations

import json
import uuid

import httpx


class EventFailed(Exception):
    """The server answered the event with an error (its message, or None for Gradio's blank one)."""


class Session:
    def __init__(self, url: str, demo, http: httpx.Client | None = None):
        self.url = url.rstrip("/")
        self.demo = demo
        self.http = http or httpx.Client(base_url=self.url, timeout=120)
        self.hash = uuid.uuid4().hex[:12]

    def login(self, user: str, password: str) -> httpx.Response:
        return self.http.post("/login", data={"username": user, "password": password})

    # ---- files --------------------------------------------------------------------------------------

    def upload(self, name: str, content: bytes) -> dict:
        """A file uploaded as the page uploads it; returns the value an image input sends."""
        r = self.http.post("/gradio_api/upload", files={"files": (name, content)})
        r.raise_for_status()
        return {"path": r.json()[0], "orig_name": name, "meta": {"_type": "gradio.FileData"}}

    # ---- events ---------------------------------------------------------------------------------------

    def fn(self, name: str):
        """The event whose handler is called `name` (the page keeps handler names)."""
        matches = [f for f in self.demo.fns.values() if f.name == name]
        assert len(matches) == 1, f"{len(matches)} events named {name}"
        return matches[0]

    def data(self, fn, values: dict) -> list:
        """The input list of an event: `values` by component name (the page's names), else each input's
        value as the page starts with it."""
        names = {id(c): n for n, c in self.demo.zimage_page.comps.items()}
        out = []
        for comp in fn.inputs:
            name = names.get(id(comp))
            out.append(values[name] if name in values else getattr(comp, "value", None))
        return out

    def join(self, name: str, values: dict | None = None, event_data=None) -> str:
        fn = self.fn(name)
        body = {"data": self.data(fn, values or {}), "fn_index": fn._id, "session_hash": self.hash,
                "event_data": event_data, "trigger_id": None}
        r = self.http.post("/gradio_api/queue/join", json=body)
        if r.status_code != 200:
            raise EventFailed(f"{r.status_code}: {r.text}")
        return r.json()["event_id"]

    def run(self, name: str, values: dict | None = None) -> list:
        """An event that skips the queue (queue=False, e.g. Stop), as the page posts it."""
        fn = self.fn(name)
        body = {"data": self.data(fn, values or {}), "fn_index": fn._id, "session_hash": self.hash}
        r = self.http.post("/gradio_api/run/predict", json=body)
        if r.status_code != 200:
            raise EventFailed(f"{r.status_code}: {r.text}")
        return r.json().get("data")

    def messages(self):
        """The session's server-sent messages, as dicts, until the stream ends."""
        with self.http.stream("GET", "/gradio_api/queue/data", params={"session_hash": self.hash}) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    yield json.loads(line[5:])

    def call(self, name: str, values: dict | None = None, event_data=None) -> tuple[list, list]:
        """Run an event to its end: (its output data, the notes it showed: warnings and infos). A generator's
        first frame (whole values; later frames are diffs) is kept in `first_frame`, every frame in `frames`."""
        event_id = self.join(name, values, event_data)
        notes, self.first_frame, self.frames = [], None, []
        for msg in self.messages():
            if msg.get("event_id") != event_id:
                continue
            if msg.get("msg") == "log":
                notes.append(msg.get("log"))
            if msg.get("msg") == "process_generating":
                self.frames.append((msg.get("output") or {}).get("data"))
                if self.first_frame is None:
                    self.first_frame = self.frames[0]
            if msg.get("msg") == "process_completed":
                output = msg.get("output") or {}
                if not msg.get("success"):
                    raise EventFailed(output.get("error"))
                return output.get("data"), notes
        raise EventFailed("the stream ended before the event did")


def patched(value, ops):
    """A value after one of Gradio's streamed diffs: [[op, path, value], ...] with op add/replace/delete/append."""
    import copy

    value = copy.deepcopy(value)
    for op, path, new in ops:
        if not path:
            value = new
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        if op in ("add", "replace"):
            parent[last] = new
        elif op == "delete":
            del parent[last]
        elif op == "append":
            parent[last] = parent[last] + new
    return value


def sent_values(frames: list, index: int) -> list:
    """The values a generator event sent to one output, frame by frame (the first frame whole, the later ones
    diffs), leaving out the frames that left it unchanged (gr.skip, sent as a bare update)."""
    value, sent = None, []
    for n, frame in enumerate(frames):
        value = frame[index] if n == 0 else patched(value, frame[index])
        if value != {"__type__": "update"}:
            sent.append(value)
    return sent


"""One GPU job at a time in a worker thread, streamed as events; Stop takes effect within one step."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

from engine.errors import Interrupted


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


class JobRunner:
    def __init__(self, engine):
        self.engine = engine
        self._stop = threading.Event()
        self._owner = None
        self._lock = threading.Lock()

    def run(self, settings, owner: str):
        """Generate: yields Step/TokenEvents, then the results list."""
        return self.stream(lambda on_step, on_token: self.engine.generate(settings, on_step, on_token), owner)

    def enhance(self, settings, owner: str):
        """Rewrite the prompt: yields TokenEvents, then the new settings."""
        return self.stream(lambda on_step, on_token: self.engine.enhance(settings, on_token), owner)

    def stream(self, work, owner: str):
        """Run `work(on_step, on_token)` in a thread; yield its events, then its result; re-raise its error
        (Interrupted after Stop)."""
        events: queue.Queue = queue.Queue()

        def checked(event):
            if self._stop.is_set():
                raise Interrupted("stopped by the user")
            events.put(event)

        def on_step(run, step, total, latents):
            checked(StepEvent(run, step, total, latents))

        def on_token(n, per_second):
            checked(TokenEvent(n, per_second))

        def target():
            try:
                events.put(("done", work(on_step, on_token)))
            except BaseException as exc:  # handed to the caller's thread, which reports it
                events.put(("error", exc))

        with self._lock:
            self._stop.clear()
            self._owner = owner
        threading.Thread(target=target, daemon=True, name="gpu-job").start()
        finished = False
        try:
            while True:
                item = events.get()
                if isinstance(item, (StepEvent, TokenEvent)):
                    yield item
                    continue
                finished = True
                if item[0] == "error":
                    raise item[1]
                yield item[1]
                return
        finally:
            with self._lock:
                if not finished:  # the page went away mid-run: free the GPU for the next job
                    self._stop.set()
                self._owner = None

    def stop(self, owner: str) -> bool:
        """Stop the running job if `owner` started it."""
        with self._lock:
            if self._owner is not None and self._owner == owner:
                self._stop.set()
                return True
        return False

"""One generation at a time in a worker thread, streamed as events; Stop takes effect within one step."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

from core.errors import Interrupted


@dataclass
class StepEvent:
    run: int  # 0-based run (batch) index
    step: int  # 0-based step within the run
    total: int  # steps per run
    latents: object  # [B, C, h, w] after this step


class JobRunner:
    def __init__(self, engine):
        self.engine = engine
        self._stop = threading.Event()
        self._owner = None
        self._lock = threading.Lock()

    def run(self, settings, owner: str):
        """Yields StepEvents, then the results list; raises what generation raised (Interrupted on Stop)."""
        events: queue.Queue = queue.Queue()

        def on_step(run, step, total, latents):
            if self._stop.is_set():
                raise Interrupted("stopped by the user")
            events.put(StepEvent(run, step, total, latents))

        def work():
            try:
                events.put(("done", self.engine.generate(settings, on_step)))
            except BaseException as exc:  # handed to the caller's thread, which reports it
                events.put(("error", exc))

        with self._lock:
            self._stop.clear()
            self._owner = owner
        threading.Thread(target=work, daemon=True, name="generation").start()
        finished = False
        try:
            while True:
                item = events.get()
                if isinstance(item, StepEvent):
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

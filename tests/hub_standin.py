"""A stand-in for the Hugging Face hub on 127.0.0.1: it answers huggingface_hub's file requests (HEAD for the
metadata, GET for the bytes) for a few files, one of which it sends slowly, so a download can be watched and
cancelled. Point huggingface_hub at it with HF_ENDPOINT (this app passes that endpoint on each download)."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class StandInHub:
    """files: {"owner/repo/path": bytes}; `slow`: those paths are sent `chunk` bytes at a time, `pace` seconds
    apart (until the client goes, or the hub is closed)."""

    def __init__(self, files: dict, slow=(), chunk: int = 1 << 20, pace: float = 0.25):
        self.files, self.slow, self.chunk, self.pace = dict(files), set(slow), chunk, pace
        self.closing = threading.Event()
        self.requests: list[tuple[str, str]] = []
        self.sent: dict[str, int] = {}
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _file(self):
                parts = self.path.split("?")[0].lstrip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return None, None
                key = "/".join(parts[:2] + parts[4:])
                return key, hub.files.get(key)

            def _headers(self, key, data):
                self.send_header("Content-Length", str(len(data)))
                self.send_header("ETag", f'"{hashlib.sha256(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()

            def _answer(self, method):
                """Headers for the file asked for: (key, data), or None after a 404."""
                key, data = self._file()
                hub.requests.append((method, self.path))
                if data is None:
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return None
                self.send_response(200)
                self._headers(key, data)
                return key, data

            def do_HEAD(self):
                self._answer("HEAD")

            def do_GET(self):
                found = self._answer("GET")
                if found is None:
                    return
                key, data = found
                step = hub.chunk if key in hub.slow else len(data) or 1
                try:
                    for start in range(0, len(data), step):
                        self.wfile.write(data[start:start + step])
                        self.wfile.flush()
                        hub.sent[key] = start + step
                        if key in hub.slow and hub.closing.wait(hub.pace):
                            return
                except (BrokenPipeError, ConnectionResetError):
                    return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.closing.set()
        self.server.shutdown()
        self.server.server_close()

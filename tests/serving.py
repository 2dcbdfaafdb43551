"""Helpers for the serving tests: free ports, HTTP clients, polling bounded in time, the CLI's images."""

from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import numpy as np
from PIL import Image

TINY = "z_image_tiny_test"
USERS = {"ann": "ann-password-1", "bob": "bob-password-2", "cat": "cat-password-3"}
KEY = "robot-key-0123456789-abcdefghij"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_logins(folder: Path) -> tuple[Path, Path]:
    users, keys = folder / "users.txt", folder / "keys.txt"
    users.write_text("".join(f"{u}:{p}\n" for u, p in USERS.items()))
    keys.write_text(f"# name:key\nrobot:{KEY}\n")
    return users, keys


def client(url: str, user: str | None = None, key: str | None = None):
    import httpx

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, auth=(user, USERS[user]) if user else None, headers=headers, timeout=60)


def job_settings(seed: int, steps: int = 2, size: int = 256, **extra) -> dict:
    return {"model_type": TINY, "prompt": "a lighthouse at dusk", "seed": seed, "num_inference_steps": steps,
            "width": size, "height": size, **extra}


def wait_for(http, job_url: str, states=("done", "failed", "cancelled"), timeout: float = 240,
             steps: int = 0) -> dict:
    """Poll a job until it reaches one of `states` (and has done `steps` steps), bounded in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        view = http.get(job_url).json()
        if view["state"] in states and view["progress"]["step"] >= steps:
            return view
        time.sleep(0.05)
    raise AssertionError(f"{job_url} still {view['state']} after {timeout} s")


def submit(http, settings: dict, tries: int = 10) -> dict:
    """POST a job as a polite client does: on 429, wait Retry-After seconds and try again (bounded)."""
    for _ in range(tries):
        answer = http.post("/v1/jobs", json=settings)
        if answer.status_code != 429:
            assert answer.status_code == 202, answer.text
            return answer.json()
        time.sleep(float(answer.headers["retry-after"]))
    raise AssertionError(f"still refused after {tries} tries")


def pixels(png: bytes | Path) -> np.ndarray:
    data = Path(png).read_bytes() if isinstance(png, Path) else png
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def cli_images(model_json: Path, folder: Path, first_seed: int, count: int, steps: int = 2, size: int = 256,
               prompt: str = "a lighthouse at dusk") -> dict[int, np.ndarray]:
    """The command line's images for seeds first_seed .. first_seed+count-1 (one `generate --count`)."""
    from app.cli import main
    from engine.outputs import read_png_settings

    code = main(["generate", "--model-def", str(model_json), "--model", TINY, "--prompt", prompt, "--seed",
                 str(first_seed), "--count", str(count), "--steps", str(steps), "--width", str(size), "--height",
                 str(size), "--output", str(folder)])
    assert code == 0
    return {read_png_settings(p)[0].seed: pixels(p) for p in folder.glob("*.png")}

"""Writing training files: always to a hidden temporary file first, then renamed, so a reader never sees a
half-written file; the finished LoRA never replaces an existing file (NAME, NAME_2, NAME_3, ...)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from engine.errors import UserError
from engine.publish import publish_new

SUFFIX = ".safetensors"


def check_writable(folder: Path, what: str) -> None:
    """UserError unless `folder` exists or can be made, and files can be written in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise UserError(f"{what} {folder} is not a folder this app can write to ({exc.strerror or exc})") from None


def _partial(tensors: dict, folder: Path, metadata: dict) -> Path:
    from safetensors.torch import save_file

    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=SUFFIX, dir=folder)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
    except BaseException:
        os.unlink(tmp)
        raise
    return Path(tmp)


def write_replacing(tensors: dict, path: Path, metadata: dict) -> Path:
    """Write (or replace) `path` atomically: the old file stays whole until the new one is complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _partial(tensors, path.parent, metadata)
    os.replace(tmp, path)
    return path


def candidate(folder: Path, stem: str, n: int) -> Path:
    return Path(folder) / (f"{stem}{SUFFIX}" if n == 1 else f"{stem}_{n}{SUFFIX}")


def free_path(folder: Path, stem: str) -> Path:
    """The name `write_new` would give now: NAME.safetensors, or the first free NAME_N.safetensors."""
    n = 1
    while candidate(folder, stem, n).exists():
        n += 1
    return candidate(folder, stem, n)


def write_new(tensors: dict, folder: Path, stem: str, metadata: dict) -> Path:
    """Write a new file NAME.safetensors in `folder`, or NAME_2, NAME_3, ... if taken; never replaces a file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = _partial(tensors, folder, metadata)
    try:
        final = publish_new(tmp, (candidate(folder, stem, n) for n in range(1, 10000)))
        if final is None:
            raise UserError(f"{folder}: too many files named {stem}_N{SUFFIX}")
        return final
    finally:
        if tmp.exists():
            tmp.unlink()

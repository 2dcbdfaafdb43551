"""Writing a new LoRA file into the LoRA folder: a safe name, never over an existing file, never half-written.

The file is written under a temporary name in the same folder, then linked to its name (a hard link fails if
the name exists, so two writers cannot overwrite each other); where links are not supported, the name is
reserved by exclusive creation and the finished file renamed onto it.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

from engine.errors import SettingsError, UserError
from engine.lora.library import SUFFIX
from engine.publish import publish_new

_NAME = re.compile(r"^[\w][\w .()+,=@-]{0,99}$")


def new_lora_path(folder, name: str) -> tuple[str, Path]:
    """("NAME.safetensors", folder/NAME.safetensors) for a new LoRA; SettingsError for an unsafe or taken name."""
    text = (name or "").strip()
    if text.lower().endswith(SUFFIX):
        text = text[: -len(SUFFIX)].rstrip()
    if not text:
        raise SettingsError("give the new LoRA a name (letters, digits, spaces, - and _)")
    if not _NAME.match(text) or text.startswith(".") or ".." in text:
        raise SettingsError(f"LoRA name {name!r}: use letters, digits, spaces, - _ . ( ) only, at most 100 "
                            "characters, no folders")
    filename = text + SUFFIX
    path = Path(folder) / filename
    if path.exists():
        raise SettingsError(f"{path} exists already; LoRA files are never overwritten: pick another name")
    return filename, path


def write_new(path, tensors: dict, metadata: dict) -> Path:
    """Write `tensors` (safetensors, with string `metadata`) to a new file at `path`; UserError if it exists."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(partial), metadata=metadata)
        if publish_new(partial, [path]) is None:
            raise _taken(path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def _taken(path: Path) -> UserError:
    return UserError(f"{path} was created meanwhile; LoRA files are never overwritten: pick another name")

"""Which picture paths from outside may be used: a path that came from a user (a PNG's settings, settings
remembered in a browser, an API argument) is never used as a server path for a component or a read, except
a picture in the outputs folder that is named by its content: its file name (or its folder's) starts with at
least 16 hex digits of the file's sha256, as a content-addressed input store names them. Knowing such a name
means knowing the picture, so it reveals nothing; output PNGs (named by date and seed, easy to guess) and
everything else are refused, all with the same words, so a refusal says nothing about what exists.

Pictures otherwise arrive only as uploads, which Gradio checks are its own. The input store (pictures kept
by hash so PNGs stay reproducible) plugs in here: `usable(path, outputs)` is the one rule.
"""

from __future__ import annotations

import re
from pathlib import Path

from engine.hashing import file_sha256
from engine.images.inputs import (
    LABELS as PICTURE_FIELDS,  # every settings field naming a picture
)

MIN_HASH_DIGITS = 16  # 64 bits: not guessable
_HEX = re.compile(r"^[0-9a-f]{%d,64}" % MIN_HASH_DIGITS)
_MAX_BYTES = 256 * 2**20  # hashing stays bounded even for a huge file someone left in outputs


def usable(path, outputs) -> bool:
    """True when `path` is a file inside `outputs` named by (a prefix of) its own sha256."""
    if not isinstance(path, str) or not path.strip() or "\0" in path:
        return False
    try:
        folder = Path(outputs).resolve()
        file = Path(path).expanduser().resolve()
        if not file.is_relative_to(folder) or not file.is_file() or file.stat().st_size > _MAX_BYTES:
            return False
        prefix = next((m.group(0) for m in map(_HEX.match, (file.stem.lower(), file.parent.name.lower())) if m),
                      None)
        return prefix is not None and file_sha256(file).startswith(prefix)
    except (OSError, ValueError, RuntimeError):
        return False


def refusal(field: str) -> str:
    """The one message for a picture path that is not used, whatever the reason."""
    return (f"{field}: a picture is taken as an upload, not as a path on the server (only pictures stored by "
            "content in the outputs folder are taken by path)")


def keep_usable(values: dict, outputs) -> tuple[dict, list[str]]:
    """`values` (settings by name) with picture paths that are not usable emptied, and a note for each.
    A mask goes with its picture: without the picture it has nothing to repaint."""
    out, notes = dict(values), []
    for name, label in PICTURE_FIELDS.items():
        value = out.get(name)
        if value and not usable(value, outputs):
            out[name] = ""
            notes.append(f"The {label} was not restored: pictures come back only from the input store in the "
                         "outputs folder, not from a path in the settings. Add it again.")
    if not (out.get("control_image") or out.get("init_image")) and out.get("mask"):
        out["mask"] = ""
    return out, notes


"""LoRA presets: a named set of LoRAs with strengths (and an optional prompt snippet), saved as
`<LoRA folder>/presets/<name>.json`.

With logins, a user's saves go to `presets/users/<user>/`: each user sees the shared presets and their own
(theirs win by name), and cannot change anyone else's. `user=None` means the shared presets."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from pathlib import Path

from engine.errors import SettingsError
from engine.jsontext import parse_json_object
from engine.settings import normalize_loras

FOLDER = "presets"
MAX_PRESETS = 500  # per folder: a client saving in a loop cannot fill the disk
_NAME = re.compile(r"^[\w][\w .+-]{0,79}$")


def presets_folder(lora_folder, user: str | None = None) -> Path:
    """The shared presets folder, or a user's own (named safely whatever the login name holds)."""
    folder = Path(lora_folder) / FOLDER
    if user is None:
        return folder
    readable = re.sub(r"[^\w.-]", "_", str(user))[:40].strip(".") or "user"
    return folder / "users" / f"{readable}-{hashlib.sha256(str(user).encode()).hexdigest()[:12]}"


def preset_path(lora_folder, name: str, user: str | None = None) -> Path:
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith((" ", ".")):
        raise SettingsError(f"preset name {name!r}: use letters, digits, spaces and . _ + - (no folders), "
                            "up to 80 characters")
    return presets_folder(lora_folder, user) / f"{name}.json"


def _names(folder: Path) -> set[str]:
    return {p.stem for p in folder.glob("*.json") if _NAME.match(p.stem)} if folder.is_dir() else set()


def list_presets(lora_folder, user: str | None = None) -> list[str]:
    """The shared presets, plus the user's own when `user` is given."""
    names = _names(presets_folder(lora_folder)) | (_names(presets_folder(lora_folder, user)) if user else set())
    return sorted(names, key=str.lower)


def save_preset(lora_folder, name: str, loras: list[dict], prompt: str = "", overwrite: bool = False,
                user: str | None = None) -> Path:
    """Write the preset atomically (into `user`'s own presets when given); an existing one is replaced only
    with overwrite=True."""
    path = preset_path(lora_folder, name, user)
    loras = normalize_loras(loras)
    if not loras:
        raise SettingsError(f"preset {name!r}: choose at least one LoRA to save")
    if not isinstance(prompt, str):
        raise SettingsError(f"preset {name!r}: the prompt snippet must be text")
    if path.exists() and not overwrite:
        raise SettingsError(f"preset {name!r} exists already ({path}); choose another name or overwrite it")
    if not path.exists() and len(_names(path.parent)) >= MAX_PRESETS:
        raise SettingsError(f"{path.parent} holds {MAX_PRESETS} presets already; delete some first")
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"loras": loras, "prompt": prompt.strip()}
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".json", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_preset(lora_folder, name: str, user: str | None = None) -> dict:
    """{"loras": [...], "prompt": str} (the user's own preset of that name first, else the shared one);
    SettingsError naming the preset when it is missing or damaged."""
    path = preset_path(lora_folder, name, user)
    if user is not None and not path.is_file():
        path = preset_path(lora_folder, name)
    if not path.is_file():
        have = list_presets(lora_folder, user)
        raise SettingsError(f"no LoRA preset {name!r} in {path.parent}"
                            + (f" (presets: {', '.join(have)})" if have else ""))
    try:
        data = parse_json_object(path.read_bytes(), "its text")
        loras = data["loras"]
        prompt = data.get("prompt", "") or ""
        if not isinstance(prompt, str):
            raise TypeError("prompt is not text")
    except (SettingsError, ValueError, KeyError, TypeError, OSError) as exc:
        raise SettingsError(f"LoRA preset {path} is damaged ({exc})") from None
    try:
        return {"loras": normalize_loras(loras), "prompt": prompt}
    except SettingsError as exc:
        raise SettingsError(f"LoRA preset {name!r}: {exc}") from None


def delete_preset(lora_folder, name: str) -> None:
    path = preset_path(lora_folder, name)
    if not path.is_file():
        raise SettingsError(f"no LoRA preset {name!r} to delete")
    path.unlink()


def with_snippet(prompt: str, snippet: str) -> str:
    """The prompt with a preset's snippet appended, unless it already holds it."""
    if not snippet or snippet.lower() in prompt.lower():
        return prompt
    return f"{prompt.rstrip().rstrip(',')}, {snippet}" if prompt.strip() else snippet

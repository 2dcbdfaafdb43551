"""LoRA presets: a named set of LoRAs with strengths (and an optional prompt snippet), saved as
`<LoRA folder>/presets/<name>.json`."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

from engine.errors import SettingsError
from engine.jsontext import parse_json_object
from engine.settings import normalize_loras

FOLDER = "presets"
_NAME = re.compile(r"^[\w][\w .+-]{0,79}$")


def preset_path(lora_folder, name: str) -> Path:
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith((" ", ".")):
        raise SettingsError(f"preset name {name!r}: use letters, digits, spaces and . _ + - (no folders), "
                            "up to 80 characters")
    return Path(lora_folder) / FOLDER / f"{name}.json"


def list_presets(lora_folder) -> list[str]:
    folder = Path(lora_folder) / FOLDER
    return sorted((p.stem for p in folder.glob("*.json") if _NAME.match(p.stem)), key=str.lower) \
        if folder.is_dir() else []


def save_preset(lora_folder, name: str, loras: list[dict], prompt: str = "", overwrite: bool = False) -> Path:
    """Write the preset atomically; an existing one is replaced only with overwrite=True."""
    path = preset_path(lora_folder, name)
    loras = normalize_loras(loras)
    if not loras:
        raise SettingsError(f"preset {name!r}: choose at least one LoRA to save")
    if not isinstance(prompt, str):
        raise SettingsError(f"preset {name!r}: the prompt snippet must be text")
    if path.exists() and not overwrite:
        raise SettingsError(f"preset {name!r} exists already ({path}); choose another name or overwrite it")
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


def load_preset(lora_folder, name: str) -> dict:
    """{"loras": [...], "prompt": str}; SettingsError naming the preset when it is missing or damaged."""
    path = preset_path(lora_folder, name)
    if not path.is_file():
        have = list_presets(lora_folder)
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

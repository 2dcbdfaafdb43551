"""JSON that came from outside (a PNG's settings, an API argument, a file header, a preset): parsed with
bounded nesting, so a hostile text gives one clear line instead of a RecursionError deep in a parser or
in the code that walks the value afterwards."""

from __future__ import annotations

import json

from engine.errors import SettingsError

MAX_DEPTH = 64  # settings, headers and presets nest a few levels; thousands is an attack


def parse_json(text, what: str):
    """The value `text` holds; SettingsError naming `what` when it is not JSON text or nests too deep."""
    if isinstance(text, (bytes, bytearray)):
        try:
            text = bytes(text).decode("utf-8")
        except UnicodeDecodeError:
            raise SettingsError(f"{what} is not UTF-8 text") from None
    if not isinstance(text, str):
        raise SettingsError(f"{what} must be JSON text, got {type(text).__name__}")
    try:
        value = json.loads(text)
    except RecursionError:
        raise SettingsError(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)") from None
    except ValueError as exc:
        raise SettingsError(f"{what} is not valid JSON ({exc})") from None
    if depth(value) > MAX_DEPTH:
        raise SettingsError(f"{what} is nested too deeply (at most {MAX_DEPTH} levels)")
    return value


def parse_json_object(text, what: str) -> dict:
    """Like parse_json, for text that must hold a JSON object ({...})."""
    value = parse_json(text, what)
    if not isinstance(value, dict):
        raise SettingsError(f"{what} must be a JSON object ({{...}}), got {type(value).__name__}")
    return value


def json_object_or_none(text) -> dict | None:
    """A JSON object from optional metadata, or None when it is missing, damaged or not an object."""
    try:
        return parse_json_object(text, "metadata")
    except SettingsError:
        return None


def depth(value) -> int:
    """How deeply lists and dicts nest in `value` (0 for a scalar); iterative, so any depth is safe."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        deepest = max(deepest, level)
        if deepest > MAX_DEPTH:
            return deepest
        stack.extend((child, level + 1) for child in children)
    return deepest

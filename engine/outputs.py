"""PNG outputs: settings embedded as JSON, written atomically under names that never overwrite."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path

from engine.errors import SettingsError, UserError
from engine.publish import publish_new
from engine.settings import GenerationSettings

PNG_KEY = "zimage_settings"


def save_png(image, settings: GenerationSettings, record: dict, target: Path) -> Path:
    """Write `image` with its settings; `target` is a folder (auto name) or a .png path (kept if free)."""
    return write_png_bytes(png_bytes(image, settings, record), settings.seed, target)


def png_bytes(image, settings: GenerationSettings, record: dict) -> bytes:
    """The PNG file of `image`, its settings and record embedded (what save_png writes), in memory: a worker
    in another process or on another machine hands these bytes back to be written."""
    import io

    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_itxt(PNG_KEY, json.dumps({"settings": settings.to_dict(), "record": record}, ensure_ascii=False))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return buffer.getvalue()


def write_png_bytes(data: bytes, seed: int, target: Path) -> Path:
    """Write a finished PNG file atomically: a temporary file, then its final name (never overwriting);
    `target` is a folder (auto name from the time and seed) or a .png path (kept if free)."""
    target = Path(target)
    folder, stem = (target.parent, target.stem) if target.suffix.lower() == ".png" else (target, None)
    folder.mkdir(parents=True, exist_ok=True)
    stem = stem or f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_seed{seed}"
    fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".png", dir=folder)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        return _publish(Path(tmp), folder, stem)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _publish(tmp: Path, folder: Path, stem: str) -> Path:
    """Give the finished file its name (NAME.png, NAME_1.png, ...) without ever replacing an existing file."""
    final = publish_new(tmp, (folder / (f"{stem}.png" if n == 0 else f"{stem}_{n}.png") for n in range(10000)))
    if final is None:
        raise UserError(f"{folder}: too many files named {stem}_N.png")
    return final


def read_png_settings(path) -> tuple[GenerationSettings, dict]:
    """Settings and record from a PNG this app wrote."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            text = getattr(im, "text", {}).get(PNG_KEY)
    except FileNotFoundError:
        raise SettingsError(f"{path}: file not found") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as exc:
        raise SettingsError(f"{path}: not a readable image ({exc})") from None
    if not text:
        raise SettingsError(f"{path}: this PNG holds no settings from this app (made elsewhere, or its "
                            "metadata was stripped)")
    from engine.jsontext import parse_json_object

    try:
        data = parse_json_object(text, "the embedded settings")
        settings = data["settings"]
        if not isinstance(settings, dict):
            raise TypeError("'settings' is not an object")
        record = data.get("record")
        return GenerationSettings.from_dict(settings), record if isinstance(record, dict) else {}
    except SettingsError as exc:
        raise SettingsError(f"{path}: {exc}") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise SettingsError(f"{path}: its embedded settings are damaged ({exc})") from None

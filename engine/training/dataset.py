"""The training folder: images with same-name .txt captions (the kohya / ai-toolkit convention).

An image without a caption (or with an empty one) is captioned with the trigger word; "[trigger]" inside a
caption becomes the trigger word. Images under 256 px on their short side, and files that are not usable
images, are skipped and listed. Captions must be UTF-8 text. Only the folder's own files are read (not
subfolders).
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.hashing import file_sha256

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MIN_SIDE = 256
TRIGGER_TOKEN = "[trigger]"
SHOWN = 8  # files named in a message, at most


@dataclass(frozen=True)
class Item:
    path: Path
    caption: str  # as trained: trigger filled in
    width: int
    height: int
    caption_file: bool  # False: the trigger word stands in for a missing caption
    sha256: str = ""


@dataclass
class Dataset:
    folder: Path
    items: list[Item] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)
    notes: list[str] = field(default_factory=list)

    @property
    def digest(self) -> str:
        """sha256 over every image's bytes and caption: the same images and captions give the same hash."""
        h = hashlib.sha256()
        for item in sorted(self.items, key=lambda i: i.path.name):
            h.update(f"{item.path.name}\0{item.sha256}\0{item.caption}\0".encode())
        return h.hexdigest()


def image_files(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not p.name.startswith(".")), key=lambda p: p.name.lower())


def read_caption(image: Path) -> str | None:
    """The text of `image`'s .txt caption (None when there is none); UnicodeDecodeError when not UTF-8."""
    path = image.with_suffix(".txt")
    if not path.is_file():
        return None
    return path.read_bytes().decode("utf-8-sig").strip()


def caption_for(text: str | None, trigger: str) -> str:
    """The caption as trained: the trigger for none, "[trigger]" filled in (and its comma dropped when empty)."""
    if not text:
        return trigger
    text = text.replace(TRIGGER_TOKEN, trigger)
    return re.sub(r"\s*,\s*(,\s*)+", ", ", text).strip(" ,\n\t")


def scan(folder, trigger: str = "", min_side: int = MIN_SIDE) -> Dataset:
    """Every usable image of `folder` with its caption; UserError when the folder gives nothing to train on."""
    from engine.images.io import ImageFileError, open_user_image

    folder = Path(str(folder)).expanduser()
    if not folder.is_dir():
        raise UserError(f"dataset folder {folder}: no such folder")
    files = image_files(folder)
    if not files:
        raise UserError(f"dataset folder {folder} holds no images ({', '.join(s[1:] for s in IMAGE_SUFFIXES)}); "
                        "put the training images there, with same-name .txt captions")
    data = Dataset(folder)
    not_utf8, uncaptioned = [], 0
    for path in files:
        try:
            text = read_caption(path)
        except UnicodeDecodeError:
            not_utf8.append(path.with_suffix(".txt").name)
            continue
        try:
            with open_user_image(path, "training image") as img:
                width, height = img.size
        except ImageFileError as exc:
            data.skipped.append((path.name, str(exc).split(": ", 1)[-1]))
            continue
        if min(width, height) < min_side:
            data.skipped.append((path.name, f"too small ({width}x{height}; at least {min_side} px a side)"))
            continue
        uncaptioned += not text
        data.items.append(Item(path, caption_for(text, trigger), width, height, bool(text), file_sha256(path)))
    if not_utf8:
        raise UserError(f"captions that are not UTF-8 text: {_names(not_utf8)}. Save them as UTF-8 (any editor's "
                        "'save with encoding' does it), then start again")
    if not data.items:
        raise UserError(f"none of the {len(files)} image(s) in {folder} can be used: " + "; ".join(
            f"{name}: {why}" for name, why in data.skipped[:SHOWN]))
    if data.skipped:
        data.notes.append(f"{len(data.skipped)} image(s) skipped: " + "; ".join(
            f"{name}: {why}" for name, why in data.skipped[:SHOWN]) + (" ..." if len(data.skipped) > SHOWN else ""))
    if uncaptioned:
        data.notes.append(f"{uncaptioned} image(s) have no caption: " + (
            f"they are captioned with the trigger word {trigger!r}" if trigger else
            "with no trigger word either, they train with an empty caption (give --trigger)"))
    return data


def write_captions(folder, captions: dict[str, str]) -> list[Path]:
    """Write {image file name: caption} as same-name UTF-8 .txt files, each atomically; an empty caption
    removes the file (the trigger word then stands in). Names must be images inside `folder`."""
    folder = Path(str(folder)).expanduser().resolve()
    known = {p.name: p for p in image_files(folder)}
    written = []
    for name, text in captions.items():
        if name not in known:
            raise UserError(f"{name} is not an image in {folder}")
        target = known[name].with_suffix(".txt")
        text = (text or "").strip()
        if not text:
            target.unlink(missing_ok=True)
            continue
        fd, tmp = tempfile.mkstemp(prefix=".caption-", suffix=".txt", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text + "\n")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        written.append(target)
    return written


def _names(names: list[str]) -> str:
    return ", ".join(names[:SHOWN]) + (f" (+{len(names) - SHOWN} more)" if len(names) > SHOWN else "")

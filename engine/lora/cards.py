"""What a LoRA picker shows about a file, from its header and its neighbours only: title, trigger words and a
preview picture.

Trigger words, in the metadata as trainers write them (safetensors metadata maps text to text):
  modelspec.trigger_phrase      SAI model spec (kohya sd-scripts, civitai downloaders): "word, other phrase"
  trigger_phrase, trigger_word  other writers' spellings of the same
  trigger_words                 this app's trainer: a JSON list; elsewhere a comma-separated text
  ss_trigger_words              a JSON list or text
  ss_tag_frequency              kohya sd-scripts (every caption tag and its count, per dataset folder) and
                                ostris' ai-toolkit ({"1_WORD": {"WORD": 1}}): the most frequent tags
The explicit fields win; without them the most frequent tags are offered.

A preview is a picture next to the file with its name: NAME.png / .jpg / .jpeg / .webp, or NAME.preview.png
(A1111's and Civitai Helper's habit), else the header's `modelspec.thumbnail` (a data: URI).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path

PREVIEW_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".preview.png", ".preview.jpg", ".preview.jpeg",
                    ".preview.webp")
EXPLICIT_KEYS = ("modelspec.trigger_phrase", "trigger_phrase", "trigger_word", "trigger_words", "ss_trigger_words")
MAX_TRIGGERS = 8
MAX_THUMBNAIL = 2 * 2**20  # bytes of a header thumbnail, decoded


@dataclass(frozen=True)
class LoraCard:
    name: str  # path inside the LoRA folder
    title: str  # modelspec.title / ss_output_name, else the file name without its suffix
    triggers: list = field(default_factory=list)
    preview: Path | None = None  # a picture file next to the LoRA
    thumbnail: bytes | None = None  # or the header's thumbnail picture


def _words(value) -> list[str]:
    """Words from a metadata value: a JSON list, or text separated by commas (or new lines)."""
    if not isinstance(value, str) or not value.strip():
        return []
    text = value.strip()
    if text.startswith("["):
        try:
            items = json.loads(text)
        except ValueError:
            items = None
        if isinstance(items, list):
            return [str(i).strip() for i in items if isinstance(i, (str, int, float)) and str(i).strip()]
    return [w.strip() for w in text.replace("\n", ",").split(",") if w.strip()]


def _tag_counts(value) -> dict[str, int]:
    """ss_tag_frequency summed over its dataset folders."""
    try:
        data = json.loads(value) if isinstance(value, str) else None
    except ValueError:
        return {}
    counts: dict[str, int] = {}
    if isinstance(data, dict):
        for tags in data.values():
            if isinstance(tags, dict):
                for tag, n in tags.items():
                    if isinstance(tag, str) and tag.strip() and isinstance(n, (int, float)):
                        counts[tag.strip()] = counts.get(tag.strip(), 0) + int(n)
    return counts


def trigger_words(metadata: dict, limit: int = MAX_TRIGGERS) -> list[str]:
    """The words a LoRA's metadata says to put in the prompt (see the module's notes), without repeats."""
    metadata = metadata if isinstance(metadata, dict) else {}
    found: list[str] = []
    for key in EXPLICIT_KEYS:
        found += _words(metadata.get(key))
    if not found:
        counts = _tag_counts(metadata.get("ss_tag_frequency"))
        found = sorted(counts, key=lambda t: (-counts[t], t.lower()))
    out, seen = [], set()
    for word in found:
        if word.lower() not in seen:
            seen.add(word.lower())
            out.append(word)
    return out[:limit]


def preview_for(path: Path, root: Path) -> Path | None:
    """The picture next to a LoRA file (same name), inside the LoRA folder `root`, if there is one."""
    stem = path.name[: -len(".safetensors")] if path.name.lower().endswith(".safetensors") else path.stem
    for suffix in PREVIEW_SUFFIXES:
        for candidate in (path.with_name(stem + suffix), path.with_name(stem + suffix.upper())):
            if candidate.is_file():
                resolved = candidate.resolve()
                if resolved.is_relative_to(Path(root).resolve()):
                    return resolved
    return None


def thumbnail(metadata: dict) -> bytes | None:
    """The picture of a `modelspec.thumbnail` data URI (bounded), or None."""
    value = metadata.get("modelspec.thumbnail") if isinstance(metadata, dict) else None
    if not isinstance(value, str) or not value.startswith("data:image/") or ";base64," not in value:
        return None
    data = value.split(";base64,", 1)[1]
    if len(data) > MAX_THUMBNAIL * 4 // 3 + 4:
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return None


def card(file, root: Path) -> LoraCard:
    """The card of a LoRA file (engine.lora.library.LoraFile) in the folder `root`."""
    from engine.errors import UserError
    from engine.weights.safetensors_io import open_weights

    try:
        metadata = open_weights(file.path).metadata
    except UserError:
        metadata = {}
    title = (metadata.get("modelspec.title") or metadata.get("ss_output_name") or "").strip()
    stem = Path(file.name).name
    stem = stem[: -len(".safetensors")] if stem.lower().endswith(".safetensors") else stem
    return LoraCard(file.name, title or stem, trigger_words(metadata), preview_for(file.path, root),
                    thumbnail(metadata))

"""What a LoRA file's header recommends about its own use, read when the user picks it.

Two header metadata entries (strings, as safetensors metadata is), written by this app's image-to-LoRA:
  studio.positive_only          "true": apply it on CFG's positive branch only unless the user says otherwise
  studio.recommended_settings   JSON of settings fields it was made for, e.g. {"model_type": "z_image_base",
                                "guidance_scale": 4.0, "flow_shift": 8.0, "num_inference_steps": 50}
Files without them (every other LoRA) recommend nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from engine.errors import UserError

POSITIVE_ONLY = "studio.positive_only"
RECOMMENDED = "studio.recommended_settings"
_SETTING_FIELDS = ("model_type", "guidance_scale", "flow_shift", "num_inference_steps")


@dataclass(frozen=True)
class FileOptions:
    positive_only: bool = False
    recommended: dict = field(default_factory=dict)  # settings fields -> values (only the known, sane ones)


def metadata_for(positive_only: bool, recommended: dict) -> dict:
    """The header entries that make a file recommend these."""
    return {POSITIVE_ONLY: "true" if positive_only else "false",
            RECOMMENDED: json.dumps({k: v for k, v in recommended.items() if k in _SETTING_FIELDS})}


def read_options(path) -> FileOptions:
    """The file's recommendations (none for a file that has none or cannot be read: it is reported on use)."""
    from engine.weights.safetensors_io import open_weights

    try:
        metadata = open_weights(path).metadata
    except UserError:
        return FileOptions()
    try:
        recommended = json.loads(metadata.get(RECOMMENDED) or "{}")
    except ValueError:
        recommended = {}
    if not isinstance(recommended, dict):
        recommended = {}
    clean = {k: v for k, v in recommended.items() if k in _SETTING_FIELDS
             and (isinstance(v, str) if k == "model_type" else isinstance(v, (int, float)) and not isinstance(v, bool))}
    return FileOptions(metadata.get(POSITIVE_ONLY, "").strip().lower() == "true", clean)


def with_file_default(item: dict, library, explicit: bool | None = None) -> dict:
    """A LoRA entry with the file's positive-only default applied, unless the user chose (`explicit`)."""
    if explicit is not None:
        return {**{k: v for k, v in item.items() if k != "positive_only"},
                **({"positive_only": True} if explicit else {})}
    if item.get("positive_only"):
        return item
    return {**item, "positive_only": True} if read_options(library.resolve(item["name"]).path).positive_only else item

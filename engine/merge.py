"""The one way settings are put together, for every front-end (CLI, page, API).

Layers, each over the one before: the family's defaults, the model JSON's, a base (a PNG's settings, or the
user's remembered ones for this type; another type's base is not used), a LoRA preset, then what the user
changed. LoRAs: the user's (with a preset's, the user's winning by name) replace the base's; a base's LoRAs
from a PNG are checked against the LoRA folder (moved, changed or missing files are noted). A preset's prompt
snippet is appended once. The result is not validated yet: the engine validates it once, in `prepare`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from engine.lora.presets import with_snippet
from engine.settings import INPUT_FIELDS, GenerationSettings, normalize_loras


@dataclass
class Merged:
    settings: GenerationSettings
    notes: list[str] = field(default_factory=list)  # worth showing (e.g. a PNG's LoRA that is missing)


def merge_settings(engine, model_type: str, base: dict | None = None, record: dict | None = None,
                   preset: dict | None = None, changes: dict | None = None, input_stores=()) -> Merged:
    """`base`: a PNG's or remembered settings dict; `record`: the PNG's record (LoRA fingerprints);
    `preset`: {"loras": [...], "prompt": snippet}; `changes`: the user's values (None values are ignored).
    A base's input pictures are found by content in the engine's input store (or `input_stores`, e.g. the
    one beside a PNG); missing or changed ones are dropped with a note."""
    changes = {k: v for k, v in (changes or {}).items() if v is not None and k != "model_type"}
    base = dict(base or {})
    if base.pop("model_type", model_type) != model_type:
        base = {}  # another model's settings: keep only what the user gave
    notes: list[str] = []
    library = engine.lora_library(model_type)
    if preset is not None or "loras" in changes:
        by_name = {x["name"]: x for x in normalize_loras((preset or {}).get("loras", []))}
        by_name.update({x["name"]: x for x in normalize_loras(changes.get("loras", []))})
        changes["loras"] = list(by_name.values())
    elif base.get("loras"):
        recorded = record.get("loras") if isinstance(record, dict) else None
        base["loras"], notes = library.restore(normalize_loras(base["loras"]), recorded or [])
    if any(base.get(k) and k not in changes for k in INPUT_FIELDS):
        from engine.images.inputs import restore_inputs

        stores = [s for s in (getattr(engine, "inputs", None), *input_stores) if s is not None]
        base, input_notes = restore_inputs(base, stores)
        notes += input_notes
    snippet = (preset or {}).get("prompt", "")
    if snippet:
        changes["prompt"] = with_snippet(changes.get("prompt", base.get("prompt", "")), snippet)
    return Merged(engine.settings_for(model_type, **{**base, **changes}), notes)

"""Your model types folder (finetunes/): adding a file as an alternative of a model type's component.

A file there named like a model type overrides it field by field, so giving a component a new alternative
means writing that component's whole list (lists are replaced, not merged) into finetunes/TYPE.json, keeping
everything else the file already says. The shipped defaults/ are never written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from engine.weights.files import parse_ref


def add_alternative(folder: Path, model_def, field: str, path: Path, locator, current: Path | None = None) \
        -> Path | None:
    """List `path` among `field`'s alternatives via `folder`/TYPE.json; None when an alternative already
    points at that file. `current` (the file in use) heads a list the model JSON left empty, such as a text
    encoder taken from an all-in-one checkpoint, so it stays the default. Returns the JSON written."""
    path = Path(path).resolve()
    listed = model_def.files(field) or ([str(Path(current).resolve())] if current else [])
    for ref in map(parse_ref, listed):
        found = locator.local_path(ref)
        if found is not None and Path(found).resolve() == path:
            return None
    target = Path(folder) / f"{model_def.type}.json"
    data = json.loads(target.read_text(encoding="utf-8")) if target.is_file() else {}
    data.setdefault("model", {})[field] = listed + [str(path)]
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    partial.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, target)
    return target


def shadowed_by(model_def, folders) -> str | None:
    """The model JSON given with --model-def (outside the registry's `folders`), which overrides what the
    folders say about the type, if any."""
    last = Path(model_def.sources[-1]).resolve()
    return None if last.parent in {Path(f).resolve() for f in folders} else str(last)

"""Page updates by component name, as every handler returns them."""

from __future__ import annotations


def merged(*updates: dict) -> dict:
    """Updates by name, several for one component merged into one (gr.update dicts)."""
    out: dict = {}
    for frame in updates:
        for name, update in frame.items():
            if isinstance(update, dict) and isinstance(out.get(name), dict):
                out[name] = {**out[name], **update}
            else:
                out[name] = update
    return out

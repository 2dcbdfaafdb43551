"""The user's last settings per model type, kept in their own browser (a gr.BrowserState in local storage):
nothing on the server, so one user's prompt or picture never reaches another user.

What a browser sends back is anyone's data: only known settings fields of known types are read, pictures
only by the rule of app.web.pictures, and the page validates the result like any other input."""

from __future__ import annotations

from app.web.pictures import PICTURE_FIELDS, keep_usable
from engine.settings import GenerationSettings

STORAGE_KEY = "zimage-studio-settings"
# The value is this browser's own settings; the secret only lets a restarted server read what it stored
# there (Gradio sends it to the page, so it hides nothing from the page's user).
SECRET = "zimage-studio-remembered-settings"


def recall(store, model_type: str, outputs) -> dict:
    """The settings remembered for `model_type` in this browser ({} when none, or when they are damaged)."""
    stored = store.get(model_type) if isinstance(store, dict) else None
    if not isinstance(stored, dict):
        return {}
    known = GenerationSettings.field_names() - {"model_type"}
    values = {k: v for k, v in stored.items() if k in known}
    return keep_usable(values, outputs)[0]


def remember(store, settings: GenerationSettings, types) -> dict:
    """A new store holding `settings` as the last ones of their type (pictures are not kept: an upload's
    path means nothing to the next session). Types no longer served are dropped."""
    store = {k: v for k, v in store.items() if k in types} if isinstance(store, dict) else {}
    store[settings.model_type] = {k: v for k, v in settings.to_dict().items() if k not in PICTURE_FIELDS}
    return store

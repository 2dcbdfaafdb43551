"""The user's last settings per model type, kept in a JSON file between sessions."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from engine.settings import GenerationSettings


class SettingsMemory:
    def __init__(self, path: Path):
        self.path = Path(path)

    def load_all(self) -> dict:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}  # no file yet, or a damaged one: start from the model defaults

    def get(self, model_type: str) -> dict:
        """Stored fields that still exist (an older app version may have stored others)."""
        stored = self.load_all().get(model_type, {})
        known = GenerationSettings.field_names()
        return {k: v for k, v in stored.items() if k in known and k != "model_type"} if isinstance(stored, dict) else {}

    def remember(self, settings: GenerationSettings) -> None:
        data = self.load_all()
        data[settings.model_type] = settings.to_dict()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".settings-", dir=self.path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, ensure_ascii=False)
        os.replace(tmp, self.path)

"""The user's input pictures (init image, mask, control picture), kept in the outputs folder by content.

A PNG made from pictures records each one's sha256 and file name in its settings (`inputs`), and the settings'
path fields point at the stored copy (outputs/inputs/<sha256>.<ext>), so the PNG can be reproduced after the
upload or the original file is gone. Restoring looks pictures up by sha256 only: a path written in a PNG is
never opened (it may name any file on the server); a picture that is no longer stored, or stored with other
content, is dropped with a note.
"""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

from engine.errors import UserError
from engine.hashing import file_sha256
from engine.settings import INPUT_FIELDS

_SHA = re.compile(r"^[0-9a-f]{64}$")
LABELS = {"init_image": "init image", "mask": "mask", "control_image": "control picture"}


class InputStore:
    """outputs/inputs/<sha256><suffix>: one copy per content, written atomically, never overwritten."""

    def __init__(self, folder):
        self.folder = Path(folder)

    def put(self, path) -> tuple[Path, str]:
        """Store the picture at `path` (already checked to be a readable image); (stored path, sha256)."""
        try:
            return self._put(path)
        except OSError as exc:
            raise UserError(f"cannot keep the input picture in {self.folder} ({exc.strerror or exc}): the outputs "
                            "folder must be a folder this app can write to") from None

    def _put(self, path) -> tuple[Path, str]:
        digest = file_sha256(path)
        found = self.find(digest)
        if found is not None:
            return found, digest
        suffix = Path(path).suffix.lower()
        suffix = suffix if re.fullmatch(r"\.[a-z0-9]{1,5}", suffix) else ".img"
        self.folder.mkdir(parents=True, exist_ok=True)
        target = self.folder / f"{digest}{suffix}"
        fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=self.folder)
        try:
            with os.fdopen(fd, "wb") as out, open(path, "rb") as src:
                for chunk in iter(lambda: src.read(1 << 20), b""):
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return target, digest

    def put_image(self, image, name: str = "painted.png") -> tuple[Path, str]:
        """Store a PIL picture (e.g. a mask painted on the page) as PNG."""
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".partial-", suffix=".png", dir=self.folder)
        os.close(fd)
        try:
            image.save(tmp, format="PNG")
            return self.put(tmp)
        finally:
            os.unlink(tmp)

    def find(self, sha256: str) -> Path | None:
        """The stored picture with this content, or None (a stored file whose content changed is not returned)."""
        if not isinstance(sha256, str) or not _SHA.match(sha256) or not self.folder.is_dir():
            return None
        for path in sorted(self.folder.glob(f"{sha256}.*")):
            if path.is_file() and file_sha256(path) == sha256:
                return path
        return None


def record_inputs(settings, store: InputStore | None):
    """Settings whose input pictures are stored (paths pointing at the copies) and recorded by sha256 and
    file name in `inputs`. Without a store, the pictures are only recorded."""
    import dataclasses

    paths, record = {}, {}
    for name in INPUT_FIELDS:
        value = getattr(settings, name)
        if not value:
            continue
        known = settings.inputs.get(name) if isinstance(settings.inputs.get(name), dict) else {}
        if store is not None:
            stored, digest = store.put(value)
            paths[name] = str(stored.resolve())
        else:
            digest = file_sha256(value)
        original = known.get("name") if known.get("sha256") == digest else None  # a restored picture's name
        record[name] = {"sha256": digest, "name": original or Path(value).name}
    if record == settings.inputs and not any(paths[k] != getattr(settings, k) for k in paths):
        return settings
    return dataclasses.replace(settings, inputs=record, **paths)


def restore_inputs(data: dict, stores) -> tuple[dict, list[str]]:
    """Settings data from a PNG (or remembered settings) with each input picture found in one of the `stores`
    by its sha256; pictures not found are dropped, with a note saying which. Paths in `data` are never opened."""
    data = dict(data)
    inputs = data.get("inputs") if isinstance(data.get("inputs"), dict) else {}
    kept, notes = {}, []
    for name in INPUT_FIELDS:
        if not data.get(name):
            continue
        entry = inputs.get(name) if isinstance(inputs.get(name), dict) else {}
        digest, label = entry.get("sha256"), LABELS[name]
        shown = entry.get("name") or Path(str(data[name])).name
        found = next((f for f in (st.find(digest) for st in stores) if f is not None), None) if digest else None
        if found is not None:
            data[name] = str(found.resolve())
            kept[name] = {"sha256": digest, "name": shown}
            continue
        data[name] = ""
        if digest and any(st.folder.is_dir() and any(st.folder.glob(f"{digest}.*")) for st in stores):
            notes.append(f"the {label} {shown} was changed in the input store since (its content differs "
                         f"from sha256 {digest[:12]}...): choose the picture again")
        else:
            notes.append(f"the {label} {shown} is missing (not in the input store{'' if digest else ', no sha256 recorded'}"
                         "): choose the picture again")
    data["inputs"] = kept
    if not data.get("init_image"):
        data.pop("outpaint", None)  # margins of a picture that is gone
        if not data.get("control_image"):
            data["mask"] = ""
    return data, notes

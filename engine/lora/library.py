"""The LoRA folder: what is in it, safe names, file fingerprints, and what a PNG keeps about its LoRAs.

A LoRA is named by its path inside the folder ("styles/ink.safetensors"). Names that would lead outside
(`..`, absolute paths, links pointing out) are refused: a name can come from a PNG someone else made.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from engine.errors import SettingsError
from engine.hashing import file_sha256

SUFFIX = ".safetensors"


@dataclass(frozen=True)
class LoraFile:
    name: str  # path inside the folder, "/"-separated
    path: Path  # resolved, inside the folder
    size: int
    mtime_ns: int

    @property
    def key(self) -> tuple:
        """Identity of this file's content as far as cheap checks go (a replaced file gets a new key)."""
        return (str(self.path), self.size, self.mtime_ns)


class LoraLibrary:
    def __init__(self, folder):
        self.folder = Path(folder)
        self._hashes: dict[tuple, str] = {}

    @property
    def root(self) -> Path:
        return self.folder.resolve()

    def scan(self) -> list[LoraFile]:
        """Every .safetensors under the folder, sorted by name; read afresh on each call (the UI's refresh)."""
        if not self.folder.is_dir():
            return []
        found = []
        for dirpath, dirnames, filenames in os.walk(self.folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for fname in filenames:
                if fname.lower().endswith(SUFFIX) and not fname.startswith("."):
                    rel = (Path(dirpath) / fname).relative_to(self.folder).as_posix()
                    try:
                        found.append(self.resolve(rel))
                    except SettingsError:
                        continue  # a link leading outside the folder: not offered
        return sorted(found, key=lambda f: f.name.lower())

    def names(self) -> list[str]:
        return [f.name for f in self.scan()]

    def resolve(self, name: str) -> LoraFile:
        """The file a name means; SettingsError when it is unsafe, not a .safetensors or missing."""
        if not isinstance(name, str) or not name.strip():
            raise SettingsError(f"a LoRA name must be a path inside the LoRA folder, got {name!r}")
        rel = PurePosixPath(name.replace("\\", "/"))
        if rel.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
            raise SettingsError(f"LoRA {name!r}: give a path inside the LoRA folder ({self.folder}), "
                                "not an absolute path")
        if ".." in rel.parts:
            raise SettingsError(f"LoRA {name!r}: '..' is not allowed; LoRAs are read only from inside "
                                f"the LoRA folder ({self.folder})")
        if rel.suffix.lower() != SUFFIX:
            raise SettingsError(f"LoRA {name!r}: only .safetensors LoRA files are read (pickle formats such as "
                                ".ckpt/.pt can run code when opened)")
        path = (self.folder / rel).resolve()
        if not path.is_relative_to(self.root):
            raise SettingsError(f"LoRA {name!r} is a link leading outside the LoRA folder ({self.folder}); "
                                "copy the file into the folder instead")
        if not path.is_file():
            raise SettingsError(f"LoRA {name!r} is not in the LoRA folder ({self.folder}){self._hint(rel.name)}")
        stat = path.stat()
        return LoraFile(rel.as_posix(), path, stat.st_size, stat.st_mtime_ns)

    def resolve_all(self, items: list[dict]) -> list[LoraFile]:
        return [self.resolve(item["name"]) for item in items]

    def _hint(self, filename: str) -> str:
        files = self.scan()
        same = [f.name for f in files if Path(f.name).name.lower() == filename.lower()]
        if same:
            return f"; a file of that name is at {', '.join(same[:3])}"
        return f" ({len(files)} LoRA file(s) there: `python app.py loras` lists them)"

    def sha256(self, file: LoraFile) -> str:
        """Hex sha256 of the file, computed once per file state."""
        if file.key not in self._hashes:
            self._hashes[file.key] = file_sha256(file.path)
        return self._hashes[file.key]

    # ---- PNG record ------------------------------------------------------------------------------

    def record(self, items: list[dict]) -> list[dict]:
        """What a PNG keeps about each LoRA: its name, file name, sha256, strength, schedule (and positive_only)."""
        out = []
        for item in items:
            f = self.resolve(item["name"])
            out.append({"name": f.name, "file": f.path.name, "sha256": self.sha256(f), "size": f.size,
                        "strength": item["strength"], "schedule": item.get("schedule"),
                        **({"positive_only": True} if item.get("positive_only") else {})})
        return out

    def restore(self, items: list[dict], recorded: list[dict]) -> tuple[list[dict], list[str]]:
        """A PNG's LoRA entries checked against this folder: (usable entries, warnings).

        A LoRA moved inside the folder is found again by file name and sha256; a missing one is left out
        and a changed one (another sha256) is used, each with a warning."""
        recorded = recorded if isinstance(recorded, list) else []  # a PNG's record is anyone's JSON
        by_name = {r.get("name"): r for r in recorded if isinstance(r, dict) and isinstance(r.get("name"), str)}
        kept, notes = [], []
        for item in items:
            rec = by_name.get(item["name"], {})
            want = rec.get("sha256") if isinstance(rec.get("sha256"), str) else None
            try:
                f = self.resolve(item["name"])
            except SettingsError:
                f = self._find_moved(Path(item["name"]).name, want)
                if f is None:
                    notes.append(f"LoRA {item['name']!r} used for this image is not in the LoRA folder "
                                 f"({self.folder}){_sha_text(want)}: generating without it")
                    continue
                notes.append(f"LoRA {item['name']!r} found at {f.name!r} (same sha256)")
                item = {**item, "name": f.name}
            if want and self.sha256(f) != want:
                notes.append(f"LoRA {f.name!r} differs from the file used for this image (sha256 "
                             f"{self.sha256(f)[:12]}, the image's {want[:12]}): the result will differ")
            kept.append(item)
        return kept, notes

    def _find_moved(self, filename: str, sha: str | None) -> LoraFile | None:
        if not sha:
            return None
        for f in self.scan():
            if f.path.name.lower() == filename.lower() and self.sha256(f) == sha:
                return f
        return None


def _sha_text(sha: str | None) -> str:
    return f" (sha256 {sha[:12]}...)" if sha else ""

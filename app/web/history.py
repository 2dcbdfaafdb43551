"""The page's history: this browser's latest results, and a browser of the outputs folder's earlier images.

The outputs folder is not served by name (its names, date and seed, are easy to guess): every picture reaches
the page as a copy in Gradio's cache under a hash of its content (`served`).

- **This browser's results** are kept in its local storage (a gr.BrowserState) as entries {"file": name in
  the outputs folder, "sha256": its content hash}, newest first, at most `SESSION_MAX`. A reload shows them
  again. What a browser sends back is anyone's data: an entry comes back only when the file of that name still
  has that hash (knowing the hash means having had the picture) and, with logins, when it is the user's own.
- **Ownership.** With logins, each picture the page makes is recorded as its user's in the outputs folder's
  `.owners.jsonl` (one JSON line per picture: file, sha256, user; appended in one write). The PNG itself names
  no user (PNGs get shared). A logged-in user's history browser lists only the pictures recorded as theirs;
  pictures made without a login (the command line, earlier runs) are listed to no one while logins are on.
  Without logins, the history browser lists every PNG of the outputs folder with settings (its top level), to
  whoever uses the page: that is this computer only, since a page reachable from others without a login has
  its history browser turned off (`browsable=False`).
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from engine.hashing import file_sha256
from engine.outputs import PNG_KEY

SESSION_MAX = 200  # results a browser keeps (older ones are in the history browser)
PER_PAGE = 24
OWNERS = ".owners.jsonl"
_SHA = re.compile(r"^[0-9a-f]{64}$")
_NAME = re.compile(r"^[^/\\\0]+\.png$", re.IGNORECASE)


@dataclass(frozen=True)
class Item:
    """An image of the outputs folder, with what the history browser shows and searches."""

    file: str
    path: Path
    mtime: float
    prompt: str
    model_type: str
    seed: int | None

    @property
    def day(self) -> str:
        return time.strftime("%Y-%m-%d", time.localtime(self.mtime))

    def caption(self) -> str:
        prompt = self.prompt if len(self.prompt) <= 60 else self.prompt[:57] + "..."
        return f"{prompt} (seed {self.seed})" if self.seed is not None else prompt


@dataclass(frozen=True)
class Page:
    items: list  # [Item]
    total: int  # matching images
    page: int  # 0-based, clamped
    pages: int
    days: list  # [(day, count)] newest first, of the user's images

    def label(self) -> str:
        if not self.total:
            return "No images match."
        return f"Page {self.page + 1} of {self.pages} ({self.total} image{'s' if self.total != 1 else ''})"


class History:
    def __init__(self, outputs, logins: bool = False, browsable: bool = True):
        self.outputs = Path(outputs)
        self.logins = logins
        self.browsable = browsable
        self._lock = threading.Lock()
        self._hashes: dict[tuple, str] = {}  # (path, mtime_ns, size) -> sha256
        self._copies: dict[tuple, str] = {}  # (path, mtime_ns, size) -> Gradio cache copy
        self._meta: dict[str, tuple] = {}  # file -> (mtime_ns, size, Item or None)
        self._owners: tuple = (None, {})  # ((mtime_ns, size) of the index, {file: user})

    # ---- files and hashes -----------------------------------------------------------------------

    def _key(self, path: Path) -> tuple | None:
        try:
            st = path.stat()
        except OSError:
            return None
        return (str(path), st.st_mtime_ns, st.st_size)

    def sha256(self, path: Path) -> str | None:
        key = self._key(path)
        if key is None:
            return None
        if key not in self._hashes:
            self._hashes[key] = file_sha256(path)
        return self._hashes[key]

    def served(self, path) -> str:
        """The picture as the page may show it: a copy in Gradio's cache under a hash of its content."""
        from gradio.processing_utils import save_file_to_cache
        from gradio.utils import get_upload_folder

        path = Path(path)
        key = self._key(path)
        if key is None or key not in self._copies or not Path(self._copies[key]).is_file():
            copy = save_file_to_cache(str(path), get_upload_folder())
            if key is None:
                return copy
            self._copies[key] = copy
        return self._copies[key]

    # ---- ownership ------------------------------------------------------------------------------

    def owners(self) -> dict:
        index = self.outputs / OWNERS
        try:
            st = index.stat()
        except OSError:
            return {}
        stamp = (st.st_mtime_ns, st.st_size)
        with self._lock:
            if self._owners[0] != stamp:
                found = {}
                for line in index.read_text(encoding="utf-8", errors="replace").splitlines():
                    try:
                        row = json.loads(line)
                    except ValueError:
                        continue
                    if isinstance(row, dict) and isinstance(row.get("file"), str) and isinstance(row.get("user"), str):
                        found[row["file"]] = row["user"]
                self._owners = (stamp, found)
            return self._owners[1]

    def allowed(self, file: str, user: str | None) -> bool:
        """Whether `user` may see the outputs file `file`: anyone without logins, else its owner only."""
        return not self.logins or (user is not None and self.owners().get(file) == user)

    def record(self, paths, user: str | None = None) -> list[dict]:
        """Entries for new results (newest last in `paths`); with logins they are recorded as `user`'s."""
        entries = []
        lines = []
        for path in paths:
            path = Path(path)
            entry = {"file": path.name, "sha256": self.sha256(path)}
            entries.append(entry)
            if self.logins and user:
                lines.append(json.dumps({**entry, "user": user}, ensure_ascii=False) + "\n")
        if lines:
            self.outputs.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.outputs / OWNERS, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, "".join(lines).encode("utf-8"))  # one write: lines of concurrent saves never mix
            finally:
                os.close(fd)
        return entries

    # ---- this browser's results -------------------------------------------------------------------

    def resolve(self, entry, user: str | None = None) -> Path | None:
        """The outputs file an entry from a browser names, if it is there with that content and `user`'s."""
        if not isinstance(entry, dict):
            return None
        name, digest = entry.get("file"), entry.get("sha256")
        if not isinstance(name, str) or not _NAME.match(name) or name.startswith(".") \
                or not isinstance(digest, str) or not _SHA.match(digest):
            return None
        path = self.outputs / name
        if not path.is_file() or path.is_symlink() or not self.allowed(name, user):
            return None
        return path if self.sha256(path) == digest else None

    def session(self, store, new: list[dict] = ()) -> list[dict]:
        """This browser's entries: `new` first (newest first), then the stored ones, without repeats, at most
        SESSION_MAX; entries of another shape are dropped."""
        old = store if isinstance(store, list) else []
        out, seen = [], set()
        for entry in [*new, *old]:
            if not isinstance(entry, dict):
                continue
            key = (entry.get("file"), entry.get("sha256"))
            if key not in seen and all(isinstance(k, str) for k in key):
                seen.add(key)
                out.append({"file": key[0], "sha256": key[1]})
        return out[:SESSION_MAX]

    def gallery(self, entries, user: str | None = None) -> tuple[list, list[dict]]:
        """The gallery value for `entries` ([(cache copy, caption)]) and the entries that were usable."""
        items, kept = [], []
        for entry in entries:
            path = self.resolve(entry, user)
            if path is None:
                continue
            item = self.item(path)
            caption = f"seed {item.seed}" if item is not None and item.seed is not None else path.name
            items.append((self.served(path), caption))
            kept.append(entry)
        return items, kept

    # ---- the outputs folder ------------------------------------------------------------------------

    def item(self, path: Path) -> Item | None:
        """What a PNG's embedded settings say (read from its header only; cached per file state)."""
        from PIL import Image, UnidentifiedImageError

        try:
            st = path.stat()
        except OSError:
            return None
        cached = self._meta.get(path.name)
        if cached and cached[:2] == (st.st_mtime_ns, st.st_size):
            return cached[2]
        item = None
        try:
            with Image.open(path) as im:
                text = im.info.get(PNG_KEY)  # chunks before the pixels: no decoding
            settings = json.loads(text).get("settings") if isinstance(text, str) else None
            if isinstance(settings, dict):
                seed = settings.get("seed")
                item = Item(path.name, path, st.st_mtime, str(settings.get("prompt") or ""),
                            str(settings.get("model_type") or ""), seed if isinstance(seed, int) else None)
        except (OSError, UnidentifiedImageError, ValueError, AttributeError, Image.DecompressionBombError):
            item = None
        self._meta[path.name] = (st.st_mtime_ns, st.st_size, item)
        return item

    def scan(self, user: str | None = None) -> list[Item]:
        """The images of the outputs folder (top level, PNGs with this app's settings) `user` may see, newest
        first."""
        if not self.browsable or not self.outputs.is_dir():
            return []
        items = []
        with os.scandir(self.outputs) as found:
            for e in found:
                if _NAME.match(e.name) and not e.name.startswith(".") and e.is_file(follow_symlinks=False) \
                        and self.allowed(e.name, user):
                    item = self.item(Path(e.path))
                    if item is not None:
                        items.append(item)
        items.sort(key=lambda i: (i.mtime, i.file), reverse=True)
        return items

    def browse(self, user: str | None = None, day: str | None = None, query: str = "", page: int = 0,
               per_page: int = PER_PAGE) -> Page:
        """One page of `user`'s images of `day` (YYYY-MM-DD; None: all) whose prompt or model type holds every
        word of `query`."""
        items = self.scan(user)
        days: dict[str, int] = {}
        for item in items:
            days[item.day] = days.get(item.day, 0) + 1
        if day:
            items = [i for i in items if i.day == day]
        words = [w for w in str(query or "").lower().split() if w]
        if words:
            items = [i for i in items if all(w in f"{i.prompt}\n{i.model_type}".lower() for w in words)]
        pages = max(1, -(-len(items) // per_page))
        page = max(0, min(int(page or 0), pages - 1))
        return Page(items[page * per_page:(page + 1) * per_page], len(items), page, pages, list(days.items()))

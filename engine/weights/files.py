"""Where a model's files are: the user's own copies first (checkpoints, ComfyUI folders), else the hub.

A file reference in a model JSON is a hub URL (…/resolve/REV/PATH for a file, …/tree/REV/PATH for a
folder) or a local path (file or folder). Hub files land in the checkpoints folder under their repo path,
the same layout Wan2GP's ckpts/ uses, so either app can use the other's downloads.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import DownloadError, Interrupted, ModelDefinitionError, ModelFileError, UserError

_HUB_URL = re.compile(r"^https://huggingface\.co/([^/]+/[^/]+)/(resolve|tree|blob)/([^/]+)/(.+?)/?$")


@dataclass(frozen=True)
class FileRef:
    """A hub file/folder (repo, path, revision) or a local path."""

    text: str
    repo: str | None = None
    path: str = ""
    revision: str = "main"
    folder: bool = False

    @property
    def is_hub(self) -> bool:
        return self.repo is not None

    @property
    def filename(self) -> str:
        return self.path.rsplit("/", 1)[-1] if self.is_hub else Path(self.text).name


def parse_ref(text) -> FileRef:
    if not isinstance(text, str) or not text.strip():
        raise ModelDefinitionError(f"a file reference must be a hub URL or a path, got {text!r}")
    text = text.strip()
    m = _HUB_URL.match(text)
    if m:
        repo, kind, rev, path = m.groups()
        parts = [*repo.split("/"), rev, *path.split("/")]
        if any(p in ("", ".", "..") for p in parts) or "\\" in text:
            raise ModelDefinitionError(f"{text}: a hub URL names a file inside its repository; '..', '.', empty "
                                       "parts and backslashes are refused (they would lead outside the "
                                       "checkpoints folder)")
        return FileRef(text, repo, path, rev, folder=kind == "tree")
    if text.startswith(("http://", "https://")):
        raise ModelDefinitionError(f"{text}: only huggingface.co URLs of the form "
                                   "https://huggingface.co/OWNER/REPO/resolve/main/FILE are supported")
    return FileRef(text)


def as_list(value) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


@dataclass
class FileLocator:
    """Finds a reference on disk, or downloads it into `checkpoints`."""

    checkpoints: Path = Path("ckpts")
    comfyui_models: Path | None = None
    offline: bool = False

    def local_path(self, ref: FileRef) -> Path | None:
        if not ref.is_hub:
            path = Path(os.path.expanduser(ref.text))
            return path if path.exists() else None
        for candidate in (self.checkpoints / ref.path, self.checkpoints / ref.filename):
            if candidate.exists():
                return candidate
        return None

    def comfyui_path(self, relative_names: list[str]) -> Path | None:
        """The first of `relative_names` present under the ComfyUI models folder. A name may be a pattern
        (`unet/z?image?turbo*.gguf`: ComfyUI-GGUF files carry their quantization in the name), matched without
        regard to case; several matches: the first by name."""
        if not self.comfyui_models:
            return None
        for rel in relative_names:
            candidate = Path(self.comfyui_models) / rel
            if any(c in rel for c in "*?["):
                candidate = _first_match(candidate.parent, candidate.name)
            if candidate is not None and candidate.is_file():
                return candidate
        return None

    def find(self, refs: list[FileRef], comfyui_names: list[str] = ()) -> Path | None:
        """The first alternative already on disk, the user's ComfyUI copy next."""
        for ref in refs:
            path = self.local_path(ref)
            if path is not None:
                return path
        return self.comfyui_path(list(comfyui_names))

    def target(self, ref: FileRef, folder: Path | None = None) -> Path:
        """Where a hub file or folder lands (absolute, so messages say exactly where); `folder`: the one its hub
        path goes under, when not the checkpoints folder."""
        if not ref.is_hub:
            return Path(ref.text).expanduser().resolve()
        return (Path(folder or self.checkpoints) / ref.path).resolve()

    def is_offline(self) -> bool:
        return self.offline or os.environ.get("HF_HUB_OFFLINE") == "1"

    def download(self, ref: FileRef, size: int | None = None, patterns: list[str] = (), progress=None,
                 folder: Path | None = None) -> Path:
        """Fetch a hub file (with a progress bar) or the listed files of a hub folder. `progress(done, total)`
        is called with the bytes received so far; an exception it raises (Stop) ends the download, leaving no
        partial file under the final name. The hub is huggingface.co, or the one HF_ENDPOINT names. `folder`:
        where the hub path lands, when not the checkpoints folder (another tool's layout)."""
        if not ref.is_hub:
            raise ModelFileError(ref.text, "file or folder not found")
        target = self.target(ref, folder)
        local = Path(folder or self.checkpoints)
        try:
            if self.is_offline():
                raise OSError("offline mode (HF_HUB_OFFLINE=1)")
            from huggingface_hub import hf_hub_download, snapshot_download

            local.mkdir(parents=True, exist_ok=True)
            hub = {"endpoint": os.environ["HF_ENDPOINT"]} if os.environ.get("HF_ENDPOINT") else {}
            if progress is not None:
                hub["tqdm_class"] = _reporting_bar(progress)
            if ref.folder:
                allow = [f"{ref.path}/{p}" for p in patterns] or [f"{ref.path}/*"]
                snapshot_download(ref.repo, revision=ref.revision, allow_patterns=allow, local_dir=local,
                                  **{k: v for k, v in hub.items() if k != "tqdm_class"})
                return target
            return Path(hf_hub_download(ref.repo, ref.path, revision=ref.revision, local_dir=local, **hub))
        except (UserError, Interrupted):  # Interrupted: Stop, raised by `progress`
            raise
        except Exception as exc:
            what = "folder" if ref.folder else "file"
            size_text = f" ({human_size(size)})" if size else ""
            raise DownloadError(
                f"could not download the {what} {ref.path} from {ref.repo}{size_text}: {first_line(exc)}. "
                f"Download it from {ref.text} yourself and put it at {target}, or point the model JSON or "
                "--comfyui-models at your copy.", first_line(exc)) from None


def missing_line(ref: FileRef, size: int | None, target: Path) -> str:
    """'the file X (12.3 GB) from https://... -> /abs/target'."""
    what = "folder" if ref.folder else "file"
    size_text = f" ({human_size(size)})" if size else ""
    return f"the {what} {ref.filename}{size_text} from {ref.text} (to {target})"


def _reporting_bar(report):
    """A tqdm class for huggingface_hub's downloads that tells `report(done, total)` each chunk received."""
    from tqdm.std import tqdm

    class ReportingBar(tqdm):
        def update(self, n=1):
            shown = super().update(n)
            report(int(self.n), int(self.total) if self.total else None)
            return shown

    return ReportingBar


def _first_match(folder: Path, pattern: str) -> Path | None:
    import fnmatch

    if not folder.is_dir():
        return None
    names = sorted(p.name for p in folder.iterdir() if fnmatch.fnmatch(p.name.lower(), pattern.lower()))
    return folder / names[0] if names else None


def human_size(n: int | None) -> str:
    if not n:
        return "size unknown"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

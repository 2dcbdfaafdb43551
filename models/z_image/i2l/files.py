"""Where the image-to-LoRA files are: the user's own copies first, else a download with a progress bar.

Looked for, in order (CHECKPOINTS is --checkpoints, COMFY is --comfyui-models):
  a file named on the command line (--siglip2 / --dinov3 / --i2l-model)
  CHECKPOINTS/DiffSynth-Studio/<repo>/<path>   DiffSynth-Studio's own models/ layout, and where downloads go
  CHECKPOINTS/<repo>/<path>                    a clone of the hub repository
  CHECKPOINTS/I2L/... and COMFY/I2L/...        the ComfyUI node's layout (models/I2L/CLIPS, models/I2L/Z-Image)
i2L v2 (DiffSynth-Studio/ZImage-i2L-v2) ships Python code that its loader executes: it is refused by name.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from engine.errors import DownloadError, ModelFileError, UserError
from engine.weights.files import FileLocator, human_size, parse_ref
from models.z_image.i2l.identify import DINOV3, HYPERNETWORK, SIGLIP2


@dataclass(frozen=True)
class Part:
    role: str
    label: str
    repo: str  # hub repository
    path: str  # file inside it
    comfyui: str  # the ComfyUI node's place, under ComfyUI's models/ folder
    size: int  # bytes of the released bf16 file
    flag: str  # the command-line flag naming a file for it

    @property
    def url(self) -> str:
        return f"https://huggingface.co/{self.repo}/resolve/main/{self.path}"


PARTS = {
    SIGLIP2: Part(SIGLIP2, "SigLIP2-G384 image encoder", "DiffSynth-Studio/General-Image-Encoders",
                  "SigLIP2-G384/model.safetensors", "I2L/CLIPS/SigLIP2-G384.safetensors", 2_327_319_552, "--siglip2"),
    DINOV3: Part(DINOV3, "DINOv3-7B image encoder", "DiffSynth-Studio/General-Image-Encoders",
                 "DINOv3-7B/model.safetensors", "I2L/CLIPS/DINOv3-7B.safetensors", 13_432_070_144, "--dinov3"),
    HYPERNETWORK: Part(HYPERNETWORK, "Z-Image-i2L hypernetwork", "DiffSynth-Studio/Z-Image-i2L", "model.safetensors",
                       "I2L/Z-Image/Z-Image-i2L.safetensors", 3_226_468_352, "--i2l-model"),
}
_V2 = re.compile(r"i2l[-_ ]?v2", re.IGNORECASE)


@dataclass
class PartStatus:
    part: Part
    path: Path | None  # on disk; None: to download

    def line(self) -> str:
        where = f"present ({self.path})" if self.path else f"to download ({human_size(self.part.size)})"
        return f"{self.part.label}: {where}"


def candidates(part: Part, locator: FileLocator) -> list[Path]:
    ckpts = Path(locator.checkpoints)
    found = [ckpts / part.repo / part.path, ckpts / part.repo.split("/")[1] / part.path, ckpts / part.comfyui]
    if locator.comfyui_models:
        found.append(Path(locator.comfyui_models) / part.comfyui)
    return found


def refuse_v2(path: Path) -> None:
    """i2L v2 is a template model: DiffSynth imports and runs the model.py downloaded with it."""
    path = Path(path)
    folder = path if path.is_dir() else path.parent
    if _V2.search(str(path)) or (folder / "model.py").is_file():
        raise UserError(f"{path}: this is Z-Image-i2L v2 (DiffSynth-Studio/ZImage-i2L-v2), whose loader executes "
                        "the Python code (model.py) downloaded with it; this app never runs code that comes with "
                        "a model. Use Z-Image-i2L v1 (DiffSynth-Studio/Z-Image-i2L).")


def given_file(part: Part, path) -> Path:
    """A file the user named for `part`: it must exist, be a file, and not be i2L v2."""
    path = Path(str(path)).expanduser()
    refuse_v2(path)
    if path.is_dir():
        inside = path / Path(part.path).name
        if not inside.is_file():
            raise ModelFileError(path, f"a folder without {Path(part.path).name}: name the {part.label} file")
        path = inside
    if not path.is_file():
        raise ModelFileError(path, f"no such file (given for the {part.label}, {part.flag})")
    return path.resolve()


def status(locator: FileLocator, given: dict | None = None) -> list[PartStatus]:
    """Each part's file on disk, or None when it would be downloaded."""
    given = {k: v for k, v in (given or {}).items() if v}
    out = []
    for role, part in PARTS.items():
        if role in given:
            out.append(PartStatus(part, given_file(part, given[role])))
            continue
        path = next((p for p in candidates(part, locator) if p.is_file()), None)
        out.append(PartStatus(part, path))
    return out


def fetch(item: PartStatus, locator: FileLocator, progress=None) -> Path:
    """The part's file, downloaded into CHECKPOINTS/DiffSynth-Studio/<repo>/<path> (resumable) if missing, through
    FileLocator.download: `progress(done, total)` gets the bytes received and may raise to stop (Stop), leaving
    no partial file under the final name. DownloadError saying where to put a copy when it cannot be fetched."""
    if item.path is not None:
        return item.path
    part = item.part
    folder = Path(locator.checkpoints) / part.repo
    try:
        return locator.download(parse_ref(part.url), part.size, progress=progress, folder=folder)
    except DownloadError as exc:
        raise DownloadError(
            f"could not download the {part.label} ({human_size(part.size)}) from {part.repo}: {exc.reason}. "
            f"Download {part.url} yourself and put it at {folder / part.path}, or at "
            f"<ComfyUI>/models/{part.comfyui} (with --comfyui-models), or name your copy with {part.flag} FILE"
        ) from None

"""Upscaling pictures: lanczos, or super-resolution models (ESRGAN/RealESRGAN, 4x-UltraSharp, SwinIR, DAT, HAT,
...) read from `.safetensors` files in the upscaler folder and run through spandrel, which tells the
architecture from the weights. Pickle files (.pth, .pt, .ckpt, .bin) are refused: a pickle can run code.

Models run in overlapping tiles (engine.images.tiles), so the memory they need is bounded by the tile: a 4x of
a 2 MP picture needs about what a 4x of one tile does, plus the finished picture in RAM.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path

import numpy as np

from engine.errors import ModelFileError, SettingsError, UserError
from engine.images.tiles import Blender, Tiling

PICKLE_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".pkl")
TILE, OVERLAP = 512, 32  # input pixels per tile and shared between tiles
MAX_OUTPUT_PIXELS = 16384 * 16384  # a bigger result would not fit in RAM as a picture


def import_spandrel():
    """spandrel, importable without torchvision: only two of its non-upscaler architectures (LaMa inpainting,
    RestoreFormer faces) import torchvision at load time, and this app refuses those; where torchvision is
    missing or cannot load beside this torch build, a placeholder module stands in while spandrel imports."""
    try:
        import spandrel
        return spandrel
    except ModuleNotFoundError as exc:
        if exc.name == "spandrel":
            raise UserError("upscaler models need the spandrel package: pip install --no-deps -r "
                            "requirements-upscalers.txt") from None
        if not (exc.name or "").startswith("torchvision"):
            raise
    except RuntimeError:  # torchvision is there but built for another torch ("operator ... does not exist")
        for name in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[name]
    saved = {m: sys.modules.pop(m) for m in [m for m in sys.modules if m.startswith("torchvision")]}
    sys.modules.update(_placeholder_torchvision())
    try:
        import spandrel
        return spandrel
    finally:
        for m in [m for m in sys.modules if m.startswith("torchvision")]:
            del sys.modules[m]
        sys.modules.update(saved)


def _placeholder_torchvision() -> dict:
    def unavailable(*_a, **_k):
        raise UserError("this model needs torchvision, which is not installed")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.rotate = functional.normalize = unavailable
    functional.InterpolationMode = type("InterpolationMode", (), {"NEAREST": 0, "BILINEAR": 2, "BICUBIC": 3})
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    root = types.ModuleType("torchvision")
    root.transforms = transforms
    return {"torchvision": root, "torchvision.transforms": transforms,
            "torchvision.transforms.functional": functional}


class Upscalers:
    """The upscaler folder: lists its models, loads one at a time (cached), runs it tiled."""

    def __init__(self, folder, device=None):
        import torch

        self.folder = Path(folder)
        self.device = torch.device(device or "cpu")
        self._loaded: tuple[str, object] | None = None

    def names(self) -> list[str]:
        """Model files (paths inside the folder, .safetensors)."""
        if not self.folder.is_dir():
            return []
        return sorted(p.relative_to(self.folder).as_posix() for p in self.folder.rglob("*.safetensors"))

    def resolve(self, name: str) -> Path:
        """The file of upscaler `name` (with or without .safetensors), inside the folder."""
        root = self.folder.resolve()
        candidates = [name] if name.endswith(".safetensors") else [f"{name}.safetensors", name]
        for candidate in candidates:
            path = (self.folder / candidate).resolve()
            if not path.is_relative_to(root):
                raise SettingsError(f"upscaler {name!r} must be a file inside the upscaler folder {self.folder}")
            if path.suffix.lower() in PICKLE_SUFFIXES:
                raise SettingsError(f"upscaler {name!r}: {path.suffix} files are pickles, which can run code; only "
                                    ".safetensors files are read (convert it, or download the .safetensors "
                                    "version)")
            if path.is_file():
                return path
        known = ", ".join(self.names()) or "none"
        raise SettingsError(f"upscaler {name!r} is not in {self.folder} (found: {known}; built in: lanczos)")

    def load(self, name: str):
        """The spandrel model descriptor of upscaler `name`, on this device, in eval mode."""
        if self._loaded and self._loaded[0] == name:
            return self._loaded[1]
        path = self.resolve(name)
        model = load_file(path)
        self._loaded = (name, model.to(self.device).eval())
        return self._loaded[1]

    def upscale(self, picture, name: str):
        """`picture` (PIL RGB) through model `name`, in tiles: its native scale."""
        return run_tiled(self.load(name), picture, self.device)


def load_file(path: Path):
    """A spandrel ImageModelDescriptor from a .safetensors file; a clear ModelFileError for anything else."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file as read

    if path.suffix.lower() != ".safetensors":
        raise ModelFileError(path, "only .safetensors upscaler files are read")
    try:
        state = read(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(path, f"not a readable safetensors file (damaged or cut off?): {exc}") from None
    spandrel = import_spandrel()
    try:
        model = spandrel.ModelLoader().load_from_state_dict(state)
    except spandrel.UnsupportedModelError:
        raise ModelFileError(path, "unknown upscaler architecture: spandrel recognises none in its weights "
                                   "(ESRGAN, RealESRGAN, SwinIR, DAT, HAT, ... are supported)") from None
    except (KeyError, RuntimeError, ValueError, IndexError, AssertionError) as exc:
        raise ModelFileError(path, f"looks like an upscaler but its weights do not fit the architecture "
                                   f"({type(exc).__name__}: {exc})") from None
    if not isinstance(model, spandrel.ImageModelDescriptor) or model.purpose != "SR" or model.scale < 2:
        kind = getattr(model, "purpose", type(model).__name__)
        raise ModelFileError(path, f"a {model.architecture.name} model for {kind}, not an upscaler "
                                   f"(scale {getattr(model, 'scale', 1)})")
    return model


def run_tiled(model, picture, device, tile: int = TILE, overlap: int = OVERLAP):
    """PIL RGB -> PIL RGB `model.scale` times larger, computed tile by tile (feathered overlaps)."""
    import torch
    from PIL import Image

    scale = model.scale
    w, h = picture.size
    if w * h * scale * scale > MAX_OUTPUT_PIXELS:
        raise SettingsError(f"upscaling {w}x{h} by {scale} gives {w * scale}x{h * scale}: above the "
                            f"{MAX_OUTPUT_PIXELS // 10**6} MP this app makes")
    a = np.asarray(picture.convert("RGB"), dtype=np.float32) / 255.0
    blender = Blender(w * scale, h * scale, overlap * scale)
    dtype = next(model.model.parameters()).dtype
    with torch.inference_mode():
        for left, top, right, bottom in Tiling(tile, overlap).boxes(w, h):
            x = torch.from_numpy(a[top:bottom, left:right]).permute(2, 0, 1)[None].to(device, dtype)
            y = model(x).clamp(0, 1)[0].permute(1, 2, 0).float().cpu().numpy() * 255.0
            blender.add(y, (left * scale, top * scale, right * scale, bottom * scale))
    return Image.fromarray(np.clip(blender.array() + 0.5, 0, 255).astype(np.uint8))


def upscaled(picture, scale: float, name: str, upscalers: Upscalers | None, size=None):
    """`picture` scaled by `scale` (or to `size`, w x h) with lanczos or an upscaler model (its own scale, then
    lanczos to the exact size)."""
    from PIL import Image

    size = tuple(size) if size else (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    if name == "latent":
        raise SettingsError("the latent upscaler works on latents (hires fix), not on pictures")
    if name != "lanczos":
        if upscalers is None:
            raise SettingsError(f"upscaler {name!r}: no upscaler folder is set")
        picture = upscalers.upscale(picture, name)
    return picture if picture.size == size else picture.resize(size, Image.Resampling.LANCZOS)

"""The one code path from settings to saved PNGs, shared by the CLI and the UI."""

from __future__ import annotations

import gc
import platform
from pathlib import Path

from core import APP_NAME, APP_VERSION
from core.errors import SettingsError
from core.files import FileLocator
from core.outputs import save_png
from core.registry import Registry
from core.settings import GenerationSettings

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def pick_device(name: str | None = None):
    import torch

    if name:
        return torch.device(name)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(name: str | None, device):
    """float32 on CPU (bf16 matmuls are slow there), bfloat16 on GPUs, unless the user says otherwise."""
    import torch

    if name is None:
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if name not in DTYPES:
        raise SettingsError(f"dtype {name!r} is not one of {', '.join(sorted(set(DTYPES.values())))}")
    return getattr(torch, DTYPES[name])


class Engine:
    """Holds at most one loaded model type; loads on demand, generates, saves."""

    def __init__(self, registry: Registry, locator: FileLocator, dtype: str | None = None,
                 device: str | None = None):
        self.registry = registry
        self.locator = locator
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.model = None

    def settings_for(self, model_type: str, **overrides) -> GenerationSettings:
        return self.registry.default_settings(model_type, **overrides)

    def check(self, settings: GenerationSettings) -> list[str]:
        """Validate everything before any loading; returns notes worth showing."""
        settings.validate()
        model_def = self.registry.get(settings.model_type)
        handler = self.registry.handler(settings.model_type)
        handler.validate(settings, model_def.architecture)
        return handler.notes(settings, model_def.architecture)

    def load(self, model_type: str):
        if self.model is not None and self.model.model_type == model_type:
            return self.model
        self.unload()
        model_def = self.registry.get(model_type)
        self.model = self.registry.handler(model_type).load(model_def, self.locator, self.dtype, self.device)
        return self.model

    def unload(self) -> None:
        self.model = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def generate(self, settings: GenerationSettings, callback=None):
        self.check(settings)
        model = self.load(settings.model_type)
        return self.registry.handler(settings.model_type).generate(model, settings, callback)

    def control_map(self, settings: GenerationSettings):
        """The control map `settings` would condition on (PIL RGB at the output size), without generating."""
        self.check(settings)
        handler = self.registry.handler(settings.model_type)
        if not settings.control_image or not hasattr(handler, "control_map"):
            raise SettingsError("no control image to make a map from")
        return handler.control_map(settings, self.locator, self.device)

    def record(self, batch_index: int) -> dict:
        """What the PNG keeps besides the settings: files, precision and versions."""
        import diffusers
        import torch
        import transformers

        return {
            "app": f"{APP_NAME} {APP_VERSION}", "batch_index": batch_index,
            "files": {k: Path(v).name for k, v in self.model.files.items()},
            "dtype": str(self.dtype).replace("torch.", ""), "device": self.device.type,
            "versions": {"torch": torch.__version__, "diffusers": diffusers.__version__,
                         "transformers": transformers.__version__, "python": platform.python_version()},
        }

    def save(self, results, output: Path) -> list[Path]:
        output = Path(output)
        if output.suffix.lower() == ".png" and len(results) > 1:
            folder, stem = output.parent, output.stem
            targets = [folder / f"{stem}_{i + 1}.png" for i in range(len(results))]
        else:
            targets = [output] * len(results)
        return [save_png(r.image, r.settings, self.record(r.batch_index), t) for r, t in zip(results, targets)]

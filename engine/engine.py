"""The one code path from settings to saved PNGs, shared by the CLI and the UI."""

from __future__ import annotations

import dataclasses
import gc
import platform
from pathlib import Path

from engine import APP_NAME
from engine import APP_VERSION
from engine.errors import SettingsError
from engine.weights.files import FileLocator
from engine.load_options import LoadOptions
from engine.outputs import save_png
from engine.registry import Registry
from engine.settings import GenerationSettings

DTYPES = {"float32": "float32", "fp32": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float16": "float16", "fp16": "float16"}


def pick_device(name: str | None = None):
    import torch

    if name:
        try:
            device = torch.device(name)
        except RuntimeError:
            raise SettingsError(f"--device {name!r} is not a torch device such as cuda, cuda:1 or cpu") from None
        if device.type == "cuda" and not torch.cuda.is_available():
            raise SettingsError(f"--device {name}: PyTorch sees no CUDA GPU (a CPU-only PyTorch build, or no driver)")
        return device
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
                 device: str | None = None, options: LoadOptions | None = None, overrides: dict | None = None,
                 lora_dirs: dict | None = None):
        self.registry = registry
        self.locator = locator
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.options = (options or LoadOptions()).validate()
        self.overrides = dict(overrides or {})  # model JSON component field -> path, for every type
        self.model = None
        self._loaded_key = None
        self.lora_dirs = dict(lora_dirs or {})  # family -> folder (default: the handler's)
        self._libraries: dict = {}

    def set_overrides(self, overrides: dict) -> None:
        """Swap components (e.g. {"text_encoder_URLs": path, "vae_URLs": path}); reloads on next use."""
        self.overrides = {k: v for k, v in overrides.items() if v}

    def configure(self, **changes) -> LoadOptions:
        """Change load options (INT8/bf16 files, memory profile...); the loaded model is dropped if they differ."""
        options = self.options.replace(**changes)
        if options != self.options:
            self.unload()
            self.options = options
        return options

    def startup_notes(self) -> list[str]:
        """What to tell the user once about memory management here (profile chosen, or no CUDA)."""
        from engine.placement.offload import startup_notes

        return startup_notes(self.options, self.device)

    def settings_for(self, model_type: str, **overrides) -> GenerationSettings:
        return self.registry.default_settings(model_type, **overrides)

    def check(self, settings: GenerationSettings) -> list[str]:
        """Validate everything before any loading; returns notes worth showing."""
        settings.validate()
        model_def = self.registry.get(settings.model_type)
        handler = self.registry.handler(settings.model_type)
        handler.validate(settings, model_def.architecture)
        self.lora_library(settings.model_type).resolve_all(settings.loras)  # names, before loading anything
        return handler.notes(settings, model_def.architecture) + handler.lora_notes(settings, model_def.architecture)

    def lora_library(self, model_type: str):
        """The LoRA folder of a model type's family (engine.lora.library.LoraLibrary)."""
        from engine.lora.library import LoraLibrary

        handler = self.registry.handler(model_type)
        folder = self.lora_dirs.get(handler.family) or handler.lora_dir()
        if folder not in self._libraries:
            self._libraries[folder] = LoraLibrary(folder)
        return self._libraries[folder]

    def apply_loras(self, settings: GenerationSettings) -> list[str]:
        """Load the model, attach exactly the settings' LoRAs; returns warnings (e.g. keys not applied)."""
        model = self.load(settings.model_type)
        files = self.lora_library(settings.model_type).resolve_all(settings.loras)
        return self.registry.handler(settings.model_type).apply_loras(model, files)

    def load(self, model_type: str):
        key = (model_type, tuple(sorted(self.overrides.items())))
        if self.model is not None and self._loaded_key == key:
            return self.model
        self.unload()
        model_def = self.registry.get(model_type)
        if self.overrides:
            model_def = dataclasses.replace(model_def, model={**model_def.model, **self.overrides})
        self.model = self.registry.handler(model_type).load(model_def, self.locator, self.dtype, self.device,
                                                            self.options)
        self._loaded_key = key
        return self.model

    def unload(self) -> None:
        if self.model is not None and getattr(self.model, "placement", None) is not None:
            self.model.placement.release()
        self.model = None
        self._loaded_key = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass

    def enhance(self, settings: GenerationSettings, on_token=None) -> GenerationSettings:
        """Settings whose prompt is the enhancer's rewrite (seeded by the settings' seed); the user's prompt
        moves to `original_prompt`, so both reach the PNG."""
        settings = settings.with_seed()
        model = self.load(settings.model_type)
        original = settings.original_prompt or settings.prompt
        text = self.registry.handler(settings.model_type).enhance(model, original, settings.seed,
                                                                   settings.enhance_thinking, on_token)
        return dataclasses.replace(settings, prompt=text, original_prompt=original)

    def generate(self, settings: GenerationSettings, callback=None, on_token=None):
        self.check(settings)
        model = self.load(settings.model_type)
        if settings.enhance and not settings.original_prompt:
            settings = self.enhance(settings, on_token)
        self.apply_loras(settings)
        return self.registry.handler(settings.model_type).generate(model, settings, callback)

    def control_map(self, settings: GenerationSettings):
        """The control map `settings` would condition on (PIL RGB at the output size), without generating."""
        self.check(settings)
        handler = self.registry.handler(settings.model_type)
        if not settings.control_image or not hasattr(handler, "control_map"):
            raise SettingsError("no control image to make a map from")
        return handler.control_map(settings, self.locator, self.device)

    def preview(self, latents):
        """A cheap picture of in-progress latents from the loaded model."""
        return self.registry.handler(self.model.model_type).preview(self.model, latents)

    def record(self, batch_index: int, settings: GenerationSettings | None = None) -> dict:
        """What the PNG keeps besides the settings: files, LoRA fingerprints, precision and versions."""
        import diffusers
        import torch
        import transformers

        return {
            "app": f"{APP_NAME} {APP_VERSION}", "batch_index": batch_index,
            "files": {k: Path(v).name for k, v in self.model.files.items()},
            "loras": self.lora_library(settings.model_type).record(settings.loras) if settings else [],
            "dtype": str(self.dtype).replace("torch.", ""), "device": self.device.type,
            "load": dict(getattr(self.model, "load_info", {})),
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
        return [save_png(r.image, r.settings, {**self.record(r.batch_index, r.settings),
                                               "memory": getattr(r, "memory", {})}, t)
                for r, t in zip(results, targets)]

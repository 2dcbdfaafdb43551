"""The one code path from settings to saved PNGs, shared by every front-end (CLI, page, API).

Front-ends prepare a request (settings validated once, plus the components and load options of this job
only) and run it as a job on `engine.jobs`, the one queue for everything that uses the model. The methods
that touch the model also take the engine's lock, so even a direct call cannot run beside a job.
"""

from __future__ import annotations

import dataclasses
import gc
import platform
import threading
from dataclasses import dataclass, field
from pathlib import Path

from engine import APP_NAME, APP_VERSION
from engine import jobs
from engine.errors import SettingsError
from engine.jobs import JobQueue
from engine.limits import Limits
from engine.load_options import LoadOptions
from engine.outputs import png_bytes, write_png_bytes
from engine.registry import Registry
from engine.settings import BUILTIN_UPSCALERS, GenerationSettings
from engine.weights.files import FileLocator

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


def needs_model(settings: GenerationSettings) -> bool:
    """False for an init image at strength 0: the picture as it is (upscaled), no model pass, nothing loaded."""
    return not (settings.init_image and settings.strength == 0)


@dataclass(frozen=True)
class Request:
    """What one job asks for: validated settings, and what to load for it (this job only)."""

    settings: GenerationSettings
    notes: tuple[str, ...] = ()
    components: tuple[tuple[str, str], ...] = ()  # model JSON component field -> file, e.g. another VAE
    options: LoadOptions | None = None  # None: the engine's own


@dataclass
class Loaded:
    """What is loaded now, and with what."""

    model: object = None
    key: tuple = ()
    extras: dict = field(default_factory=dict)


class Engine:
    """Holds at most one loaded model type; loads on demand, generates, saves. `jobs` runs GPU work."""

    def __init__(self, registry: Registry, locator: FileLocator, dtype: str | None = None,
                 device: str | None = None, options: LoadOptions | None = None, components: dict | None = None,
                 lora_dirs: dict | None = None, limits: Limits | None = None, inputs_dir=None,
                 upscaler_dir=None):
        self.registry = registry
        self.locator = locator
        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        self.options = (options or LoadOptions()).validate()
        self.components = {k: v for k, v in (components or {}).items() if v}  # the CLI's --text-encoder/--vae
        self.lora_dirs = dict(lora_dirs or {})  # family -> folder (default: the handler's)
        self.limits = (limits or Limits()).validate()  # what one job may ask for, whichever front-end
        self.jobs = JobQueue()
        self._gpu = threading.RLock()
        self._loaded = Loaded()
        self._encoder = Loaded()  # the text encoder alone, loaded for the prompt enhancer (load_encoder_for)
        self._libraries: dict = {}
        from engine.images.inputs import InputStore
        from engine.images.upscalers import Upscalers

        # the user's input pictures by content (None: recorded by sha256, not copied); upscaler models
        self.inputs = InputStore(inputs_dir) if inputs_dir else None
        self.upscalers = Upscalers(upscaler_dir or Path(locator.checkpoints) / "upscalers", self.device)

    @property
    def model(self):
        return self._loaded.model

    def startup_notes(self) -> list[str]:
        """What to tell the user once about memory management here (profile chosen, or no CUDA)."""
        from engine.placement.offload import startup_notes

        return startup_notes(self.options, self.device)

    def settings_for(self, model_type: str, **overrides) -> GenerationSettings:
        return self.registry.default_settings(model_type, **overrides)

    # ---- requests --------------------------------------------------------------------------------

    def prepare(self, settings: GenerationSettings, components: dict | None = None,
                options: LoadOptions | None = None) -> Request:
        """Validate once, before any loading; the request carries the notes worth showing. Input pictures are
        stored by content (engine.images.inputs) and recorded in the settings."""
        from engine.images.inputs import record_inputs

        settings = settings.validate()
        model_def = self.registry.get(settings.model_type)
        handler = self.registry.handler(settings.model_type)
        handler.validate(settings, model_def.architecture)
        self.limits.check(settings, handler.capabilities(model_def.architecture).step_range)
        if settings.upscale > 1 and settings.upscaler not in BUILTIN_UPSCALERS:
            self.upscalers.resolve(settings.upscaler)  # a missing or pickle file: said before any work
        settings = record_inputs(settings, self.inputs)
        self.lora_library(settings.model_type).resolve_all(settings.loras)  # names, before loading anything
        notes = handler.notes(settings, model_def.architecture) + handler.lora_notes(settings,
                                                                                   model_def.architecture)
        merged = {**self.components, **{k: v for k, v in (components or {}).items() if v}}
        return Request(settings, tuple(notes), tuple(sorted(merged.items())), options)

    def check(self, settings: GenerationSettings) -> list[str]:
        """Validate `settings`; returns the notes worth showing."""
        return list(self.prepare(settings).notes)

    def _request(self, settings_or_request) -> Request:
        if isinstance(settings_or_request, Request):
            return settings_or_request
        return self.prepare(settings_or_request)

    def lora_library(self, model_type: str):
        """The LoRA folder of a model type's family (engine.lora.library.LoraLibrary)."""
        from engine.lora.library import LoraLibrary

        handler = self.registry.handler(model_type)
        folder = self.lora_dirs.get(handler.family) or handler.lora_dir()
        if folder not in self._libraries:
            self._libraries[folder] = LoraLibrary(folder)
        return self._libraries[folder]

    # ---- the model -------------------------------------------------------------------------------

    def load(self, model_type: str, components=(), options: LoadOptions | None = None):
        """The model type loaded with these component files and options (the engine's by default)."""
        components = tuple(sorted(dict(components or self.components).items()))
        options = options or self.options
        key = (model_type, components, options)
        with self._gpu:
            if self._loaded.model is not None and self._loaded.key == key:
                return self._loaded.model
            self.unload()
            jobs.stage("loading the model")
            model_def = self.registry.get(model_type)
            if components:
                model_def = dataclasses.replace(model_def, model={**model_def.model, **dict(components)})
            model = self.registry.handler(model_type).load(model_def, self.locator, self.dtype, self.device,
                                                           options)
            self._loaded = Loaded(model, key)
            return model

    def load_for(self, request: Request):
        return self.load(request.settings.model_type, request.components, request.options)

    def load_encoder_for(self, request: Request):
        """What the prompt enhancer needs: the loaded model of this request if it is loaded, else only the text
        encoder (for families that can load it alone), kept until a whole model is loaded."""
        components = tuple(sorted(dict(request.components or self.components).items()))
        options = request.options or self.options
        key = (request.settings.model_type, components, options)
        handler = self.registry.handler(request.settings.model_type)
        with self._gpu:
            if self._loaded.model is not None and self._loaded.key == key:
                return self._loaded.model
            if not hasattr(handler, "load_encoder"):
                return self.load_for(request)
            if self._encoder.model is not None and self._encoder.key == key:
                return self._encoder.model
            self.unload()
            model_def = self.registry.get(request.settings.model_type)
            if components:
                model_def = dataclasses.replace(model_def, model={**model_def.model, **dict(components)})
            self._encoder = Loaded(handler.load_encoder(model_def, self.locator, self.dtype, self.device, options), key)
            return self._encoder.model

    def unload(self) -> None:
        with self._gpu:
            self._encoder = Loaded()
            model = self._loaded.model
            if model is not None and getattr(model, "placement", None) is not None:
                model.placement.release()
            self._loaded = Loaded()
            del model
            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:
                pass

    def apply_loras(self, settings_or_request) -> list[str]:
        """Load the model, attach exactly the settings' LoRAs; returns warnings (e.g. keys not applied)."""
        request = self._request(settings_or_request)
        if not needs_model(request.settings):
            return []
        with self._gpu:
            model = self.load_for(request)
            files = self.lora_library(request.settings.model_type).resolve_all(request.settings.loras)
            return self.registry.handler(request.settings.model_type).apply_loras(model, files)

    # ---- actions (run them as jobs: engine.jobs.submit(lambda ctx: engine.generate(request, ...))) ------

    def enhance(self, settings_or_request, on_token=None) -> GenerationSettings:
        """Settings whose prompt is the enhancer's rewrite (seeded by the settings' seed); the user's prompt
        moves to `original_prompt`, so both reach the PNG."""
        request = self._request(settings_or_request)
        settings = request.settings.with_seed()
        with self._gpu:
            model = self.load_encoder_for(request)
            original = settings.original_prompt or settings.prompt
            text = self.registry.handler(settings.model_type).enhance(model, original, settings.seed,
                                                                       settings.enhance_thinking, on_token)
        return dataclasses.replace(settings, prompt=text, original_prompt=original)

    def generate(self, settings_or_request, callback=None, on_token=None):
        request = self._request(settings_or_request)
        if not needs_model(request.settings):
            from engine.images.as_is import as_is

            with self._gpu:  # no model pass: the model is not loaded
                return as_is(request.settings, self.upscalers)
        with self._gpu:
            if request.settings.enhance and not request.settings.original_prompt:
                request = dataclasses.replace(request, settings=self.enhance(request, on_token))
            self.apply_loras(request)
            settings = request.settings
            return self.registry.handler(settings.model_type).generate(self.model, settings, callback, self.upscalers)

    def download(self, model_type: str, options: LoadOptions | None = None) -> dict:
        """Download the files of a model type that are missing (the kind `options` choose: bf16, INT8...), as a
        job: run it on `jobs` so Stop cancels it (progress: engine.jobs ProgressEvent per file). Returns the
        component -> path map."""
        model_def = self.registry.get(model_type)
        return self.registry.handler(model_type).fetch(model_def, self.locator, options or self.options)

    def train_lora(self, settings, ctx, options: LoadOptions | None = None):
        """Train a LoRA (engine.training.settings.TrainSettings) as a job: `ctx` is the job's context (Stop,
        progress); `options` (this job only) choose the frozen base's file (INT8 or bf16). The loaded model is
        unloaded first; the run loads the parts it needs one at a time."""
        from engine.training.run import train

        with self._gpu:
            self.unload()
            return train(self, settings, ctx, options)

    def control_map(self, settings_or_request):
        """The control map `settings` would condition on (PIL RGB at the output size), without generating."""
        settings = self._request(settings_or_request).settings
        handler = self.registry.handler(settings.model_type)
        if not settings.control_image or not hasattr(handler, "control_map"):
            raise SettingsError("no control image to make a map from")
        with self._gpu:
            return handler.control_map(settings, self.locator, self.device)

    def prepare_image_to_lora(self, images, name: str, model_type: str = "z_image", **options):
        """An image-to-LoRA request (pictures, the new LoRA's name, files, memory mode), checked before any
        loading; the LoRA goes into the model type's LoRA folder. Families without the feature say so."""
        handler = self.registry.handler(model_type)
        if not hasattr(handler, "image_to_lora"):
            raise SettingsError(f"{model_type}: making LoRAs from pictures is not available for this family")
        folder = self.lora_library(model_type).folder
        return handler.prepare_image_to_lora(images, name, folder, self.locator, **options)

    def image_to_lora(self, request, report=None, model_type: str = "z_image"):
        """Run a prepared image-to-LoRA request (as a job: engine.jobs.run(lambda ctx: engine.image_to_lora(
        request, ctx.progress))). The generation model is unloaded first: the encoders need its memory."""
        with self._gpu:
            self.unload()
            return self.registry.handler(model_type).image_to_lora(request, self.locator, self.device, report)

    def preview(self, latents):
        """A cheap picture of in-progress latents from the loaded model."""
        return self.registry.handler(self.model.model_type).preview(self.model, latents)

    # ---- outputs ---------------------------------------------------------------------------------

    def record(self, batch_index: int, settings: GenerationSettings | None = None) -> dict:
        """What the PNG keeps besides the settings: files, LoRA fingerprints, precision and versions."""
        import diffusers
        import torch
        import transformers

        return {
            "app": f"{APP_NAME} {APP_VERSION}", "batch_index": batch_index,
            "files": {k: Path(v).name for k, v in (self.model.files if self.model is not None else {}).items()},
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
        return [write_png_bytes(data, r.settings.seed, t) for data, r, t in zip(self.encode(results), results, targets)]

    def encode(self, results) -> list[bytes]:
        """Each result as the PNG file this engine would save (settings and record embedded), in memory."""
        return [png_bytes(r.image, r.settings, {**self.record(r.batch_index, r.settings),
                                                "memory": getattr(r, "memory", {}), "passes": getattr(r, "passes", [])})
                for r in results]

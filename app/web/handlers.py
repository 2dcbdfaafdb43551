"""The page's state and event handlers: a thin layer over the engine.

Values travel by name: handlers take {settings field: UI value} and return {name: update}; the page maps
names to its components (app.web.page). Every GPU action runs as a job on the engine's one queue, owned by
the browser session that asked, so Stop stops only that session's job.

Nothing a user sends is used as a server path unless it is theirs: pictures arrive as uploads (checked by
Gradio) or by the content rule of app.web.pictures; another text encoder or VAE must lie in the model
folders; a gallery click reads only Gradio's own copies. Remembered settings live in each user's browser.
"""

from __future__ import annotations

import gc
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import gradio as gr
from gradio.data_classes import FileData

from app.web import memory
from app.web.fields import FIELDS, coerce, loras_to_rows, rows_to_loras
from app.web.pictures import PICTURE_FIELDS, keep_usable, refusal, usable
from engine.errors import Interrupted, SettingsError, UserError
from engine.jobs import NoteEvent, StepEvent, TokenEvent
from engine.load_options import LoadOptions
from engine.lora.presets import list_presets, load_preset, save_preset, with_snippet
from engine.jsontext import parse_json_object
from engine.merge import merge_settings
from engine.outputs import read_png_settings
from engine.settings import GenerationSettings, size_presets
from engine.weights.files import human_size

log = logging.getLogger("zimage.ui")
PROGRESS_INTERVAL = 0.1  # seconds between progress bar updates at most (each one is browser work)
PREVIEW_INTERVAL = 0.25  # seconds between live previews at most (a real model's step takes longer)
LOAD_FIELDS = ("text_encoder", "vae", "transformer_quantization", "text_encoder_quantization", "profile")
EXTRA_FIELDS = ("mask_paint",)  # page values that feed a field (a mask painted on the page feeds `mask`)


def preset_choices() -> dict[str, tuple[int, int]]:
    out = {}
    for mp in (1.0, 2.0):
        for ratio, (w, h) in size_presets(mp).items():
            out[f"{ratio}  {w}x{h}  ({mp:g} MP)"] = (w, h)
    return out


def owner_of(request) -> str:
    return getattr(request, "session_hash", None) or "api"


def user_of(request) -> str | None:
    """The login name of whoever sent `request` (None without logins)."""
    return getattr(request, "username", None) or None


class AppUI:
    """State and event handlers; `app.web.page.build_ui` lays out the page."""

    def __init__(self, engine, output_dir="outputs", *, lock_model=None, exposed_without_auth=False):
        self.engine = engine
        self.jobs = engine.jobs
        self.output_dir = Path(output_dir)
        types = [lock_model] if lock_model else sorted(engine.registry.types)
        self.types = types
        self.first = "z_image" if "z_image" in types else types[0]
        self.exposed_without_auth = exposed_without_auth
        self.presets = preset_choices()
        from engine.images.inputs import InputStore

        engine.inputs = InputStore(self.output_dir / "inputs")  # the page's input pictures, kept by content

    # ---- model type -> controls ----------------------------------------------------------------

    def caps(self, model_type):
        arch = self.engine.registry.get(model_type).architecture
        return self.engine.registry.handler(model_type).capabilities(arch)

    def settings_for_type(self, model_type, prompt: str = "", store=None) -> GenerationSettings:
        """The settings this browser remembers for this type (`store`, from its local storage), else the
        type's defaults, keeping a prompt being written."""
        changes = {"prompt": prompt} if isinstance(prompt, str) and prompt.strip() else {}
        try:
            base = memory.recall(store, model_type, self.output_dir)
            return merge_settings(self.engine, model_type, base=base, changes=changes).settings.validate()
        except UserError:  # damaged or outdated: the defaults
            return merge_settings(self.engine, model_type, changes=changes).settings

    def field_updates(self, settings: GenerationSettings) -> dict:
        """{field name: gr.update} showing `settings` with the controls its type offers."""
        caps = self.caps(settings.model_type)
        updates = {}
        for spec in FIELDS:
            kw = {"value": field_value(spec, settings), "visible": shown(spec, caps)}
            if spec.bounds and spec.kind == "slider":
                kw["minimum"], kw["maximum"] = self.bounds(spec, caps)
            if spec.choices:
                kw["choices"] = list(spec.choices(caps))
            updates[spec.name] = gr.update(**kw)
        return updates

    def bounds(self, spec, caps) -> tuple:
        """A field's range on the page: what the type offers, within the engine's limits per job."""
        return self.engine.limits.bound(spec.name, *spec.bounds(caps))

    def panel_updates(self, model_type) -> dict:
        caps = self.caps(model_type)
        return {"lora_panel": gr.update(visible=caps.loras), "control_panel": gr.update(visible=bool(caps.control_modes))}

    def describe(self, model_type) -> str:
        model_def = self.engine.registry.get(model_type)
        handler = self.engine.registry.handler(model_type)
        lines = [f"**{model_def.name}**: {model_def.description}"]
        if not self.caps(model_type).available:
            lines.append("*Generation for this type arrives in a later version.*")
        lines += [f"- note: {note}" for note in model_def.ignored]
        try:
            for s in handler.file_status(model_def, self.engine.locator):
                where = f"present (`{s.path}`)" if s.path else f"to download ({human_size(s.size)})"
                lines.append(f"- {s.component}: {where}" + (f" [{s.detail}]" if s.detail else ""))
        except UserError as exc:
            lines.append(f"- problem: {exc}")
        return "\n".join(lines)

    def on_model(self, model_type, prompt="", store=None) -> dict:
        """Switch type: its remembered settings or defaults, keeping the prompt the user is writing."""
        if model_type not in self.types:
            raise gr.Error(f"unknown model type {model_type!r}")
        settings = self.settings_for_type(model_type, prompt, store)
        return {"about": self.describe(model_type), **self.field_updates(settings), **self.panel_updates(model_type)}

    def on_load(self, model_type, store=None) -> dict:
        """A page (re)opened: the settings this browser remembers for the selected type."""
        return self.on_model(model_type if model_type in self.types else self.first, "", store)

    def on_preset(self, label) -> dict:
        if label not in self.presets:
            return {}
        width, height = self.presets[label]
        return {"width": width, "height": height}

    def on_restore(self, file) -> dict:
        """Every setting from a PNG this app made. Its picture paths are anyone's text: they come back only
        by the content rule (app.web.pictures), else they are dropped with a note."""
        if file is None:
            return {}
        with reported():
            settings, record = read_png_settings(getattr(file, "name", file))
            if settings.model_type not in self.types:
                raise SettingsError(f"this PNG was made with model type {settings.model_type!r}, which this app "
                                    f"does not serve (here: {', '.join(self.types)})")
            base, dropped = keep_usable(settings.to_dict(), self.output_dir)
            merged = merge_settings(self.engine, settings.model_type, base=base, record=record)
            restored = merged.settings.validate()
        for note in dropped + merged.notes:
            gr.Warning(note)
        return {"model_type": gr.update(value=restored.model_type), "about": self.describe(restored.model_type),
                **self.field_updates(restored), **self.panel_updates(restored.model_type)}

    # ---- LoRAs --------------------------------------------------------------------------------------

    def lora_folder(self, model_type):
        return self.engine.lora_library(model_type).root

    def on_refresh_loras(self, model_type, request: gr.Request = None) -> dict:
        """Re-read the LoRA folder and presets (files added since start-up appear)."""
        with reported():
            names = self.engine.lora_library(self.served(model_type)).names()
        return {"lora_pick": gr.update(choices=names, value=None),
                "preset_pick": gr.update(choices=list_presets(self.lora_folder(model_type), user_of(request)))}

    def on_add_lora(self, name, rows, model_type=None) -> dict:
        """The picked LoRA as a new row; positive-only ticked when its file asks for it (image-to-LoRA ones)."""
        rows = [r for r in (rows or []) if r and str(r[0] or "").strip()]
        if name and name not in [r[0] for r in rows]:
            rows.append([name, 1.0, "", self.file_options(model_type, name).positive_only])
        return {"loras": rows}

    def file_options(self, model_type, name):
        """What a LoRA file recommends about its use (engine.lora.file_options); nothing for a bad name."""
        from engine.lora.file_options import FileOptions, read_options

        try:
            return read_options(self.engine.lora_library(model_type or self.first).resolve(name).path)
        except UserError:
            return FileOptions()

    def on_load_preset(self, model_type, name, prompt, request: gr.Request = None) -> dict:
        with reported():
            preset = load_preset(self.lora_folder(self.served(model_type)), name, user_of(request))
        return {"loras": loras_to_rows(preset["loras"]), "prompt": with_snippet(prompt or "", preset["prompt"])}

    def on_save_preset(self, model_type, name, rows, snippet, request: gr.Request = None) -> dict:
        """Save a preset; with logins, into this user's own presets (others' stay as they are)."""
        user = user_of(request)
        with reported():
            folder = self.lora_folder(self.served(model_type))
            path = save_preset(folder, name, rows_to_loras(rows), snippet or "", overwrite=True, user=user)
        gr.Info(f"Preset saved: {path.name}")
        return {"preset_pick": gr.update(choices=list_presets(folder, user), value=name)}

    # ---- requests ------------------------------------------------------------------------------

    def served(self, model_type) -> str:
        """`model_type` if this app serves it (--lock-model serves one); else SettingsError."""
        if model_type not in self.types:
            raise SettingsError(f"unknown model type {model_type!r} here (served: {', '.join(self.types)})")
        return model_type

    def request(self, model_type, values: dict):
        """The engine request for the page's values ({field name: value}, plus the memory panel's)."""
        self.served(model_type)
        changes = {spec.name: coerce(spec, values[spec.name]) for spec in FIELDS if spec.name in values}
        if "mask" in values:  # painted on the page, or uploaded (app/web/images_panel.py)
            from app.web.masks import mask_value

            changes["mask"] = mask_value(self.engine, values.get("mask_paint"), values["mask"])
        if not self.caps(model_type).cfg:
            changes.pop("guidance_scale", None)
        settings = merge_settings(self.engine, model_type, changes=changes).settings
        components, options = self.load_choices(values)
        return self.engine.prepare(settings, components, options)

    def load_choices(self, values: dict) -> tuple[dict, LoadOptions]:
        """This job's text encoder / VAE (file or folder) and load options, from the page's Advanced and
        Memory panels; they apply to this job only."""
        components = {}
        for name, field, label in (("text_encoder", "text_encoder_URLs", "text encoder"), ("vae", "vae_URLs", "VAE")):
            path = values.get(name) or ""
            if isinstance(path, str) and path.strip():
                components[field] = str(self.model_file(path.strip(), label))
        profile = values.get("profile")
        options = self.engine.options.replace(
            transformer_quantization=values.get("transformer_quantization") or "auto",
            text_encoder_quantization=values.get("text_encoder_quantization") or "auto",
            profile=None if profile in (None, "auto") else int(profile))
        return components, options

    def model_folders(self) -> list[Path]:
        locator = self.engine.locator
        return [Path(p).resolve() for p in (locator.checkpoints, locator.comfyui_models) if p]

    def model_file(self, text: str, label: str) -> Path:
        """A text encoder or VAE named on the page: a file or folder inside the checkpoints folder or the
        ComfyUI models folder (a relative name is looked for there). A path elsewhere on the server gets one
        answer whether or not it exists; the command line's --text-encoder/--vae take any path."""
        folders = self.model_folders()
        candidates = [Path(text)] if Path(text).is_absolute() else [f / text for f in folders]
        for candidate in candidates:
            path = candidate.resolve()
            if any(path.is_relative_to(f) for f in folders) and path.exists():
                return path
        where = " or ".join(str(f) for f in folders)
        raise UserError(f"{label} {text}: not a file or folder in the model folders ({where}); put it there, or "
                        "start the app with --text-encoder/--vae")

    # ---- GPU actions ---------------------------------------------------------------------------

    def enhance_prompt(self, model_type, values: dict, request=None, progress=None) -> dict:
        """The Enhance button: the new prompt (and the original) for the user to edit."""
        with reported(self):
            req = self.request(model_type, values)
            progress(0, desc="Loading the text encoder")
            result = None
            for event in self.jobs.run(lambda ctx: self.engine.enhance(req, ctx.on_token), owner_of(request),
                                       "enhance"):
                if isinstance(event, TokenEvent):
                    progress(None, desc=f"Enhancing: {event.tokens} tokens, {event.per_second:.1f} tokens/s")
                else:
                    result = event
            gr.Info(f"Prompt enhanced (seed {result.seed}); edit it if you like, then generate.")
            return {"prompt": result.prompt, "original_prompt": result.original_prompt}
        return {}  # stopped

    def generate(self, model_type, values: dict, request=None, progress=None, store=None):
        """Generator of {name: value} frames (memory, then preview, gallery, info, used) while running;
        `store` is the browser's remembered settings, which the first frame updates."""
        with reported(self, stopped={"info": "Stopped."}) as outcome:
            req = self.request(model_type, values)
            for note in req.notes:
                gr.Info(note)
            progress(0, desc="Loading model (and downloading missing files)")
            yield {"memory": memory.remember(store, req.settings, self.types)}
            outcome.settings = req.settings
            yield from self._run(req, owner_of(request), progress)
        if outcome.stopped:
            yield outcome.stopped

    def _job(self, req, ctx):
        """One generation on the GPU queue: load, LoRAs, generate, save; returns (paths, results)."""
        for warning in self.engine.apply_loras(req):
            ctx.note(warning)
        results = self.engine.generate(req, ctx.on_step, ctx.on_token)
        ctx.stage("saving")
        return self.engine.save(results, self.output_dir), results

    def _run(self, req, owner, progress):
        settings = req.settings
        total = settings.num_inference_steps * settings.count
        started = last_preview = last_progress = time.perf_counter()
        for event in self.jobs.run(lambda ctx: self._job(req, ctx), owner):
            if isinstance(event, NoteEvent):
                gr.Warning(event.message)
            elif isinstance(event, TokenEvent):
                progress(None, desc=f"Enhancing the prompt: {event.tokens} tokens, {event.per_second:.1f} tokens/s")
            elif isinstance(event, StepEvent):
                done = event.run * event.total + event.step + 1
                if time.perf_counter() - last_progress >= PROGRESS_INTERVAL or done == total:
                    last_progress = time.perf_counter()
                    progress((done, total), desc=f"Batch {event.run + 1}/{settings.count}, step "
                                                  f"{event.step + 1}/{event.total}")
                if time.perf_counter() - last_preview >= PREVIEW_INTERVAL or done == total:
                    # every step of a real model; fast toy steps would spend their time on pictures
                    last_preview = time.perf_counter()
                    yield {"preview": self.engine.preview(event.latents), "info": f"Step {done}/{total}"}
            elif isinstance(event, tuple):
                paths, results = event
                for note in dict.fromkeys(n for r in results for n in getattr(r, "notes", [])):
                    gr.Info(note)  # e.g. a picture generated smaller and scaled back
                seconds = time.perf_counter() - started
                items = [(str(p), f"seed {r.settings.seed}") for p, r in zip(paths, results)]
                seeds = ", ".join(str(r.settings.seed) for r in results[:: settings.batch_size])
                yield {"gallery": items, "info": f"{len(paths)} image(s) in {seconds:.1f} s, seed(s) {seeds}",
                       "used": results[0].settings.to_dict()}

    def control_map(self, model_type, values: dict, request=None):
        """The map the control model would follow (pose skeleton, edges, depth...), before generating."""
        with reported(self):
            req = self.request(model_type, values)
            *_, image = self.jobs.run(lambda ctx: self.engine.control_map(req), owner_of(request), "control map")
            return {"control_map": image}
        return {}

    def unexpected(self, exc, settings) -> str:
        log.exception("generation failed")
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            from engine.images.preprocess.hub import release

            self.engine.unload()
            release()  # control preprocessors (depth, pose) may hold GPU memory too
            gc.collect()
            torch.cuda.empty_cache()
            size = f" at {settings.width}x{settings.height}" if settings else ""
            return (f"Out of GPU memory{size}. The model and the control preprocessors were unloaded to free "
                    "memory: try a smaller size, fewer images per batch, or a lower memory profile.")
        return f"Generation failed: {type(exc).__name__}: {exc}"

    def on_select(self, evt: gr.SelectData):
        """The settings stored in the gallery image the user clicked. The click's data comes from the
        browser: only Gradio's own copies (its upload and cache folder) are read."""
        from gradio.utils import get_upload_folder

        image = evt.value.get("image") if isinstance(evt.value, dict) else None
        path = image.get("path") if isinstance(image, dict) else None
        if not isinstance(path, str) or not Path(path).resolve().is_relative_to(Path(get_upload_folder()).resolve()):
            return gr.skip()
        try:
            return read_png_settings(path)[0].to_dict()
        except UserError as exc:
            return {"error": str(exc)}

    def on_stop(self, request: gr.Request = None):
        if not self.jobs.stop(owner_of(request)):
            gr.Info("Nothing of yours is running.")

    # ---- the scripting API (gradio_client) ----------------------------------------------------------

    def api_txt2img(self, prompt: str, model_type: str = "z_image", settings: str = "{}",
                    control_image: FileData | None = None, mask: FileData | None = None,
                    init_image: FileData | None = None, request: gr.Request = None) -> list:
        """Generate images; `settings` is a JSON object of settings fields (seed, width, num_inference_steps...).
        Pictures are uploads (`init_image`, `mask`, `control_image`: gradio_client's handle_file); a picture path inside
        `settings` is refused unless it is in the input store (app.web.pictures)."""
        with reported(self):
            extra = parse_json_object(settings or "{}", "settings")
            for name in PICTURE_FIELDS:
                if extra.get(name) and not usable(extra[name], self.output_dir):
                    raise SettingsError(refusal(name))
            uploads = {name: upload_path(value) for name, value in (("control_image", control_image), ("mask", mask),
                                                                    ("init_image", init_image)) if value is not None}
            merged = merge_settings(self.engine, self.served(model_type),
                                    changes={**extra, **uploads, "prompt": prompt})
            req = self.engine.prepare(merged.settings)
            *_, (paths, _results) = self.jobs.run(lambda ctx: self._job(req, ctx), owner_of(request))
            return [served_copy(p) for p in paths]
        raise gr.Error("stopped by the user")

    def api_stop(self, request: gr.Request = None) -> bool:
        """Stop the caller's running generation; True if one was running."""
        return self.jobs.stop(owner_of(request))


def served_copy(path) -> FileData:
    """An API result as the caller downloads it: a copy in Gradio's cache under a hash of its content (the
    outputs folder itself is not served: its names, date and seed, are easy to guess)."""
    from gradio.processing_utils import save_file_to_cache
    from gradio.utils import get_upload_folder

    return FileData(path=save_file_to_cache(str(path), get_upload_folder()), orig_name=Path(path).name)


def upload_path(value) -> str:
    """The server path of an upload Gradio checked (a FileData, or its dict form)."""
    path = value.get("path") if isinstance(value, dict) else getattr(value, "path", None)
    if not isinstance(path, str) or not path:
        raise SettingsError("an uploaded picture is missing its file")
    return path


class _Outcome:
    settings = None
    stopped = None


@contextmanager
def reported(app: AppUI | None = None, stopped=None):
    """Errors as the page shows them: a user's mistake as its own message, Stop as a note (the block then
    ends quietly; `outcome.stopped` holds `stopped`), anything else as a readable line (the app keeps
    serving). The one place the page turns exceptions into messages."""
    outcome = _Outcome()
    try:
        yield outcome
    except Interrupted:
        gr.Info("Stopped.")
        outcome.stopped = stopped
    except (UserError, ValueError) as exc:
        raise gr.Error(str(exc)) from None
    except gr.Error:
        raise
    except Exception as exc:  # keep serving whatever happened, and say what it was
        if app is None:
            raise
        raise gr.Error(app.unexpected(exc, outcome.settings)) from None


def field_value(spec, settings):
    value = getattr(settings, spec.name)
    if spec.kind == "image":
        return value or None
    if spec.kind == "margins":
        return ",".join(str(v) for v in value)
    return loras_to_rows(value) if spec.kind == "loras" else value


def shown(spec, caps) -> bool:
    return spec.kind != "hidden" and spec.visible(caps)


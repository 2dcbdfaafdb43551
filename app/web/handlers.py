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
from types import SimpleNamespace

import gradio as gr
from gradio.data_classes import FileData

from app.web import first_run, memory, status
from app.web.fields import FIELDS, coerce, loras_to_rows, rows_to_loras
from app.web.history import History
from app.web.pictures import PICTURE_FIELDS, keep_usable, refusal, usable
from app.web.reuse import command_line, png_link
from app.web.updates import merged
from engine.errors import Interrupted, SettingsError, UserError
from engine.jobs import (
    NoteEvent,
    ProgressEvent,
    QueuedEvent,
    StageEvent,
    StepEvent,
    TokenEvent,
)
from engine.jsontext import parse_json_object
from engine.load_options import LoadOptions
from engine.lora.presets import list_presets, load_preset, save_preset, with_snippet
from engine.merge import merge_settings
from engine.outputs import read_png_settings
from engine.settings import GenerationSettings, size_presets
from engine.weights.files import human_size

log = logging.getLogger("zimage.ui")
PROGRESS_INTERVAL = 0.1  # seconds between progress bar updates at most (each one is browser work)
PREVIEW_INTERVAL = 0.25  # seconds between live previews at most (a real model's step takes longer)
LOAD_FIELDS = ("text_encoder", "vae", "transformer_quantization", "text_encoder_quantization", "profile")
EXTRA_FIELDS = ("mask_paint",)  # page values that feed a field (a mask painted on the page feeds `mask`)


CUSTOM_SIZE = "custom"
QUEUE_POLL = 0.5  # seconds between "queued" updates while a job waits for the GPU
PANEL_GROUPS = {"size": "size_panel", "lora": "lora_panel", "control": "control_panel", "images": "images_panel",
                "advanced": "advanced_panel"}  # field group -> the accordion that holds it


def preset_choices() -> dict[str, tuple[int, int]]:
    out = {}
    for mp in (1.0, 2.0):
        for ratio, (w, h) in size_presets(mp).items():
            out[f"{ratio}  {w}x{h}  ({mp:g} MP)"] = (w, h)
    return out


def preset_for(presets: dict, width, height) -> str:
    """The preset label of a size, or "custom"."""
    return next((label for label, size in presets.items() if size == (width, height)), CUSTOM_SIZE)


def owner_of(request) -> str:
    return getattr(request, "session_hash", None) or "api"


def user_of(request) -> str | None:
    """The login name of whoever sent `request` (None without logins)."""
    return getattr(request, "username", None) or None


class AppUI:
    """State and event handlers; `app.web.page.build_ui` lays out the page."""

    def __init__(self, engine, output_dir="outputs", *, lock_model=None, exposed_without_auth=False, logins=False,
                 cli_flags=()):
        self.engine = engine
        self.jobs = engine.jobs
        self.output_dir = Path(output_dir)
        types = [lock_model] if lock_model else sorted(engine.registry.types)
        self.types = types
        self.exposed_without_auth = exposed_without_auth
        self.presets = preset_choices()
        self.cli_flags = list(cli_flags)  # the running app's file flags, for "copy the command line"
        from engine.images.inputs import InputStore

        engine.inputs = InputStore(self.output_dir / "inputs")  # the page's input pictures, kept by content
        # this browser's results and the outputs folder's earlier ones (app.web.history); with a page reachable
        # from others without a login, the outputs folder is not browsable
        self.history = History(self.output_dir, logins=logins, browsable=not exposed_without_auth)
        self.first = self.first_type()

    def first_type(self) -> str:
        """The type the page starts on: z_image if its files are here, else the first type whose files are all
        here, else z_image (or the first type)."""
        usable = [t for t in self.types if self.caps(t).available and not first_run.missing(self.engine, t)]
        for candidate in ("z_image", *usable):
            if candidate in usable:
                return candidate
        return "z_image" if "z_image" in self.types else self.types[0]

    def type_choices(self) -> list[tuple[str, str]]:
        """(friendly name, id) per served type; a name two types share gets its id added."""
        names = {t: self.engine.registry.get(t).name for t in self.types}
        repeated = {n for n in names.values() if list(names.values()).count(n) > 1}
        return [(f"{names[t]} ({t})" if names[t] in repeated else names[t], t) for t in self.types]

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
            kw = {"value": field_value(spec, settings), "visible": shown(spec, caps, settings)}
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
        """The type's name, id and description, and its files in one line (the first-run banner lists them)."""
        model_def = self.engine.registry.get(model_type)
        handler = self.engine.registry.handler(model_type)
        lines = [f"**{model_def.name}** (`{model_type}`): {model_def.description}"]
        if not self.caps(model_type).available:
            lines.append("*Generation for this type arrives in a later version.*")
        lines += [f"- note: {note}" for note in model_def.ignored]
        try:
            statuses = handler.file_status(model_def, self.engine.locator, self.engine.options)
            present = [f"{s.component.replace('_', ' ')} (`{Path(s.path).name}`)" + (f" [{s.detail}]" if s.detail else "")
                       for s in statuses if s.path is not None]
            missing = [s for s in statuses if s.path is None]
            if present:
                lines.append(f"- present: {', '.join(present)}")
            if missing:
                size = human_size(sum(s.size or 0 for s in missing))
                lines.append(f"- to download ({size}): " + ", ".join(s.component.replace("_", " ") for s in missing))
        except UserError as exc:
            lines.append(f"- problem: {exc}")
        return "\n".join(lines)

    def first_run(self, model_type) -> dict:
        """The first-run banner for a type: shown with its download plans while files are missing."""
        plans = first_run.plans(self.engine, model_type) if first_run.missing(self.engine, model_type) else []
        if not plans:
            return {"first_run": gr.update(visible=False)}
        best = first_run.recommend(plans, first_run.gpu_memory(self.engine.device))
        return {"first_run": gr.update(visible=True), "first_run_text": first_run.banner(self.engine, model_type, plans),
                "download_kind": gr.update(choices=first_run.kind_choices(plans), value=best)}

    def type_view(self, model_type, settings) -> dict:
        """Everything that follows the model type: about, every field, the panels and their titles, the size
        preset, the first-run banner."""
        return merged(self.field_updates(settings), self.panel_updates(model_type), self.panel_titles(settings),
                      self.first_run(model_type), {"about": self.describe(model_type),
                                                   "size_preset": preset_for(self.presets, settings.width,
                                                                             settings.height)})

    def panel_titles(self, settings) -> dict:
        """The closed panels say what is active in them: the size and count, the LoRAs in use."""
        return {"size_panel": gr.update(label=size_title(settings.width, settings.height, settings.batch_size,
                                                        settings.count)),
                "lora_panel": gr.update(label=lora_title(settings.loras))}

    def panels_to_open(self, settings) -> dict:
        """The panels whose fields differ from the type's defaults (a restored PNG's LoRAs, control picture...)."""
        defaults = merge_settings(self.engine, settings.model_type).settings
        groups = {spec.group for spec in FIELDS if spec.group in PANEL_GROUPS
                  and getattr(settings, spec.name) != getattr(defaults, spec.name)}
        return {PANEL_GROUPS[g]: gr.update(open=True) for g in groups}

    def on_model(self, model_type, prompt="", store=None) -> dict:
        """Switch type: its remembered settings or defaults, keeping the prompt the user is writing. The prompt
        box is left alone unless a remembered prompt fills it: what was typed while the switch was on its way
        is kept."""
        if model_type not in self.types:
            raise gr.Error(f"unknown model type {model_type!r}")
        settings = self.settings_for_type(model_type, prompt, store)
        view = self.type_view(model_type, settings)
        if settings.prompt == prompt:
            view.pop("prompt", None)
        return view

    def on_load(self, model_type, store=None, history=None, request: gr.Request = None) -> dict:
        """A page (re)opened: the settings this browser remembers for the selected type, and its results."""
        model_type = model_type if model_type in self.types else self.first
        items, kept = self.history.gallery(self.history.session(history), user_of(request))
        return {**self.on_model(model_type, "", store), "gallery": items, "history": kept, "info": status.IDLE}

    def on_preset(self, label) -> dict:
        if label not in self.presets:
            return {}
        width, height = self.presets[label]
        return {"width": width, "height": height}

    def on_size(self, width, height, batch, count) -> dict:
        """Width/height/batch/count changed: the preset that matches (or custom) and the panel's title."""
        return {"size_preset": preset_for(self.presets, coerce_int(width), coerce_int(height)),
                "size_panel": gr.update(label=size_title(width, height, batch, count))}

    def on_lora_rows(self, rows) -> dict:
        try:
            loras = rows_to_loras(rows)
        except (ValueError, TypeError):
            loras = []
        return {"lora_panel": gr.update(label=lora_title(loras))}

    def on_control_mode(self, mode, model_type) -> dict:
        """Options that belong to one control mode (canny thresholds, depth model) show with it only."""
        caps = self.caps(model_type if model_type in self.types else self.first)
        probe = SimpleNamespace(control_mode=mode)  # stands in for settings: the mode decides what shows
        return {spec.name: gr.update(visible=shown(spec, caps, probe)) for spec in FIELDS if spec.when}

    def on_restore(self, file) -> dict:
        """Every setting from a PNG this app made (dropped on the page). Its picture paths are anyone's text:
        they come back only by the content rule (app.web.pictures), else they are dropped with a note."""
        if file is None:
            return {}
        return {**self.restore(getattr(file, "name", file)), "restore": None}  # empty: ready for the next drop

    def restore(self, path, title: str = "") -> dict:
        """The page showing a PNG's settings: its type, every field, the panels that hold changed values open."""
        with reported():
            settings, record = read_png_settings(path)
            if settings.model_type not in self.types:
                raise SettingsError(f"this PNG was made with model type {settings.model_type!r}, which this app "
                                    f"does not serve (here: {', '.join(self.types)})")
            base, dropped = keep_usable(settings.to_dict(), self.output_dir)
            found = merge_settings(self.engine, settings.model_type, base=base, record=record)
            restored = found.settings.validate()
        notes = dropped + found.notes
        for note in notes:
            gr.Warning(note)
        view = merged(self.type_view(restored.model_type, restored), self.panels_to_open(restored))
        text = title or f"Settings restored from {Path(str(path)).name} (seed {restored.seed})."
        return {"model_type": gr.update(value=restored.model_type), **view, "info": status.finished(text, notes)}

    # ---- LoRAs --------------------------------------------------------------------------------------

    def lora_folder(self, model_type):
        return self.engine.lora_library(model_type).root

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
        """The Enhance button: the new prompt (and the original) for the user to edit. Only the text encoder is
        loaded (and downloaded) for it when the model is not loaded already."""
        with reported(self):
            req = self.request(model_type, values)
            result = None
            for event in self.jobs.run(lambda ctx: self.engine.enhance(req, ctx.on_token), owner_of(request),
                                       "enhance", poll=QUEUE_POLL):
                if isinstance(event, QueuedEvent):
                    if progress is not None:
                        progress(None, desc=status.queued_text(event.ahead))
                elif isinstance(event, TokenEvent):
                    if progress is not None:
                        progress(None, desc=f"Enhancing: {event.tokens} tokens, {event.per_second:.1f} tokens/s")
                elif not isinstance(event, (StageEvent, ProgressEvent, NoteEvent)):
                    result = event
            text = f"Prompt enhanced (seed {result.seed}); edit it if you like, then generate."
            gr.Info(text)
            return {"prompt": result.prompt, "original_prompt": result.original_prompt,
                    "info": status.finished(text)}
        return {"info": status.finished("Stopped.")}

    def generate(self, model_type, values: dict, request=None, progress=None, store=None, history=None):
        """Generator of {name: value} frames: the browser's remembered settings first (`store` is its local
        storage), then the job's state (queued, stages, steps with time left, previews) in the status area and on
        the Generate button, then the results at the top of this browser's gallery (`history`: its entries).
        An error stays in the status area (the same text, details on demand) and fails the event without a
        toast."""
        clock = status.Clock()
        try:
            yield from self._generate(model_type, values, request, store, history, clock)
        except gr.Error as exc:
            yield {**idle_buttons(), "preview": gr.update(visible=False),
                   "info": status.error(exc.message, status.details("generate", model_type))}
            raise gr.Error(exc.message, visible=False) from None

    def _generate(self, model_type, values, request, store, history, clock):
        with reported(self, stopped={**idle_buttons(), "preview": gr.update(visible=False),
                                     "info": status.finished("Stopped.")}) as outcome:
            yield {"info": status.running("Starting", clock), "generate": gr.update(value="Starting..."),
                   "stop": gr.update(visible=True)}
            req = self.request(model_type, values)
            for note in req.notes:
                gr.Info(note)
            yield {"memory": memory.remember(store, req.settings, self.types)}
            outcome.settings = req.settings
            yield from self._run(req, request, clock, history, list(req.notes))
        if outcome.stopped:
            yield outcome.stopped

    def _job(self, req, ctx):
        """One generation on the GPU queue: load, LoRAs, generate, save; returns (paths, results)."""
        for warning in self.engine.apply_loras(req):
            ctx.note(warning)
        results = self.engine.generate(req, ctx.on_step, ctx.on_token)
        ctx.stage("saving")
        return self.engine.save(results, self.output_dir), results

    def _run(self, req, request, clock, history, notes):
        settings = req.settings
        total = settings.num_inference_steps * settings.count
        last_preview = last_progress = time.perf_counter()
        for event in self.jobs.run(lambda ctx: self._job(req, ctx), owner_of(request), poll=QUEUE_POLL):
            now = time.perf_counter()
            if isinstance(event, QueuedEvent):
                yield {"info": status.queued(event.ahead, clock), "generate": gr.update(value="Queued")}
            elif isinstance(event, NoteEvent):
                gr.Warning(event.message)
                notes.append(event.message)
            elif isinstance(event, TokenEvent):
                text = f"Enhancing the prompt: {event.tokens} tokens, {event.per_second:.1f} tokens/s"
                if now - last_progress >= PROGRESS_INTERVAL:
                    last_progress = now
                    yield {"info": status.running(text, clock), "generate": gr.update(value="Enhancing...")}
            elif isinstance(event, StageEvent):
                label = event.name[:1].upper() + event.name[1:]
                yield {"info": status.running(label, clock), "generate": gr.update(value=label + "...")}
            elif isinstance(event, ProgressEvent):
                if now - last_progress >= PROGRESS_INTERVAL or event.done >= event.total:
                    last_progress = now
                    overall = event.overall or (event.done, event.total)
                    text = status.download_stage(event.what, event.done, event.total, event.overall)
                    yield {"info": status.running(text, clock, *overall, left=clock.left(*overall)),
                           "generate": gr.update(value=event.what.split(":")[0].capitalize() + "...")}
            elif isinstance(event, StepEvent):
                done = event.done
                frame = {}
                if now - last_progress >= PROGRESS_INTERVAL or done == total:
                    last_progress = now
                    left = clock.left(done, total)
                    run = f" of image run {event.run + 1}/{settings.count}" if settings.count > 1 else ""
                    stage = f"Step {event.step + 1}/{event.total}{run}"
                    frame["info"] = status.running(stage, clock, done, total, left)
                    frame["generate"] = gr.update(value=f"Step {done}/{total}"
                                                  + (f" · {status.seconds(left)} left" if left is not None else ""))
                if now - last_preview >= PREVIEW_INTERVAL or done == total:
                    # every step of a real model; fast toy steps would spend their time on pictures
                    last_preview = now
                    frame["preview"] = gr.update(value=self.engine.preview(event.latents), visible=True)
                if frame:
                    yield frame
            elif isinstance(event, tuple):
                yield self._finished(*event, clock, request, history, notes, settings)

    def _finished(self, paths, results, clock, request, history, notes, settings) -> dict:
        """The last frame: the new images at the top of this browser's results, the status, the first image
        selected for the result actions."""
        notes = notes + [n for r in results for n in getattr(r, "notes", [])]
        for note in dict.fromkeys(n for r in results for n in getattr(r, "notes", [])):
            gr.Info(note)  # e.g. a picture generated smaller and scaled back
        shown, newest = self.add_results(paths, request, history)
        seeds = ", ".join(str(r.settings.seed) for r in results[:: settings.batch_size])
        text = f"{len(paths)} image(s) in {clock.elapsed():.1f} s, seed(s) {seeds}"
        return {**idle_buttons(), **shown, "preview": gr.update(value=None, visible=False),
                "info": status.finished(text, list(dict.fromkeys(notes))), "used": results[-1].settings.to_dict(),
                **self.result_view(newest, results[-1].settings)}

    def add_results(self, paths, request, history) -> tuple[dict, str | None]:
        """New results (`paths`, newest last) recorded and put at the top of this browser's gallery, newest first
        and selected (`history`: its entries): ({"gallery", "history"} updates, the newest one's cache copy)."""
        user = user_of(request)
        entries = self.history.session(history, list(reversed(self.history.record(paths, user))))
        items, kept = self.history.gallery(entries, user)
        return ({"gallery": gr.update(value=items, selected_index=0 if items else None), "history": kept},
                items[0][0] if items else None)

    def result_view(self, path, settings=None) -> dict:
        """The result actions' view of a picture (a Gradio cache copy): selected, its PNG link, its command."""
        if not path:
            return {"selected": None}
        return {"selected": path, "result_link": png_link(path), "result_command": command_line(self, settings)}

    def on_download(self, model_type, kind, request: gr.Request = None):
        """The first-run banner's Download: the type's missing files of the chosen kind, as a job (Cancel stops
        it), with per-file and total progress; then the banner goes and the type's files show as present."""
        clock = status.Clock()
        busy = {"download": gr.update(interactive=False), "download_cancel": gr.update(visible=True)}
        idle = {"download": gr.update(interactive=True), "download_cancel": gr.update(visible=False)}
        try:
            with reported(self, stopped={**idle, "download_status": status.finished(
                    "Download cancelled. Files already complete are kept; Download goes on with the rest.")}) as out:
                self.served(model_type)
                options = first_run.options_for(kind, first_run.choices_of(self.engine, model_type), self.engine.options) \
                    if kind else self.engine.options
                yield {**busy, "download_status": status.running("Starting the download", clock)}
                last = 0.0
                for event in self.jobs.run(lambda ctx: self.engine.download(model_type, options), owner_of(request),
                                           "download", poll=QUEUE_POLL):
                    if isinstance(event, QueuedEvent):
                        yield {"download_status": status.queued(event.ahead, clock)}
                    elif isinstance(event, ProgressEvent) and (time.perf_counter() - last >= PROGRESS_INTERVAL
                                                               or event.done >= event.total):
                        last = time.perf_counter()
                        overall = event.overall or (event.done, event.total)
                        yield {"download_status": status.running(
                            status.download_stage(event.what, event.done, event.total, event.overall), clock,
                            *overall, left=clock.left(*overall))}
                yield {**idle, "about": self.describe(model_type), **self.first_run(model_type),
                       "download_status": status.finished(f"Downloaded in {status.seconds(clock.elapsed())}: "
                                                          "ready to generate.")}
            if out.stopped:
                yield out.stopped
        except gr.Error as exc:
            yield {**idle, "download_status": status.error(exc.message, status.details("download", model_type))}
            raise gr.Error(exc.message, visible=False) from None

    def on_cancel_download(self, request: gr.Request = None):
        if not self.jobs.stop(owner_of(request)):
            gr.Info("No download of yours is running.")

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
        """The settings stored in the gallery image the user clicked, and the result actions' view of it. The
        click's data comes from the browser: only Gradio's own copies (its upload and cache folder) are read."""
        path, settings, error = clicked_png(evt)
        if path is None or error:
            return {"used": {"error": error}, "selected": path} if error else {}
        return {"used": settings.to_dict(), **self.result_view(path, settings)}

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
            self.history.record(paths, user_of(request))  # with logins: this user's pictures
            return [FileData(path=self.history.served(p), orig_name=Path(p).name) for p in paths]
        raise gr.Error("stopped by the user")

    def api_stop(self, request: gr.Request = None) -> bool:
        """Stop the caller's running generation; True if one was running."""
        return self.jobs.stop(owner_of(request))


def cached_path(evt) -> str | None:
    """The path of the picture a gallery click names, if it is one of Gradio's own copies (its upload and cache
    folder); None for anything else the browser may send."""
    from gradio.utils import get_upload_folder

    value = getattr(evt, "value", None)
    image = value.get("image") if isinstance(value, dict) else None
    path = image.get("path") if isinstance(image, dict) else None
    if not isinstance(path, str) or "\0" in path:
        return None
    resolved = Path(path).resolve()
    if not resolved.is_relative_to(Path(get_upload_folder()).resolve()) or not resolved.is_file():
        return None
    return str(resolved)


def clicked_png(evt) -> tuple:
    """A gallery click: (Gradio's copy of the picture, its stored settings, None), or (path, None, why the
    settings could not be read), or (None, None, None) when the click names none of Gradio's copies."""
    path = cached_path(evt)
    if path is None:
        return None, None, None
    try:
        return path, read_png_settings(path)[0], None
    except UserError as exc:
        return path, None, str(exc)


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


def shown(spec, caps, settings=None) -> bool:
    """Whether a field shows: the type offers it, and (for a mode's own options) its mode is chosen."""
    if spec.kind == "hidden" or not spec.visible(caps):
        return False
    return spec.when is None or settings is None or bool(spec.when(settings))


def idle_buttons() -> dict:
    """Generate back to its label, Cancel hidden (fresh update dicts: Gradio consumes the ones it sends)."""
    return {"generate": gr.update(value=status.GENERATE), "stop": gr.update(visible=False)}


def coerce_int(value) -> int | None:
    try:
        return int(round(float(value)))
    except (TypeError, ValueError):
        return None


def size_title(width, height, batch, count) -> str:
    """'Size and count: 1024x1024, 2 per batch, 3 batches' (what a closed panel says)."""
    w, h, b, c = (coerce_int(v) for v in (width, height, batch, count))
    parts = [f"{w}x{h}" if w and h else "size"]
    if b and b > 1:
        parts.append(f"{b} per batch")
    if c and c > 1:
        parts.append(f"{c} batches")
    return "Size and count: " + ", ".join(parts)


def lora_title(loras) -> str:
    """'LoRAs: 2 active (ink 0.8, style 1)' or 'LoRAs: none active'."""
    active = [x for x in loras or [] if x.get("strength")]
    if not active:
        return "LoRAs: none active"
    names = ", ".join(f"{Path(x['name']).stem} {x['strength']:g}" for x in active[:4])
    more = f" and {len(active) - 4} more" if len(active) > 4 else ""
    return f"LoRAs: {len(active)} active ({names}{more})"

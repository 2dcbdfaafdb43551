"""The web UI: a thin layer over Engine. Controls come from app.web.fields and the selected model type's
capabilities; the UI never tests a model type's name."""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import time
from pathlib import Path

import gradio as gr
from gradio.data_classes import FileData

from engine.errors import Interrupted, UserError
from engine.jobs import JobRunner, StepEvent, TokenEvent
from engine.outputs import read_png_settings
from engine.settings import GenerationSettings, size_presets
from engine.lora.presets import list_presets, load_preset, save_preset
from app.web.fields import FIELDS, LORA_COLUMNS, coerce, loras_to_rows
from app.web.memory import SettingsMemory

log = logging.getLogger("zimage.ui")
CUSTOM_SIZE = "custom"
PROGRESS_INTERVAL = 0.1  # seconds between progress bar updates at most (each one is browser work)
PREVIEW_INTERVAL = 0.25  # seconds between live previews at most (a real model's step takes longer)


def preset_choices() -> dict[str, tuple[int, int]]:
    out = {}
    for mp in (1.0, 2.0):
        for ratio, (w, h) in size_presets(mp).items():
            out[f"{ratio}  {w}x{h}  ({mp:g} MP)"] = (w, h)
    return out


class AppUI:
    """State and event handlers; `build()` lays out the page."""

    def __init__(self, engine, output_dir="outputs", memory_path="ui_settings.json", lock_model=None,
                 exposed_without_auth=False):
        self.engine = engine
        self.runner = JobRunner(engine)
        self.output_dir = Path(output_dir)
        self.memory = SettingsMemory(Path(memory_path))
        types = [lock_model] if lock_model else sorted(engine.registry.types)
        self.types = types
        self.first = "z_image" if "z_image" in types else types[0]
        self.exposed_without_auth = exposed_without_auth
        self.presets = preset_choices()

    # ---- model type -> controls ----------------------------------------------------------------

    def caps(self, model_type):
        arch = self.engine.registry.get(model_type).architecture
        return self.engine.registry.handler(model_type).capabilities(arch)

    def settings_for_type(self, model_type) -> GenerationSettings:
        """The user's last settings for this type, else its defaults."""
        try:
            return self.engine.settings_for(model_type, **self.memory.get(model_type))
        except UserError:
            return self.engine.settings_for(model_type)

    def field_updates(self, settings: GenerationSettings) -> list:
        caps = self.caps(settings.model_type)
        updates = []
        for spec in FIELDS:
            kw = {"value": field_value(spec, settings), "visible": shown(spec, caps)}
            if spec.bounds and spec.kind == "slider":
                kw["minimum"], kw["maximum"] = spec.bounds(caps)
            if spec.choices:
                kw["choices"] = list(spec.choices(caps))
            updates.append(gr.update(**kw))
        return updates

    def describe(self, model_type) -> str:
        model_def = self.engine.registry.get(model_type)
        handler = self.engine.registry.handler(model_type)
        lines = [f"**{model_def.name}**: {model_def.model.get('description', '')}"]
        if not self.caps(model_type).available:
            lines.append("*Generation for this type arrives in a later version.*")
        try:
            for s in handler.file_status(model_def, self.engine.locator):
                from engine.weights.files import human_size

                where = f"present (`{s.path}`)" if s.path else f"to download ({human_size(s.size)})"
                lines.append(f"- {s.component}: {where}")
        except UserError as exc:
            lines.append(f"- problem: {exc}")
        return "\n".join(lines)

    def on_model(self, model_type, prompt=""):
        """Switch type: its remembered settings or defaults, keeping the prompt the user is writing."""
        settings = self.settings_for_type(model_type)
        if prompt and prompt.strip():
            settings = dataclasses.replace(settings, prompt=prompt)
        return [self.describe(model_type), *self.field_updates(settings)]

    def on_preset(self, label):
        if label not in self.presets:
            return gr.skip(), gr.skip()
        return self.presets[label]

    def on_restore(self, file):
        """Every setting from a PNG this app made."""
        if file is None:
            return [gr.skip()] * (2 + len(FIELDS))
        try:
            settings, record = read_png_settings(getattr(file, "name", file))
            self.engine.registry.get(settings.model_type)
            library = self.engine.lora_library(settings.model_type)
            loras, warnings = library.restore(settings.loras, record.get("loras") or [])
            settings = dataclasses.replace(settings, loras=loras)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        for warning in warnings:
            gr.Warning(warning)
        return [gr.update(value=settings.model_type), self.describe(settings.model_type),
                *self.field_updates(settings)]

    def control_map(self, model_type, *values):
        """The map the control model would follow (pose skeleton, edges, depth...), before generating."""
        try:
            return self.engine.control_map(self.collect(model_type, values))
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:
            raise gr.Error(self._unexpected(exc, None)) from None

    # ---- LoRAs --------------------------------------------------------------------------------------

    def lora_folder(self, model_type):
        return self.engine.lora_library(model_type).root

    def on_refresh_loras(self, model_type):
        """Re-read the LoRA folder and presets (files added since start-up appear)."""
        names = self.engine.lora_library(model_type).names()
        return gr.update(choices=names, value=None), gr.update(choices=list_presets(self.lora_folder(model_type)))

    def on_add_lora(self, name, rows):
        rows = [r for r in (rows or []) if r and str(r[0] or "").strip()]
        if name and name not in [r[0] for r in rows]:
            rows.append([name, 1.0, ""])
        return rows

    def on_load_preset(self, model_type, name, prompt):
        try:
            preset = load_preset(self.lora_folder(model_type), name)
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        snippet = preset["prompt"]
        new_prompt = prompt if not snippet or snippet in (prompt or "") else f"{prompt}, {snippet}".strip(", ")
        return loras_to_rows(preset["loras"]), new_prompt

    def on_save_preset(self, model_type, name, rows, snippet):
        from app.web.fields import rows_to_loras

        try:
            path = save_preset(self.lora_folder(model_type), name, rows_to_loras(rows), snippet or "", overwrite=True)
        except (UserError, ValueError) as exc:
            raise gr.Error(str(exc)) from None
        gr.Info(f"Preset saved: {path.name}")
        return gr.update(choices=list_presets(self.lora_folder(model_type)), value=name)

    # ---- generation ----------------------------------------------------------------------------

    def collect(self, model_type, values) -> GenerationSettings:
        data = {spec.name: coerce(spec, v) for spec, v in zip(FIELDS, values)}
        data = {k: v for k, v in data.items() if v is not None}
        caps = self.caps(model_type)
        if not caps.cfg:
            data.pop("guidance_scale", None)
        return self.engine.settings_for(model_type, **data)

    def apply_overrides(self, text_encoder: str = "", vae: str = "", transformer_quantization: str = "auto",
                        text_encoder_quantization: str = "auto", profile: str = "auto") -> None:
        """Swap in the user's text encoder / VAE (file or folder) and load options for the next load."""
        for label, path in (("text encoder", text_encoder), ("VAE", vae)):
            if path and not Path(path).exists():
                raise UserError(f"{label} {path}: no such file or folder")
        self.engine.set_overrides({"text_encoder_URLs": text_encoder or None, "vae_URLs": vae or None})
        self.engine.configure(transformer_quantization=transformer_quantization or "auto",
                              text_encoder_quantization=text_encoder_quantization or "auto",
                              profile=None if profile in (None, "auto") else int(profile))

    def enhance_prompt(self, model_type, *values, overrides=("", ""), request=None, progress=None):
        """The Enhance button: returns (new prompt, original prompt) for the user to edit."""
        owner = getattr(request, "session_hash", None) or "api"
        try:
            self.apply_overrides(*overrides)
            settings = self.collect(model_type, values)
            progress(0, desc="Loading the text encoder")
            result = None
            for event in self.runner.enhance(settings, owner):
                if isinstance(event, TokenEvent):
                    progress(None, desc=f"Enhancing: {event.tokens} tokens, {event.per_second:.1f} tokens/s")
                else:
                    result = event
            gr.Info(f"Prompt enhanced (seed {result.seed}); edit it if you like, then generate.")
            return result.prompt, result.original_prompt
        except Interrupted:
            gr.Info("Stopped.")
            return gr.skip(), gr.skip()
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:
            raise gr.Error(self._unexpected(exc, None)) from None

    def generate(self, model_type, *values, overrides=("", ""), request=None, progress=None):
        """Generator: yields (preview, gallery, info, settings used) while running; errors become gr.Error."""
        owner = getattr(request, "session_hash", None) or "api"
        try:
            self.apply_overrides(*overrides)
            settings = self.collect(model_type, values)
            for note in self.engine.check(settings):
                gr.Info(note)
            progress(0, desc="Loading model (and downloading missing files)")
            self.engine.load(model_type)
            for warning in self.engine.apply_loras(settings):
                gr.Warning(warning)
            self.memory.remember(settings)
            yield from self._run(settings, owner, progress)
        except Interrupted:
            gr.Info("Stopped.")
            yield gr.skip(), gr.skip(), "Stopped.", gr.skip()
        except UserError as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:  # keep serving whatever happened, and say what it was
            raise gr.Error(self._unexpected(exc, settings if "settings" in locals() else None)) from None

    def _run(self, settings, owner, progress):
        total = settings.num_inference_steps * settings.count
        started = last_preview = last_progress = time.perf_counter()
        for event in self.runner.run(settings, owner):
            if isinstance(event, TokenEvent):
                progress(None, desc=f"Enhancing the prompt: {event.tokens} tokens, {event.per_second:.1f} tokens/s")
                continue
            if isinstance(event, StepEvent):
                done = event.run * event.total + event.step + 1
                if time.perf_counter() - last_progress >= PROGRESS_INTERVAL or done == total:
                    last_progress = time.perf_counter()
                    progress((done, total), desc=f"Batch {event.run + 1}/{settings.count}, step "
                                                  f"{event.step + 1}/{event.total}")
                if time.perf_counter() - last_preview >= PREVIEW_INTERVAL or done == total:
                    # every step of a real model; fast toy steps would spend their time on pictures
                    last_preview = time.perf_counter()
                    yield self.engine.preview(event.latents), gr.skip(), f"Step {done}/{total}", gr.skip()
            else:
                paths = self.engine.save(event, self.output_dir)
                seconds = time.perf_counter() - started
                items = [(str(p), f"seed {r.settings.seed}") for p, r in zip(paths, event)]
                seeds = ", ".join(str(r.settings.seed) for r in event[:: settings.batch_size])
                yield (gr.skip(), items, f"{len(paths)} image(s) in {seconds:.1f} s, seed(s) {seeds}",
                       event[0].settings.to_dict())

    def _unexpected(self, exc, settings) -> str:
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
        """The settings stored in the gallery image the user clicked."""
        path = (evt.value or {}).get("image", {}).get("path") if isinstance(evt.value, dict) else None
        if not path:
            return gr.skip()
        try:
            return read_png_settings(path)[0].to_dict()
        except UserError as exc:
            return {"error": str(exc)}

    def on_stop(self, request: gr.Request = None):
        owner = getattr(request, "session_hash", None)
        if not self.runner.stop(owner):
            gr.Info("Nothing of yours is running.")

    def api_txt2img(self, prompt: str, model_type: str = "z_image", settings: str = "{}",
                    request: gr.Request = None) -> list[FileData]:
        """Generate images; `settings` is a JSON object of settings fields (seed, width, num_inference_steps...)."""
        owner = getattr(request, "session_hash", None) or "api"
        try:
            extra = json.loads(settings or "{}")
            if not isinstance(extra, dict):
                raise ValueError("settings must be a JSON object")
            gen = self.engine.settings_for(model_type, **{**extra, "prompt": prompt})
            self.engine.check(gen)
            results = [e for e in self.runner.run(gen, owner) if not isinstance(e, StepEvent)][0]
        except (UserError, ValueError, Interrupted) as exc:
            raise gr.Error(str(exc)) from None
        except Exception as exc:
            raise gr.Error(self._unexpected(exc, None)) from None
        return [FileData(path=str(p)) for p in self.engine.save(results, self.output_dir)]

    def api_stop(self, request: gr.Request = None) -> bool:
        """Stop the caller's running generation; True if one was running."""
        return self.runner.stop(getattr(request, "session_hash", None))


def build_ui(engine, lock_model=None, exposed_without_auth=False, output_dir="outputs",
             memory_path="ui_settings.json"):
    app = AppUI(engine, output_dir, memory_path, lock_model, exposed_without_auth)
    settings = app.settings_for_type(app.first)
    caps = app.caps(app.first)

    with gr.Blocks(title="Z-Image Studio") as demo:
        gr.Markdown("# Z-Image Studio")
        if exposed_without_auth:
            gr.Markdown("⚠️ **This app is reachable from other machines without a login: anyone with the address "
                        "can use your GPU. Restart it with `--auth USER:PASSWORD`.**", elem_id="exposed-warning")
        comps = {}
        with gr.Row():
            with gr.Column(scale=1):
                model = gr.Dropdown(app.types, value=app.first, label="Model type")
                about = gr.Markdown(app.describe(app.first))
                for spec in [f for f in FIELDS if f.group == "main"]:
                    comps[spec.name] = make_component(spec, settings, caps)
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    enhance = gr.Button("Enhance prompt", elem_id="enhance")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                with gr.Accordion("Control", open=True, visible=bool(caps.control_modes)) as control_panel:
                    for spec in [f for f in FIELDS if f.group == "control"]:
                        comps[spec.name] = make_component(spec, settings, caps)
                    show_map = gr.Button("Show the control map", size="sm")
                    control_map = gr.Image(label="Control map", interactive=False, height=220, format="png")
                with gr.Accordion("LoRAs", open=False, visible=caps.loras) as lora_panel:
                    gr.Markdown("LoRA files live in the LoRA folder (`--lora-dir-z-image`). Stacking several "
                                "LoRAs on Turbo often degrades images: lower their strengths if it does.")
                    with gr.Row():
                        lora_pick = gr.Dropdown(app.engine.lora_library(app.first).names(), label="Add a LoRA",
                                                elem_id="lora-pick")
                        lora_add = gr.Button("Add", size="sm")
                        lora_refresh = gr.Button("Refresh list", size="sm")
                    for spec in [f for f in FIELDS if f.group == "lora"]:
                        comps[spec.name] = make_component(spec, settings, caps)
                    with gr.Row():
                        preset_pick = gr.Dropdown(list_presets(app.lora_folder(app.first)), label="Preset")
                        preset_load = gr.Button("Load preset", size="sm")
                    with gr.Row():
                        preset_name = gr.Textbox(label="Save as preset", placeholder="name")
                        preset_snippet = gr.Textbox(label="Prompt snippet stored with it (optional)")
                        preset_save = gr.Button("Save preset", size="sm")
                with gr.Accordion("Size and count", open=True):
                    preset = gr.Dropdown([CUSTOM_SIZE, *app.presets], value=CUSTOM_SIZE, label="Size preset")
                    with gr.Row():
                        for spec in [f for f in FIELDS if f.group == "size"]:
                            comps[spec.name] = make_component(spec, settings, caps)
                with gr.Accordion("Advanced", open=False):
                    for spec in [f for f in FIELDS if f.group == "advanced"]:
                        comps[spec.name] = make_component(spec, settings, caps)
                    text_encoder = gr.Textbox(label="Text encoder (file or folder; empty: the model type's)",
                                              info="a Qwen3-4B-shaped encoder, e.g. a Qwen3-4B-Instruct-2507 finetune")
                    vae = gr.Textbox(label="VAE (file or folder; empty: the model type's)",
                                     info="a Flux-compatible 16-channel VAE")
                with gr.Accordion("Memory", open=False):
                    gr.Markdown(memory_help(app.engine))
                    with gr.Row():
                        tq = gr.Dropdown(["auto", "int8", "bf16"], value=app.engine.options.transformer_quantization,
                                         label="Transformer file", info="auto: the first one on disk")
                        teq = gr.Dropdown(["auto", "int8", "bf16"], value=app.engine.options.text_encoder_quantization,
                                          label="Text encoder file")
                        profile = gr.Dropdown(profile_choices(), value=str(app.engine.options.profile or "auto"),
                                              label="Memory profile (CUDA)")
                restore = gr.File(label="Drop a PNG made by this app to restore its settings", file_types=[".png"])
            with gr.Column(scale=1):
                # progress shows on this status line only: an overlay would hide the live preview, and
                # animating every output costs the browser CPU that a small machine's generation needs
                info = gr.Markdown(elem_id="info", min_height=72, container=True)
                preview = gr.Image(label="Live preview", interactive=False, height=256, format="png")
                gallery = gr.Gallery(label="Results", format="png", columns=2, elem_id="gallery")
                used = gr.JSON(label="Settings used (click an image)")
        fields = [comps[spec.name] for spec in FIELDS]

        private = dict(api_visibility="private")
        model.input(app.on_model, [model, comps["prompt"]], [about, *fields], **private)
        model.input(lambda t: (gr.update(visible=app.caps(t).loras), gr.update(visible=bool(app.caps(t).control_modes))),
                    model, [lora_panel, control_panel], **private)
        lora_refresh.click(app.on_refresh_loras, model, [lora_pick, preset_pick], **private)
        lora_add.click(app.on_add_lora, [lora_pick, comps["loras"]], comps["loras"], **private)
        preset_load.click(app.on_load_preset, [model, preset_pick, comps["prompt"]], [comps["loras"], comps["prompt"]],
                          **private)
        preset_save.click(app.on_save_preset, [model, preset_name, comps["loras"], preset_snippet], preset_pick,
                          **private)
        preset.input(app.on_preset, preset, [comps["width"], comps["height"]], **private)
        restore.upload(app.on_restore, restore, [model, about, *fields], **private)

        # a set of inputs arrives as one {component: value} dict, leaving room for Gradio's special arguments
        loading = [text_encoder, vae, tq, teq, profile]
        inputs = {model, *loading, *fields}

        def run(data: dict, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
            yield from app.generate(data[model], *[data[c] for c in fields], overrides=[data[c] for c in loading],
                                    request=request, progress=progress)

        def rewrite(data: dict, request: gr.Request, progress=gr.Progress()):
            return app.enhance_prompt(data[model], *[data[c] for c in fields], overrides=[data[c] for c in loading],
                                      request=request, progress=progress)

        go.click(run, inputs, [preview, gallery, info, used], show_progress_on=info, **private)

        def make_map(data: dict, progress=gr.Progress(track_tqdm=True)):
            return app.control_map(data[model], *[data[c] for c in fields])

        show_map.click(make_map, inputs, control_map, **private)
        enhance.click(rewrite, inputs, [comps["prompt"], comps["original_prompt"]], **private)
        comps["prompt"].input(lambda: "", None, comps["original_prompt"], **private)  # a new prompt of the user's
        gallery.select(app.on_select, None, used, **private)
        stop.click(app.on_stop, None, None, queue=False, **private)
        gr.api(app.api_txt2img, api_name="txt2img")
        gr.api(app.api_stop, api_name="stop", queue=False)
    demo.zimage_app = app
    return demo


def make_component(spec, settings, caps):
    value, visible = field_value(spec, settings), shown(spec, caps)
    common = dict(label=spec.label, visible=visible, info=spec.info or None, elem_id=f"field-{spec.name}")
    if spec.kind == "loras":
        common.pop("info")  # a table has no info line
        return gr.Dataframe(value=value, headers=LORA_COLUMNS, datatype=["str", "number", "str"], type="array",
                            column_count=(3, "fixed"), interactive=True, **common)
    if spec.kind == "image":
        common.pop("info")
        return gr.Image(value=value, type="filepath", sources=["upload", "clipboard"], height=220, **common)
    if spec.kind in ("text", "hidden"):
        return gr.Textbox(value=value, lines=3 if spec.name == "prompt" else 1, **common)
    if spec.kind == "slider":
        lo, hi = spec.bounds(caps)
        return gr.Slider(lo, hi, value=value, step=spec.step, **common)
    if spec.kind == "number":
        return gr.Number(value=value, precision=0 if spec.is_int() else None, **common)
    if spec.kind == "dropdown":
        # a hidden control keeps its value even when this type offers no choices; settings validation decides
        return gr.Dropdown(list(spec.choices(caps)), value=value, allow_custom_value=True, **common)
    return gr.Checkbox(value=value, **common)


def profile_choices() -> list:
    from engine.placement.offload import profile_table

    rows = [(f"{r['profile']}: {r['name']} ({r['ram_gb']} GB RAM, {r['vram_gb']} GB VRAM)", str(r["profile"]))
            for r in profile_table()]
    return [("auto: suggested for this machine", "auto"), ("0: none (everything on the GPU)", "0"), *rows]


def memory_help(engine) -> str:
    notes = engine.startup_notes()
    return ("INT8 files halve the memory the weights need; memory profiles stream weights to a GPU with less VRAM "
            "than the model (see the README's profile table)." + ("\n\n" + " ".join(notes) if notes else ""))


def field_value(spec, settings):
    value = getattr(settings, spec.name)
    if spec.kind == "image":
        return value or None
    return loras_to_rows(value) if spec.kind == "loras" else value


def shown(spec, caps) -> bool:
    return spec.kind != "hidden" and spec.visible(caps)

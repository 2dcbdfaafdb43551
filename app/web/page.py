"""The page's layout and wiring. Controls come from the field table (app.web.fields) and the selected model
type's capabilities; events pass values by name to the handlers (app.web.handlers) and map the names they
return back to components. The page never tests a model type's name.

Layout: three tabs. Generate: the model type, the prompt and Generate at the top, the status area (job state,
time left, live preview) sticky under them, then the settings panels; beside them (below them on a phone) this
browser's results, newest first, with the result actions. History: earlier images of the outputs folder.
Train: LoRA training and LoRAs from pictures."""

from __future__ import annotations

import functools
import inspect

import gradio as gr

from app.web import history_tab, images_panel, lora_picker, memory, results, status
from app.web.assets import StudioBlocks
from app.web.fields import FIELDS
from app.web.handlers import CUSTOM_SIZE, EXTRA_FIELDS, LOAD_FIELDS, AppUI, field_value, shown
from app.web.i2l_panel import i2l_panel
from app.web.train_tab import train_tab

GPU = dict(concurrency_id="gpu", concurrency_limit=1)  # one GPU event at a time, whichever button or API
PRIVATE = dict(api_visibility="private")
FAST = dict(api_visibility="private", queue=False)  # no model, no GPU: answered at once
HISTORY_KEY = "zimage-studio-history"  # this browser's results (app.web.history), in its local storage


class Page:
    """The components by name, and helpers to wire events by name."""

    def __init__(self):
        self.comps: dict[str, gr.components.Component] = {}

    def add(self, name: str, component):
        self.comps[name] = component
        return component

    def __getitem__(self, name):
        return self.comps[name]

    def values(self, data: dict, names) -> dict:
        """{name: value} from Gradio's {component: value}."""
        return {n: data[self.comps[n]] for n in names}

    def outputs(self, updates: dict) -> dict:
        """{component: update} from a handler's {name: update}."""
        return {self.comps[n]: u for n, u in updates.items()}

    def wire(self, fn, names):
        """Adapt a handler returning {name: update} (or yielding such frames) to Gradio's dict outputs.
        The adapter keeps the handler's name and signature (Gradio hands a gr.Request to a parameter of that
        type)."""
        if inspect.isgeneratorfunction(fn):
            @functools.wraps(fn)
            def handler(*args, **kwargs):
                for frame in fn(*args, **kwargs):
                    yield self.outputs(frame)
        else:
            @functools.wraps(fn)
            def handler(*args, **kwargs):
                return self.outputs(fn(*args, **kwargs))
        return {"fn": handler, "outputs": [self.comps[n] for n in names]}


def build_ui(engine, lock_model=None, exposed_without_auth=False, output_dir="outputs", logins=False, cli_flags=()):
    app = AppUI(engine, output_dir, lock_model=lock_model, exposed_without_auth=exposed_without_auth, logins=logins,
                cli_flags=cli_flags)
    settings = app.settings_for_type(app.first)
    caps = app.caps(app.first)
    page = Page()

    with StudioBlocks(title="Z-Image Studio") as demo:
        gr.Markdown("# Z-Image Studio", elem_id="title")
        # the user's last settings per type and this browser's results, in their own browser (app.web.memory,
        # app.web.history)
        store = page.add("memory", gr.BrowserState({}, storage_key=memory.STORAGE_KEY, secret=memory.SECRET))
        page.add("history", gr.BrowserState([], storage_key=HISTORY_KEY, secret=memory.SECRET))
        if exposed_without_auth:
            gr.Markdown("⚠️ **This app is reachable from other machines without a login: anyone with the address "
                        "can use your GPU. Restart it with `--auth USER:PASSWORD`.**", elem_id="exposed-warning")

        def fields(group, skip=()):
            for spec in [f for f in FIELDS if f.group == group and f.name not in skip]:
                page.add(spec.name, make_component(spec, settings, caps, app.bounds))

        with page.add("tabs", gr.Tabs(elem_id="tabs")):
            with gr.Tab("Generate", id="generate", elem_id="tab-generate"):
                generate_tab(app, page, fields, settings)
            with gr.Tab("History", id="history", elem_id="tab-history") as history:
                browser = history_tab.build(app, page)
            with gr.Tab("Train", id="train", elem_id="tab-train"):
                train_tab(app, page)
                i2l_panel(app, page)
        wire(app, page, demo, browser, history)
    demo.zimage_app, demo.zimage_page = app, page
    return demo


def generate_tab(app: AppUI, page: Page, fields, settings) -> None:
    with gr.Row(equal_height=False):
        with gr.Column(scale=5, min_width=320, elem_id="settings-col"):
            page.add("model_type", gr.Dropdown(app.type_choices(), value=app.first, label="Model type",
                                               elem_id="model-type"))
            first_run_banner(app, page)
            spec = next(f for f in FIELDS if f.name == "prompt")
            page.add("prompt", make_component(spec, settings, app.caps(app.first), app.bounds))
            with gr.Row(elem_id="actions-row"):
                page.add("generate", gr.Button(status.GENERATE, variant="primary", elem_id="generate", scale=3))
                page.add("enhance_button", gr.Button("Enhance prompt", elem_id="enhance", scale=1))
            with gr.Column(elem_id="jobbar"):  # sticky: in view wherever the page is scrolled to
                with gr.Row(equal_height=True):
                    page.add("info", gr.HTML(status.OPENING, elem_id="info", scale=4))
                    page.add("stop", gr.Button("Cancel", variant="stop", elem_id="stop", visible=False, scale=1,
                                               min_width=90))
                page.add("preview", gr.Image(label="Live preview", interactive=False, height=200, format="png",
                                             visible=False, elem_id="preview"))
            page.add("about", gr.Markdown(app.describe(app.first), elem_id="about"))
            fields("main", skip=("prompt",))
            with page.add("size_panel", gr.Accordion("Size and count", open=False, elem_id="size-panel")):
                page.add("size_preset", gr.Dropdown([CUSTOM_SIZE, *app.presets], value=CUSTOM_SIZE,
                                                    label="Size preset", elem_id="size-preset"))
                with gr.Row():
                    fields("size")
            lora_picker.build(app, page, fields)
            with page.add("control_panel", gr.Accordion("Control", open=False, visible=bool(app.caps(app.first)
                                                                                           .control_modes),
                                                        elem_id="control-panel")):
                fields("control")
                page.add("show_map", gr.Button("Show the control map", size="sm"))
                page.add("control_map", gr.Image(label="Control map", interactive=False, height=220, format="png"))
            images_panel.build(app, page, fields)
            with page.add("advanced_panel", gr.Accordion("Advanced", open=False, elem_id="advanced-panel")):
                fields("advanced")
                page.add("text_encoder", gr.Textbox(
                    label="Text encoder (file or folder; empty: the model type's)",
                    info="a Qwen3-4B-shaped encoder, e.g. a Qwen3-4B-Instruct-2507 finetune"))
                page.add("vae", gr.Textbox(label="VAE (file or folder; empty: the model type's)",
                                           info="a Flux-compatible 16-channel VAE"))
            memory_panel(app, page)
            page.add("restore", gr.File(label="Restore settings: drop a PNG made by this app here (or anywhere on "
                                              "the page)", file_types=[".png"], elem_id="restore", height=90))
        with gr.Column(scale=4, min_width=320, elem_id="results-col"):
            page.add("gallery", gr.Gallery(label="Results (newest first; this browser keeps the last 200)",
                                           format="png", columns=3, height=420, elem_id="gallery",
                                           allow_preview=True, fit_columns=False))
            page.add("selected", gr.State(None))
            page.result_actions = results.build(app, page, "result", "selected", "info")
            with gr.Accordion("Settings of the selected image", open=False, elem_id="used-panel"):
                page.add("used", gr.JSON(label="Settings used (click an image)", elem_id="used"))


def first_run_banner(app: AppUI, page: Page) -> None:
    view = app.first_run(app.first)
    with page.add("first_run", gr.Column(visible=view["first_run"]["visible"], elem_id="first-run")):
        page.add("first_run_text", gr.HTML(view.get("first_run_text", ""), elem_id="first-run-text"))
        kind = view.get("download_kind", {})
        with gr.Row(equal_height=True):
            page.add("download_kind", gr.Radio(kind.get("choices", []), value=kind.get("value"),
                                               label="Files to download", elem_id="download-kind", scale=3))
            page.add("download", gr.Button("Download", variant="primary", elem_id="download", scale=1))
            page.add("download_cancel", gr.Button("Cancel download", variant="stop", visible=False,
                                                  elem_id="download-cancel", scale=1))
        page.add("download_status", gr.HTML("", elem_id="download-status"))


def wire(app: AppUI, page: Page, demo, browser, history_tab_component) -> None:
    field_names = [spec.name for spec in FIELDS]
    type_names = ["about", *field_names, "lora_panel", "control_panel", "size_panel", "size_preset", "first_run",
                  "first_run_text", "download_kind"]
    restore_names = ["model_type", *type_names, "images_panel", "advanced_panel", "info"]
    model, store, history = page["model_type"], page["memory"], page["history"]
    model.input(**page.wire(app.on_model, type_names), inputs=[model, page["prompt"], store], **PRIVATE)
    demo.load(**page.wire(app.on_load, [*type_names, "gallery", "history", "info"]), inputs=[model, store, history],
              **PRIVATE)
    page["size_preset"].input(**page.wire(app.on_preset, ["width", "height"]), inputs=page["size_preset"], **FAST)
    size_fields = [page[n] for n in ("width", "height", "batch_size", "count")]
    for comp in size_fields:
        comp.change(**page.wire(results.named(app.on_size, f"on_size_{comp.elem_id.removeprefix('field-')}"),
                                ["size_preset", "size_panel"]), inputs=size_fields, **FAST)
    page["control_mode"].change(**page.wire(app.on_control_mode, [s.name for s in FIELDS if s.when]),
                                inputs=[page["control_mode"], model], **FAST)
    page["restore"].upload(**page.wire(app.on_restore, [*restore_names, "restore"]), inputs=page["restore"],
                           **PRIVATE)

    # a set of inputs arrives as one {component: value} dict, leaving room for Gradio's special arguments
    value_names = [*field_names, *LOAD_FIELDS, *EXTRA_FIELDS]
    inputs = {model, *(page[n] for n in value_names)}
    frame_names = ["preview", "gallery", "info", "used", "memory", "history", "generate", "stop", "selected",
                   "result_link", "result_command"]

    def run(data: dict, request: gr.Request):
        for frame in app.generate(data[model], page.values(data, value_names), request, None, data[store],
                                  data[history]):
            yield page.outputs(frame)

    def rewrite(data: dict, request: gr.Request, progress=gr.Progress()):
        return page.outputs(app.enhance_prompt(data[model], page.values(data, value_names), request, progress))

    def make_map(data: dict, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
        return page.outputs(app.control_map(data[model], page.values(data, value_names), request))

    page["generate"].click(run, inputs | {store, history}, [page[n] for n in frame_names], show_progress="hidden",
                           **GPU, **PRIVATE)
    page["show_map"].click(make_map, inputs, page["control_map"], **GPU, **PRIVATE)
    page["enhance_button"].click(rewrite, inputs, [page["prompt"], page["original_prompt"], page["info"]],
                                 show_progress_on=page["info"], **GPU, **PRIVATE)
    page["prompt"].input(lambda: "", None, page["original_prompt"], **FAST)  # a new prompt of the user's
    page["gallery"].select(**page.wire(app.on_select, ["used", "selected", "result_link", "result_command"]),
                           **PRIVATE)
    page["stop"].click(app.on_stop, None, None, queue=False, **PRIVATE)
    wire_download(app, page)
    results.wire(app, page, page.result_actions, restore_names, type_names, inputs, value_names)
    results.wire(app, page, browser.actions, restore_names, type_names, inputs, value_names)
    history_tab.wire(browser, page, history_tab_component)
    gr.api(app.api_txt2img, api_name="txt2img", **GPU)
    gr.api(app.api_stop, api_name="stop", queue=False)


def wire_download(app: AppUI, page: Page) -> None:
    model, kind = page["model_type"], page["download_kind"]
    names = ["download_status", "download", "download_cancel", "about", "first_run", "first_run_text",
             "download_kind"]
    page["download"].click(**page.wire(app.on_download, names), inputs=[model, kind], show_progress="hidden",
                           **GPU, **PRIVATE)
    page["download_cancel"].click(app.on_cancel_download, None, None, queue=False, **PRIVATE)


def memory_panel(app: AppUI, page: Page) -> None:
    from engine.load_options import QUANTIZATION_CHOICES

    options = app.engine.options
    with gr.Accordion("Memory", open=False, elem_id="memory-panel"):
        gr.Markdown(memory_help(app.engine))
        with gr.Row():
            page.add("transformer_quantization", gr.Dropdown(
                list(QUANTIZATION_CHOICES), value=options.transformer_quantization, label="Transformer file",
                info="auto: the first one on disk"))
            page.add("text_encoder_quantization", gr.Dropdown(
                list(QUANTIZATION_CHOICES), value=options.text_encoder_quantization, label="Text encoder file"))
            page.add("profile", gr.Dropdown(profile_choices(), value=str(options.profile or "auto"),
                                            label="Memory profile (CUDA)"))


def make_component(spec, settings, caps, bounds):
    value, visible = field_value(spec, settings), shown(spec, caps, settings)
    common = dict(label=spec.label, visible=visible, info=spec.info or None, elem_id=f"field-{spec.name}")
    if spec.kind == "loras":
        from app.web.fields import LORA_COLUMNS, LORA_TYPES

        common.pop("info")  # a table has no info line
        return gr.Dataframe(value=value, headers=LORA_COLUMNS, datatype=LORA_TYPES, type="array",
                            column_count=(len(LORA_COLUMNS), "fixed"), interactive=True, **common)
    if spec.kind == "image":
        common.pop("info")
        return gr.Image(value=value, type="filepath", sources=["upload", "clipboard"], height=220, **common)
    if spec.kind in ("text", "hidden", "margins"):
        prompt = spec.name == "prompt"
        return gr.Textbox(value=value, lines=3 if prompt else 1, autofocus=prompt,
                          placeholder="Describe the picture; Ctrl+Enter generates" if prompt else None, **common)
    if spec.kind == "slider":
        lo, hi = bounds(spec, caps)
        return gr.Slider(lo, hi, value=value, step=spec.step, **common)
    if spec.kind == "number":
        return gr.Number(value=value, precision=0 if spec.is_int() else None, **common)
    if spec.kind == "dropdown":
        # a hidden control keeps its value even when this type offers no choices; settings validation decides
        return gr.Dropdown(list(spec.choices(caps)) if spec.choices else [], value=value, allow_custom_value=True,
                           **common)
    return gr.Checkbox(value=value, **common)


def profile_choices() -> list:
    from engine.placement.offload import profile_table

    rows = [(f"{r['profile']}: {r['name']} ({r['ram_gb']} GB RAM, {r['vram_gb']} GB VRAM)", str(r["profile"]))
            for r in profile_table()]
    return [("auto: suggested for this machine", "auto"), ("0: none (everything on the GPU)", "0"), *rows]


def memory_help(engine) -> str:
    notes = engine.startup_notes()
    return ("INT8, fp8 and GGUF files take half or less of the memory bf16 weights need (the README's format table); "
            "memory profiles stream weights to a GPU with less VRAM "
            "than the model (see the README's profile table)." + ("\n\n" + " ".join(notes) if notes else ""))

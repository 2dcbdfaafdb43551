"""The page's layout and wiring. Controls come from the field table (app.web.fields) and the selected model
type's capabilities; events pass values by name to the handlers (app.web.handlers) and map the names they
return back to components. The page never tests a model type's name."""

from __future__ import annotations

import functools

import gradio as gr

from app.web import images_panel, memory
from app.web.fields import FIELDS, LORA_COLUMNS, LORA_TYPES
from app.web.handlers import EXTRA_FIELDS, LOAD_FIELDS, AppUI, field_value, shown
from app.web.i2l_panel import i2l_panel
from app.web.train_tab import train_tab
from engine.lora.presets import list_presets

CUSTOM_SIZE = "custom"
GPU = dict(concurrency_id="gpu", concurrency_limit=1)  # one GPU event at a time, whichever button or API
PRIVATE = dict(api_visibility="private")


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
        @functools.wraps(fn)
        def handler(*args, **kwargs):
            return self.outputs(fn(*args, **kwargs))
        return {"fn": handler, "outputs": [self.comps[n] for n in names]}


def build_ui(engine, lock_model=None, exposed_without_auth=False, output_dir="outputs"):
    app = AppUI(engine, output_dir, lock_model=lock_model, exposed_without_auth=exposed_without_auth)
    settings = app.settings_for_type(app.first)
    caps = app.caps(app.first)
    page = Page()

    with gr.Blocks(title="Z-Image Studio") as demo:
        gr.Markdown("# Z-Image Studio")
        # the user's last settings per type, in their own browser (app.web.memory)
        store = page.add("memory", gr.BrowserState({}, storage_key=memory.STORAGE_KEY, secret=memory.SECRET))
        if exposed_without_auth:
            gr.Markdown("⚠️ **This app is reachable from other machines without a login: anyone with the address "
                        "can use your GPU. Restart it with `--auth USER:PASSWORD`.**", elem_id="exposed-warning")

        def fields(group):
            for spec in [f for f in FIELDS if f.group == group]:
                page.add(spec.name, make_component(spec, settings, caps, app.bounds))

        with gr.Row():
            with gr.Column(scale=1):
                page.add("model_type", gr.Dropdown(app.types, value=app.first, label="Model type"))
                page.add("about", gr.Markdown(app.describe(app.first)))
                fields("main")
                with gr.Row():
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                    enhance = gr.Button("Enhance prompt", elem_id="enhance")
                    stop = gr.Button("Stop", variant="stop", elem_id="stop")
                with page.add("control_panel", gr.Accordion("Control", open=True, visible=bool(caps.control_modes))):
                    fields("control")
                    show_map = gr.Button("Show the control map", size="sm")
                    page.add("control_map", gr.Image(label="Control map", interactive=False, height=220, format="png"))
                lora_panel(app, page, fields)
                images_panel.build(app, page, fields)
                with gr.Accordion("Size and count", open=True):
                    size = gr.Dropdown([CUSTOM_SIZE, *app.presets], value=CUSTOM_SIZE, label="Size preset")
                    with gr.Row():
                        fields("size")
                with gr.Accordion("Advanced", open=False):
                    fields("advanced")
                    page.add("text_encoder", gr.Textbox(
                        label="Text encoder (file or folder; empty: the model type's)",
                        info="a Qwen3-4B-shaped encoder, e.g. a Qwen3-4B-Instruct-2507 finetune"))
                    page.add("vae", gr.Textbox(label="VAE (file or folder; empty: the model type's)",
                                               info="a Flux-compatible 16-channel VAE"))
                memory_panel(app, page)
                i2l_panel(app, page)
                restore = page.add("restore", gr.File(label="Drop a PNG made by this app to restore its settings",
                                                      file_types=[".png"]))
            with gr.Column(scale=1):
                # progress shows on this status line only: an overlay would hide the live preview, and
                # animating every output costs the browser CPU that a small machine's generation needs
                info = page.add("info", gr.Markdown(elem_id="info", min_height=72, container=True))
                page.add("preview", gr.Image(label="Live preview", interactive=False, height=256, format="png"))
                gallery = page.add("gallery", gr.Gallery(label="Results", format="png", columns=2, elem_id="gallery"))
                used = page.add("used", gr.JSON(label="Settings used (click an image)"))
        train_tab(app, page)

        field_names = [spec.name for spec in FIELDS]
        shown_by_type = ["about", *field_names, "lora_panel", "control_panel"]
        model = page["model_type"]
        model.input(**page.wire(app.on_model, shown_by_type), inputs=[model, page["prompt"], store], **PRIVATE)
        demo.load(**page.wire(app.on_load, shown_by_type), inputs=[model, store], **PRIVATE)
        size.input(**page.wire(app.on_preset, ["width", "height"]), inputs=size, **PRIVATE)
        restore.upload(**page.wire(app.on_restore, ["model_type", *shown_by_type]), inputs=restore, **PRIVATE)

        # a set of inputs arrives as one {component: value} dict, leaving room for Gradio's special arguments
        value_names = [*field_names, *LOAD_FIELDS, *EXTRA_FIELDS]
        inputs = {model, *(page[n] for n in value_names)}
        frame_names = ["preview", "gallery", "info", "used", "memory"]

        def run(data: dict, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
            for frame in app.generate(data[model], page.values(data, value_names), request, progress, data[store]):
                yield page.outputs(frame)

        def rewrite(data: dict, request: gr.Request, progress=gr.Progress()):
            return page.outputs(app.enhance_prompt(data[model], page.values(data, value_names), request, progress))

        def make_map(data: dict, request: gr.Request, progress=gr.Progress(track_tqdm=True)):
            return page.outputs(app.control_map(data[model], page.values(data, value_names), request))

        go.click(run, inputs | {store}, [page[n] for n in frame_names], show_progress_on=info, **GPU, **PRIVATE)
        show_map.click(make_map, inputs, page["control_map"], **GPU, **PRIVATE)
        enhance.click(rewrite, inputs, [page["prompt"], page["original_prompt"]], **GPU, **PRIVATE)
        page["prompt"].input(lambda: "", None, page["original_prompt"], **PRIVATE)  # a new prompt of the user's
        gallery.select(app.on_select, None, used, **PRIVATE)
        stop.click(app.on_stop, None, None, queue=False, **PRIVATE)
        images_panel.wire_results(app, page, inputs, value_names)
        gr.api(app.api_txt2img, api_name="txt2img", **GPU)
        gr.api(app.api_stop, api_name="stop", queue=False)
    demo.zimage_app, demo.zimage_page = app, page
    return demo


def lora_panel(app: AppUI, page: Page, fields) -> None:
    caps = app.caps(app.first)
    with page.add("lora_panel", gr.Accordion("LoRAs", open=False, visible=caps.loras)):
        gr.Markdown("LoRA files live in the LoRA folder (`--lora-dir-z-image`). Stacking several "
                    "LoRAs on Turbo often degrades images: lower their strengths if it does.")
        with gr.Row():
            page.add("lora_pick", gr.Dropdown(app.engine.lora_library(app.first).names(), label="Add a LoRA",
                                              elem_id="lora-pick"))
            add = gr.Button("Add", size="sm")
            refresh = gr.Button("Refresh list", size="sm")
        fields("lora")
        with gr.Row():
            page.add("preset_pick", gr.Dropdown(list_presets(app.lora_folder(app.first)), label="Preset"))
            load = gr.Button("Load preset", size="sm")
        with gr.Row():
            name = gr.Textbox(label="Save as preset", placeholder="name")
            snippet = gr.Textbox(label="Prompt snippet stored with it (optional)")
            save = gr.Button("Save preset", size="sm")
    model, loras = page["model_type"], page["loras"]
    refresh.click(**page.wire(app.on_refresh_loras, ["lora_pick", "preset_pick"]), inputs=model, **PRIVATE)
    add.click(**page.wire(app.on_add_lora, ["loras"]), inputs=[page["lora_pick"], loras, model], **PRIVATE)
    load.click(**page.wire(app.on_load_preset, ["loras", "prompt"]), inputs=[model, page["preset_pick"], page["prompt"]],
               **PRIVATE)
    save.click(**page.wire(app.on_save_preset, ["preset_pick"]), inputs=[model, name, loras, snippet], **PRIVATE)


def memory_panel(app: AppUI, page: Page) -> None:
    from engine.load_options import QUANTIZATION_CHOICES

    options = app.engine.options
    with gr.Accordion("Memory", open=False):
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
    value, visible = field_value(spec, settings), shown(spec, caps)
    common = dict(label=spec.label, visible=visible, info=spec.info or None, elem_id=f"field-{spec.name}")
    if spec.kind == "loras":
        common.pop("info")  # a table has no info line
        return gr.Dataframe(value=value, headers=LORA_COLUMNS, datatype=LORA_TYPES, type="array",
                            column_count=(len(LORA_COLUMNS), "fixed"), interactive=True, **common)
    if spec.kind == "image":
        common.pop("info")
        return gr.Image(value=value, type="filepath", sources=["upload", "clipboard"], height=220, **common)
    if spec.kind in ("text", "hidden", "margins"):
        return gr.Textbox(value=value, lines=3 if spec.name == "prompt" else 1, **common)
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

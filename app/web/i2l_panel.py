"""The page's "LoRA from images" panel (Z-Image-i2L): drop pictures, name the LoRA, Make, watch the progress; the
new file appears in the LoRA list. When a LoRA whose file recommends settings is picked (i2L LoRAs: Z-Image base,
CFG 4, shift 8, 50 steps), a button offers them. Built by one call from app.web.page."""

from __future__ import annotations

import dataclasses

import gradio as gr

from app.web import status
from app.web.fields import FIELDS
from app.web.handlers import QUEUE_POLL, owner_of, reported
from engine.errors import UserError
from engine.jobs import NoteEvent, ProgressEvent, QueuedEvent, StageEvent

GPU = dict(concurrency_id="gpu", concurrency_limit=1)  # the page's GPU group: one GPU event at a time
PRIVATE = dict(api_visibility="private")
MEMORY_CHOICES = [("auto: whole on the GPU where it fits, else streamed", "auto"),
                  ("whole: each model all on the GPU (DINOv3 needs about 14 GB)", "whole"),
                  ("stream: weights in RAM, one block at a time on the GPU", "stream"),
                  ("int8: quantized while loading (about half the memory)", "int8")]
SETTING_LABELS = {"guidance_scale": "CFG {:g}", "flow_shift": "shift {:g}", "num_inference_steps": "{} steps"}


class ImageToLoraUI:
    """The panel's event handlers (values in, {name: update} out)."""

    def __init__(self, app):
        self.app, self.engine = app, app.engine

    def files_text(self, model_type) -> str:
        handler = self.engine.registry.handler(model_type)
        try:
            lines = handler.image_to_lora_files(self.engine.locator)
        except UserError as exc:
            lines = [f"problem: {exc}"]
        return "\n".join(f"- {line}" for line in lines)

    def make(self, model_type, pictures, name, memory, both, request=None, progress=None):
        """Run the job; the new LoRA is picked in the LoRA list (which offers its settings)."""
        paths = [getattr(p, "name", p) for p in (pictures or [])]
        progress = progress or (lambda *a, **k: None)
        with reported(self.app, stopped={"i2l_status": "Stopped: no LoRA was written."}) as outcome:
            req = self.engine.prepare_image_to_lora(paths, name or "", model_type, memory=memory or "auto",
                                                    positive_only=not both)
            progress(0, desc="Starting (missing files are downloaded first)")
            result = None
            for event in self.app.jobs.run(lambda ctx: self.engine.image_to_lora(req, ctx.progress, model_type),
                                           owner_of(request), "image-to-lora", poll=QUEUE_POLL):
                if isinstance(event, QueuedEvent):
                    progress(None, desc=status.queued_text(event.ahead))
                elif isinstance(event, ProgressEvent):
                    progress((event.done, event.total), desc=event.what)
                elif isinstance(event, NoteEvent):
                    gr.Warning(event.message)
                elif not isinstance(event, StageEvent):
                    result = event
            names = self.engine.lora_library(model_type).names()
            return {"i2l_status": f"Made **{result.name}** ({result.summary()}). It is picked in the LoRA list: "
                                  "press Add to use it.",
                    "lora_pick": gr.update(choices=names, value=result.name)}
        return outcome.stopped or {}

    def on_pick(self, model_type, name) -> dict:
        """Show the offer of the picked LoRA's recommended settings, if its file has any."""
        recommended = self.app.file_options(model_type, name).recommended if name else {}
        if not recommended:
            return {"i2l_offer": gr.update(visible=False)}
        text = f"Use the settings {name} was made for: {self.describe(recommended)}"
        gr.Info(f"{name} was made for {self.describe(recommended)}: the button in the LoRA panel sets them.")
        return {"i2l_offer": gr.update(visible=True, value=text)}

    def describe(self, recommended: dict) -> str:
        parts = []
        if recommended.get("model_type") in self.app.types:
            parts.append(self.engine.registry.get(recommended["model_type"]).name)
        parts += [SETTING_LABELS[k].format(recommended[k]) for k in SETTING_LABELS if k in recommended]
        return ", ".join(parts)

    def use_recommended(self, model_type, prompt, rows, name) -> dict:
        """Switch to the recommended model type (if this app has it) and settings, keeping prompt and LoRA rows."""
        recommended = self.app.file_options(model_type, name).recommended if name else {}
        target = recommended.get("model_type") if recommended.get("model_type") in self.app.types else model_type
        settings = self.app.settings_for_type(target, prompt or "")
        changes = {k: recommended[k] for k in SETTING_LABELS if k in recommended}
        if not self.app.caps(target).cfg:
            changes.pop("guidance_scale", None)
            gr.Warning(f"{target} runs without CFG: a positive-only LoRA then acts on every pass")
        settings = dataclasses.replace(settings, **{k: type(getattr(settings, k))(v) for k, v in changes.items()})
        updates = {"model_type": gr.update(value=target), **self.app.type_view(target, settings),
                   "i2l_offer": gr.update(visible=False)}
        updates["loras"] = gr.update(value=rows)  # the user's LoRA rows stay as they are
        return updates


def i2l_panel(app, page) -> None:
    """Lay out and wire the panel; called once every settings field exists (the offer updates them all), it
    updates and watches the LoRA panel's `lora_pick`."""
    handler = app.engine.registry.handler(app.first)
    if not hasattr(handler, "image_to_lora"):
        return
    ui = ImageToLoraUI(app)
    offer = page.comps.get("i2l_offer") or page.add("i2l_offer", gr.Button(
        "Use the recommended settings", visible=False, size="sm", elem_id="i2l-offer"))  # the LoRA panel's, if any
    with gr.Accordion("LoRA from images", open=False, elem_id="i2l-panel"):
        gr.Markdown("A style LoRA from 1 to 16 pictures in one pass, without training (DiffSynth-Studio's "
                    "Z-Image-i2L). It is written to the LoRA folder and made for **Z-Image base with CFG**, applied "
                    "to CFG's positive branch only. Files (about 19 GB, downloaded once):\n"
                    + ui.files_text(app.first))
        pictures = page.add("i2l_pictures", gr.File(label="Pictures of the style (1-16)", file_count="multiple",
                                                    file_types=["image"], type="filepath", elem_id="i2l-pictures"))
        with gr.Row():
            name = page.add("i2l_name", gr.Textbox(label="Name of the new LoRA", placeholder="my style",
                                                   elem_id="i2l-name"))
            memory = page.add("i2l_memory", gr.Dropdown(MEMORY_CHOICES, value="auto", label="GPU memory"))
        both = page.add("i2l_both", gr.Checkbox(False, label="Apply to both CFG branches (not recommended)"))
        make = gr.Button("Make LoRA", variant="primary", elem_id="i2l-make")
        status_box = page.add("i2l_status", gr.Markdown(elem_id="i2l-status"))

    model, pick = page["model_type"], page["lora_pick"]

    def make_lora(model_type, files, lora_name, mode, both_branches, request: gr.Request,
            progress=gr.Progress(track_tqdm=True)):
        return page.outputs(ui.make(model_type, files, lora_name, mode, both_branches, request, progress))

    make.click(make_lora, [model, pictures, name, memory, both], [status_box, pick], show_progress_on=status_box,
               **GPU, **PRIVATE)
    pick.change(**page.wire(ui.on_pick, ["i2l_offer"]), inputs=[model, pick], **PRIVATE)
    names = ["model_type", "about", *[spec.name for spec in FIELDS], "lora_panel", "control_panel", "size_panel",
             "size_preset", "first_run", "first_run_text", "download_kind", "i2l_offer"]
    offer.click(**page.wire(ui.use_recommended, names), inputs=[model, page["prompt"], page["loras"], pick],
                **PRIVATE)

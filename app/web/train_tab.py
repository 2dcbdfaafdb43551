"""The Train panel's layout and wiring (handlers in app.web.train_handlers): dataset folder or upload, a table
of images and captions to edit, the settings, Start/Stop, progress with ETA, a live loss plot, the samples of
each checkpoint, and "Use it" to put the result in the LoRA table. page.py calls train_tab(app, page) once."""

from __future__ import annotations

import gradio as gr

from app.web.train_handlers import RESOLUTIONS, TrainUI
from engine.training.settings import OPTIMIZER_CHOICES, TIMESTEP_CHOICES, TrainSettings

GPU = dict(concurrency_id="gpu", concurrency_limit=1)  # the page's one GPU lane (app.web.page)
PRIVATE = dict(api_visibility="private")
VALUE_NAMES = ("train_name", "train_images", "train_model", "train_trigger", "train_steps", "train_rank",
               "train_alpha", "train_lr", "train_batch", "train_resolutions", "train_save_every",
               "train_sample_every", "train_prompts", "train_seed", "train_resume", "train_adapter",
               "train_timesteps", "train_refiners", "train_checkpointing", "train_optimizer", "train_base")


def train_tab(app, page, training_dir: str = "training") -> TrainUI:
    ui = TrainUI(app, training_dir)
    app.train_ui = ui
    d = TrainSettings(name="x", images="x")
    add = page.add
    with gr.Accordion("Train a LoRA", open=False, elem_id="train-panel"):
        gr.Markdown("Teach the model a character or a style from 10-30 pictures. Images go in one folder with "
                    "same-name `.txt` captions (images without one use the trigger word). Turbo trains with "
                    "ostris' training adapter (downloaded once), which is left out of the samples and the result. "
                    "The LoRA lands in the LoRA folder; checkpoints and samples in "
                    f"`{training_dir}/NAME/`.")
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Row():
                    add("train_name", gr.Textbox(label="LoRA name", placeholder="my_style", elem_id="train-name"))
                    types = ui.types()
                    add("train_model", gr.Dropdown(types, value=types[0] if types else None, label="Train on"))
                with gr.Row():
                    add("train_images", gr.Textbox(label="Dataset folder", elem_id="train-images", scale=3))
                    load = gr.Button("Load", size="sm", scale=1)
                upload = gr.File(label="... or upload images and captions (copied into the training folder)",
                                 file_count="multiple", height=110)
                add("train_trigger", gr.Textbox(label="Trigger word", info="caption of images without one; "
                                                "replaces [trigger] in captions"))
                with gr.Row():
                    add("train_steps", gr.Number(d.steps, label="Steps", precision=0))
                    add("train_rank", gr.Number(d.rank, label="Rank", precision=0))
                    add("train_alpha", gr.Number(None, label="Alpha (empty: = rank)"))
                    add("train_lr", gr.Textbox("1e-4", label="Learning rate"))
                with gr.Row():
                    add("train_batch", gr.Number(d.batch_size, label="Batch", precision=0))
                    add("train_resolutions", gr.CheckboxGroup(list(RESOLUTIONS), value=list(d.resolutions),
                                                              label="Resolutions (px)"))
                with gr.Row():
                    add("train_save_every", gr.Number(d.save_every, label="Checkpoint every", precision=0))
                    add("train_sample_every", gr.Number(d.sample_every, label="Samples every", precision=0))
                    add("train_seed", gr.Number(d.seed, label="Seed", precision=0))
                add("train_prompts", gr.Textbox(label="Sample prompts (one a line; empty: the trigger word)",
                                                lines=2))
                with gr.Accordion("More training settings", open=False):
                    with gr.Row():
                        add("train_adapter", gr.Dropdown(["auto", "v1", "v2", "none"], value="auto",
                                                         allow_custom_value=True, label="Training adapter",
                                                         info="auto: v1 for Turbo, none for the base model; or a "
                                                              ".safetensors path"))
                        add("train_base", gr.Dropdown(["auto", "int8", "bf16"], value="auto",
                                                      label="Frozen transformer file", info="int8: about half "
                                                                                            "the memory"))
                    with gr.Row():
                        add("train_timesteps", gr.Radio(list(TIMESTEP_CHOICES), value=d.timesteps,
                                                        label="Noise levels"))
                        add("train_optimizer", gr.Dropdown(list(OPTIMIZER_CHOICES), value=d.optimizer,
                                                           label="Optimizer"))
                    with gr.Row():
                        add("train_refiners", gr.Checkbox(d.refiners, label="Also train the refiner layers"))
                        add("train_checkpointing", gr.Checkbox(d.gradient_checkpointing,
                                                               label="Gradient checkpointing (less memory)"))
                add("train_resume", gr.Checkbox(False, label="Resume this name's run from its checkpoint"))
                with gr.Row():
                    start = gr.Button("Start training", variant="primary", elem_id="train-start")
                    stop = gr.Button("Stop", variant="stop", elem_id="train-stop")
            with gr.Column(scale=1):
                add("train_captions", gr.Dataframe(headers=["image", "caption"], datatype=["str", "str"],
                                                   type="array", column_count=(2, "fixed"), interactive=True,
                                                   label="Captions (edit, then save)", elem_id="train-captions"))
                save = gr.Button("Save captions", size="sm")
                add("train_info", gr.Markdown(elem_id="train-info", min_height=60, container=True))
                add("train_loss", gr.LinePlot(x="step", y="loss", label="Loss", height=220, elem_id="train-loss"))
                add("train_samples", gr.Gallery(label="Samples (per checkpoint)", columns=3, height=260,
                                                format="png", elem_id="train-samples"))
                add("train_result", gr.Textbox(visible=False))
                add("train_use", gr.Button("Use it: add the LoRA to the LoRA table", visible=False,
                                           elem_id="train-use"))
    _wire(ui, page, load, upload, save, start, stop)
    return ui


def _wire(ui: TrainUI, page, load, upload, save, start, stop) -> None:
    load.click(**page.wire(ui.on_load_dataset, ["train_captions", "train_info"]),
               inputs=[page["train_images"], page["train_trigger"]], **PRIVATE)
    upload.upload(**page.wire(ui.on_upload, ["train_images", "train_captions", "train_info"]),
                  inputs=[upload, page["train_name"]], **PRIVATE)
    save.click(**page.wire(ui.on_save_captions, ["train_captions", "train_info"]),
               inputs=[page["train_images"], page["train_captions"]], **PRIVATE)
    frame_names = ["train_info", "train_loss", "train_samples", "train_result", "train_use"]
    inputs = {page[n] for n in VALUE_NAMES}

    def train(data: dict, request: gr.Request):
        for frame in ui.start(page.values(data, VALUE_NAMES), request):
            yield page.outputs(frame)

    start.click(train, inputs, [page[n] for n in frame_names], show_progress_on=page["train_info"], **GPU, **PRIVATE)
    stop.click(ui.on_stop_training, None, None, queue=False, **PRIVATE)
    page["train_use"].click(**page.wire(ui.use_it, ["loras", "lora_pick", "lora_panel", "tabs"]),
                            inputs=[page["train_result"], page["loras"]], **PRIVATE)

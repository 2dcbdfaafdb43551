"""The Train panel's state and event handlers: the dataset (folder or upload, captions to edit), a training
run as a job on the engine's one queue (owned by the browser session, so Stop stops only its own run), live
progress, loss and samples, and putting the result into the LoRA table.

Values travel by name, as in app.web.handlers: handlers take {name: value} and return {name: update}.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import gradio as gr

from app.web import status
from app.web.handlers import QUEUE_POLL, owner_of, reported
from engine.errors import Interrupted, UserError
from engine.jobs import NoteEvent, QueuedEvent, StageEvent
from engine.training.events import clock

FRAME_INTERVAL = 0.25  # seconds between page updates at most while training
UPLOAD_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".txt")
RESOLUTIONS = (512, 768, 1024)


class TrainUI:
    def __init__(self, app, training_dir: str = "training"):
        self.app = app
        self.engine = app.engine
        self.jobs = app.engine.jobs
        self.training_dir = Path(training_dir)

    def types(self) -> list[str]:
        """The model types LoRAs can be trained on (the families say which architectures)."""
        reg = self.engine.registry
        return [t for t in self.app.types
                if getattr(reg.handler(t), "trainable", lambda arch: False)(reg.get(t).architecture)]

    # ---- the dataset ------------------------------------------------------------------------------------

    def on_load_dataset(self, folder, trigger="") -> dict:
        """The folder's images and captions as table rows, and what was skipped."""
        from engine.training import dataset

        with reported():
            data = dataset.scan(folder, trigger or "")
            rows = [[i.path.name, dataset.read_caption(i.path) or ""] for i in data.items]
            info = f"{len(data.items)} image(s) in `{data.folder}`." + "".join(f"\n\n{n}" for n in data.notes)
            return {"train_captions": rows, "train_info": info}
        return {}

    def on_save_captions(self, folder, rows) -> dict:
        """Write the table's captions as the images' .txt files (an empty caption: the trigger word)."""
        from engine.training import dataset

        with reported():
            written = dataset.write_captions(folder, {str(r[0]): str(r[1] or "") for r in rows or [] if r and r[0]})
            gr.Info(f"{len(written)} caption(s) saved")
            return self.on_load_dataset(folder)
        return {}

    def on_upload(self, files, name) -> dict:
        """Copy uploaded images and captions into <training dir>/datasets/NAME/ and load that folder."""
        from engine.training.settings import TrainSettings

        with reported():
            if not files:
                return {}
            name = TrainSettings(name=name, images="-").validate().name  # a safe folder name, or a clear error
            folder = self.training_dir / "datasets" / name
            folder.mkdir(parents=True, exist_ok=True)
            kept = 0
            for f in files:
                source = Path(getattr(f, "name", f))
                if source.suffix.lower() in UPLOAD_SUFFIXES:
                    shutil.copyfile(source, folder / Path(source.name).name)
                    kept += 1
            if not kept:
                raise UserError("none of the uploaded files is an image or a .txt caption")
            return {"train_images": str(folder.resolve()), **self.on_load_dataset(str(folder.resolve()))}
        return {}

    # ---- a run --------------------------------------------------------------------------------------------

    def settings(self, values: dict):
        from engine.training.settings import TrainSettings

        alpha = values.get("train_alpha")
        return TrainSettings(
            name=values["train_name"], images=values["train_images"], model_type=values["train_model"],
            trigger=values.get("train_trigger") or "", steps=values["train_steps"], rank=values["train_rank"],
            alpha=alpha if alpha not in (None, "", 0) else None, learning_rate=values["train_lr"],
            batch_size=values["train_batch"], resolutions=tuple(values.get("train_resolutions") or ()),
            save_every=values["train_save_every"], sample_every=values["train_sample_every"],
            sample_prompts=values.get("train_prompts") or "", seed=values["train_seed"],
            resume=bool(values.get("train_resume")), adapter=values.get("train_adapter") or "auto",
            timesteps=values.get("train_timesteps") or "weighted", refiners=bool(values.get("train_refiners")),
            gradient_checkpointing=bool(values.get("train_checkpointing", True)),
            optimizer=values.get("train_optimizer") or "auto", output_dir=str(self.training_dir)).validate()

    def start(self, values: dict, request=None):
        """Generator of {name: update} frames while the run goes: progress, loss plot, samples, the result."""
        with reported(self.app):
            s = self.settings(values)
            options = self.engine.options.replace(
                transformer_quantization=values.get("train_base") or self.engine.options.transformer_quantization)
            view = _View(s.steps, self.app.history.served)
            yield {"train_info": f"Starting **{s.name}** ...", "train_result": "", "train_use": gr.update(visible=False)}
            try:
                for event in self.jobs.run(lambda ctx: self.engine.train_lora(s, ctx, options), owner_of(request),
                                           "train", poll=QUEUE_POLL):
                    frame = view.frame(event)
                    if frame:
                        yield frame
            except Interrupted as exc:
                yield {**view.frame(None, force=True), "train_info": f"**Stopped.** {exc}. Tick *Resume* and press "
                                                                     "Start to continue."}

    def on_stop_training(self, request=None):
        if not self.jobs.stop(owner_of(request)):
            gr.Info("Nothing of yours is running.")

    def use_it(self, name, rows) -> dict:
        """The trained LoRA into the LoRA table (strength 1), the LoRA list refreshed and the LoRA panel opened."""
        if not name:
            return {}
        names = self.engine.lora_library(self.app.first).names()
        return {**self.app.on_add_lora(name, rows), "lora_pick": gr.update(choices=names, value=name),
                "lora_panel": gr.update(open=True), "tabs": gr.Tabs(selected="generate")}


class _View:
    """Turns a run's events into page frames, at most every FRAME_INTERVAL (samples and the end at once). The
    samples gallery goes out only when it changed: the gallery caches every picture it is sent. Samples are
    shown as Gradio cache copies (`served`), as every other picture: the training folder is not served."""

    def __init__(self, total: int, served):
        self.total, self.steps, self.losses, self.gallery = total, [], [], []
        self.served = served
        self.line, self.notes, self.last = "", [], 0.0

    def frame(self, event, force=False) -> dict:
        from engine.training.events import TrainCheckpoint, TrainProgress, TrainResult, TrainSamples

        urgent, samples = force, False
        if isinstance(event, TrainProgress):
            self.steps.append(event.step)
            self.losses.append(event.loss)
            self.line = (f"Step **{event.step}/{event.total}** · loss {event.loss:.4f} · {event.seconds_per_step:.2f} "
                         f"s/step · ETA {clock(event.eta_seconds)} · {event.bucket[0]}x{event.bucket[1]}")
            urgent = event.step == event.total
        elif isinstance(event, StageEvent):
            self.line, urgent = f"{event.name[:1].upper()}{event.name[1:]} ...", True
        elif isinstance(event, QueuedEvent):
            self.line, urgent = status.queued_text(event.ahead), True
        elif isinstance(event, NoteEvent):
            gr.Info(event.message)
            self.notes.append(event.message)
        elif isinstance(event, TrainCheckpoint):
            self.notes.append(f"checkpoint at step {event.step}: `{event.lora}`")
        elif isinstance(event, TrainSamples):
            self.gallery += [(self.served(p), f"step {event.step}: {prompt}") for p, prompt in event.images]
            urgent = samples = True
        elif isinstance(event, TrainResult):
            return self.result(event)
        if not urgent and time.perf_counter() - self.last < FRAME_INTERVAL:
            return {}
        self.last = time.perf_counter()
        frame = {"train_info": self.line + "".join(f"\n\n{n}" for n in self.notes[-4:]), "train_loss": self.plot()}
        return {**frame, "train_samples": list(self.gallery)} if samples else frame

    def plot(self):
        import pandas as pd

        return pd.DataFrame({"step": self.steps, "loss": self.losses})

    def result(self, result) -> dict:
        text = (f"**Done:** `{result.lora_name}` in the LoRA folder ({result.steps} steps, final loss "
                f"{result.history[-1]:.4f}). Checkpoints and samples: `{result.run_dir}`.")
        return {"train_info": text, "train_loss": self.plot(), "train_samples": list(self.gallery),
                "train_result": result.lora_name, "train_use": gr.update(visible=True)}


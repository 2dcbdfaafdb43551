"""Test material for LoRA training: small image folders with captions, and a training adapter written the way
ostris' zimage_turbo_training_adapter files are (ai-toolkit's `diffusion_model.` + diffusers names, lora_A/B)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from engine.errors import Interrupted
from tests.lora_files import write_style

MODEL = "z_image_tiny_test"
TARGETS = ("attention.to_q", "attention.to_k", "attention.to_v", "attention.to_out.0",
           "feed_forward.w1", "feed_forward.w2", "feed_forward.w3")


def picture(color, size=(256, 256), seed=0) -> Image.Image:
    """A flat colour with a white bar and a little seeded texture (so the two images differ in shape too)."""
    w, h = size
    rng = np.random.default_rng(seed)
    a = np.zeros((h, w, 3), np.float32) + np.array(color, np.float32)
    a[h // 4: h // 2, w // 4: 3 * w // 4] = 255
    a += rng.normal(0, 8, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def two_images(folder: Path, caption: str | None = "a red card with a white bar, [trigger]") -> Path:
    """img0 (red, captioned unless caption is None) and img1 (blue, no caption)."""
    folder.mkdir(parents=True, exist_ok=True)
    picture((200, 30, 30), seed=1).save(folder / "img0.png")
    picture((30, 30, 200), (288, 256), seed=2).save(folder / "img1.png")
    if caption is not None:
        (folder / "img0.txt").write_text(caption, encoding="utf-8")
    return folder


def write_adapter(path: Path, transformer, seed: int = 5) -> Path:
    """A training adapter over the main layers' attention and feed-forward, in ai-toolkit's layout."""
    linears = {n: (m.out_features, m.in_features) for n, m in transformer.named_modules()
               if isinstance(m, torch.nn.Linear) and n.startswith("layers.") and n.split(".", 2)[-1] in TARGETS}
    write_style(path, linears, "aitoolkit", seed=seed)
    return path


class Ctx:
    """A job context for calling the training directly: records events; `stop_at` raises Interrupted at the
    first check once that many steps are done (as Stop does)."""

    def __init__(self, stop_at: int | None = None):
        self.events, self.notes, self.stages = [], [], []
        self.stop_at = stop_at
        self.step = 0

    def check(self):
        if self.stop_at is not None and self.step >= self.stop_at:
            raise Interrupted("stopped by the user")

    def report(self, event):
        """As the job context's: the event is kept, then a pending Stop raises."""
        self.step = getattr(event, "step", self.step) if type(event).__name__ == "TrainProgress" else self.step
        self.events.append(event)
        self.check()

    def stage(self, name):
        self.stages.append(name)
        self.check()

    def note(self, message):
        self.notes.append(message)

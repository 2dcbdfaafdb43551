"""Which settings the UI shows, as data: one row per GenerationSettings field.

The UI builds a component per row and asks each row, given the selected architecture's capabilities,
whether it is visible and what range or choices it offers. Adding a setting to the UI is adding a row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from engine.capabilities import Capabilities
from engine.settings import MAX_SEED, MAX_SIDE, MIN_SIDE, SIDE_MULTIPLE


def always(_caps: Capabilities) -> bool:
    return True


@dataclass(frozen=True)
class FieldSpec:
    name: str  # a GenerationSettings field
    kind: str  # "text" | "number" | "slider" | "dropdown" | "checkbox" | "image" (a file path) | "loras"
    #            | "hidden" (kept, not shown)
    label: str
    group: str = "main"  # "main" | "size" | "advanced"
    visible: Callable[[Capabilities], bool] = always
    bounds: Callable[[Capabilities], tuple] | None = None  # (min, max) for sliders and numbers
    choices: Callable[[Capabilities], tuple] | None = None  # for dropdowns
    step: float = 1
    info: str = ""
    when: Callable | None = None  # shown only when when(settings) holds (a control mode's own options)

    def is_int(self) -> bool:
        return self.kind in ("number", "slider") and float(self.step).is_integer()


def sampler_choices(caps: Capabilities) -> list:
    """(label, name) pairs; the label says what a sampler costs, e.g. two passes per step."""
    from engine.sampling.samplers import SAMPLERS

    def label(name):
        info = SAMPLERS.get(name)
        if info is None:
            return name
        return info.label + (f" (costs {info.passes_per_step} passes per step)" if info.passes_per_step > 1 else "")

    return [(label(n), n) for n in caps.samplers]


FIELDS = [
    FieldSpec("prompt", "text", "Prompt"),
    FieldSpec("original_prompt", "hidden", "Prompt before enhancing"),
    FieldSpec("enhance", "checkbox", "Enhance the prompt automatically",
              info="the text encoder rewrites your prompt into a detailed one before each generation"),
    FieldSpec("negative_prompt", "text", "Negative prompt", visible=lambda c: c.cfg or c.nag),
    FieldSpec("seed", "number", "Seed (-1: random)", bounds=lambda c: (-1, MAX_SEED)),
    FieldSpec("num_inference_steps", "slider", "Steps", bounds=lambda c: c.step_range),
    FieldSpec("guidance_scale", "slider", "Guidance (CFG)", visible=lambda c: c.cfg, bounds=lambda c: (0, 15),
              step=0.1, info="0 turns CFG off; each step then costs one pass instead of two"),
    FieldSpec("flow_shift", "slider", "Shift", visible=lambda c: c.shift, bounds=lambda c: (0.5, 12), step=0.1,
              info="higher spends more steps on composition, lower on detail"),
    FieldSpec("control_image", "image", "Control picture (a photo to follow, or a ready map)", "control",
              visible=lambda c: bool(c.control_modes)),
    FieldSpec("control_mode", "dropdown", "Control mode", "control", visible=lambda c: bool(c.control_modes),
              choices=lambda c: c.control_modes,
              info="pose, canny, depth, gray: made from the picture; raw: the picture is the map; none: inpaint only"),
    FieldSpec("control_weight", "slider", "Control weight", "control", visible=lambda c: bool(c.control_modes),
              bounds=lambda c: (0, 2), step=0.05, info="the model cards recommend 0.65-0.9"),
    FieldSpec("control_fit", "dropdown", "Fit the picture", "control", visible=lambda c: bool(c.control_modes),
              choices=lambda c: ("crop", "fit", "image"),
              info="crop to the output size, fit inside it, or take the output size from the picture"),
    FieldSpec("control_start", "slider", "Control from (share of steps)", "control", visible=lambda c: bool(c.control_modes),
              bounds=lambda c: (0, 1), step=0.05),
    FieldSpec("control_end", "slider", "Control until (share of steps)", "control", visible=lambda c: bool(c.control_modes),
              bounds=lambda c: (0, 1), step=0.05),
    FieldSpec("canny_low", "number", "Canny low threshold", "control", visible=lambda c: bool(c.control_modes),
              bounds=lambda c: (0, 255), when=lambda s: s.control_mode == "canny"),
    FieldSpec("canny_high", "number", "Canny high threshold", "control", visible=lambda c: bool(c.control_modes),
              bounds=lambda c: (0, 255), when=lambda s: s.control_mode == "canny"),
    FieldSpec("depth_model", "dropdown", "Depth model", "control", visible=lambda c: bool(c.control_modes),
              choices=lambda c: ("small", "large"), when=lambda s: s.control_mode == "depth"),
    FieldSpec("loras", "loras", "LoRAs (strength -2 to 2; schedule e.g. 1.0,0.5 spreads over the steps)", "lora",
              visible=lambda c: c.loras),
    FieldSpec("width", "number", "Width", "size", bounds=lambda c: (MIN_SIDE, MAX_SIDE), step=SIDE_MULTIPLE),
    FieldSpec("height", "number", "Height", "size", bounds=lambda c: (MIN_SIDE, MAX_SIDE), step=SIDE_MULTIPLE),
    # the engine's limits (--max-batch, --max-count) narrow these two
    FieldSpec("batch_size", "slider", "Images per batch", "size", bounds=lambda c: (1, 16)),
    FieldSpec("count", "slider", "Batches (successive seeds)", "size", bounds=lambda c: (1, 100)),
    FieldSpec("nag_scale", "slider", "NAG scale (negative prompt strength; 1: off)", visible=lambda c: c.nag,
              bounds=lambda c: (1, 10), step=0.1, info="negative prompts without CFG: Normalized Attention Guidance"),
    FieldSpec("sampler", "dropdown", "Sampler", "advanced", choices=sampler_choices),
    FieldSpec("scheduler", "dropdown", "Schedule", "advanced", visible=lambda c: bool(c.schedulers),
              choices=lambda c: c.schedulers),
    FieldSpec("sigma_rescale", "slider", "Sigma rescale", "advanced", visible=lambda c: bool(c.schedulers),
              bounds=lambda c: (0.5, 1), step=0.001, info="below 1 starts slightly under pure noise (e.g. 0.996)"),
    FieldSpec("nag_tau", "slider", "NAG tau (clipping)", "advanced", visible=lambda c: c.nag, bounds=lambda c: (0.5, 10),
              step=0.1),
    FieldSpec("nag_alpha", "slider", "NAG alpha (blend)", "advanced", visible=lambda c: c.nag, bounds=lambda c: (0, 1),
              step=0.05),
    FieldSpec("nag_start", "slider", "NAG from (share of steps)", "advanced", visible=lambda c: c.nag,
              bounds=lambda c: (0, 1), step=0.05),
    FieldSpec("nag_end", "slider", "NAG until (share of steps)", "advanced", visible=lambda c: c.nag,
              bounds=lambda c: (0, 1), step=0.05, info="ending NAG before the last steps keeps fine detail"),
    FieldSpec("cfg_truncation", "slider", "CFG truncation", "advanced", visible=lambda c: c.cfg,
              bounds=lambda c: (0, 1), step=0.01, info="guidance stops once this fraction of the noise is gone"),
    FieldSpec("cfg_normalization", "slider", "CFG normalization", "advanced", visible=lambda c: c.cfg,
              bounds=lambda c: (0, 5), step=0.05, info="caps the guided prediction's size (0: off)"),
    FieldSpec("seed_variance", "slider", "Seed variance", "advanced", bounds=lambda c: (0, 3), step=0.05,
              info="noise on the prompt early in sampling: more varied images across seeds (0: off)"),
    FieldSpec("seed_variance_fraction", "slider", "Seed variance: share of values", "advanced",
              bounds=lambda c: (0, 1), step=0.05),
    FieldSpec("seed_variance_steps", "slider", "Seed variance: share of steps", "advanced",
              bounds=lambda c: (0, 1), step=0.05),
    FieldSpec("enhance_thinking", "checkbox", "Enhancer thinks first", "advanced",
              info="slower; the thinking is dropped from the result"),
    FieldSpec("text_hidden_layer", "number", "Text encoder hidden layer", "advanced", bounds=lambda c: (-36, -2),
              info="-2 is what the model was trained with"),
    # images in (app/web/images_panel.py lays these out)
    FieldSpec("init_image", "image", "Input picture (img2img, inpaint, outpaint, upscale)", "images"),
    FieldSpec("strength", "slider", "Strength (0: the picture as it is, 1: painted from noise)", "images",
              bounds=lambda c: (0, 1), step=0.05, info="share of the steps re-run on the input picture"),
    FieldSpec("mask", "image", "Mask file (white = repaint): of the input picture, else of the control picture",
              "images"),
    FieldSpec("mask_blur", "slider", "Mask blur (px)", "images", bounds=lambda c: (0, 64)),
    FieldSpec("mask_grow", "slider", "Mask grow (px; negative shrinks)", "images", bounds=lambda c: (-64, 64)),
    FieldSpec("inpaint_area", "dropdown", "Inpaint area", "images", choices=lambda c: ("whole", "masked"),
              info="masked: the masked part plus padding, made at width x height and pasted back"),
    FieldSpec("inpaint_padding", "slider", "Padding around the masked area (px)", "images", bounds=lambda c: (0, 256)),
    FieldSpec("outpaint", "margins", "Outpaint: pixels added left, right, top, bottom", "images",
              info="e.g. 0,0,128,128; the new margins are painted"),
    FieldSpec("upscale", "slider", "Upscale (x): hires fix, or the input picture made bigger", "images",
              bounds=lambda c: (1, 4), step=0.25),
    FieldSpec("upscaler", "dropdown", "Upscaler", "images",
              info="lanczos, latent (hires fix), or an upscaler model (.safetensors) from the upscaler folder"),
    FieldSpec("hires_strength", "slider", "Hires fix strength", "images", bounds=lambda c: (0, 1), step=0.05),
    FieldSpec("hires_steps", "slider", "Hires fix steps (0: the same)", "images", bounds=lambda c: (0, 50)),
]


LORA_COLUMNS = ["LoRA", "strength", "schedule", "CFG positive only"]
LORA_TYPES = ["str", "number", "str", "bool"]


def loras_to_rows(loras: list[dict]) -> list[list]:
    return [[x["name"], x["strength"], ",".join(f"{v:g}" for v in x.get("schedule") or []),
             bool(x.get("positive_only"))] for x in loras]


def rows_to_loras(rows) -> list[dict]:
    """Table rows [name, strength, schedule(, positive only)] to `loras` items; blank names are skipped."""
    out = []
    for row in rows or []:
        name = str(row[0] or "").strip() if row else ""
        if name:
            strength = row[1] if len(row) > 1 and row[1] not in (None, "") else 1.0
            schedule = str(row[2]).strip() if len(row) > 2 and row[2] not in (None, "") else None
            item = {"name": name, "strength": float(strength), "schedule": schedule or None}
            if len(row) > 3 and _checked(row[3]):
                item["positive_only"] = True
            out.append(item)
    return out


def _checked(value) -> bool:
    return value is True or str(value).strip().lower() in ("true", "1", "yes")


def coerce(spec: FieldSpec, value):
    """UI values (floats from number boxes, None from cleared boxes) to the settings field's type."""
    if spec.kind == "loras":
        return rows_to_loras(value)
    if value is None or value == "":
        return None
    if spec.is_int():
        return int(round(float(value)))
    if spec.kind in ("number", "slider"):
        return float(value)
    return value

"""GenerationSettings: the one object that travels from CLI/UI to the pipeline and into the PNG."""

from __future__ import annotations

import dataclasses
import math
import random
from dataclasses import dataclass, field

from engine.errors import SettingsError

MIN_SIDE, MAX_SIDE, SIDE_MULTIPLE = 256, 4096, 16
MAX_STEPS = 200
MAX_SEED = 2**63 - 1
LORA_STRENGTH_RANGE = (-2.0, 2.0)  # slider LoRAs go negative
MAX_LORAS = 16
ASPECT_RATIOS = ("1:1", "4:3", "3:4", "3:2", "2:3", "16:9", "9:16", "21:9", "9:21")
CONTROL_MODES = ("pose", "canny", "depth", "gray", "raw", "none")
CONTROL_FITS = ("crop", "fit", "image")
DEPTH_MODELS = ("small", "large")
INPAINT_AREAS = ("whole", "masked")
BUILTIN_UPSCALERS = ("lanczos", "latent")  # besides upscaler model files (engine.images.upscalers)
INPUT_FIELDS = ("init_image", "mask", "control_image")  # the user's pictures, kept by content (engine.images.inputs)
MAX_UPSCALE = 8.0


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides an image. Field names follow Wan2GP's model JSONs where they overlap.

    Immutable: changes make a copy (dataclasses.replace), so a job's settings cannot change under it."""

    model_type: str
    prompt: str
    negative_prompt: str = ""
    seed: int = -1  # -1: pick a random seed; the one used is written back before generating
    num_inference_steps: int = 8
    guidance_scale: float = 0.0
    cfg_truncation: float = 1.0  # guidance stops once 1 - sigma passes this (1.0: never)
    cfg_normalization: float = 0.0  # cap |guided| at k * |positive| (0: off)
    flow_shift: float = 3.0
    sampler: str = "euler"
    scheduler: str = "simple"  # sigma schedule for flow samplers: simple (shifted), beta, sgm_uniform
    sigma_rescale: float = 1.0  # all sigmas times this (1: off; RES4LYF users take 0.996)
    nag_scale: float = 1.0  # NAG (negative prompts without CFG): 1 = off
    nag_tau: float = 2.5  # cap on |guided|_1 / |positive|_1 per token
    nag_alpha: float = 0.25  # blend: alpha * guided + (1 - alpha) * positive
    nag_start: float = 0.0  # NAG runs on the steps in [start, end), as fractions of the steps
    nag_end: float = 1.0
    width: int = 1024
    height: int = 1024
    batch_size: int = 1  # images in one pass
    count: int = 1  # runs, with successive seeds
    # [{"name": path inside the LoRA folder, "strength": float, "schedule": [float, ...] or None,
    #   "positive_only": True (only when set: CFG's positive branch only)}]; see lora_item()
    loras: list = field(default_factory=list)
    enhance: bool = False  # rewrite the prompt with the text encoder before generating
    enhance_thinking: bool = False  # let the enhancer think first (slower; the thinking is dropped)
    original_prompt: str = ""  # the user's prompt when `prompt` holds the enhancer's rewrite
    text_hidden_layer: int = -2  # which hidden state of the text encoder conditions the image
    seed_variance: float = 0.0  # noise on the prompt embedding early in sampling, x its std (0: off)
    seed_variance_fraction: float = 0.5  # share of the embedding's values that get noise
    seed_variance_steps: float = 0.3  # share of the steps (from the start) with noise
    # Control (control model types): the user's picture, turned into a map by control_mode; "" = no control.
    control_image: str = ""
    control_mode: str = "raw"  # pose, canny, depth, gray, raw (the picture is the map), none (inpaint only)
    control_weight: float = 0.75
    control_start: float = 0.0  # fraction of the steps where control starts ...
    control_end: float = 1.0  # ... and ends
    control_fit: str = "crop"  # crop, fit (letterbox), image (output size from the picture's aspect ratio)
    mask: str = ""  # inpaint, white = repaint: of init_image when one is given, else of control_image (2.x)
    canny_low: int = 100
    canny_high: int = 200
    depth_model: str = "small"  # Depth Anything V2 small or large
    # Images in (issue 13): img2img, inpaint and outpaint, hires fix, upscaling. With an init image the output
    # takes its size (plus outpaint margins) times `upscale`; width x height then size a "masked" inpaint area.
    init_image: str = ""  # the picture to change (img2img), repaint (with `mask`), extend or upscale
    strength: float = 0.6  # share of the steps re-run on the init image: 0 returns it as is, 1 starts from noise
    mask_blur: int = 4  # px of feathered mask edge (the paste-back blends over it)
    mask_grow: int = 0  # px to grow (> 0) or shrink (< 0) the mask before blurring
    inpaint_area: str = "whole"  # whole picture, or "masked": the masked area plus padding, made at width x height
    inpaint_padding: int = 32  # px of context around the masked area ("masked")
    outpaint: list = field(default_factory=lambda: [0, 0, 0, 0])  # px added left, right, top, bottom (repainted)
    upscale: float = 1.0  # output size x this: hires fix after text-to-image, or the init image upscaled
    upscaler: str = "lanczos"  # lanczos, latent (hires fix only) or an upscaler model file name
    hires_strength: float = 0.35  # text-to-image with upscale: strength of the second (img2img) pass
    hires_steps: int = 0  # its steps (0: num_inference_steps)
    inputs: dict = field(default_factory=dict)  # {field: {"sha256", "name"}} of the input pictures (set on prepare)

    def validate(self) -> "GenerationSettings":
        """The same settings in canonical form (LoRA schedules as numbers), or SettingsError naming the field.
        Does not change this object."""
        _check_text(self.prompt, "prompt", required=True)
        _check_text(self.negative_prompt, "negative prompt", required=False)
        _check_int(self.num_inference_steps, "steps", 1, MAX_STEPS)
        _check_int(self.batch_size, "batch size", 1, 16)
        _check_int(self.count, "image count", 1, 100)
        _check_int(self.seed, "seed", -1, MAX_SEED)
        for side, name in ((self.width, "width"), (self.height, "height")):
            _check_int(side, name, MIN_SIDE, MAX_SIDE)
            if side % SIDE_MULTIPLE:
                lo = side // SIDE_MULTIPLE * SIDE_MULTIPLE
                raise SettingsError(f"{name} {side} is not a multiple of {SIDE_MULTIPLE} (the VAE and patch size "
                                    f"need it): use {lo} or {lo + SIDE_MULTIPLE}")
        _check_float(self.guidance_scale, "guidance", 0.0, 100.0)
        _check_float(self.flow_shift, "shift", 0.01, 100.0)
        _check_float(self.cfg_truncation, "CFG truncation", 0.0, 1.0)
        _check_float(self.cfg_normalization, "CFG normalization", 0.0, 100.0)
        if not isinstance(self.sampler, str) or not self.sampler:
            raise SettingsError("sampler must be a name such as 'euler'")
        if not isinstance(self.scheduler, str) or not self.scheduler:
            raise SettingsError("scheduler must be a name such as 'simple'")
        _check_float(self.sigma_rescale, "sigma rescale", 0.5, 1.0)
        _check_float(self.nag_scale, "NAG scale", 1.0, 50.0)
        _check_float(self.nag_tau, "NAG tau", 0.5, 50.0)
        _check_float(self.nag_alpha, "NAG alpha", 0.0, 1.0)
        _check_float(self.nag_start, "NAG start", 0.0, 1.0)
        _check_float(self.nag_end, "NAG end", 0.0, 1.0)
        if self.nag_start >= self.nag_end:
            raise SettingsError(f"NAG start {self.nag_start} must be below NAG end {self.nag_end} (fractions of "
                                "the steps, e.g. 0 and 0.75 to stop NAG for the last quarter)")
        loras = normalize_loras(self.loras)
        for flag in ("enhance", "enhance_thinking"):
            if not isinstance(getattr(self, flag), bool):
                raise SettingsError(f"{flag} must be true or false")
        _check_text(self.original_prompt, "original prompt", required=False)
        _check_int(self.text_hidden_layer, "text hidden layer", -64, -2)
        _check_float(self.seed_variance, "seed variance", 0.0, 10.0)
        _check_float(self.seed_variance_fraction, "seed variance fraction", 0.0, 1.0)
        _check_float(self.seed_variance_steps, "seed variance steps", 0.0, 1.0)
        self._validate_control()
        outpaint = self._validate_images()
        changed = {k: v for k, v in (("loras", loras), ("outpaint", outpaint)) if v != getattr(self, k)}
        return dataclasses.replace(self, **changed) if changed else self

    def _validate_control(self) -> None:
        for value, name in ((self.control_image, "control image"), (self.mask, "mask")):
            if not isinstance(value, str):
                raise SettingsError(f"{name} must be a file path (text)")
        _check_choice(self.control_mode, "control mode", CONTROL_MODES)
        _check_choice(self.control_fit, "control fit", CONTROL_FITS)
        _check_choice(self.depth_model, "depth model", DEPTH_MODELS)
        _check_float(self.control_weight, "control weight", 0.0, 2.0)
        _check_float(self.control_start, "control start", 0.0, 1.0)
        _check_float(self.control_end, "control end", 0.0, 1.0)
        if self.control_start >= self.control_end:
            raise SettingsError(f"control start {self.control_start} must be below control end {self.control_end}")
        _check_int(self.canny_low, "canny low threshold", 0, 1000)
        _check_int(self.canny_high, "canny high threshold", 1, 1000)
        if self.canny_low > self.canny_high:
            raise SettingsError(f"canny low threshold {self.canny_low} is above the high one {self.canny_high}")
        if self.mask and not (self.control_image or self.init_image):
            raise SettingsError("a mask needs a picture to repaint: an init image (or, on inpaint control types, "
                                "a control image)")
        if self.control_mode == "none" and self.control_image and not self.mask:
            raise SettingsError("control mode 'none' (no control map) is for inpainting: give a mask too")

    def _validate_images(self) -> list[int]:
        """img2img, inpaint, outpaint and upscale fields; returns the outpaint margins in canonical form."""
        if not isinstance(self.init_image, str):
            raise SettingsError("init image must be a file path (text)")
        _check_float(self.strength, "strength", 0.0, 1.0)
        _check_int(self.mask_blur, "mask blur", 0, 256)
        _check_int(self.mask_grow, "mask grow", -256, 256)
        _check_choice(self.inpaint_area, "inpaint area", INPAINT_AREAS)
        _check_int(self.inpaint_padding, "inpaint padding", 0, 1024)
        outpaint = parse_outpaint(self.outpaint)
        _check_float(self.upscale, "upscale", 1.0, MAX_UPSCALE)
        if not isinstance(self.upscaler, str) or not self.upscaler.strip() or "/" in self.upscaler \
                or "\\" in self.upscaler:
            raise SettingsError(f"upscaler {self.upscaler!r} must be lanczos, latent or the name of a file in the "
                                "upscaler folder")
        _check_float(self.hires_strength, "hires strength", 0.0, 1.0)
        _check_int(self.hires_steps, "hires steps", 0, MAX_STEPS)
        if not isinstance(self.inputs, dict):
            raise SettingsError("inputs must be a {field: {sha256, name}} object")
        if any(outpaint) and not self.init_image:
            raise SettingsError("outpaint extends an init image: give one (--init-image)")
        if self.inpaint_area == "masked" and self.init_image and not (self.mask or any(outpaint)):
            raise SettingsError("inpaint area 'masked' needs a mask (or outpaint margins) to crop around")
        if self.upscale > 1 and self.init_image and (self.mask or any(outpaint)):
            raise SettingsError("upscale and inpaint/outpaint in one go are not supported: repaint first, then "
                                "upscale the result")
        if self.upscaler == "latent" and self.upscale > 1 and self.init_image:
            raise SettingsError("the latent upscaler is for the hires fix after text-to-image; upscale an init "
                                "image with lanczos or an upscaler model")
        return outpaint

    @property
    def cfg_on(self) -> bool:
        """Classifier-free guidance runs (a second, negative pass per step)."""
        return self.guidance_scale > 0

    @property
    def nag_on(self) -> bool:
        """NAG runs: guidance is off, its scale is above 1 and there is a negative prompt."""
        return not self.cfg_on and self.nag_scale > 1 and bool(self.negative_prompt.strip())

    def with_seed(self) -> "GenerationSettings":
        """A copy with a concrete seed (a random one for -1)."""
        seed = self.seed if self.seed >= 0 else random.randint(0, 2**32 - 1)
        return dataclasses.replace(self, seed=seed)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "GenerationSettings":
        """Build from plain data (model JSON defaults, a PNG, the UI); unknown keys are an error."""
        data = dict(data)
        if "resolution" in data:
            data["width"], data["height"] = parse_resolution(data.pop("resolution"))
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(unknown)} (known: {', '.join(sorted(names))})")
        if "model_type" not in data or "prompt" not in data:
            raise SettingsError("settings need at least 'model_type' and 'prompt'")
        return cls(**data)

    @classmethod
    def field_names(cls) -> set[str]:
        return {f.name for f in dataclasses.fields(cls)} | {"resolution"}


def parse_outpaint(value) -> list[int]:
    """"l,r,t,b" or [l, r, t, b] (pixels added on each side) -> [l, r, t, b], each 0-4096."""
    if isinstance(value, str):
        try:
            value = [int(v) for v in value.replace(" ", "").split(",")] if value.strip() else [0, 0, 0, 0]
        except ValueError:
            raise SettingsError(f"outpaint {value!r} is not LEFT,RIGHT,TOP,BOTTOM pixels, e.g. 0,0,128,128") \
                from None
    if not isinstance(value, (list, tuple)) or len(value) != 4:
        raise SettingsError(f"outpaint must be 4 numbers (left, right, top, bottom pixels), got {value!r}")
    for v, side in zip(value, ("left", "right", "top", "bottom")):
        _check_int(v, f"outpaint {side}", 0, MAX_SIDE)
    return [int(v) for v in value]


def parse_resolution(text) -> tuple[int, int]:
    """'1024x768' -> (1024, 768)."""
    try:
        w, h = str(text).lower().replace(" ", "").split("x")
        return int(w), int(h)
    except ValueError:
        raise SettingsError(f"resolution '{text}' is not WIDTHxHEIGHT, e.g. 1024x1024") from None


def size_presets(megapixels: float = 1.0) -> dict[str, tuple[int, int]]:
    """Sizes near `megapixels` for common aspect ratios, each side a multiple of 16."""
    presets = {}
    for ratio in ASPECT_RATIOS:
        a, b = (int(x) for x in ratio.split(":"))
        w = math.sqrt(megapixels * 2**20 * a / b)
        presets[ratio] = (_round16(w), _round16(w * b / a))
    return presets


def _round16(x: float) -> int:
    return max(MIN_SIDE, min(MAX_SIDE, int(round(x / SIDE_MULTIPLE)) * SIDE_MULTIPLE))


def _check_text(value, name, required):
    if not isinstance(value, str):
        raise SettingsError(f"{name} must be text")
    if required and not value.strip():
        raise SettingsError(f"the {name} is empty: describe the image to generate")


def _check_int(value, name, lo, hi):
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"{name} must be a whole number, got {value!r}")
    if not lo <= value <= hi:
        raise SettingsError(f"{name} {value} is out of range ({lo} to {hi})")


def _check_choice(value, name, choices):
    if value not in choices:
        raise SettingsError(f"{name} {value!r} is not one of: {', '.join(choices)}")


def _check_float(value, name, lo, hi):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise SettingsError(f"{name} must be a number, got {value!r}")
    if not lo <= value <= hi:
        raise SettingsError(f"{name} {value} is out of range ({lo} to {hi})")


# ---- LoRA items ---------------------------------------------------------------------------------

def lora_item(name: str, strength: float = 1.0, schedule=None, positive_only: bool = False) -> dict:
    """One entry of `loras`. `schedule` (optional): per-step multipliers of `strength`, spread evenly over the
    steps ("1.0,0.5" on 8 steps: full strength for steps 1-4, half for 5-8). `positive_only`: the LoRA acts on
    CFG's positive branch only (the negative prediction stays as without it), as image-to-LoRA LoRAs are meant."""
    return normalize_loras([{"name": name, "strength": strength, "schedule": schedule,
                             "positive_only": positive_only}])[0]


def normalize_loras(items) -> list[dict]:
    """Validated items in their canonical form (a schedule given as text becomes a list of numbers)."""
    if not isinstance(items, (list, tuple)):
        raise SettingsError("loras must be a list of {name, strength, schedule} entries")
    if len(items) > MAX_LORAS:
        raise SettingsError(f"{len(items)} LoRAs given; at most {MAX_LORAS} at once")
    out, seen = [], set()
    lo, hi = LORA_STRENGTH_RANGE
    for item in items:
        if not isinstance(item, dict) or "name" not in item:
            raise SettingsError(f"a LoRA entry must be {{'name': ..., 'strength': ...}}, got {item!r}")
        unknown = sorted(set(item) - {"name", "strength", "schedule", "positive_only"})
        if unknown:
            raise SettingsError(f"LoRA entry {item.get('name')!r}: unknown field(s) {', '.join(unknown)}")
        name = item["name"]
        if not isinstance(name, str) or not name.strip():
            raise SettingsError(f"a LoRA name must be a file name inside the LoRA folder, got {name!r}")
        if name in seen:
            raise SettingsError(f"LoRA {name!r} is listed twice: give it once, with the summed strength")
        seen.add(name)
        strength = item.get("strength", 1.0)
        _check_float(strength, f"strength of LoRA {name!r}", lo, hi)
        schedule = parse_schedule(item.get("schedule"), name)
        out.append({"name": name, "strength": float(strength), "schedule": schedule,
                    **_positive_only(item.get("positive_only", False), name)})
    return out


def _positive_only(value, name: str) -> dict:
    """{"positive_only": True} or {} (off is left out, so entries without the option stay as they were)."""
    if not isinstance(value, bool):
        raise SettingsError(f"positive_only of LoRA {name!r} must be true or false, got {value!r}")
    return {"positive_only": True} if value else {}


def parse_schedule(value, name: str = "") -> list[float] | None:
    """None, "1.0,0.5" or [1.0, 0.5] -> None or a list of multipliers (each in the strength range)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    what = f"schedule of LoRA {name!r}"
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.replace(" ", "").split(",")]
        except ValueError:
            raise SettingsError(f"{what} {value!r} is not comma-separated numbers, e.g. 1.0,0.5") from None
    if not isinstance(value, (list, tuple)) or not value or len(value) > MAX_STEPS:
        raise SettingsError(f"{what} must be 1 to {MAX_STEPS} numbers, e.g. 1.0,0.5")
    for v in value:
        _check_float(v, what, *LORA_STRENGTH_RANGE)
    return [float(v) for v in value]


LORA_BRANCHES = {"positive": True, "both": False}  # the command line's :positive / :both suffix


def lora_branch(text: str) -> bool | None:
    """True for NAME...:positive, False for NAME...:both, None when the command line does not say."""
    name, sep, value = str(text).rpartition(":")
    return LORA_BRANCHES.get(value) if sep and name else None


def parse_lora_arg(text: str) -> dict:
    """The command line's NAME, NAME:STRENGTH or NAME:M1,M2,... (a per-step schedule at strength 1), each
    optionally ending in :positive (CFG's positive branch only) or :both."""
    branch = lora_branch(text)
    if branch is not None:
        return {**parse_lora_arg(str(text).rpartition(":")[0]), **_positive_only(branch, str(text))}
    name, sep, value = str(text).rpartition(":")
    if not sep or not name or "," not in value and not _is_number(value):
        if sep and name.lower().endswith(".safetensors"):  # NAME.safetensors:strong is a strength typo
            raise SettingsError(f"--lora {text}: {value!r} is not a strength; give a number from "
                                f"{LORA_STRENGTH_RANGE[0]:g} to {LORA_STRENGTH_RANGE[1]:g} (NAME:0.8) or per-step "
                                "strengths (NAME:1.0,0.5)")
        return lora_item(str(text))  # no strength given (or a name holding a colon)
    if "," in value:
        return lora_item(name, 1.0, value)
    return lora_item(name, float(value))


def lora_strength_at(item: dict, step: int, steps: int) -> float:
    """The strength of a LoRA entry at step `step` (0-based) of `steps`."""
    from engine.sampling.windows import segment

    schedule = item.get("schedule")
    if not schedule:
        return item["strength"]
    return item["strength"] * schedule[segment(step, steps, len(schedule))]


def _is_number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False

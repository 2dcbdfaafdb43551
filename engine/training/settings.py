"""TrainSettings: everything a LoRA training run asks for, checked once with one clear message per mistake."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from engine.errors import SettingsError

MAX_STEPS = 1_000_000
MAX_RANK = 256
MAX_BATCH = 64
RESOLUTION_RANGE = (256, 2048)
RESOLUTION_MULTIPLE = 32
TIMESTEP_CHOICES = ("weighted", "uniform")
OPTIMIZER_CHOICES = ("auto", "adamw", "adamw8bit")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")

# What a resumed run takes from its checkpoint, whatever the flags say: these shape the training itself.
FIXED_ON_RESUME = ("model_type", "rank", "alpha", "learning_rate", "batch_size", "resolutions", "seed", "adapter",
                   "timesteps", "refiners", "trigger")


@dataclass(frozen=True)
class TrainSettings:
    name: str  # the LoRA's name: loras/<family>/NAME.safetensors, run folder <output_dir>/NAME/
    images: str  # the dataset folder: images and same-name .txt captions
    model_type: str = "z_image"
    trigger: str = ""  # the caption of images without one; replaces "[trigger]" in captions
    steps: int = 2000
    rank: int = 16
    alpha: float | None = None  # None: alpha = rank (scale 1)
    learning_rate: float = 1e-4
    batch_size: int = 1
    resolutions: tuple = (512, 768, 1024)  # bucket sizes: about N x N pixels each
    save_every: int = 250  # checkpoint (+ a LoRA snapshot) every N steps; 0: only at the end or on Stop
    sample_every: int = 250  # sample images every N steps; 0: only at the end
    sample_prompts: tuple = ()  # empty: the trigger word, else the first caption
    seed: int = 42
    resume: bool = False
    adapter: str = "auto"  # auto (the family's default for the model), none, a family name (v1, v2) or a file
    timesteps: str = "weighted"  # noise levels: weighted (bell-shaped loss weights) or uniform
    refiners: bool = False  # also train the refiner layers
    gradient_checkpointing: bool = True
    optimizer: str = "auto"  # auto: 8-bit AdamW with bitsandbytes on CUDA, else AdamW
    cache_text: bool = True  # False re-encodes captions every step (the benchmark's comparison)
    output_dir: str = "training"  # run folders (checkpoints, samples) live here

    @property
    def scale(self) -> float:
        return (self.rank if self.alpha is None else self.alpha) / self.rank

    def validate(self) -> "TrainSettings":
        """A canonical copy (numbers parsed, resolutions sorted), or SettingsError naming the field."""
        name = str(self.name or "").strip()
        if not _NAME.match(name) or name.endswith(".") or ".." in name:
            raise SettingsError(f"LoRA name {self.name!r}: use letters, digits, spaces, '.', '-' and '_' "
                                "(up to 100 characters, no folders); it becomes the file name")
        if name.lower().endswith(".safetensors"):
            name = name[: -len(".safetensors")]
        images = str(self.images or "").strip()
        if not images:
            raise SettingsError("no dataset folder given: name the folder holding the training images")
        steps = _int(self.steps, "steps", 1, MAX_STEPS)
        rank = _int(self.rank, "rank", 1, MAX_RANK, hint="16 to 32 is usual")
        alpha = None if self.alpha in (None, "") else _float(self.alpha, "alpha", 1e-6, 4096.0)
        lr = _float(self.learning_rate, "learning rate", 1e-8, 1.0, hint="1e-4 is usual")
        batch = _int(self.batch_size, "batch size", 1, MAX_BATCH)
        resolutions = parse_resolutions(self.resolutions)
        save_every = _int(self.save_every, "save every", 0, MAX_STEPS)
        sample_every = _int(self.sample_every, "sample every", 0, MAX_STEPS)
        seed = _int(self.seed, "seed", 0, 2**63 - 1)
        prompts = tuple(p.strip() for p in _texts(self.sample_prompts) if p.strip())
        if self.timesteps not in TIMESTEP_CHOICES:
            raise SettingsError(f"timesteps {self.timesteps!r} is not one of: {', '.join(TIMESTEP_CHOICES)}")
        if self.optimizer not in OPTIMIZER_CHOICES:
            raise SettingsError(f"optimizer {self.optimizer!r} is not one of: {', '.join(OPTIMIZER_CHOICES)}")
        adapter = str(self.adapter or "auto").strip() or "auto"
        return dataclasses.replace(self, name=name, images=images, steps=steps, rank=rank, alpha=alpha,
                                   learning_rate=lr, batch_size=batch, resolutions=resolutions,
                                   save_every=save_every, sample_every=sample_every, seed=seed,
                                   sample_prompts=prompts, adapter=adapter, trigger=str(self.trigger or "").strip())

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        data["resolutions"] = list(self.resolutions)
        data["sample_prompts"] = list(self.sample_prompts)
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "TrainSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        known = {k: v for k, v in data.items() if k in names}
        known["resolutions"] = tuple(known.get("resolutions", ()))
        known["sample_prompts"] = tuple(known.get("sample_prompts", ()))
        return cls(**known)


def parse_resolutions(value) -> tuple:
    """'512,768,1024' (or a list) -> (512, 768, 1024): each a multiple of 32 in 256..2048."""
    parts = [p for p in re.split(r"[,\s]+", value.strip())] if isinstance(value, str) else list(value or ())
    parts = [p for p in parts if p not in ("", None)]
    if not parts:
        raise SettingsError("no training resolution given: e.g. 512,768,1024")
    out = set()
    for p in parts:
        try:
            r = int(str(p).lower().split("x")[0]) if not isinstance(p, int) else p
        except ValueError:
            raise SettingsError(f"resolution {p!r} is not a number of pixels such as 512 or 1024") from None
        lo, hi = RESOLUTION_RANGE
        if not lo <= r <= hi or r % RESOLUTION_MULTIPLE:
            raise SettingsError(f"resolution {r}: use multiples of {RESOLUTION_MULTIPLE} from {lo} to {hi} "
                                "(e.g. 512, 768, 1024)")
        out.add(r)
    return tuple(sorted(out))


def _texts(value) -> list[str]:
    if isinstance(value, str):
        return value.splitlines()
    return [str(v) for v in (value or ())]


def _int(value, name, lo, hi, hint=""):
    try:
        number = float(value) if isinstance(value, str) else value
    except ValueError:
        raise SettingsError(f"{name} {value!r} is not a number") from None
    if isinstance(number, bool) or not isinstance(number, (int, float)) or math.isnan(number) \
            or number != int(number):
        raise SettingsError(f"{name} must be a whole number, got {value!r}")
    number = int(number)
    if not lo <= number <= hi:
        raise SettingsError(f"{name} {number} is out of range ({lo} to {hi}){'; ' + hint if hint else ''}")
    return number


def _float(value, name, lo, hi, hint=""):
    try:
        number = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or math.isnan(number) or math.isinf(number):
        raise SettingsError(f"{name} {value!r} is not a number{' (' + hint + ')' if hint else ''}")
    if not lo <= number <= hi:
        raise SettingsError(f"{name} {number:g} is out of range ({lo:g} to {hi:g}){'; ' + hint if hint else ''}")
    return number

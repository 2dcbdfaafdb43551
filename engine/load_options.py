"""How a model type is loaded and placed: which file of each component (INT8 or bf16) and how memory is managed.

These change what is loaded, not what an image is asked for, so they belong to the engine (CLI flags, UI
controls) rather than to GenerationSettings; the PNG record names the files and the profile used.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from engine.errors import SettingsError

# which of a component's files (engine.weights.formats.KINDS); auto: the first alternative on disk, else the first listed
QUANTIZATION_CHOICES = ("auto", "int8", "bf16", "fp8", "gguf", "nunchaku")
ATTENTION_CHOICES = ("sdpa", "flash", "sage")
PROFILE_CHOICES = (0, 1, 2, 3, 4, 5)  # 0: no offloading (everything on the GPU)


@dataclass(frozen=True)
class LoadOptions:
    transformer_quantization: str = "auto"
    text_encoder_quantization: str = "auto"
    profile: int | None = None  # None: the profile suggested for this machine (on CUDA)
    preload_mb: int = 0  # MB of the transformer kept in VRAM in profiles 2, 4, 5 (0: the profile's default)
    compile: bool = False  # torch.compile the transformer's blocks (CUDA profiles)
    attention: str = "sdpa"
    vram_safety_coefficient: float = 0.8  # share of VRAM the profile may fill with weights
    # Serving (several GPUs): the text encoder on a device of its own (e.g. "cuda:1"); None: with the transformer
    text_encoder_device: str | None = None

    def validate(self) -> "LoadOptions":
        for name in ("transformer_quantization", "text_encoder_quantization"):
            if getattr(self, name) not in QUANTIZATION_CHOICES:
                raise SettingsError(f"{name.replace('_', ' ')} {getattr(self, name)!r} is not one of "
                                    f"{', '.join(QUANTIZATION_CHOICES)}")
        if self.profile is not None and self.profile not in PROFILE_CHOICES:
            raise SettingsError(f"profile {self.profile!r} is not one of 1-5 (or 0: no offloading)")
        if isinstance(self.preload_mb, bool) or not isinstance(self.preload_mb, int) or self.preload_mb < 0:
            raise SettingsError(f"preload must be a whole number of MB >= 0, got {self.preload_mb!r}")
        if self.attention not in ATTENTION_CHOICES:
            raise SettingsError(f"attention {self.attention!r} is not one of {', '.join(ATTENTION_CHOICES)}")
        c = self.vram_safety_coefficient
        if isinstance(c, bool) or not isinstance(c, (int, float)) or not 0 < c < 1:
            raise SettingsError(f"VRAM safety coefficient must be between 0 and 1 (exclusive), got {c!r}")
        self._validate_text_encoder_device()
        return self

    def _validate_text_encoder_device(self) -> None:
        """A torch device this machine has (checked before anything is loaded)."""
        name = self.text_encoder_device
        if name is None:
            return
        import torch

        try:
            device = torch.device(name) if isinstance(name, str) else None
        except RuntimeError:
            device = None
        if device is None or device.type not in ("cpu", "cuda"):
            raise SettingsError(f"text encoder device {name!r} is not a device such as cuda:1 or cpu")
        if device.type == "cuda":
            count = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if count == 0:
                raise SettingsError(f"text encoder device {name}: PyTorch sees no CUDA GPU (a CPU-only build, or "
                                    "no driver)")
            if (device.index or 0) >= count:
                raise SettingsError(f"text encoder device {name}: this machine has {count} CUDA GPU(s), "
                                    f"cuda:0 to cuda:{count - 1}")

    def quantization(self, component: str) -> str:
        """The requested file kind of a component: control modules follow the transformer; "auto" for the rest."""
        component = "transformer" if component == "control" else component
        return getattr(self, f"{component}_quantization", "auto")

    def replace(self, **changes) -> "LoadOptions":
        return dataclasses.replace(self, **changes).validate()

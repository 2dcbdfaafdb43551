"""What a training job reports while it runs (besides engine.jobs' StageEvent and NoteEvent), and its result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TrainProgress:
    step: int  # steps done
    total: int  # steps the run will do
    loss: float  # this step's (weighted) flow-matching loss
    seconds_per_step: float  # recent average
    eta_seconds: float
    bucket: tuple[int, int]  # this step's image size (W, H)


@dataclass
class TrainCheckpoint:
    step: int
    checkpoint: Path  # the resumable state (run folder/checkpoint.safetensors)
    lora: Path  # a LoRA file of this step, next to it


@dataclass
class TrainSamples:
    step: int
    images: list[tuple[Path, str]]  # (PNG, prompt)


@dataclass
class TrainResult:
    lora_path: Path  # the finished LoRA in the LoRA folder
    lora_name: str  # its name in the LoRA list (path inside the folder)
    steps: int
    history: list[float]  # loss of every step
    run_dir: Path  # checkpoints and samples
    samples: list[tuple[int, Path, str]] = field(default_factory=list)  # (step, PNG, prompt)
    notes: list[str] = field(default_factory=list)


def clock(seconds: float) -> str:
    """A duration as H:MM:SS (the ETA the front-ends show)."""
    seconds = int(round(max(0.0, seconds)))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"

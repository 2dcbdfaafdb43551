"""What a weight file's header says, whatever the file format (safetensors, GGUF)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class TensorFileInfo:
    """What a header says: tensor names to (dtype, shape) (a GGUF type such as "Q4_K" as the dtype), and the
    metadata as text."""

    paths: list[Path]
    tensors: dict[str, tuple[str, tuple[int, ...]]]
    metadata: dict[str, str] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)  # tensor name -> file holding it
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (byte offset in its file, bytes)
    format: str = "safetensors"  # or "gguf" (engine.weights.gguf_io)
    handle: object = field(default=None, repr=False, compare=False)  # a GGUF file's open reader

    @property
    def name(self) -> str:
        return str(self.paths[0]) if len(self.paths) == 1 else f"{self.paths[0].parent} ({len(self.paths)} files)"

    def shape(self, key: str) -> tuple[int, ...]:
        return self.tensors[key][1]

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in self.paths)

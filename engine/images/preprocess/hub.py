"""Preprocessor weights: transformers folders (config, processor config, safetensors) fetched on first use.

They live in <checkpoints>/preprocessors/<repo name>/, found there by the project's FileLocator and
downloaded by it (with progress) when missing. Only safetensors weights are read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from engine.errors import DownloadError, ModelFileError
from engine.weights.files import FileLocator, human_size, parse_ref

FILES = ("config.json", "preprocessor_config.json", "model.safetensors")


@dataclass(frozen=True)
class HubModel:
    repo: str
    weights_size: int | None = None  # bytes of model.safetensors, shown if the download fails

    @property
    def folder_name(self) -> str:
        return self.repo.split("/")[-1]


def fetch(model: HubModel, locator: FileLocator) -> Path:
    """The model's local folder, downloading the files it lacks."""
    folder = Path(locator.checkpoints) / "preprocessors" / model.folder_name
    local = dataclasses.replace(locator, checkpoints=folder, comfyui_models=None)
    for name in FILES:
        ref = parse_ref(f"https://huggingface.co/{model.repo}/resolve/main/{name}")
        if local.local_path(ref) is None:
            try:
                local.download(ref, model.weights_size if name == "model.safetensors" else None)
            except DownloadError as exc:
                reason = str(exc).split(": ", 1)[-1].split(". Download it from")[0]  # FileLocator's wording
                raise DownloadError(f"this preprocessor needs the model {model.repo} "
                                    f"({human_size(model.weights_size)}), which could not be downloaded: {reason}. "
                                    f"Download {', '.join(FILES)} from https://huggingface.co/{model.repo} into "
                                    f"{folder}") from None
    return folder


@lru_cache(maxsize=4)
def load(model_class: str, processor_class: str, folder: Path, device: str):
    """(model, image processor) from a folder, kept for reuse; classes are transformers names."""
    import torch
    import transformers

    try:
        model = getattr(transformers, model_class).from_pretrained(
            str(folder), local_files_only=True, use_safetensors=True,
            dtype=torch.float16 if device.startswith("cuda") else torch.float32)
        processor = getattr(transformers, processor_class).from_pretrained(str(folder), local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFileError(folder, f"cannot load the {model_class} preprocessor model: {exc}") from None
    return model.to(device).eval(), processor


def release() -> None:
    """Drop the cached preprocessor models (frees their memory)."""
    load.cache_clear()

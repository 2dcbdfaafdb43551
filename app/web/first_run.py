"""The first run: what a model type still needs to download, per file kind (bf16 or INT8...), with the free disk
space and which kind fits this GPU; a Download button that runs the download as a job on the engine's queue
(per-file and total progress, Cancel), and every missing file named at once when offline.

Only the family handler's static queries are used (file_status, quantization_choices): the page never tests a
model type's name."""

from __future__ import annotations

import html
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from engine.errors import UserError
from engine.load_options import LoadOptions
from engine.weights.files import human_size, parse_ref

KIND_LABELS = {"bf16": "bf16 (full precision)", "int8": "INT8 (about half the size)", "fp8": "fp8", "gguf": "GGUF",
               "nunchaku": "Nunchaku"}
GPU_SHARE = 0.9  # a transformer file fits a GPU when it takes at most this share of its memory


@dataclass
class Plan:
    """The downloads one file kind needs: [(component, file name, size or None, absolute target)]."""

    kind: str
    files: list = field(default_factory=list)
    transformer_size: int | None = None  # of this kind's transformer file (on disk or to download)

    @property
    def total(self) -> int:
        return sum(size or 0 for _, _, size, _ in self.files)


def quantization_for(kind: str, choices: dict) -> dict:
    """Load option changes asking for `kind` of every component that offers it."""
    return {f"{c}_quantization": kind for c in ("transformer", "text_encoder") if kind in choices.get(c, ())}


def options_for(kind: str, choices: dict, base: LoadOptions | None = None) -> LoadOptions:
    return (base or LoadOptions()).replace(**quantization_for(kind, choices))


def choices_of(engine, model_type: str) -> dict:
    try:
        return engine.registry.handler(model_type).quantization_choices(engine.registry.get(model_type),
                                                                        engine.locator)
    except UserError:
        return {}


def plans(engine, model_type: str) -> list[Plan]:
    """One plan per file kind the model type's transformer offers (in listed order); kinds whose files can only
    be found locally (ComfyUI names) are left out. [] when nothing is missing for the engine's own choice."""
    model_def = engine.registry.get(model_type)
    handler = engine.registry.handler(model_type)
    locator = engine.locator
    choices = choices_of(engine, model_type)
    out = []
    for kind in choices.get("transformer") or ["auto"]:
        try:
            statuses = handler.file_status(model_def, locator, options_for(kind, choices))
        except UserError:
            continue
        plan = Plan(kind)
        for s in statuses:
            if s.component == "transformer":
                plan.transformer_size = s.size if s.path is None else _size(s.path)
            if s.path is None:
                ref = parse_ref(s.source)
                plan.files.append((s.component, ref.filename, s.size, locator.target(ref)))
        if plan.files and all(p.files != plan.files for p in out):
            out.append(plan)
    return out


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size if path.is_file() else None
    except OSError:
        return None


def missing(engine, model_type: str) -> bool:
    """True when the model type cannot run with the files on disk (for the engine's load options)."""
    model_def = engine.registry.get(model_type)
    try:
        return any(s.path is None for s in engine.registry.handler(model_type).file_status(
            model_def, engine.locator, engine.options))
    except UserError:
        return True


def gpu_memory(device) -> int | None:
    """Bytes of memory of the CUDA GPU the engine uses, or None without one."""
    if getattr(device, "type", None) != "cuda":
        return None
    import torch

    try:
        return int(torch.cuda.get_device_properties(device).total_memory)
    except (RuntimeError, AssertionError):
        return None


def recommend(kind_plans: list[Plan], vram: int | None) -> str | None:
    """The kind to download: the first (fullest) whose transformer fits the GPU, else the smallest download;
    without a GPU, the smallest download (the CPU path is slow either way, and memory is what runs out)."""
    if not kind_plans:
        return None
    if vram:
        for plan in kind_plans:
            if plan.transformer_size and plan.transformer_size <= GPU_SHARE * vram:
                return plan.kind
    return min(kind_plans, key=lambda p: p.total).kind


def free_space(folder: Path) -> int | None:
    folder = Path(folder).resolve()
    for candidate in (folder, *folder.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def banner(engine, model_type: str, kind_plans: list[Plan]) -> str:
    """The first-run banner's text (HTML): what is missing, per kind, where it goes, and what fits here."""
    model_def = engine.registry.get(model_type)
    folder = Path(engine.locator.checkpoints).resolve()
    vram = gpu_memory(engine.device)
    best = recommend(kind_plans, vram)
    rows = []
    for plan in kind_plans:
        parts = ", ".join(f"{c.replace('_', ' ')} {human_size(size) if size else '(size unknown)'}"
                          for c, _, size, _ in plan.files)
        fits = ""
        if vram and plan.transformer_size:
            fits = "fits this GPU" if plan.transformer_size <= GPU_SHARE * vram else "needs a memory profile here"
        mark = " <strong>(recommended here)</strong>" if plan.kind == best and len(kind_plans) > 1 else ""
        rows.append(f"<tr><td>{_e(KIND_LABELS.get(plan.kind, plan.kind))}{mark}</td><td>{_e(human_size(plan.total))}"
                    f"</td><td>{_e(parts)}</td>" + (f"<td>{_e(fits)}</td>" if vram else "") + "</tr>")
    free = free_space(folder)
    gpu = (f"This GPU has {human_size(vram)} of memory." if vram else
           "No CUDA GPU here: images are made on the CPU (slowly); the smaller files need less memory.")
    table = ("<table class='zi-plan'><thead><tr><th>file kind</th><th>download</th><th>files</th>"
             + ("<th>this GPU</th>" if vram else "") + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
             ) if rows else ""
    return (f"<div class='zi-first-run'><p><strong>{_e(model_def.name)}</strong> needs files that are not here yet. "
            f"Pick a kind and press Download (or just Generate: missing files are downloaded first).</p>{table}"
            f"<p>Files go to <code>{_e(folder)}</code>; free disk space there: "
            f"{_e(human_size(free) if free is not None else 'unknown')}. {_e(gpu)}</p></div>")


def kind_choices(kind_plans: list[Plan]) -> list[tuple[str, str]]:
    return [(f"{KIND_LABELS.get(p.kind, p.kind)}: {human_size(p.total)}", p.kind) for p in kind_plans]

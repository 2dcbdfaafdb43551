"""Making a LoRA from pictures: a request checked before anything heavy is read, then the three models run one
after the other, each loaded, used for every picture at once and freed before the next is loaded.

Peak memory is therefore the largest model's (DINOv3-7B, 13.4 GB in bf16) plus activations, not the sum of the
three (19 GB). Per model, `memory` says how it is placed on a CUDA GPU:
  whole   all weights on the GPU (DINOv3 needs about 14 GB of VRAM)
  stream  weights stay in RAM; each block is copied to the GPU while it runs (about 0.5 GB of VRAM for DINOv3)
  int8    weights quantized to INT8 while loading (optimum-quanto), then on the GPU (about 7 GB for DINOv3)
  auto    whole where it fits in free VRAM, else stream
On the CPU every mode runs there; int8 halves the RAM the weights take.
"""

from __future__ import annotations

import gc
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from engine.errors import ModelFileError, SettingsError, UserError
from engine.weights.assign import assign_weights, build_empty, check_shapes
from engine.weights.safetensors_io import load_tensors, open_weights
from models.z_image.i2l import encoders as E
from models.z_image.i2l import files as FILES
from models.z_image.i2l import hypernet as H
from models.z_image.i2l import pictures as P
from models.z_image.i2l.identify import DINOV3, HYPERNETWORK, NAMES, ROLES, SIGLIP2, describe, identify

MEMORY_MODES = ("auto", "whole", "stream", "int8")
DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32, "float16": torch.float16}
RECOMMENDED = {"model_type": "z_image_base", "guidance_scale": 4.0, "flow_shift": 8.0, "num_inference_steps": 50}
LABELS = {SIGLIP2: "SigLIP2", DINOV3: "DINOv3", HYPERNETWORK: "hypernetwork"}


@dataclass(frozen=True)
class I2LRequest:
    """What one image-to-LoRA job does; made by prepare(), which checked it."""

    pictures: tuple
    name: str  # the new file's name in the LoRA folder
    target: Path
    given: tuple = ()  # (role, path) of files the user named
    memory: str = "auto"
    dtype: str = "bfloat16"
    positive_only: bool = True  # the default written into the file


@dataclass
class I2LResult:
    path: Path
    name: str
    pictures: int
    rank: int
    layers: int
    seconds: float
    memory: dict = field(default_factory=dict)  # engine.placement.memory stages: one per model
    modes: dict = field(default_factory=dict)  # role -> how it was placed

    def summary(self) -> str:
        return (f"{self.name}: rank {self.rank} ({self.pictures} picture(s) x {H.RANK}), {self.layers} layers, "
                f"made in {self.seconds:.1f} s")


def prepare(images, name: str, folder, locator, given: dict | None = None, memory: str = "auto",
            dtype: str | None = None, positive_only: bool = True) -> I2LRequest:
    """Check everything that can be checked before loading: the name, the pictures, the files already on disk
    (what they are, and that they fit together). Raises UserError naming the first problem."""
    from engine.lora.writer import new_lora_path

    if memory not in MEMORY_MODES:
        raise SettingsError(f"memory mode {memory!r} is not one of {', '.join(MEMORY_MODES)}")
    dtype = dtype or "bfloat16"
    if dtype not in DTYPES:
        raise SettingsError(f"precision {dtype!r} is not one of {', '.join(DTYPES)}")
    filename, target = new_lora_path(folder, name)
    pictures = P.check(images)
    statuses = FILES.status(locator, given)
    present = {s.part.role: s.path for s in statuses if s.path is not None}
    check_files(present)
    given = tuple(sorted((s.part.role, str(s.path)) for s in statuses if (given or {}).get(s.part.role)))
    return I2LRequest(tuple(pictures), filename, target, given, memory, dtype, positive_only)


# ---- files ---------------------------------------------------------------------------------------

@dataclass
class Prepared:
    """A file's header read and checked: its model names and the config they imply."""

    role: str
    path: Path
    info: object
    names: dict  # file key -> model key
    shapes: dict  # model key -> shape
    config: object

    @property
    def nbytes(self) -> int:
        return self.info.nbytes()

    def weight_bytes(self, dtype: torch.dtype, int8: bool = False) -> int:
        """What the weights take once loaded in `dtype` (INT8: one byte each)."""
        count = sum(math.prod(shape) for shape in self.shapes.values())
        return count * (1 if int8 else torch.empty((), dtype=dtype).element_size())

    @property
    def width(self) -> int:
        return self.config.hidden_size if self.role != HYPERNETWORK else self.config.embedding


def read_part(role: str, path) -> Prepared:
    """The header of the file given for `role`, checked to be that part; ModelFileError naming what it is."""
    FILES.refuse_v2(Path(path))
    info = open_weights(path)
    kind = identify(info.tensors)
    if kind != role:
        raise ModelFileError(path, f"this is {describe(kind)}, not {NAMES[role]} ({FILES.PARTS[role].flag})")
    names = E.file_to_model_names(role, info.tensors) if role != HYPERNETWORK else {k: k for k in info.tensors}
    shapes = {names[k]: tuple(v[1]) for k, v in info.tensors.items()}
    if role == HYPERNETWORK:
        config = H.config_from_shapes(path, shapes)
    else:
        config = E.config_for(role, path, shapes)
    part = Prepared(role, Path(path), info, names, shapes, config)
    check_shapes(empty_model(part), shapes, path, _what(role))  # on the meta device: costs no memory
    return part


def _what(role: str) -> str:
    return NAMES[role].removeprefix("the ")


def empty_model(part: Prepared):
    if part.role == HYPERNETWORK:
        return build_empty(lambda: H.ZImageImageToLora(part.config))
    return build_empty(E.factory(part.role, part.config))


def check_files(paths: dict) -> dict:
    """Headers of the files at hand ({role: path}), each checked, and the three checked to fit together."""
    parts = {role: read_part(role, path) for role, path in paths.items()}
    if len(parts) == len(ROLES):
        s, d, h = parts[SIGLIP2].width, parts[DINOV3].width, parts[HYPERNETWORK].width
        if s + d != h:
            raise ModelFileError(parts[HYPERNETWORK].path, f"this hypernetwork reads pictures described by {h} "
                                 f"numbers, but the encoders give {s} (SigLIP2) + {d} (DINOv3) = {s + d}: the files "
                                 "come from different releases or sizes")
    return parts


# ---- models ------------------------------------------------------------------------------------

def build(part: Prepared, dtype: torch.dtype, int8: bool = False):
    """The model for a checked file, its weights memory-mapped from the file (INT8: quantized while loading)."""
    from engine.weights import quantization as Q

    model = empty_model(part)
    check_shapes(model, part.shapes, part.path, _what(part.role))
    tensors = {part.names[k]: v for k, v in load_tensors(part.info).items()}
    if int8:  # the rest is copied too, so nothing keeps the file mapped (its pages would stay in RSS)
        modules = Q.block_linears(model)
        Q.install_int8_linears(model, modules, dtype, part.path)
        fresh = {f"{m}{suffix}" for m in modules for suffix in (Q.DATA, Q.SCALE, ".input_scale", ".output_scale")}
        tensors = Q.complete_tensors(Q.quantized_state_dict(tensors, modules), modules, dtype)
        tensors = {k: v if k in fresh else v.to(dtype, copy=True) if v.is_floating_point() else v.clone()
                   for k, v in tensors.items()}
    assign_weights(model, tensors, dtype)
    for module in model.modules():  # floating buffers (DINOv3's RoPE frequencies) in the compute dtype, as
        for name, buf in module._buffers.items():  # DiffSynth's model.to(dtype) leaves them
            if buf is not None and buf.is_floating_point():
                module._buffers[name] = buf.to(dtype)
    return model


def blocks_of(role: str, model) -> list:
    return model.block_list() if role == HYPERNETWORK else E.blocks(role, model)


def resolve_mode(mode: str, device, nbytes: int) -> str:  # nbytes: the weights in the compute dtype
    """The placement for one model: on CUDA, auto is whole when it fits in free VRAM (with room for
    activations), else stream; off CUDA, stream is whole (there is nothing to stream to)."""
    if device.type != "cuda":
        return "int8" if mode == "int8" else "whole"
    if mode != "auto":
        return mode
    free, _ = torch.cuda.mem_get_info(device)
    return "whole" if nbytes * 1.1 + 2**30 < free else "stream"


class Placed:
    """A model placed for running; release() frees it (and its streaming hooks)."""

    def __init__(self, part: Prepared, dtype, mode: str, device):
        from engine.placement.streaming import BlockStreamer

        self.role, self.mode = part.role, resolve_mode(mode, device, part.weight_bytes(dtype))
        self.device, self.dtype = device, dtype
        self.model = build(part, dtype, int8=self.mode == "int8")
        self.streamer = None
        if self.mode == "stream":
            self.streamer = BlockStreamer(self.model, blocks_of(part.role, self.model), device).attach()
        else:
            self.model.to(device)

    def release(self) -> None:
        if self.streamer is not None:
            self.streamer.release()
        self.model = self.streamer = None
        free_memory()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- running -------------------------------------------------------------------------------------

def _progress_hooks(model, role, blocks, tick):
    """A tick before each block runs ("DINOv3: block 12/40"): progress, and where Stop takes effect."""
    return [b.register_forward_pre_hook(lambda *_, i=i: tick(f"{LABELS[role]}: block {i + 1}/{len(blocks)}"))
            for i, b in enumerate(blocks)]


def encode(placed: Placed, part: Prepared, crops: torch.Tensor, tick=None) -> torch.Tensor:
    """All pictures through one encoder -> [N, width] in its dtype, on the CPU."""
    hooks = _progress_hooks(placed.model, part.role, E.blocks(part.role, placed.model), tick) if tick else []
    try:
        pixels = E.pixels_for(part.role, part.config, crops).to(placed.device, placed.dtype)
        return E.encode(placed.model, pixels).cpu()
    finally:
        for h in hooks:
            h.remove()


@torch.no_grad()
def decode(placed: Placed, x: torch.Tensor, tick=None) -> dict:
    """Picture vectors x [N, E] -> the merged LoRA's tensors (on the CPU)."""
    model = placed.model
    hooks = _progress_hooks(model, HYPERNETWORK, model.block_list(), tick) if tick else []
    try:
        per_module = model(x.to(placed.device, placed.dtype))
    finally:
        for h in hooks:
            h.remove()
    return {k: v.cpu() for k, v in H.lora_tensors(per_module).items()}


def metadata(request: I2LRequest, parts: dict, tensors: dict, modes: dict) -> dict:
    from engine import APP_NAME, APP_VERSION
    from engine.lora.file_options import metadata_for

    files = {role: {"file": f"{p.path.parent.name}/{p.path.name}", "bytes": p.nbytes} for role, p in parts.items()}
    pictures = [{"file": p.path.name, "sha256": p.sha256, "size": list(p.size)} for p in request.pictures]
    return {"format": "pt", "studio.made_by": f"{APP_NAME} {APP_VERSION}", "studio.kind": "image-to-lora",
            "i2l.model": "DiffSynth-Studio/Z-Image-i2L (v1)", "i2l.pictures": json.dumps(pictures),
            "i2l.files": json.dumps(files), "i2l.precision": request.dtype, "i2l.memory": json.dumps(modes),
            "i2l.rank_per_picture": str(H.RANK), "modelspec.title": request.name.removesuffix(".safetensors"),
            **metadata_for(request.positive_only, RECOMMENDED)}


@contextmanager
def _out_of_memory(role: str, mode: str, device):
    """Running out of memory as one line saying what ran and what to choose instead (the model is freed)."""
    try:
        yield
    except torch.cuda.OutOfMemoryError:
        free_memory()
        raise UserError(f"out of GPU memory running the {FILES.PARTS[role].label} (memory mode {mode}): choose "
                        "memory mode 'stream' (weights stay in RAM, one block at a time on the GPU) or 'int8', "
                        "or run on the CPU (--device cpu)") from None
    except RuntimeError as exc:
        if "can't allocate memory" not in str(exc) and "not enough memory" not in str(exc):
            raise
        free_memory()
        raise UserError(f"out of RAM running the {FILES.PARTS[role].label} on the {device.type.upper()}: "
                        "choose memory mode 'int8' (half the RAM) or close other programs") from None


def _fetch(item, locator, report) -> Path:
    """A part's file, downloaded if missing with its bytes reported (`report` may raise to stop the download)."""
    if item.path is not None:
        return item.path
    part = item.part
    what = f"downloading the {part.label} ({part.size / 1e9:.1f} GB)"
    report(0, part.size, what)
    return FILES.fetch(item, locator, lambda done, size: report(done, size or part.size, what))


def make_lora(request: I2LRequest, locator, device, report=None) -> I2LResult:
    """Run a prepared request: download what is missing, then SigLIP2, DINOv3 and the hypernetwork one after
    the other; write the LoRA. `report(done, total, what)` is called along the way (it may raise to stop)."""
    from engine.lora.writer import write_new
    from engine.placement.memory import MemoryMonitor

    started = time.perf_counter()
    device = torch.device(device)
    dtype = DTYPES[request.dtype]
    given = dict(request.given)
    report = report or (lambda done, total, what: None)
    paths = {}
    for item in FILES.status(locator, given):
        paths[item.part.role] = _fetch(item, locator, report)
    parts = check_files(paths)
    layers = [sum(2 * c for _, c in part.config.blocks) if role == HYPERNETWORK else part.config.num_hidden_layers
              for role, part in parts.items()]
    total, done = sum(layers) + len(parts) + 1, 0

    def tick(what):
        nonlocal done
        done += 1
        report(done, total, what)

    monitor, modes = MemoryMonitor(device), {}
    tick("reading the pictures")
    crops = P.crops(list(request.pictures))
    vectors = []
    for role in (SIGLIP2, DINOV3):
        with monitor.stage(LABELS[role]), _out_of_memory(role, request.memory, device):
            tick(f"loading {LABELS[role]}")
            placed = Placed(parts[role], dtype, request.memory, device)
            modes[role] = placed.mode
            try:
                vectors.append(encode(placed, parts[role], crops, tick).to(dtype))
            finally:
                placed.release()
    with monitor.stage(LABELS[HYPERNETWORK]), _out_of_memory(HYPERNETWORK, request.memory, device):
        tick("loading the hypernetwork")
        placed = Placed(parts[HYPERNETWORK], dtype, request.memory, device)
        modes[HYPERNETWORK] = placed.mode
        try:
            tensors = decode(placed, torch.cat(vectors, dim=-1), tick)
        finally:
            placed.release()
    report(total, total, "writing the LoRA")
    path = write_new(request.target, tensors, metadata(request, parts, tensors, modes))
    rank = next(v.shape[0] for k, v in tensors.items() if k.endswith(".lora_A.weight"))
    return I2LResult(path, request.name, len(request.pictures), rank, len(tensors) // 2,
                     time.perf_counter() - started, monitor.as_dict(), modes)

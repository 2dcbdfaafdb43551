"""INT8 weights in optimum-quanto's file layout, as Wan2GP/mmgp write them: check, build, quantize, save.

A quantized Linear `<m>` is stored as `<m>.weight._data` (int8 [out, in]), `<m>.weight._scale` (one scale per
output row, [out, 1]), scalar `<m>.input_scale` and `<m>.output_scale`, and `<m>.bias`. The header metadata has
`quantization_format: "quanto"`, `quantization_map_base64` (base64 JSON {module: {"weights": "qint8",
"activations": "none"}}) and, for Wan2GP, the model config in `config_base64`.

quanto's QLinear is built directly, never through quanto's module registry (importing mmgp replaces the
registry's Linear entry), so what loads does not depend on whether mmgp was imported.
"""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from engine.errors import ModelFileError

if TYPE_CHECKING:  # torch and quanto are imported where used: header checks and the CLI stay light
    import torch

DATA, SCALE = ".weight._data", ".weight._scale"
ACTIVATION_SCALES = ("input_scale", "output_scale")


# ---- reading a file's header ------------------------------------------------------------------

def plain_name(key: str) -> str:
    """`<m>.weight._data` -> `<m>.weight`; other names unchanged (lets header probes ignore quantization)."""
    return key[: -len("._data")] if key.endswith(DATA) else key


def quantized_modules(keys) -> list[str]:
    """Names of the modules whose weight is stored quantized."""
    return sorted(k[: -len(DATA)] for k in keys if k.endswith(DATA))


def quantization_map(metadata: dict) -> dict:
    from engine.jsontext import json_object_or_none

    raw = metadata.get("quantization_map_base64")
    try:
        data = json_object_or_none(base64.b64decode(raw)) if isinstance(raw, str) and raw else None
    except ValueError:
        return {}
    return {k: v for k, v in (data or {}).items() if isinstance(v, dict)}  # module -> {"weights": ..., ...}


def check_quantized(path, entries: dict, metadata: dict) -> list[str]:
    """The quantized modules of a file whose tensors are `entries` {name: (dtype, shape)}.

    Raises ModelFileError when the quantization is not quanto INT8 weights (qint4, fp8, quantized
    activations) or a module's scale is missing or misshaped, naming the first few culprits.
    """
    for module, qconfig in quantization_map(metadata).items():
        weights, activations = (qconfig or {}).get("weights"), (qconfig or {}).get("activations", "none")
        if weights not in ("qint8", "none", None) or activations not in ("none", None):
            raise ModelFileError(path, f"module {module} is quantized as weights={weights}, activations="
                                       f"{activations}: only quanto INT8 weights (qint8) are supported; use the "
                                       "bf16 or the INT8 file")
    modules = quantized_modules(entries)
    problems = []
    for m in modules:
        dtype, shape = entries[m + DATA]
        scale = entries.get(m + SCALE)
        if dtype != "I8" or len(shape) != 2:
            problems.append(f"{m + DATA} is {dtype} {list(shape)}, not a 2-D int8 matrix")
        elif scale is None:
            problems.append(f"{m + SCALE} is missing")
        elif tuple(scale[1]) not in ((shape[0], 1), (shape[0],)) or scale[0] not in ("BF16", "F16", "F32"):
            problems.append(f"{m + SCALE} is {scale[0]} {list(scale[1])}, not one float per row of {list(shape)}")
    if problems:
        more = f" (+{len(problems) - 3} more)" if len(problems) > 3 else ""
        raise ModelFileError(path, f"damaged INT8 file: {'; '.join(problems[:3])}{more}")
    return modules


def logical_shapes(shapes: dict, modules) -> dict:
    """The shapes the unquantized model has: `<m>.weight` for `<m>.weight._data`, scales left out."""
    extras = {m + s for m in modules for s in (SCALE, *(f".{a}" for a in ACTIVATION_SCALES))}
    return {plain_name(k): v for k, v in shapes.items() if k not in extras}


# ---- building a model with INT8 layers ----------------------------------------------------------

def install_int8_linears(model: torch.nn.Module, modules, dtype: torch.dtype, path) -> None:
    """Replace each named nn.Linear (on the meta device) by a quanto QLinear of the same shape and dtype."""
    import torch
    from optimum.quanto import QLinear, qint8

    for name in modules:
        linear = model.get_submodule(name)
        if type(linear) is not torch.nn.Linear:
            raise ModelFileError(path, f"{name} is INT8 in the file but is a {type(linear).__name__} in the model: "
                                       "only Linear layers can be read as INT8")
        qlinear = QLinear(linear.in_features, linear.out_features, bias=linear.bias is not None, dtype=dtype,
                          device="meta", weights=qint8, quantize_input=True)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, qlinear)


def complete_tensors(tensors: dict, modules, dtype: torch.dtype) -> dict:
    """INT8 tensors as quanto's kernels need them: data 64-byte aligned (CPU int8 matmul crashes on others),
    scales [out, 1] in the compute dtype (bf16 input against an fp32 scale fails), and activation scales
    that some writers leave out set to one."""
    import torch

    out = dict(tensors)
    for m in modules:
        if out[m + DATA].data_ptr() % 64:  # a row slice of a fused tensor: int8 kernels need alignment
            out[m + DATA] = out[m + DATA].clone()
        scale = out[m + SCALE]
        out[m + SCALE] = scale.reshape(-1, 1).to(dtype)
        for name in ACTIVATION_SCALES:
            out.setdefault(f"{m}.{name}", torch.ones((), dtype=dtype))
    return out


def int8_modules_of(model: torch.nn.Module) -> list[str]:
    """Names of the model's quanto INT8 layers."""
    from optimum.quanto import QLinear

    return [n for n, m in model.named_modules() if isinstance(m, QLinear)]


def resident_bytes(model: torch.nn.Module) -> int:
    """Bytes held by a model's parameters and buffers (INT8 weights count their data and scales)."""
    total, seen = 0, set()
    for t in [*model.parameters(), *model.buffers()]:
        parts = [t._data, t._scale] if hasattr(t, "_data") and hasattr(t, "_scale") else [t.data]
        for p in parts:
            if p.data_ptr() not in seen:
                seen.add(p.data_ptr())
                total += p.numel() * p.element_size()
    return total


# ---- quantizing and saving ----------------------------------------------------------------------

def block_linears(model: torch.nn.Module) -> list[str]:
    """The Linear layers inside block lists (nn.ModuleList): the repeated layers holding nearly all weights.

    Embedders, final layers and tied heads sit outside block lists and stay in bf16, as in Wan2GP's files.
    """
    import torch

    lists = [n for n, m in model.named_modules() if isinstance(m, torch.nn.ModuleList) and n]
    return [n for n, m in model.named_modules()
            if type(m) is torch.nn.Linear and any(n.startswith(prefix + ".") for prefix in lists)]


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-row INT8: (int8 data [out, in], scale [out, 1] in the weight's dtype).

    Computed in float32 with each scale rounded up to the weight's dtype, so every weight lands within half
    a step of its value (quanto's own quantizer divides in bf16, which is coarse near 127, and can be a
    whole step off).
    """
    import torch

    exact = (weight.float().abs().amax(dim=1, keepdim=True) / 127).clamp(min=torch.finfo(weight.dtype).tiny)
    scale = exact.to(weight.dtype)
    scale = torch.where(scale.float() < exact, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)
    data = (weight.float() / scale.float()).round().clamp(-127, 127).to(torch.int8)
    return data, scale


def quantized_state_dict(state_dict: dict, modules) -> dict:
    """`state_dict` with each named Linear's weight in quanto's INT8 entries (`weight._data`, `weight._scale`,
    and unit `input_scale` / `output_scale`, as quanto's QLinear saves them)."""
    import torch

    out = dict(state_dict)
    for name in modules:
        weight = out.pop(f"{name}.weight")
        out[f"{name}{DATA}"], out[f"{name}{SCALE}"] = quantize_rows(weight)
        for activation_scale in ACTIVATION_SCALES:
            out[f"{name}.{activation_scale}"] = torch.ones((), dtype=weight.dtype)
    return out


def int8_metadata(modules, config: dict | None = None) -> dict:
    qmap = {m: {"weights": "qint8", "activations": "none"} for m in modules}
    meta = {"quantization_format": "quanto", "quantization_map_base64": _b64(qmap)}
    if config:
        meta["config_base64"] = _b64(config)
    return meta


def _b64(obj) -> str:
    return base64.b64encode(json.dumps(obj, ensure_ascii=False).encode()).decode()


def save_atomically(tensors: dict, path: Path, metadata: dict) -> Path:
    """Write a safetensors file under a temporary name, then rename: never a half-written file."""
    from safetensors.torch import save_file

    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        save_file(tensors, str(partial), metadata=metadata)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


def int8_file_name(source_name: str) -> str:
    """Wan2GP's naming: `X_bf16.safetensors` -> `X_quanto_bf16_int8.safetensors`."""
    stem = Path(source_name).name.removesuffix(".safetensors")
    for suffix in ("_bf16", "_fp16", "_fp32", "_float32", "_bfloat16"):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return f"{stem}_quanto_bf16_int8.safetensors"

"""fp8 weights as ComfyUI writes them, kept in fp8 in memory and multiplied in the compute dtype.

Three layouts (per Linear `<m>`):
- plain: `<m>.weight` is float8_e4m3fn / float8_e5m2, nothing else (weight = fp8 value);
- legacy "scaled fp8": a `scaled_fp8` marker tensor (its dtype names the fp8 type; 2 elements = "never use fp8
  matmuls"), `<m>.scale_weight` (float32 scalar: weight = fp8 x scale) and `<m>.scale_input` (1.0 = none);
- mixed quantization: `<m>.weight_scale`, optional `<m>.input_scale`, and the layer's format in a `<m>.comfy_quant`
  tensor (UTF-8 JSON bytes, e.g. {"format": "float8_e4m3fn"}) or in the header's `_quantization_metadata`
  ({"layers": {<m>: {...}}}); layers not listed stay bf16. Only the float8 formats are read here; nvfp4, mxfp8,
  int8 ("convrot"), int4 layers are refused by name.
On a CUDA GPU with fp8 tensor cores (compute capability 8.9+: RTX 40xx, H100, RTX 50xx) an e4m3 layer multiplies
with `torch._scaled_mm` (the input scaled into fp8 by its `input_scale`, or by its own max when the file has
none); elsewhere the weight is cast to the compute dtype one layer at a time.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from engine.errors import ModelFileError

FP8_DTYPES = {"F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2"}
FLOAT8_FORMATS = ("float8_e4m3fn", "float8_e5m2")
MARKER = "scaled_fp8"
SCALE_KEYS = ("scale_weight", "scale_input", "weight_scale", "input_scale", "weight_scale_2", "comfy_quant")
E4M3_MAX = 448.0


@dataclass
class FP8Layer:
    format: str  # "float8_e4m3fn" | "float8_e5m2"
    weight_scale: str | None = None  # tensor name of the weight scale (None: 1)
    input_scale: str | None = None
    full_precision: bool = False  # the file asks for no fp8 matmuls on this layer


@dataclass
class FP8Plan:
    layers: dict[str, FP8Layer] = field(default_factory=dict)  # planned module name -> layer
    drop: set[str] = field(default_factory=set)  # planned names consumed here (scales, configs, the marker)


def is_fp8_file(entries: dict, metadata: dict) -> bool:
    """Any fp8 weight, scaled-fp8 marker or mixed-quantization config among `entries` {name: (dtype, shape)}."""
    return ("_quantization_metadata" in metadata
            or any(dtype in FP8_DTYPES for dtype, _ in entries.values())
            or any(n == MARKER or n.endswith("." + MARKER) or n.endswith(".comfy_quant") for n in entries))


def plan(path, entries: dict, metadata: dict, read_small) -> FP8Plan:
    """Which planned modules are fp8 and where their scales are. `entries`: planned name -> (dtype, shape);
    `read_small(names)` reads small tensors (the per-layer JSON configs) by planned name."""
    out = FP8Plan()
    marker = next((n for n in entries if n == MARKER or n.endswith("." + MARKER)), None)
    legacy_format, full = "float8_e4m3fn", False
    if marker is not None:
        out.drop.add(marker)
        dtype, shape = entries[marker]
        legacy_format = FP8_DTYPES.get(dtype, "float8_e4m3fn")
        full = _count(shape) == 2
    configs = _mixed_configs(path, entries, metadata, read_small)
    out.drop |= {n for n in entries if n.endswith(".comfy_quant")}
    for name, (dtype, _) in entries.items():
        if not name.endswith(".weight"):
            continue
        module = name[: -len(".weight")]
        conf = configs.get(module)
        if conf is not None:
            fmt = conf.get("format")
            if fmt not in FLOAT8_FORMATS:
                raise ModelFileError(path, f"layer {module} is quantized as {fmt!r}: only the float8 formats of "
                                           "ComfyUI's mixed files are read here (use the bf16 or fp8 file)")
            if dtype not in (*FP8_DTYPES, "U8"):
                raise ModelFileError(path, f"damaged fp8 file: layer {module} is listed as {fmt} but its weight "
                                           f"is {dtype}")
            layer = FP8Layer(fmt, _scale(entries, module, "weight_scale"), _scale(entries, module, "input_scale"),
                             bool(conf.get("full_precision_matrix_mult")))
        elif marker is not None and f"{module}.scale_weight" in entries and dtype in (*FP8_DTYPES, "U8"):
            layer = FP8Layer(legacy_format, f"{module}.scale_weight", _scale(entries, module, "scale_input"), full)
        elif dtype in FP8_DTYPES:
            layer = FP8Layer(FP8_DTYPES[dtype], _scale(entries, module, "weight_scale"),
                             _scale(entries, module, "input_scale"))
        else:
            continue
        out.layers[module] = layer
        out.drop |= {f"{module}.{k}" for k in SCALE_KEYS if f"{module}.{k}" in entries}
    stray = sorted(n for n in entries if n.rpartition(".")[2] in SCALE_KEYS and n not in out.drop)
    if stray:
        raise ModelFileError(path, f"damaged fp8 file: scale tensor(s) without an fp8 weight: {', '.join(stray[:3])}")
    return out


def _count(shape) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _scale(entries: dict, module: str, key: str) -> str | None:
    return f"{module}.{key}" if f"{module}.{key}" in entries else None


def _mixed_configs(path, entries: dict, metadata: dict, read_small) -> dict:
    """module -> its mixed-quantization config, from the header and from `.comfy_quant` tensors."""
    configs = {}
    raw = metadata.get("_quantization_metadata")
    if raw:
        try:
            layers = json.loads(raw).get("layers", {})
            assert isinstance(layers, dict)
        except (ValueError, AttributeError, AssertionError):
            raise ModelFileError(path, "damaged header: _quantization_metadata is not ComfyUI's JSON "
                                       "({\"layers\": {...}})") from None
        configs.update({k: ({"format": v} if isinstance(v, str) else v) for k, v in layers.items()})
    names = [n for n in entries if n.endswith(".comfy_quant")]
    for name, tensor in (read_small(names) if names else {}).items():
        try:
            conf = json.loads(bytes(tensor.reshape(-1).tolist()))
            assert isinstance(conf, dict)
        except (ValueError, TypeError, AssertionError):
            raise ModelFileError(path, f"damaged fp8 file: {name} is not a JSON layer config") from None
        configs.setdefault(name[: -len(".comfy_quant")], conf)
    return configs


# ---- the layer -------------------------------------------------------------------------------------

def scaled_mm_available(device) -> bool:
    """fp8 tensor-core matmuls: a CUDA GPU of compute capability 8.9 or newer, and torch._scaled_mm."""
    import torch

    if getattr(device, "type", device) != "cuda" or not torch.cuda.is_available() or not hasattr(torch, "_scaled_mm"):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 9)


def _linear_class():
    import torch

    class FP8Linear(torch.nn.Linear):
        """weight [out, in] in float8 as stored, `weight_scale` (scalar or [out, 1]) and optional `input_scale`
        buffers; output in the input's dtype."""

        full_precision: bool = False
        use_scaled_mm = None  # None: decide from the device on first use; tests force True/False

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self._scaled_mm_ok(x):
                return self._forward_scaled_mm(x)
            weight = self.weight.to(x.dtype)
            if self.weight_scale is not None:
                weight = weight * self.weight_scale.to(x.dtype)
            bias = self.bias.to(x.dtype) if self.bias is not None else None
            return torch.nn.functional.linear(x, weight, bias)

        def _scaled_mm_ok(self, x) -> bool:
            use = self.use_scaled_mm
            if use is None:
                use = self.use_scaled_mm = scaled_mm_available(x.device)
            return (use and not self.full_precision and self.weight.dtype == torch.float8_e4m3fn
                    and self.in_features % 16 == 0 and self.out_features % 16 == 0
                    and (self.weight_scale is None or self.weight_scale.numel() == 1))

        def _forward_scaled_mm(self, x: torch.Tensor) -> torch.Tensor:
            flat = x.reshape(-1, x.shape[-1])
            scale_in = self.input_scale if self.input_scale is not None else \
                (flat.abs().amax().float() / E4M3_MAX).clamp(min=1e-12)
            scale_in = scale_in.float().reshape(())
            x8 = (flat.float() / scale_in).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)
            scale_w = self.weight_scale.float().reshape(()) if self.weight_scale is not None else \
                torch.ones((), device=x.device)
            bias = self.bias.to(x.dtype) if self.bias is not None else None
            out = torch._scaled_mm(x8, self.weight.t(), scale_a=scale_in, scale_b=scale_w, bias=bias,
                                   out_dtype=x.dtype)
            out = out[0] if isinstance(out, tuple) else out
            return out.reshape(*x.shape[:-1], self.out_features)

    return FP8Linear


def install(model, fp8: FP8Plan, path) -> None:
    """Replace each fp8 Linear (on the meta device) by an FP8Linear of the same shape."""
    import torch

    cls = _linear_class()
    for name, layer in fp8.layers.items():
        module = model.get_submodule(name)
        if type(module) is not torch.nn.Linear:
            continue  # an fp8 embedding or norm is cast to the compute dtype when assigned
        new = cls(module.in_features, module.out_features, module.bias is not None, device="meta")
        new.register_buffer("weight_scale", None)
        new.register_buffer("input_scale", None)
        new.full_precision = layer.full_precision
        new.requires_grad_(False)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, new)


def assign(model, fp8: FP8Plan, tensors: dict, path) -> dict:
    """Put the fp8 weights and scales into the installed layers; returns the remaining tensors."""
    import torch

    rest = {k: v for k, v in tensors.items() if k not in fp8.drop}
    for name, layer in fp8.layers.items():
        module = model.get_submodule(name)
        if not hasattr(module, "weight_scale"):
            continue
        weight = rest.pop(f"{name}.weight")
        storage = getattr(torch, layer.format)
        if weight.dtype == torch.uint8:  # older ComfyUI files store fp8 bytes as uint8
            weight = weight.view(storage)
        elif weight.dtype != storage:
            raise ModelFileError(path, f"{name}.weight is {weight.dtype}, but its layer is {layer.format}")
        module.weight = torch.nn.Parameter(weight, requires_grad=False)
        for attr, key in (("weight_scale", layer.weight_scale), ("input_scale", layer.input_scale)):
            value = tensors[key].float() if key else None
            if attr == "input_scale" and value is not None and value.numel() == 1 and float(value) == 1.0:
                value = None  # ComfyUI: a unit input scale means "not calibrated"
            setattr(module, attr, value)
    return rest
